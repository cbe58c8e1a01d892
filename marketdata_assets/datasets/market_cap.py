"""Bitcoin's market capitalization from blockchain.com's charts, one point a UTC day
(`blockchain_com/market_cap/BTC`), in market_data.market_caps, with the coins in circulation that
day. It is the numerator of the stablecoin supply ratio (datasets/ssr.py).

Catalog: `series: [{source: blockchain_com, dataset: market_cap, keys: [BTC]}]` (blockchain.com
charts Bitcoin only). Checks: no point rejected at ingest; the market cap agrees within 2% with
Binance's stored BTCUSDT spot price at 00:00 UTC times that day's coins, where both are stored
(WARN); every ended day stored; the newest stored by the day after it ended.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds
from marketdata_assets.datasets.daily import DAY, DailyDataset, midnight, utc_day
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.blockchain_com import VENUE, MarketCapSource
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

MARKET_CAPS = TableSpec(
    name="market_caps",
    schema=pl.Schema({
        "date": pl.Date,  # the UTC day of the point (its 00:00 UTC stamp)
        "asset": pl.String,  # BTC
        "market_cap_usd": pl.Float64,  # USD
        "supply": pl.Float64,  # coins in circulation that day (NULL where the coins chart lacks the day)
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("asset", "date"),
)
ASSETS = ("BTC",)  # what blockchain.com charts
# Binance's price the market cap is compared with: the close of the bar that ends at 00:00 UTC.
PRICE_VENUE, PRICE_MARKET, PRICE_SYMBOL = "binance", "spot", "BTCUSDT"
PRICE_BARS = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1)}
AGREEMENT = 0.02
VALID = "market_cap_valid"
AGREES = "market_cap_agrees_with_price"
DAILY = "market_cap_daily"
FRESH = "market_cap_fresh"


def price_at_midnight(warehouse: Warehouse, days: list[dt.date]) -> dict[dt.date, float]:
    """Binance's BTCUSDT spot close at 00:00 UTC of each day, from whichever of its 1m, 1h and 1d
    bars ending then are stored (the shortest first)."""
    if not days:
        return {}
    found: dict[dt.date, float] = {}
    for name, length in PRICE_BARS.items():
        wanted = [d for d in days if d not in found]
        if not wanted:
            break
        opens = [midnight(d) - length for d in wanted]
        rows = warehouse.query(
            "SELECT open_time, close FROM market_data.klines WHERE venue = ? AND market = ? AND symbol = ? "
            f"AND timeframe = ? AND open_time IN ({', '.join('?' * len(opens))})",
            [PRICE_VENUE, PRICE_MARKET, PRICE_SYMBOL, name, *opens],
        )
        for opened, close in rows.iter_rows():
            found[utc_day(opened + length)] = close
    return found


class MarketCap(DailyDataset):
    name = "market_cap"
    table = MARKET_CAPS
    title = "Bitcoin's market capitalization in USD and its coins in circulation, one point a UTC day"
    earliest = dt.date(2010, 8, 17)  # blockchain.com's price (so its market cap) begins then
    group = "sentiment"
    position = 54
    checks = (VALID, AGREES, DAILY, FRESH)
    gap_check = DAILY
    series_source = VENUE.name
    keys = "required"
    key_column = "asset"
    allowed_keys = ASSETS
    final_after = DAY

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> MarketCapSource:
        return MarketCapSource(upstreams.url(VENUE.url_setting), MARKET_CAPS)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(VALID, asset=key, description=(
                "No point of the window rejected at ingest for not being a positive number at 00:00 UTC "
                "(WARN: kept in market_data.rejected_rows).")),
            dg.AssetCheckSpec(AGREES, asset=key, description=(
                f"On each day with both stored, the market cap is within {AGREEMENT:.0%} of Binance's "
                f"{PRICE_SYMBOL} spot close at 00:00 UTC times that day's coins in circulation (WARN).")),
            *self.daily_specs(key, DAILY, FRESH, "A market cap"),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        with warehouse.session():
            caps = warehouse.query(
                "SELECT date, market_cap_usd, supply FROM market_data.market_caps WHERE asset = ? AND date >= ? "
                "AND date < ? ORDER BY date", [series.key, utc_day(start), utc_day(end)],
            )
            rejected = self.rejected_unstored(warehouse, series, start, end)
            prices = price_at_midnight(warehouse, caps.filter(pl.col("supply").is_not_null())["date"].to_list())
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = self.newest_day(warehouse, series)
        priced = pl.DataFrame({"date": list(prices), "price": list(prices.values())},
                              schema={"date": pl.Date, "price": pl.Float64})
        compared = caps.join(priced, on="date").with_columns(implied=pl.col("price") * pl.col("supply")).with_columns(
            difference=pl.col("market_cap_usd") / pl.col("implied") - 1)
        apart = compared.filter(pl.col("difference").abs() > AGREEMENT).select(
            "date", "market_cap_usd", "price", "supply", "difference")
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALID, passed=rejected.is_empty(), severity=dg.AssetCheckSeverity.WARN,
                description=f"{counted(rejected.height, 'point')} rejected at ingest",
                metadata={"window": window, "rejected_rows": rejected.height,
                          "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts()))},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=AGREES, passed=apart.is_empty(), severity=dg.AssetCheckSeverity.WARN,
                description=(f"{counted(apart.height, 'day')} of {compared.height} compared more than "
                             f"{AGREEMENT:.0%} from price × coins; {counted(caps.height - compared.height, 'day')} "
                             "without a stored price or supply to compare"),
                metadata={
                    "window": window, "days_compared": compared.height, "days_apart": apart.height,
                    "largest_difference": float(compared["difference"].abs().max() or 0.0),
                    "samples": dg.MetadataValue.md(samples_table(apart.head(SAMPLES).to_dicts())),
                },
            ),
            self.daily_result(key, DAILY, window, missing),
            self.fresh_result(key, FRESH, window, end, now, newest),
        ]


DATASET = MarketCap()
