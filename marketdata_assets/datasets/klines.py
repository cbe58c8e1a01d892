"""Klines: closed candles of exchange instruments, one asset per instrument and timeframe
(`<venue>_<market>/klines_<tf>/<SYMBOL>`), in market_data.klines."""

from __future__ import annotations

from typing import Any

import dagster as dg

from marketdata_assets.catalog import Catalog, Series
from marketdata_assets.datasets.base import Dataset
from marketdata_assets.defs.checks import GAP_COUNT, KLINES_CHECKS
from marketdata_assets.defs.klines import build_klines_asset, klines_asset_key, klines_partitions
from marketdata_assets.schemas import KLINES
from marketdata_assets.timeframes import timeframe


class Klines(Dataset):
    name = "klines"
    table = KLINES
    time_column = "open_time"
    unit = "bars"
    title = "Closed candles"
    position = 10
    checks = KLINES_CHECKS
    gap_check = GAP_COUNT
    instrument_venues = {"binance": ("spot", "perp")}
    # The report audits bars in detail (known gaps, rejected rows, Dagster against the warehouse).
    detailed_audit = True

    def series_of(self, catalog: Catalog) -> list[Series]:
        return [
            Series(self.name, instrument.key_prefix, instrument.symbol, instrument.start_date, instrument,
                   {"timeframe": name})
            for instrument in catalog.instruments
            if instrument.has_dataset(self.name) and instrument.start_date is not None
            for name in instrument.timeframes
        ]

    def asset_key(self, series: Series) -> dg.AssetKey:
        assert series.instrument is not None
        return klines_asset_key(series.instrument, timeframe(series.options["timeframe"]))

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        return klines_partitions(series.start_date)

    def build_asset(self, series: Series, warehouse_kind: str) -> dg.AssetsDefinition:
        assert series.instrument is not None
        return build_klines_asset(series.instrument, series.options["timeframe"], warehouse_kind)

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT venue || '_' || market || '/klines_' || timeframe || '/' || replace(symbol, '-', '_') AS series, "
            "count(*) AS rows, min(open_time) AS first_time, max(open_time) AS last_time FROM market_data.klines "
            "WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )


DATASET = Klines()
