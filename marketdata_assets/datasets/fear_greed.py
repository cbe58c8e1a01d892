"""The Crypto Fear & Greed Index from alternative.me: one value (0–100) and its classification per
UTC day since 2018-02-01 (`alternative_me/fear_greed`), in market_data.fear_greed.

Catalog: `series: [{source: alternative_me, dataset: fear_greed}]`. Checks: every stored value
within 0–100 with the classification alternative.me gives it (and no row rejected at ingest),
one row per day, and the newest day stored by the day after.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds
from marketdata_assets.datasets.daily import DailyDataset, utc_day
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.alternative_me import BANDS, VENUE, FearGreedSource
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

FEAR_GREED = TableSpec(
    name="fear_greed",
    schema=pl.Schema({
        "date": pl.Date,  # the UTC day the value is for
        "value": pl.Int16,  # 0 (extreme fear) to 100 (extreme greed)
        "classification": pl.String,  # alternative.me's name for the value
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("date",),
)
VALUES_VALID = "fear_greed_valid"
DAILY = "fear_greed_daily"
FRESH = "fear_greed_fresh"
# A stored row alternative.me could not have given, as SQL over the table's columns.
_BROKEN = "NOT (value BETWEEN 0 AND 100) OR classification <> CASE " + " ".join(
    f"WHEN value >= {lowest} THEN '{name}'" for lowest, name in reversed(BANDS)
) + " END"


class FearGreed(DailyDataset):
    name = "fear_greed"
    table = FEAR_GREED
    title = "The Crypto Fear & Greed Index, one value a UTC day"
    earliest = dt.date(2018, 2, 1)  # alternative.me's first day
    group = "sentiment"
    position = 50
    checks = (VALUES_VALID, DAILY, FRESH)
    gap_check = DAILY
    series_source = VENUE.name

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> FearGreedSource:
        return FearGreedSource(upstreams.url(VENUE.url_setting), FEAR_GREED)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        bands = ", ".join(f"{name} from {lowest}" for lowest, name in BANDS)
        return [
            dg.AssetCheckSpec(VALUES_VALID, asset=key, description=(
                f"Every stored value within 0–100 and classified as alternative.me does ({bands}) (ERROR), and "
                "no row of the window rejected at ingest for breaking that (WARN: kept in market_data.rejected_rows).")),
            *self.daily_specs(key, DAILY, FRESH, "One value"),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        with warehouse.session():
            rows = warehouse.query(
                f"SELECT date, value, classification FROM market_data.fear_greed WHERE date >= ? AND date < ? "
                f"AND ({_BROKEN}) ORDER BY date", [utc_day(start), utc_day(end)],
            )
            rejected = self.rejected_unstored(warehouse, series, start, end)
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = self.newest_day(warehouse, series)
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALUES_VALID, passed=rows.is_empty() and rejected.is_empty(),
                severity=dg.AssetCheckSeverity.ERROR if rows.height else dg.AssetCheckSeverity.WARN,
                description=f"{counted(rows.height, 'stored day')} break a rule; {counted(rejected.height, 'row')} rejected at ingest",
                metadata={
                    "window": window, "invalid_rows": rows.height, "rejected_rows": rejected.height,
                    "invalid_samples": dg.MetadataValue.md(samples_table(rows.head(SAMPLES).to_dicts())),
                    "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts())),
                },
            ),
            self.daily_result(key, DAILY, window, missing),
            self.fresh_result(key, FRESH, window, end, now, newest),
        ]


DATASET = FearGreed()
