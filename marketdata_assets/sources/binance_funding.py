"""Binance USD-M funding rates: REST `/fapi/v1/fundingRate` and the archive's monthly
`futures/um/monthly/fundingRate` files, as frames in `sources.funding.FUNDING_RATES`.

Windows are half-open, [start, end), UTC. Funding settles every 8 hours on most symbols; the times
Binance reports jitter by a few milliseconds (…00:00:00.017) and are kept exactly. REST answers
1,000 rows a page, ascending, with the mark price; the archive has no mark price (NULL).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import polars as pl

from marketdata_assets.sources.binance import BINANCE_FUTURES
from marketdata_assets.sources.binance_archive import (
    ARCHIVE_SOURCE,
    BinanceArchiveClient,
    FundingFile,
    read_zipped_csv,
)
from marketdata_assets.sources.errors import MalformedResponse, read_columns, same_symbol
from marketdata_assets.timeframes import next_month
from marketdata_assets.sources.funding import FUNDING_RATES, ReadsWholeWindows, funding_frame
from marketdata_assets.sources.protocol import RestAndArchive
from marketdata_assets.sources.http import Clock, RateLimit, Sleep, UpstreamClient

FUNDING_PATH = "/fapi/v1/fundingRate"
PAGE_LIMIT = 1000
SOURCE = "binance perp funding"
_ARCHIVE_HEADER = "calc_time,funding_interval_hours,last_funding_rate"


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def parse_funding_rows(rows: Any, symbol: str) -> pl.DataFrame:
    """`[{"symbol","fundingRate","fundingTime","markPrice"}, …]` to FUNDING_RATES; MalformedResponse
    naming the first bad row otherwise. markPrice is optional (old rows have "")."""
    where = f"{SOURCE} {symbol}"

    def read(row: Any) -> tuple:
        same_symbol(row, "symbol", symbol)
        mark = row.get("markPrice")
        return int(row["fundingTime"]), float(row["fundingRate"]), float(mark) if mark not in (None, "") else None

    times, rates, marks = read_columns(rows, where, "funding", read, 3)
    if times != sorted(times) or len(set(times)) != len(times):
        raise MalformedResponse(where, "rows are not in strictly ascending fundingTime order")
    return funding_frame("binance", symbol, times, rates, marks, "rest")


def parse_funding_archive(csv: bytes, file: FundingFile) -> pl.DataFrame:
    """A monthly archive CSV (`calc_time,funding_interval_hours,last_funding_rate`, a header
    row, ms times) to FUNDING_RATES with no mark price; rows outside the file's month are a lie."""
    lines = csv.decode("utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != _ARCHIVE_HEADER:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: expected the header {_ARCHIVE_HEADER!r}")
    start, end = (_ms(moment) for moment in file.window)
    times, rates = [], []
    for index, line in enumerate(lines[1:]):
        parts = line.split(",")
        try:
            calc_time, rate = int(parts[0]), float(parts[2])
        except (IndexError, ValueError):
            raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: row {index} is not a funding row: {line[:120]!r}") from None
        if not start <= calc_time < end:
            raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: row {index}: calc_time {calc_time} is outside the file's month")
        times.append(calc_time)
        rates.append(rate)
    return funding_frame("binance", file.symbol, times, rates, None, "archive")


class BinanceFundingClient(UpstreamClient):
    """Funding rates of one USD-M symbol over REST, paged forward 1,000 rows at a time."""

    def __init__(
        self, base_url: str, *, weight_limit: int = 2400, max_attempts: int = 5, backoff_base_s: float = 0.5,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ):
        self.rejected = []
        self._http = BINANCE_FUTURES.http(
            SOURCE, base_url, RateLimit(weight_limit, scope=FUNDING_PATH),
            max_concurrency=1,  # pages follow one another: each starts after the last row of the one before
            max_attempts=max_attempts, backoff_base_s=backoff_base_s, clock=clock, sleep=sleep,
        )

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """Funding settlements with funding_time in [start, end), ascending."""
        parts = []
        cursor, end_ms = _ms(start), _ms(end)
        while cursor < end_ms:
            params = {"symbol": symbol, "startTime": cursor, "endTime": end_ms - 1, "limit": PAGE_LIMIT}
            rows, _ = await self._http.get_json(FUNDING_PATH, params, 1)
            page = parse_funding_rows(rows, symbol)
            if page.is_empty():
                break
            first, last = (_ms(page["funding_time"][i]) for i in (0, -1))
            if first < cursor or last >= end_ms:
                raise MalformedResponse(
                    f"{SOURCE} {symbol}", f"asked for funding times in [{cursor}, {end_ms}) ms, got {first} to {last}"
                )
            parts.append(page)
            if page.height < PAGE_LIMIT:
                break
            cursor = last + 1
        return pl.concat(parts) if parts else FUNDING_RATES.empty_frame()


class BinanceFundingSource(RestAndArchive, ReadsWholeWindows):
    """Funding rates from the archive's monthly files for months that are over (REST where a file
    is missing) and from REST for the month in progress."""

    def __init__(self, rest: BinanceFundingClient, archive: BinanceArchiveClient, clock: Clock = time.time):
        self.rest = rest
        self.archive = archive
        self._clock = clock
        self.rows_by_source = {"archive": 0, "rest": 0}
        self.failures: list = []  # the archive and REST together hold every month

    @property
    def requests(self) -> int:
        return self.rest.stats.requests

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """Every settlement with funding_time in [start, end), ascending, each once."""
        this_month = dt.datetime.fromtimestamp(self._clock(), dt.UTC).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        parts, cursor = [], start
        while cursor < end:
            month = cursor.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            upper = min(end, next_month(month))
            frame = None
            if next_month(month) <= this_month:
                content = await self.archive.verified(FundingFile(symbol, month.date()))
                if content is not None:
                    file = FundingFile(symbol, month.date())
                    frame = parse_funding_archive(read_zipped_csv(content, file), file)
                    frame = frame.filter(pl.col("funding_time").is_between(cursor, upper, closed="left"))
                    self.rows_by_source["archive"] += frame.height
            if frame is None:
                frame = await self.rest.fetch(symbol, cursor, upper)
                self.rows_by_source["rest"] += frame.height
            parts.append(frame)
            cursor = upper
        return pl.concat(parts) if parts else FUNDING_RATES.empty_frame()
