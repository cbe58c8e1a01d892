"""Resampled bars: coarser candles built from an instrument's stored 1m klines, one asset per
instrument and derived timeframe (`<venue>_<market>/resampled_<tf>/<SYMBOL>`), in
market_data.resampled_klines, downstream of the 1m asset in the UI.

Catalog: an instrument keeping 1m klines names them, `derived: [5m, 15m, 4h]` (any timeframe of
timeframes.py coarser than 1m: each divides a day, so a monthly partition holds whole bars). A
partition reads the same month of the 1m asset; the daily schedule re-runs a month whenever the
1m month was materialized after it (datasets/base.py `input_keys`), so a repaired minute is
carried over by the next tick.

A bar is the open of its first minute, the highest high, the lowest low, the close of its last
minute and the sums of the volumes and trades. It is built only when every minute of its
window is stored, but those inside a known gap (documented maintenance, verified empty) or
before the listing: a window with a minute missing yields no bar and is counted, as is a window
not closed yet. Nothing is invented.

Checks: `resampled_complete`, every bar its minutes allow is stored (the windows lacking a minute
counted beside); `resampled_matches_native`, each stored bar against the venue's own bar of the
same timeframe where the catalog keeps it: open, high, low and close exactly, the volumes within
float rounding, naming every bar that differs. No peer downloader audits its data this way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from marketdata_assets.audit import SAMPLES, BarSeries, explanations, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, InstrumentDataset, Missing
from marketdata_assets.datasets.klines import DATASET as KLINES_DATASET, klines_partitions
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.timeframes import MINUTE_MS, timeframe
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

RESAMPLED_KLINES = TableSpec(
    name="resampled_klines",
    schema=pl.Schema({
        "venue": pl.String,
        "market": pl.String,
        "symbol": pl.String,
        "timeframe": pl.String,  # the coarser one
        "open_time": UTC_TIME,
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
        "quote_volume": pl.Float64,
        "trades": pl.Int64,
        "taker_buy_volume": pl.Float64,
        "taker_buy_quote_volume": pl.Float64,
        "minutes": pl.Int32,  # 1m bars put together
        "source": pl.String,  # 'resampled'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("venue", "market", "symbol", "timeframe", "open_time"),
)
COMPLETE = "resampled_complete"
MATCHES_NATIVE = "resampled_matches_native"
SOURCE_TIMEFRAME = "1m"
PRICES = ("open", "high", "low", "close")
VOLUMES = ("volume", "quote_volume")
# Sums of the same minutes added in another order differ in the last bits only.
VOLUME_TOLERANCE = 1e-9
_SUMMED = ("trades", "taker_buy_volume", "taker_buy_quote_volume")


@dataclass
class Resampling:
    """The bars [start, end) of one series its stored minutes allow, and the closed windows
    that lack a minute (their open times)."""

    bars: pl.DataFrame
    incomplete: list[dt.datetime]


def _minutes_where(series: Series) -> tuple[str, list[Any]]:
    return ("venue = ? AND market = ? AND symbol = ? AND timeframe = ?",
            [series.venue, series.market, series.symbol, SOURCE_TIMEFRAME])


def resample(warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime,
             now: dt.datetime) -> Resampling:
    """The bars of `series` (a resampled series) opening in [start, end) and closed by `now`."""
    tf = timeframe(series.options["timeframe"])
    step = tf.millis
    where, params = _minutes_where(series)
    minutes = warehouse.query(
        "SELECT open_time, open, high, low, close, volume, quote_volume, trades, taker_buy_volume, "
        f"taker_buy_quote_volume FROM market_data.klines WHERE {where} AND open_time >= ? AND open_time < ? "
        "ORDER BY open_time", [*params, start, end])
    listed = warehouse.query(f"SELECT min(open_time) AS first FROM market_data.klines WHERE {where}", params).item()
    empty = Resampling(RESAMPLED_KLINES.empty_frame(), [])
    if listed is None:
        return empty
    lo = max(_ms(start), _ms(listed) // step * step)
    hi = min(_ms(end), _ms(now) // step * step)  # windows closed by now
    if lo >= hi:
        return empty
    opens = np.arange(lo, hi, step, dtype=np.int64)
    # minutes each window should hold: all of them, but those before the listing or in a known gap
    known = [(max(_ms(g.start), _ms(listed)), _ms(g.end)) for g in explanations(
        warehouse, [BarSeries(series.venue, str(series.market), str(series.symbol), SOURCE_TIMEFRAME, start, start)],
        start, end)[(series.venue, str(series.market), str(series.symbol), SOURCE_TIMEFRAME)].known]
    absent = [(lo, _ms(listed))] + [(-(-a // MINUTE_MS) * MINUTE_MS, b // MINUTE_MS * MINUTE_MS) for a, b in known]
    expected = np.full(len(opens), step // MINUTE_MS, dtype=np.int64)
    for a, b in absent:
        expected -= np.clip(np.minimum(opens + step, b) - np.maximum(opens, a), 0, None) // MINUTE_MS
    stamps = minutes["open_time"].dt.epoch("ms").to_numpy() if minutes.height else np.empty(0, dtype=np.int64)
    outside = np.ones(len(stamps), dtype=bool)
    for a, b in absent[1:]:
        outside &= ~((stamps >= a) & (stamps < b))
    counted_minutes = np.bincount((stamps[outside] - lo) // step, minlength=len(opens))[:len(opens)] \
        if len(stamps) else np.zeros(len(opens), dtype=np.int64)
    whole = (expected > 0) & (counted_minutes == expected)
    incomplete = [_utc(t) for t in opens[(expected > 0) & (counted_minutes < expected)]]
    built = (
        minutes.with_columns(bucket=pl.col("open_time").dt.epoch("ms") // step * step)
        .filter(pl.col("bucket").is_in(opens[whole].tolist()))
        .group_by("bucket", maintain_order=True)
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             *(pl.col(c).sum() for c in VOLUMES),
             *(pl.when(pl.col(c).null_count() == 0).then(pl.col(c).sum()).alias(c) for c in _SUMMED),
             pl.len().alias("minutes"))
    )
    bars = built.select(
        pl.lit(series.venue).alias("venue"), pl.lit(series.market).alias("market"),
        pl.lit(series.symbol).alias("symbol"), pl.lit(tf.name).alias("timeframe"),
        pl.from_epoch("bucket", time_unit="ms").dt.replace_time_zone("UTC").alias("open_time"),
        *PRICES, *VOLUMES, *_SUMMED, "minutes",
        pl.lit("resampled").alias("source"), pl.lit(now).alias("ingested_at"),
    ).cast(dict(RESAMPLED_KLINES.schema))  # type: ignore[arg-type]
    return Resampling(bars, incomplete)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc(millis: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(millis) / 1000, dt.UTC)


class ResampleSource:
    """A series' bars over one window, from the warehouse's stored minutes."""

    def __init__(self, warehouse: Warehouse):
        self._warehouse = warehouse
        self._rows = 0
        self._incomplete = 0

    async def __aenter__(self) -> ResampleSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def outcome(self) -> SourceOutcome:
        return SourceOutcome(rows_by_source={"resampled": self._rows},
                             metadata={"bars_resampled": self._rows, "windows_lacking_a_minute": self._incomplete})

    async def read(self, series: Series, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        found = resample(self._warehouse, series, start, end, dt.datetime.now(dt.UTC))
        self._rows += found.bars.height
        self._incomplete += len(found.incomplete)
        yield found.bars


class Resampled(InstrumentDataset):
    name = "resampled"
    table = RESAMPLED_KLINES
    time_column = "open_time"
    unit = "bars"
    title = "Bars resampled from the stored 1m bars"
    position = 12
    cron = "30 0 * * *"  # after the klines' daily runs (00:10)
    checks = (COMPLETE, MATCHES_NATIVE)
    gap_check = COMPLETE
    instrument_venues = KLINES_DATASET.instrument_venues
    instrument_field = "derived"
    moment_names = ("first_open_time", "last_open_time")

    def asset_key(self, series: Series) -> dg.AssetKey:
        assert series.instrument is not None
        return dg.AssetKey([series.source, f"resampled_{series.options['timeframe']}", series.instrument.slug])

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        return klines_partitions(series.start_date)  # the 1m asset's: a month reads the same month

    def input_keys(self, key: dg.AssetKey) -> list[dg.AssetKey]:
        return [dg.AssetKey([key.path[0], f"klines_{SOURCE_TIMEFRAME}", key.path[-1]])]

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{series.options['timeframe']} bars of {series.describe()} resampled from its stored 1m bars, in "
                f"{self.table.qualified_name}: only windows whose every minute is stored; monthly UTC partitions "
                "(the 1m asset's), the one in progress included.")

    def asset_metadata(self, series: Series) -> dict[str, Any]:
        return super().asset_metadata(series) | {"resampled_from": SOURCE_TIMEFRAME}

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> ResampleSource:
        return ResampleSource(warehouse)

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return ("venue = ? AND market = ? AND symbol = ? AND timeframe = ?",
                [series.venue, series.market, series.symbol, series.options["timeframe"]])

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT venue || '_' || market || '/resampled_' || timeframe || '/' || replace(symbol, '-', '_') AS series, "
            "count(*) AS rows, min(open_time) AS first_time, max(open_time) AS last_time "
            "FROM market_data.resampled_klines WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        tf = key.path[1].removeprefix("resampled_")
        return [
            dg.AssetCheckSpec(COMPLETE, asset=key, description=(
                f"Every {tf} bar whose minutes are all stored (but those in a known gap) is stored; windows lacking a "
                "minute yield no bar and are counted.")),
            dg.AssetCheckSpec(MATCHES_NATIVE, asset=key, description=(
                f"Each stored bar against the venue's own {tf} bar, where the catalog keeps it: open, high, low and "
                "close exactly, volumes within float rounding; names every bar that differs.")),
        ]

    def _computable(self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime,
                    now: dt.datetime) -> tuple[Resampling, pl.DataFrame]:
        """What the minutes allow over [start, end), and those bars not stored."""
        found = resample(warehouse, series, start, end, now)
        where, params = self.row_filter(series)
        stored = warehouse.query(f"SELECT open_time FROM {self.table.qualified_name} WHERE {where} "
                                 "AND open_time >= ? AND open_time < ?", [*params, start, end])
        lacking = found.bars.select("open_time").join(stored, on="open_time", how="anti").sort("open_time")
        return found, lacking

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Bars the stored minutes allow in [start, end) but not stored."""
        found, lacking = self._computable(warehouse, series, start, end, now)
        step = dt.timedelta(milliseconds=timeframe(series.options["timeframe"]).millis)
        return Missing(found.bars.height, lacking.height, _merged([(t, t + step) for t in lacking["open_time"]]))

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        tf = timeframe(series.options["timeframe"])
        step = dt.timedelta(milliseconds=tf.millis)
        found, lacking = self._computable(warehouse, series, start, end, now)
        said = (f"{counted(found.bars.height - lacking.height, 'bar')} of {found.bars.height} the stored minutes allow "
                f"are stored; {counted(len(found.incomplete), 'window')} lacking a minute (no bar)")
        if found.incomplete:
            said += ": " + ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in found.incomplete[:SAMPLES])
            said += " …" if len(found.incomplete) > SAMPLES else ""
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=COMPLETE, passed=lacking.is_empty(), severity=dg.AssetCheckSeverity.ERROR,
                description=said,
                metadata={"window": window, "bars_computable": found.bars.height, "bars_missing": lacking.height,
                          "windows_lacking_a_minute": len(found.incomplete),
                          UNEXPLAINED_WINDOWS: windows_metadata(_merged([(t, t + step) for t in lacking["open_time"]]))},
            ),
            native_comparison(warehouse, key, series, start, end, window),
        ]


