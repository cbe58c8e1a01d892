"""The stablecoin supply ratio (SSR), derived: Bitcoin's market cap over the USD value of every
stablecoin in circulation, per UTC day (`derived/ssr/BTC`), in market_data.ssr. It reads the
stored rows of `blockchain_com/market_cap/BTC` and `defillama/stablecoin_supply`, which the UI
shows upstream of it; a partition reads the same month of both.

A day gets an SSR when both inputs have it (the supply's day present, i.e. its USD peg stored);
a day either lacks has no SSR row, and the checks count it apart from the days missing. The
daily schedule re-runs a month whenever an input's month was materialized after the SSR's
(datasets/base.py `input_keys`, defs/operations/schedules.py), so a repaired input is carried
over by the next tick.

Catalog: `series: [{source: derived, dataset: ssr, keys: [BTC]}]`, with the two inputs' entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Missing
from marketdata_assets.datasets.daily import DAY, DailyDataset, midnight, utc_day
from marketdata_assets.datasets.market_cap import ASSETS, DATASET as MARKET_CAP
from marketdata_assets.datasets.stablecoin_supply import DATASET as STABLECOINS, USD_PEG
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.timeframes import end_day
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

SSR = TableSpec(
    name="ssr",
    schema=pl.Schema({
        "date": pl.Date,  # the UTC day
        "asset": pl.String,  # BTC
        "ssr": pl.Float64,  # market_cap_usd / stablecoin_supply_usd
        "market_cap_usd": pl.Float64,  # the numerator, as stored in market_data.market_caps
        "stablecoin_supply_usd": pl.Float64,  # the denominator: every peg's circulating USD that day
        "source": pl.String,  # 'derived'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("asset", "date"),
)
POSITIVE = "ssr_positive"
DAILY = "ssr_daily"
FRESH = "ssr_fresh"


def ratio_inputs(warehouse: Warehouse, asset: str, first: dt.date, end: dt.date) -> pl.DataFrame:
    """date, market_cap_usd, stablecoin_supply_usd of each day of [first, end) both inputs have."""
    return warehouse.query(
        "SELECT m.date, m.market_cap_usd, s.stablecoin_supply_usd FROM market_data.market_caps m JOIN ("
        "SELECT date, sum(circulating_usd) AS stablecoin_supply_usd FROM market_data.stablecoin_supply "
        "WHERE date >= ? AND date < ? GROUP BY date HAVING sum(CASE WHEN peg = ? THEN 1 ELSE 0 END) = 1"
        ") s ON s.date = m.date WHERE m.asset = ? AND m.date >= ? AND m.date < ? ORDER BY m.date",
        [first, end, USD_PEG, asset, first, end],
    )


class RatioSource:
    """The SSR over one window, from the warehouse's stored inputs (one query)."""

    def __init__(self, warehouse: Warehouse):
        self._warehouse = warehouse
        self._rows = 0

    async def __aenter__(self) -> RatioSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def outcome(self) -> SourceOutcome:
        return SourceOutcome(rows_by_source={"derived": self._rows}, metadata={"rows_derived": self._rows})

    async def read(self, series: Series, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        inputs = ratio_inputs(self._warehouse, str(series.key), utc_day(start), end_day(end))
        now = dt.datetime.now(dt.UTC)
        frame = inputs.select(
            "date", pl.lit(series.key).alias("asset"),
            (pl.col("market_cap_usd") / pl.col("stablecoin_supply_usd")).alias("ssr"),
            "market_cap_usd", "stablecoin_supply_usd",
            pl.lit("derived").alias("source"), pl.lit(now).alias("ingested_at"),
        ).cast(dict(SSR.schema))
        self._rows += frame.height
        yield frame


class StablecoinSupplyRatio(DailyDataset):
    name = "ssr"
    table = SSR
    title = "The stablecoin supply ratio: market cap over the USD value of every stablecoin, one value a UTC day"
    earliest = STABLECOINS.earliest
    group = "sentiment"
    position = 56
    cron = "40 0 * * *"  # after its inputs' daily runs (00:10)
    checks = (POSITIVE, DAILY, FRESH)
    gap_check = DAILY
    series_source = "derived"
    keys = "required"
    key_column = "asset"
    allowed_keys = ASSETS
    final_after = DAY

    def input_keys(self, key: dg.AssetKey) -> list[dg.AssetKey]:
        asset = key.path[-1]
        return [dg.AssetKey([MARKET_CAP.series_source, MARKET_CAP.name, asset]),
                dg.AssetKey([STABLECOINS.series_source, STABLECOINS.name])]

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> RatioSource:
        return RatioSource(warehouse)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(POSITIVE, asset=key, description=(
                "Every stored SSR is positive and equals its stored market cap over its stored stablecoin supply.")),
            dg.AssetCheckSpec(DAILY, asset=key, description=(
                "An SSR for every ended UTC day both inputs have (days an input lacks are counted, not filled).")),
            dg.AssetCheckSpec(FRESH, asset=key, description=(
                "When the window reaches today: the day before yesterday or a newer one is stored (WARN).")),
        ]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Days of [start, end) both inputs have but the SSR does not."""
        until = min(end_day(end), self.last_final_day(now) + DAY)
        computable = ratio_inputs(warehouse, str(series.key), utc_day(start), until)["date"].to_list()
        stored = set(self.days_stored(warehouse, series, utc_day(start), until))
        found = Missing(expected=len(computable))
        for day in computable:
            if day in stored:
                continue
            found.missing += 1
            if found.windows and found.windows[-1][1] == midnight(day):
                found.windows[-1] = (found.windows[-1][0], midnight(day + DAY))
            else:
                found.windows.append((midnight(day), midnight(day + DAY)))
        return found

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        first, until = utc_day(start), min(end_day(end), self.last_final_day(now) + DAY)
        with warehouse.session():
            stored = warehouse.query(
                "SELECT date, ssr, market_cap_usd, stablecoin_supply_usd FROM market_data.ssr WHERE asset = ? "
                "AND date >= ? AND date < ? ORDER BY date", [series.key, first, end_day(end)])
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = self.newest_day(warehouse, series)
        wrong = stored.filter(
            (pl.col("ssr") <= 0) | ((pl.col("ssr") - pl.col("market_cap_usd") / pl.col("stablecoin_supply_usd")).abs()
                                    > 1e-9 * pl.col("ssr").abs()))
        lacking = max(0, (until - first).days) - missing.expected
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=POSITIVE, passed=wrong.is_empty(), severity=dg.AssetCheckSeverity.ERROR,
                description=f"{counted(wrong.height, 'stored day')} not a positive ratio of its inputs",
                metadata={"window": window, "wrong_days": wrong.height,
                          "samples": dg.MetadataValue.md(samples_table(wrong.head(SAMPLES).to_dicts()))},
            ),
            self.daily_result(key, DAILY, window, missing, f"{counted(lacking, 'day')} without both inputs (no SSR)",
                              days_without_inputs=lacking),
            self.fresh_result(key, FRESH, window, end, now, newest),
        ]


DATASET = StablecoinSupplyRatio()
