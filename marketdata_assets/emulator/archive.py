"""Binance's bulk archive (data.binance.vision), as it serves kline, funding and metrics files.

The same synthetic candles as the REST emulator, laid out as
`/data/{spot|futures/um}/{monthly|daily}/klines/SYM/TF/SYM-TF-YYYY-MM[-DD].zip` with a
`.CHECKSUM` beside each (`<sha256>  <zip name>`); funding months under
`/data/futures/um/monthly/fundingRate/` and daily futures statistics (5-minute rows, from
`archive_metrics_from`) under `/data/futures/um/daily/metrics/`. Spot CSVs have no header and switch to
microsecond times from 2025-01-01; futures CSVs write numbers without trailing zeros and gain a
header row from `archive_futures_header_from`. A month's file appears once the month is over, a
day's once the day is over. Missing keys get S3's 404 XML. Faults: files answered 404, and zips
served corrupted (always, or only on the first download).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import hashlib
import io
import re
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import polars as pl
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator.binance import INTERVALS_MS
from marketdata_assets.emulator.candles import (
    FUNDING_INTERVAL_MS,
    STATS_INTERVAL_MS,
    CandleBlock,
    synthetic_funding,
    synthetic_stats,
)
from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import FailureBudget

_MARKETS = {"spot": "spot", "futures/um": "perp"}
_PATH = re.compile(
    r"^(?P<dir>spot|futures/um)/(?P<frequency>monthly|daily)/klines/(?P<symbol>[A-Z0-9]+)/"
    r"(?P<interval>[0-9a-z]+)/(?P<name>[^/]+)$"
)
_FUNDING_PATH = re.compile(r"^futures/um/monthly/fundingRate/(?P<symbol>[A-Z0-9]+)/(?P<name>[^/]+)$")
_METRICS_PATH = re.compile(r"^futures/um/daily/metrics/(?P<symbol>[A-Z0-9]+)/(?P<name>[^/]+)$")
METRICS_HEADER = (
    "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
)
_FUTURES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class _Requested:
    market: str
    symbol: str
    interval: str
    start: dt.datetime
    end: dt.datetime
    name: str  # the zip's name


def _month_after(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def kline_csv(market: str, bars: CandleBlock, interval_ms: int, *, microseconds: bool, header: bool) -> bytes:
    """A kline CSV as the archive writes it: spot with 8 decimals, futures without trailing zeros."""
    scale = 1000 if microseconds else 1
    frame = pl.DataFrame(
        {
            "open_time": bars.open_time * scale,
            "open": bars.open,
            "high": bars.high,
            "low": bars.low,
            "close": bars.close,
            "volume": bars.volume,
            "close_time": (bars.open_time + interval_ms) * scale - 1,
            "quote_volume": bars.quote_volume,
            "count": bars.trades,
            "taker_buy_volume": bars.taker_buy_volume,
            "taker_buy_quote_volume": bars.taker_buy_quote_volume,
            "ignore": np.zeros(len(bars), dtype=np.int64),
        }
    )
    if market == "spot":
        text = frame.write_csv(include_header=False, float_precision=8)
    else:
        text = frame.write_csv(include_header=False, float_scientific=False)
        if header:
            text = _FUTURES_HEADER + "\n" + text
    return text.encode()


FUNDING = "fundingRate"  # stands in for the interval of a funding file


def funding_csv(requested: _Requested, listed_ms: int) -> bytes:
    """A month of funding as the archive writes it: a header, then exact ms times and rates,
    from the first 8-hour mark after the listing."""
    first = max(int(requested.start.timestamp() * 1000), -(-listed_ms // FUNDING_INTERVAL_MS) * FUNDING_INTERVAL_MS)
    marks = np.arange(first, int(requested.end.timestamp() * 1000), FUNDING_INTERVAL_MS, dtype=np.int64)
    block = synthetic_funding(requested.symbol, marks)
    lines = ["calc_time,funding_interval_hours,last_funding_rate"] + [
        f"{t},8,{r:.8f}" for t, r in zip(block.funding_time.tolist(), block.funding_rate.tolist(), strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


METRICS = "metrics"  # stands in for the interval of a metrics file


def metrics_csv(requested: _Requested, listed_ms: int) -> bytes:
    """A day of futures statistics as the archive writes it: a header, then one row every 5
    minutes (`YYYY-MM-DD HH:MM:SS` UTC), the same numbers REST serves."""
    first = max(int(requested.start.timestamp() * 1000), -(-listed_ms // STATS_INTERVAL_MS) * STATS_INTERVAL_MS)
    times = np.arange(first, int(requested.end.timestamp() * 1000), STATS_INTERVAL_MS, dtype=np.int64)
    block = synthetic_stats(requested.symbol, times)
    columns = zip(
        times.tolist(), block.open_interest.tolist(), block.open_interest_value.tolist(),
        block.top_trader_account[0].tolist(), block.top_trader_position[0].tolist(),
        block.global_account[0].tolist(), block.taker_volume[0].tolist(), strict=True,
    )
    lines = [METRICS_HEADER] + [
        f"{dt.datetime.fromtimestamp(t / 1000, dt.UTC):%Y-%m-%d %H:%M:%S},{requested.symbol},{oi:.8f},{value:.8f},"
        f"{top_account},{top_position},{accounts},{taker}"
        for t, oi, value, top_account, top_position, accounts, taker in columns
    ]
    return ("\n".join(lines) + "\n").encode()


def _zipped(name: str, csv: bytes) -> tuple[bytes, str]:
    """A zip holding one CSV of the zip's base name, and its sha256 hex digest."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(name.removesuffix(".zip") + ".csv", date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, csv)
    content = buffer.getvalue()
    return content, hashlib.sha256(content).hexdigest()