def native_comparison(warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime,
                      end: dt.datetime, window: dg.MetadataValue) -> dg.AssetCheckResult:
    """`resampled_matches_native` over [start, end): the stored bars against the venue's own bars
    of the timeframe (one join)."""
    tf_name = series.options["timeframe"]
    pairs = warehouse.query(
        f"SELECT r.open_time, {', '.join(f'r.{c}, k.{c} AS native_{c}' for c in (*PRICES, *VOLUMES))} "
        "FROM market_data.resampled_klines r JOIN market_data.klines k ON k.venue = r.venue AND k.market = r.market "
        "AND k.symbol = r.symbol AND k.timeframe = r.timeframe AND k.open_time = r.open_time "
        "WHERE r.venue = ? AND r.market = ? AND r.symbol = ? AND r.timeframe = ? AND r.open_time >= ? "
        "AND r.open_time < ? ORDER BY r.open_time",
        [series.venue, series.market, series.symbol, tf_name, start, end])
    wrong = {c: pl.col(c) != pl.col(f"native_{c}") for c in PRICES} | {
        c: (pl.col(c) - pl.col(f"native_{c}")).abs()
        > VOLUME_TOLERANCE * pl.max_horizontal(pl.col(c).abs(), pl.col(f"native_{c}").abs(), pl.lit(1.0))
        for c in VOLUMES}
    differing = pairs.with_columns(
        pl.concat_list([pl.when(test).then(pl.lit(c)) for c, test in wrong.items()]).list.drop_nulls().alias("differ")
    ).filter(pl.col("differ").list.len() > 0)
    named = f"{series.venue} {series.market} {series.symbol} {tf_name}"
    if pairs.is_empty():
        said = f"no native {tf_name} bar of {series.venue} is stored in the window to compare with"
    else:
        said = f"{counted(differing.height, 'bar')} of {counted(pairs.height, 'bar')} differ from {named} as the venue sent them"
        if differing.height:
            said += ": " + ", ".join(f"{row['open_time']:%Y-%m-%d %H:%M} ({', '.join(row['differ'])})"
                                     for row in differing.head(SAMPLES).iter_rows(named=True))
            said += " …" if differing.height > SAMPLES else ""
    return dg.AssetCheckResult(
        asset_key=key, check_name=MATCHES_NATIVE, passed=differing.is_empty(), severity=dg.AssetCheckSeverity.ERROR,
        description=said,
        metadata={
            "window": window, "bars_compared": pairs.height, "bars_differing": differing.height,
            "differing_samples": dg.MetadataValue.md(samples_table([
                {"open_time": row["open_time"],
                 "resampled / native": ", ".join(f"{c} {row[c]} / {row[f'native_{c}']}" for c in row["differ"])}
                for row in differing.head(SAMPLES).iter_rows(named=True)])),
        },
    )


def _merged(intervals: list[tuple[dt.datetime, dt.datetime]]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Adjacent intervals joined (they come in time order)."""
    merged: list[tuple[dt.datetime, dt.datetime]] = []
    for lo, hi in intervals:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


DATASET = Resampled()
