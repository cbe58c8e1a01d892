"""Hourly bars of CME Globex futures from Databento: `databento_glbx/ohlcv_1h/<ROOT>`, a bar per
hour with trades (Databento's ohlcv-1h), in market_data.futures_bars (futures_bars.py says the
rest). Monthly partitions, read seven days a request."""

from __future__ import annotations

import dagster as dg

from marketdata_assets.datasets.futures_bars import FuturesBars
from marketdata_assets.sources.databento import OHLCV_1H


class Ohlcv1h(FuturesBars):
    name = "ohlcv_1h"
    title = "CME Globex hourly bars (Databento ohlcv-1h)"
    schema = OHLCV_1H
    position = 71
    cron = "5 * * * *"  # five minutes after each hour closes
    cadence_name = "hourly"
    missing_severity = dg.AssetCheckSeverity.WARN  # an hour may pass without a trade


DATASET = Ohlcv1h()
