"""What the benchmark measures: the windows, symbols and sizes every part of it shares."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BTC_1M = "binance_spot/klines_1m/BTCUSDT"
SIX_YEARS = ("2019-01-01", "2024-12-01")  # monthly partition keys: 72 months, 3,156,480 bars
YEAR = ("2023-01-01", "2023-12-01")
REPORT_CHECKED = 3  # partitions of each asset with a result of each check, one event each
PER_PARTITION_SAMPLE = ["2023-03-01", "2023-06-15", "2023-09-10", "2023-11-20", "2023-12-31"]
DERIVATIVES = ("funding", "open_interest", "long_short")
LOAD_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
LOAD_MONTHS = ("2022-01-01", "2023-12-01")
REPORT_ASSETS = 200  # 100 symbols, spot and perp, 1h bars
REPORT_START = "2021-11-22"  # five years of daily partitions up to the bench date
LATENCY_MS = 100  # added by the emulator before every klines answer in section (e)
CATALOG_SIZES = (10, 100, 300)  # symbols of the catalogs whose definitions `child_load` times


def utc(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
