"""Stablecoin supply from DefiLlama: the circulating USD value of each peg (peggedUSD, peggedEUR,
…) per UTC day (`defillama/stablecoin_supply`), in market_data.stablecoin_supply.

Catalog: `series: [{source: defillama, dataset: stablecoin_supply}]`. A day is present when its
USD-pegged supply (`peggedUSD`, what the SSR divides by) is stored; older days lack other pegs,
and that is not a gap. Checks: the USD-pegged supply positive (and no row rejected at ingest), its
day-over-day change within ±20% (WARN: beyond it, a bad point or a depeg worth a look), every
ended day stored, and the newest stored by the day after it ended.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds
from marketdata_assets.datasets.daily import DAY, DailyDataset, utc_day
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.defillama import VENUE, StablecoinSupplySource
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

STABLECOIN_SUPPLY = TableSpec(
    name="stablecoin_supply",
    schema=pl.Schema({
        "date": pl.Date,  # the UTC day of DefiLlama's point (its 00:00 UTC stamp)
        "peg": pl.String,  # DefiLlama's peg: peggedUSD, peggedEUR, peggedVAR, …
        "circulating_usd": pl.Float64,  # the peg's circulating supply in USD (totalCirculatingUSD)
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("peg", "date"),
)
USD_PEG = "peggedUSD"
# A day-over-day change of the USD-pegged supply beyond this share is worth a look.
PLAUSIBLE_CHANGE = 0.20
VALID = "stablecoin_supply_valid"
PLAUSIBLE = "stablecoin_supply_plausible"
DAILY = "stablecoin_supply_daily"
FRESH = "stablecoin_supply_fresh"


class StablecoinSupply(DailyDataset):
    name = "stablecoin_supply"
    table = STABLECOIN_SUPPLY
    title = "Circulating stablecoin supply in USD, per peg, one point a UTC day"
    earliest = dt.date(2017, 11, 29)  # DefiLlama's chart begins then (USDT alone)
    group = "sentiment"
    position = 52
    checks = (VALID, PLAUSIBLE, DAILY, FRESH)
    gap_check = DAILY
    series_source = VENUE.name
    final_after = DAY  # DefiLlama's point for today moves until the day ends

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> StablecoinSupplySource:
        return StablecoinSupplySource(upstreams.url(VENUE.url_setting), STABLECOIN_SUPPLY)

    def day_filter(self, series: Series) -> tuple[str, list[Any]]:
        return "peg = ?", [USD_PEG]

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(VALID, asset=key, description=(
                f"Every stored day's USD-pegged supply ({USD_PEG}) is positive (ERROR), and no row of the window "
                "was rejected at ingest (WARN: kept in market_data.rejected_rows).")),
            dg.AssetCheckSpec(PLAUSIBLE, asset=key, description=(
                f"The USD-pegged supply changes by at most {PLAUSIBLE_CHANGE:.0%} from one day to the next (WARN).")),
            *self.daily_specs(key, DAILY, FRESH, "A USD-pegged supply"),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        first, last = utc_day(start), utc_day(end)
        with warehouse.session():
            # the day before the window too: its first day's change is from there
            usd = warehouse.query(
                "SELECT date, circulating_usd FROM market_data.stablecoin_supply WHERE peg = ? AND date >= ? "
                "AND date < ? ORDER BY date", [USD_PEG, first - DAY, last],
            )
            rejected = warehouse.query(
                "SELECT open_time, symbol AS peg, reason, payload FROM market_data.rejected_rows r WHERE dataset = ? "
                "AND open_time >= ? AND open_time < ? AND NOT EXISTS (SELECT 1 FROM market_data.stablecoin_supply s "
                "WHERE s.peg = r.symbol AND CAST(s.date AS TIMESTAMPTZ) = r.open_time) ORDER BY open_time, symbol",
                [self.name, start, end],
            )
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = self.newest_day(warehouse, series)
        changes = usd.with_columns(
            previous_day=pl.col("date").shift(1), previous=pl.col("circulating_usd").shift(1),
        ).filter(
            (pl.col("date") >= first) & (pl.col("previous_day") == pl.col("date") - DAY)
        ).with_columns(change=pl.col("circulating_usd") / pl.col("previous") - 1)
        jumps = changes.filter(pl.col("change").abs() > PLAUSIBLE_CHANGE).select("date", "previous", "circulating_usd", "change")
        broken = usd.filter((pl.col("date") >= first) & (pl.col("circulating_usd") <= 0))
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALID, passed=broken.is_empty() and rejected.is_empty(),
                severity=dg.AssetCheckSeverity.ERROR if broken.height else dg.AssetCheckSeverity.WARN,
                description=(f"{counted(broken.height, 'stored day')} without a positive USD-pegged supply; "
                             f"{counted(rejected.height, 'row')} rejected at ingest"),
                metadata={
                    "window": window, "invalid_days": broken.height, "rejected_rows": rejected.height,
                    "invalid_samples": dg.MetadataValue.md(samples_table(broken.head(SAMPLES).to_dicts())),
                    "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts())),
                },
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=PLAUSIBLE, passed=jumps.is_empty(), severity=dg.AssetCheckSeverity.WARN,
                description=(f"{counted(jumps.height, 'day')} of {changes.height} moved more than "
                             f"{PLAUSIBLE_CHANGE:.0%} from the day before"),
                metadata={
                    "window": window, "days_compared": changes.height, "days_beyond_band": jumps.height,
                    "largest_change": float(changes["change"].abs().max() or 0.0),
                    "samples": dg.MetadataValue.md(samples_table(jumps.head(SAMPLES).to_dicts())),
                },
            ),
            self.daily_result(key, DAILY, window, missing),
            self.fresh_result(key, FRESH, window, end, now, newest),
        ]


DATASET = StablecoinSupply()
