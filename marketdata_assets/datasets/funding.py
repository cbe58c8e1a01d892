"""Funding: every settlement of perpetual futures on Binance, OKX and Bybit at its exact reported
time (`<venue>_perp/funding/<SYMBOL>`), in market_data.funding_rates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from marketdata_assets.audit import FUNDING_INTERVAL, audit_funding
from marketdata_assets.catalog import Catalog, Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.checks import FUNDING_CADENCE, FUNDING_CHECKS
from marketdata_assets.defs.funding import build_funding_asset, funding_asset_key
from marketdata_assets.defs.klines import klines_partitions
from marketdata_assets.schemas import FUNDING_RATES
from marketdata_assets.warehouse import Warehouse

# OKX keeps about three months of funding: seeding asks it only for partitions inside them.
RETENTION = {"okx": dt.timedelta(days=90)}


class Funding(Dataset):
    name = "funding"
    table = FUNDING_RATES
    time_column = "funding_time"
    unit = "settlements"
    title = "Funding settlements"
    cron = "10 0,8,16 * * *"  # after each 8-hourly settlement
    position = 20
    checks = FUNDING_CHECKS
    gap_check = FUNDING_CADENCE
    instrument_venues = {"binance": ("perp",), "okx": ("perp",), "bybit": ("perp",)}

    def series_of(self, catalog: Catalog) -> list[Series]:
        return [
            Series(self.name, instrument.key_prefix, instrument.symbol, instrument.start_date, instrument)
            for instrument in catalog.instruments
            if instrument.has_dataset(self.name) and instrument.start_date is not None
        ]

    def asset_key(self, series: Series) -> dg.AssetKey:
        assert series.instrument is not None
        return funding_asset_key(series.instrument)

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        return klines_partitions(series.start_date)

    def build_asset(self, series: Series, warehouse_kind: str) -> dg.AssetsDefinition:
        assert series.instrument is not None
        return build_funding_asset(series.instrument, warehouse_kind)

    def retention(self, venue: str) -> dt.timedelta | None:
        return RETENTION.get(venue)

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return "venue = ? AND symbol = ?", [series.venue, series.symbol]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        audit = audit_funding(warehouse, series.venue, str(series.symbol), start, end, bounds.first_window_end,
                              bounds.current_window_start, now)
        return Missing(audit.expected, len(audit.missing), [(m, m + FUNDING_INTERVAL) for m in audit.missing])

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT venue || '_perp/funding/' || replace(symbol, '-', '_') AS series, count(*) AS rows, "
            "min(funding_time) AS first_time, max(funding_time) AS last_time FROM market_data.funding_rates "
            "WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )


DATASET = Funding()
