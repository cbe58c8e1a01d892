"""Klines: closed candles of exchange instruments, one asset per instrument and timeframe
(`<venue>_<market>/klines_<tf>/<SYMBOL>`), in market_data.klines, from Binance's archive and REST.

Monthly partitions for every timeframe (defs/ingest/partitions.py says why; a month is also the
archive's file), the one in progress included. Checks: `ohlc_valid`, `gap_count`, `no_unclosed_bars`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from marketdata_assets.audit import BarSeries
from marketdata_assets.catalog import Catalog, Instrument, Series
from marketdata_assets.datasets.base import Bounds, InstrumentDataset
from marketdata_assets.defs.quality.checks import (
    GAP_COUNT,
    KLINES_CHECKS,
    klines_check_results,
    klines_check_results_by_window,
    klines_check_specs,
)
from marketdata_assets.defs.ingest.partitions import monthly_partitions, partition_bounds
from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance_archive import BINANCE_ARCHIVE, BinanceArchiveClient
from marketdata_assets.sources.binance_klines import BinanceKlinesSource
from marketdata_assets.timeframes import Timeframe, timeframe
from marketdata_assets.warehouse import Warehouse

KLINES_CADENCE = "monthly"
# Fresh when materialized after the UTC day closed and by 01:00: the latest closed day is then
# stored (a run stores every bar closed when it starts), with an hour's grace.
KLINES_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 1 * * *", lower_bound_delta=dt.timedelta(hours=1))


def klines_partitions(start: dt.date, cadence: str = KLINES_CADENCE) -> dg.TimeWindowPartitionsDefinition:
    return monthly_partitions(start, cadence)


def klines_asset_key(instrument: Instrument, tf: Timeframe) -> dg.AssetKey:
    return dg.AssetKey([instrument.key_prefix, f"klines_{tf.name}", instrument.slug])


def klines_series(instrument: Instrument, tf: Timeframe, partitions: dg.TimeWindowPartitionsDefinition) -> BarSeries:
    """The audit's view of one klines asset: its series and the partitions that bound it."""
    first_window_end, current_window_start = partition_bounds(partitions)
    return BarSeries(instrument.venue, instrument.market, instrument.symbol, tf.name, first_window_end,
                     current_window_start)


class Klines(InstrumentDataset):
    name = "klines"
    table = KLINES
    time_column = "open_time"
    unit = "bars"
    title = "Closed candles"
    position = 10
    checks = KLINES_CHECKS
    gap_check = GAP_COUNT
    instrument_venues = {"binance": ("spot", "perp")}
    moment_names = ("first_open_time", "last_open_time")
    freshness_policy = KLINES_FRESHNESS
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
        """Monthly, or daily when the series says `cadence: daily` (for comparisons)."""
        return klines_partitions(series.start_date, series.options.get("cadence", KLINES_CADENCE))

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (
            f"Closed {series.options['timeframe']} candles of {series.describe()} from {series.start_date}, in "
            f"market_data.klines; {series.options.get('cadence', KLINES_CADENCE)} UTC partitions, the one in "
            "progress included."
        )

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> BinanceKlinesSource:
        assert series.instrument is not None
        mode = series.instrument.source or upstreams.klines_source
        archive = BinanceArchiveClient(upstreams.url(BINANCE_ARCHIVE.url_setting)) if mode != "rest" else None
        return BinanceKlinesSource(upstreams.klines_client(series.instrument.market), archive, mode)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return klines_check_specs(key, partitions)

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        return klines_check_results(warehouse, key, self._bars(series, bounds), start, end, names, now)

    @staticmethod
    def _bars(series: Series, bounds: Bounds) -> BarSeries:
        assert series.instrument is not None
        return BarSeries(series.venue, str(series.market), str(series.symbol), series.options["timeframe"],
                         bounds.first_window_end, bounds.current_window_start)

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return ("venue = ? AND market = ? AND symbol = ? AND timeframe = ?",
                [series.venue, series.market, series.symbol, series.options["timeframe"]])

    def check_results_by_window(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, windows: list[tuple[str, dt.datetime, dt.datetime]],
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> dict[str, list[dg.AssetCheckResult]]:
        return klines_check_results_by_window(warehouse, key, self._bars(series, bounds), windows, names, now)

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT venue || '_' || market || '/klines_' || timeframe || '/' || replace(symbol, '-', '_') AS series, "
            "count(*) AS rows, min(open_time) AS first_time, max(open_time) AS last_time FROM market_data.klines "
            "WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )


DATASET = Klines()