class BinanceArchiveEmulator:
    """Serves archive files built on first request and then kept in memory."""

    def __init__(self, config: EmulatorConfig, failures: FailureBudget, clock=time.time):
        self.config = config
        self.clock = clock
        self.failures = failures
        self._cache: OrderedDict[tuple[str, str, str, str], tuple[bytes, str]] = OrderedDict()
        self._cache_bytes = 0
        self._building: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._served_corrupt: set[str] = set()
        self.answers: Counter[str] = Counter()

    def routes(self) -> list[Route]:
        return [Route("/data/{path:path}", self._endpoint, methods=["GET", "HEAD"])]

    def _not_found(self, path: str) -> Response:
        self.answers["404"] += 1
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
            f"<Message>The specified key does not exist.</Message><Key>data/{path}</Key></Error>"
        )
        return Response(body, status_code=404, media_type="application/xml")

    def _parse(self, path: str) -> tuple[_Requested, bool] | None:
        """The file a path names and whether it is the `.CHECKSUM`; None if no such file exists."""
        funding = _FUNDING_PATH.match(path)
        if funding:
            return self._parse_perp_file(funding["symbol"], funding["name"], FUNDING, monthly=True)
        metrics = _METRICS_PATH.match(path)
        if metrics:
            return self._parse_perp_file(metrics["symbol"], metrics["name"], METRICS, monthly=False)
        match = _PATH.match(path)
        if not match:
            return None
        market, symbol, interval = _MARKETS[match["dir"]], match["symbol"], match["interval"]
        name = match["name"]
        checksum = name.endswith(".zip.CHECKSUM")
        zip_name = name.removesuffix(".CHECKSUM")
        period = zip_name.removeprefix(f"{symbol}-{interval}-").removesuffix(".zip")
        if zip_name == period or not zip_name.endswith(".zip") or interval not in INTERVALS_MS:
            return None
        try:
            if match["frequency"] == "monthly":
                first = dt.datetime.strptime(period, "%Y-%m").date()
                start, end = _utc(first), _utc(_month_after(first))
            else:
                day = dt.datetime.strptime(period, "%Y-%m-%d").date()
                start, end = _utc(day), _utc(day + dt.timedelta(days=1))
        except ValueError:
            return None
        if len(period) != (7 if match["frequency"] == "monthly" else 10):
            return None
        listed = self.config.listings.get((market, symbol))
        if listed is None or end.timestamp() * 1000 <= listed:
            return None
        if end.timestamp() + self.config.archive_publish_delay_s > self.clock():
            return None  # not published yet
        return _Requested(market, symbol, interval, start, end, zip_name), checksum

    def _parse_perp_file(self, symbol: str, name: str, kind: str, monthly: bool) -> tuple[_Requested, bool] | None:
        """A USD-M funding (monthly) or metrics (daily) file `SYM-<kind>-<period>.zip[.CHECKSUM]`."""
        checksum = name.endswith(".zip.CHECKSUM")
        zip_name = name.removesuffix(".CHECKSUM")
        period = zip_name.removeprefix(f"{symbol}-{kind}-").removesuffix(".zip")
        try:
            first = dt.datetime.strptime(period, "%Y-%m" if monthly else "%Y-%m-%d").date()
        except ValueError:
            return None
        if zip_name != f"{symbol}-{kind}-{period}.zip" or len(period) != (7 if monthly else 10):
            return None
        if kind == METRICS and first < self.config.archive_metrics_from:
            return None
        start, end = _utc(first), _utc(_month_after(first) if monthly else first + dt.timedelta(days=1))
        listed = self.config.listings.get(("perp", symbol))
        if listed is None or end.timestamp() * 1000 <= listed or end.timestamp() + self.config.archive_publish_delay_s > self.clock():
            return None
        return _Requested("perp", symbol, kind, start, end, zip_name), checksum

    def file(self, requested: _Requested) -> tuple[bytes, str]:
        """The zip's bytes and sha256 hex digest, built once while it stays in the cache (each
        build counts in the stats' answers as `built`)."""
        key = (requested.market, requested.symbol, requested.interval, requested.name)
        with self._guard:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._cache:
                    return self._cache[key]
            built = self._build(requested)
            with self._guard:
                self.answers["built"] += 1
                self._cache[key] = built
                self._cache_bytes += len(built[0])
                while self._cache_bytes > self.config.archive_cache_mb << 20 and len(self._cache) > 1:
                    _, (dropped, _) = self._cache.popitem(last=False)
                    self._cache_bytes -= len(dropped)
                self._building.pop(key, None)
            return built

    def _build(self, requested: _Requested) -> tuple[bytes, str]:
        if requested.interval == FUNDING:
            return _zipped(requested.name, funding_csv(requested, self.config.listings[("perp", requested.symbol)]))
        if requested.interval == METRICS:
            return _zipped(requested.name, metrics_csv(requested, self.config.listings[("perp", requested.symbol)]))
        interval = INTERVALS_MS[requested.interval]
        listed = self.config.listings[(requested.market, requested.symbol)]
        # The bar that holds the first trade is the first bar, as REST has it.
        first = max(int(requested.start.timestamp() * 1000), listed // interval * interval)
        scenario = self.config.scenario
        open_times = np.arange(first, int(requested.end.timestamp() * 1000), interval, dtype=np.int64)
        open_times = scenario.trading(requested.market, interval, open_times)
        microseconds = (
            requested.market == "spot" and requested.start.date() >= self.config.archive_spot_microseconds_from
        )
        header = (
            requested.market == "perp" and requested.start.date() >= self.config.archive_futures_header_from
        )
        bars = scenario.candles(requested.market, requested.symbol, requested.interval, interval, open_times)
        csv = kline_csv(requested.market, bars, interval, microseconds=microseconds, header=header)
        return _zipped(requested.name, csv)

    def _faulty(self, patterns: tuple[str, ...], name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    async def _endpoint(self, request: Request) -> Response:
        path = request.path_params["path"]
        parsed = self._parse(path)
        if parsed is None:
            return self._not_found(path)
        requested, checksum = parsed
        faults = self.config.archive_faults
        if self._faulty(faults.missing, requested.name):
            return self._not_found(path)
        if not checksum and self.failures.fails(
            int(requested.start.timestamp() * 1000), int(requested.end.timestamp() * 1000)
        ):
            self.answers["503"] += 1
            return Response(
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                "<Message>Please reduce your request rate.</Message></Error>",
                status_code=503,
                media_type="application/xml",
            )
        content, digest = await asyncio.to_thread(self.file, requested)
        if checksum:
            self.answers["checksum"] += 1
            return Response(f"{digest}  {requested.name}\n", media_type="text/plain")
        if self._faulty(faults.corrupt, requested.name) and not (
            faults.corrupt_once and requested.name in self._served_corrupt
        ):
            self._served_corrupt.add(requested.name)
            self.answers["corrupt"] += 1
            middle = len(content) // 2
            content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1 :]
        self.answers["zip"] += 1
        return Response(content, media_type="application/zip")

    def stats(self) -> dict:
        return {"answers": dict(sorted(self.answers.items())), "cached_files": len(self._cache)}


def build(config: EmulatorConfig, failures: FailureBudget, clock=time.time):
    """This upstream's emulator, for the server (emulator/server.py) to mount as `binance_archive`."""
    return BinanceArchiveEmulator(config, failures, clock)
