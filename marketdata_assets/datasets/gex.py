"""Gamma exposure of Deribit's option chains: `deribit/gex/<CURRENCY>` (BTC, ETH), one snapshot an
hour, in market_data.gex_snapshots (GEX per expiry and strike), with the raw chain kept in
market_data.option_chain_snapshots (so GEX can be recomputed under other assumptions) and a line
per snapshot in market_data.gex_summary (net GEX, zero-gamma level, call and put walls).

Catalog: `series: [{source: deribit, dataset: gex, keys: [BTC, ETH], start_date: <the day added>}]`.

Deribit serves only the current chain: history exists only if it was captured. Hourly partitions
from the catalog's start; only the hour in progress can be materialized. A past hour fails its
partition with "Deribit serves only the current chain: past snapshots cannot be backfilled" and
stores nothing; `marketdata backfill gex` over the past refuses with that sentence before anything
runs; `seed` takes one snapshot. The report counts hours without a snapshot as "not captured",
not as a gap: the repair sensor leaves them alone (there is nothing to fetch). The schedule
captures every hour (MARKETDATA_GEX_CRON, `1 * * * *` by default).

GEX (gex.py): Black-Scholes gamma with σ = mark_iv / 100, T in years to the expiry, S the
expiry's underlying (forward) price; GEX = Γ · OI · S² · 0.01 USD per 1% move, calls + and puts −
(dealers long calls, short puts) unless MARKETDATA_GEX_DEALERS_SHORT_CALLS=1 flips them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.gex import YEAR_SECONDS, chain_gex, summary
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.settings import Settings
from marketdata_assets.sources.deribit import CURRENCIES, DeribitChainSource
from marketdata_assets.sources.errors import NoSourceHolds, PieceFailure
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

OPTION_CHAIN_SNAPSHOTS = TableSpec(
    name="option_chain_snapshots",
    schema=pl.Schema({
        "snapshot_time": UTC_TIME,  # when Deribit answered (its creation_timestamp)
        "currency": pl.String,  # BTC | ETH
        "instrument_name": pl.String,  # BTC-27DEC24-100000-C
        "expiry": UTC_TIME,  # 08:00 UTC
        "strike": pl.Float64,  # USD
        "option_type": pl.String,  # call | put
        "open_interest": pl.Float64,  # coins (Deribit's contract multiplier is 1)
        "mark_iv": pl.Float64,  # percent
        "mark_price": pl.Float64,  # in the currency
        "underlying_price": pl.Float64,  # USD: the expiry's forward
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("currency", "instrument_name", "snapshot_time"),
)
GEX_SNAPSHOTS = TableSpec(
    name="gex_snapshots",
    schema=pl.Schema({
        "snapshot_time": UTC_TIME,
        "currency": pl.String,
        "expiry": UTC_TIME,
        "strike": pl.Float64,
        "call_gex": pl.Float64,  # USD per 1% move of the underlying
        "put_gex": pl.Float64,
        "net_gex": pl.Float64,
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("currency", "expiry", "strike", "snapshot_time"),
)
GEX_SUMMARY = TableSpec(
    name="gex_summary",
    schema=pl.Schema({
        "snapshot_time": UTC_TIME,
        "currency": pl.String,
        "spot": pl.Float64,  # the nearest expiry's underlying price, USD
        "net_gex": pl.Float64,  # USD per 1% move, every expiry and strike
        "zero_gamma": pl.Float64,  # the spot where net GEX changes sign, NULL if not within ±20%
        "call_wall": pl.Float64,  # the strike with the largest call GEX
        "put_wall": pl.Float64,  # the strike with the largest put GEX (in size)
        "lines": pl.Int64,  # option lines in the chain
        "ingested_at": UTC_TIME,
    }),
    primary_key=("currency", "snapshot_time"),
)
NOT_SERVED = "Deribit serves only the current chain: past snapshots cannot be backfilled"
VALID = "gex_valid"
CAPTURED = "gex_captured"
_HOUR = dt.timedelta(hours=1)


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


class GexSource:
    """A snapshot of one currency's chain (DeribitChainSource) and its GEX; the window's past
    hours are failures (Deribit keeps no past chain), its later ones are not asked for."""

    def __init__(self, chain: DeribitChainSource, dealers_short_calls: bool, now: dt.datetime | None = None):
        self.chain = chain
        self.dealers_short_calls = dealers_short_calls
        self.now = now
        self._failures: list[PieceFailure] = []
        self._side: list[tuple[TableSpec, pl.DataFrame]] = []

    async def __aenter__(self) -> GexSource:
        await self.chain.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.chain.__aexit__(*exc_info)

    def outcome(self) -> SourceOutcome:
        found = self.chain.outcome()
        found.failures += self._failures
        found.side_tables += self._side
        self._failures, self._side = [], []
        return found

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime):
        current = hour_of(self.now or dt.datetime.now(dt.UTC))
        if start < current:
            self._failures.append(PieceFailure(start, min(end, current), NoSourceHolds("deribit", NOT_SERVED)))
        if end <= current:
            return
        chain, rejected = await self.chain.snapshot(str(series.key))
        self.chain.rejected.append(rejected)
        if chain.is_empty():
            return
        taken = chain["snapshot_time"][0]
        lines = chain.with_columns(
            years=(pl.col("expiry") - pl.col("snapshot_time")).dt.total_microseconds() / 1e6 / YEAR_SECONDS)
        per_strike = chain_gex(lines, self.dealers_short_calls)
        spot = float(lines.sort("expiry")["underlying_price"][0])
        totals = summary(lines, spot, self.dealers_short_calls)
        now = chain["ingested_at"][0]
        self.chain.count_rows(per_strike.height)
        self._side += [
            (OPTION_CHAIN_SNAPSHOTS, chain),
            (GEX_SUMMARY, pl.DataFrame([{
                "snapshot_time": taken, "currency": series.key, "spot": spot, "net_gex": totals.net_gex,
                "zero_gamma": totals.zero_gamma, "call_wall": totals.call_wall, "put_wall": totals.put_wall,
                "lines": chain.height, "ingested_at": now}], schema=GEX_SUMMARY.schema)),
        ]
        yield per_strike.with_columns(
            snapshot_time=pl.lit(taken, dtype=UTC_TIME), currency=pl.lit(series.key), source=pl.lit("rest"),
            ingested_at=pl.lit(now, dtype=UTC_TIME),
        ).select(GEX_SNAPSHOTS.columns).cast(dict(GEX_SNAPSHOTS.schema))


class Gex(Dataset):
    name = "gex"
    table = GEX_SNAPSHOTS
    time_column = "snapshot_time"
    unit = "snapshots"
    missing_note = "not captured"
    audits_every_partition = True
    title = "Gamma exposure of Deribit's option chain, a snapshot an hour"
    position = 80
    checks = (VALID, CAPTURED)
    gap_check = None  # an hour not captured cannot be fetched again
    cadence_name = "hourly"
    series_source = "deribit"
    keys = "required"
    key_column = "currency"
    allowed_keys = CURRENCIES
    moment_names = ("snapshot_time", "last_snapshot_time")

    @property
    def cron(self) -> str:  # type: ignore[override]
        return Settings.from_env().gex_cron

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        return dg.HourlyPartitionsDefinition(start_date=f"{series.start_date:%Y-%m-%d}-00:00", end_offset=1)

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{self.title}: {series.key} options, GEX per expiry and strike in {self.table.qualified_name} (the "
                f"raw chain in {OPTION_CHAIN_SNAPSHOTS.qualified_name}, totals in {GEX_SUMMARY.qualified_name}); hourly "
                f"UTC partitions from {partitions.start:%Y-%m-%d %H:%M}. Only the hour in progress can be captured.")

    def retention(self, venue: str) -> dt.timedelta:
        return _HOUR  # the chain as it stands now: a seed takes the hour in progress

    def unservable(self, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> str | None:
        return NOT_SERVED if start < hour_of(now) else None

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> GexSource:
        settings = Settings.from_env()
        return GexSource(DeribitChainSource(upstreams.url("deribit_url"), OPTION_CHAIN_SNAPSHOTS, self.name),
                         settings.gex_dealers_short_calls)

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Hours of [start, end) without a snapshot, up to the hour in progress (which may still be
        captured): each one not captured, for good."""
        lower, until = hour_of(start), min(end, hour_of(now))
        taken = {hour_of(t) for t in warehouse.query(
            f"SELECT snapshot_time FROM {GEX_SUMMARY.qualified_name} WHERE currency = ? AND snapshot_time >= ? "
            "AND snapshot_time < ?", [series.key, lower, until])["snapshot_time"].to_list()}
        found = Missing()
        hour = lower
        while hour < until:
            found.expected += 1
            if hour not in taken:
                found.missing += 1
                if found.windows and found.windows[-1][1] == hour:
                    found.windows[-1] = (found.windows[-1][0], hour + _HOUR)
                else:
                    found.windows.append((hour, hour + _HOUR))
            hour += _HOUR
        return found

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(VALID, asset=key, description=(
                "Every line of the chain had its open interest, volatility and prices, and its instrument (WARN: the "
                "lines rejected are in market_data.rejected_rows), and every GEX is a number.")),
            dg.AssetCheckSpec(CAPTURED, asset=key, description=(
                "The hour has its snapshot (WARN: an hour not captured stays so: Deribit keeps no past chain).")),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        with warehouse.session():
            rejected = warehouse.query(
                "SELECT open_time, reason, payload FROM market_data.rejected_rows WHERE dataset = ? AND symbol = ? "
                "AND open_time >= ? AND open_time < ? ORDER BY open_time", [self.name, series.key, start, end])
            broken = warehouse.query(
                f"SELECT snapshot_time, expiry, strike, net_gex FROM {self.table.qualified_name} WHERE currency = ? AND "
                "snapshot_time >= ? AND snapshot_time < ? AND NOT (net_gex = net_gex AND abs(net_gex) < 1e30)",
                [series.key, start, end])
            taken = warehouse.query(
                f"SELECT snapshot_time, net_gex, zero_gamma, lines FROM {GEX_SUMMARY.qualified_name} WHERE currency = ? "
                "AND snapshot_time >= ? AND snapshot_time < ? ORDER BY snapshot_time", [series.key, start, end])
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALID, passed=rejected.is_empty() and broken.is_empty(),
                severity=dg.AssetCheckSeverity.ERROR if broken.height else dg.AssetCheckSeverity.WARN,
                description=f"{counted(rejected.height, 'line')} rejected; {counted(broken.height, 'GEX')} not a number",
                metadata={"window": window, "rejected_lines": rejected.height, "invalid_gex": broken.height,
                          "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts()))},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=CAPTURED, passed=not taken.is_empty(), severity=dg.AssetCheckSeverity.WARN,
                description=(f"captured at {taken['snapshot_time'][0]:%Y-%m-%d %H:%M:%S} UTC: {taken['lines'][0]} lines, "
                             f"net GEX {taken['net_gex'][0]:,.0f} USD per 1%" if taken.height else "not captured"),
                metadata={"window": window, "snapshots": taken.height},
            ),
        ]


DATASET = Gex()
