"""What open interest and long/short ratios share: Binance USD-M perpetuals' 5-minute futures
statistics, from REST (its last 30 days) and the archive's daily metrics files (the days before,
from December 2021). Each is a dataset of its own module; this one declares none."""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from marketdata_assets.audit import audit_snapshots
from marketdata_assets.catalog import Catalog, Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.futures_statistics import (
    METRICS_FROM,
    build_statistics_asset,
    statistics_asset_key,
    statistics_partitions,
)
from marketdata_assets.warehouse import Warehouse


class FuturesStatistic(Dataset):
    time_column = "snapshot_time"
    unit = "snapshots"
    earliest = METRICS_FROM
    instrument_venues = {"binance": ("perp",)}

    def series_of(self, catalog: Catalog) -> list[Series]:
        return [
            Series(self.name, instrument.key_prefix, instrument.symbol, instrument.start_date, instrument)
            for instrument in catalog.instruments
            if instrument.has_dataset(self.name) and instrument.start_date is not None
        ]

    def asset_key(self, series: Series) -> dg.AssetKey:
        assert series.instrument is not None
        return statistics_asset_key(series.instrument, self.name)

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        assert series.instrument is not None
        return statistics_partitions(series.instrument)

    def build_asset(self, series: Series, warehouse_kind: str) -> dg.AssetsDefinition:
        assert series.instrument is not None
        return build_statistics_asset(series.instrument, self.name, warehouse_kind)

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return "venue = ? AND symbol = ?", [series.venue, series.symbol]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        found = Missing()
        for audit in audit_snapshots(warehouse, self.table.name, series.venue, str(series.symbol), start, end,
                                     bounds.first_window_end, bounds.current_window_start, now):
            found.add(Missing(audit.expected, audit.missing, list(audit.gaps)))
        return found

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            f"SELECT venue || '_perp/{self.name}/' || replace(symbol, '-', '_') AS series, count(*) AS rows, "
            f"min(snapshot_time) AS first_time, max(snapshot_time) AS last_time FROM {self.table.qualified_name} "
            "WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )
