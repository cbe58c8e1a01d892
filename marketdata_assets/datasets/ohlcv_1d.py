"""Daily bars of CME Globex futures from Databento: `databento_glbx/ohlcv_1d/<ROOT>`, a bar per UTC
day with trades (Databento's ohlcv-1d), in market_data.futures_bars (futures_bars.py says the
rest). Yearly partitions: a year is ~310 bars of one root, one request and its definitions."""

from __future__ import annotations

import dagster as dg

from marketdata_assets.catalog import Series
from marketdata_assets.datasets.futures_bars import FuturesBars
from marketdata_assets.sources.databento import OHLCV_1D


class Ohlcv1d(FuturesBars):
    name = "ohlcv_1d"
    title = "CME Globex daily bars (Databento ohlcv-1d, UTC days)"
    schema = OHLCV_1D
    position = 70
    cron = "0 1 * * *"  # the UTC day before has closed an hour ago
    partition_name = "yearly"

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        from marketdata_assets.defs.ingest.partitions import yearly_partitions

        return yearly_partitions(series.start_date)


DATASET = Ohlcv1d()
