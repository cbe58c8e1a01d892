"""Fetch → write for one klines series over one time window, with no Dagster in sight.

The window is cut into write windows of at most `bars_per_write` bars. Each is fetched (pages
concurrent up to the weight budget) and upserted in one transaction; the next write window is
fetched while the previous one is written, so the rate budget never idles on the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance import BinanceKlinesClient
from marketdata_assets.sources.http import RequestStats
from marketdata_assets.timeframes import timeframe
from marketdata_assets.warehouse import Warehouse

DEFAULT_BARS_PER_WRITE = 200_000


@dataclass
class KlinesIngestReport:
    """What one ingest wrote and what it cost."""

    rows_written: int = 0
    first_open_time: dt.datetime | None = None
    last_open_time: dt.datetime | None = None
    write_windows: int = 0
    seconds: float = 0.0
    stats: RequestStats = field(default_factory=RequestStats)

    def add(self, frame: pl.DataFrame, written: int) -> None:
        self.rows_written += written
        self.write_windows += 1
        if frame.height:
            first, last = frame["open_time"].min(), frame["open_time"].max()
            if self.first_open_time is None or first < self.first_open_time:  # type: ignore[operator]
                self.first_open_time = first  # type: ignore[assignment]
            if self.last_open_time is None or last > self.last_open_time:  # type: ignore[operator]
                self.last_open_time = last  # type: ignore[assignment]


def write_windows(
    start: dt.datetime, end: dt.datetime, interval_ms: int, bars_per_write: int
) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut into consecutive half-open windows of at most `bars_per_write` bars."""
    step = dt.timedelta(milliseconds=interval_ms * bars_per_write)
    cursor = start
    while cursor < end:
        upper = min(cursor + step, end)
        yield cursor, upper
        cursor = upper


async def _ingest(
    client: BinanceKlinesClient,
    warehouse: Warehouse,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    bars_per_write: int,
) -> KlinesIngestReport:
    report = KlinesIngestReport()
    tf = timeframe(timeframe_name)
    pending: asyncio.Future[int] | None = None
    pending_frame: pl.DataFrame | None = None
    async with client:
        try:
            for lower, upper in write_windows(start, end, tf.millis, bars_per_write):
                frame = await client.fetch(symbol, timeframe_name, lower, upper)
                if pending is not None:
                    report.add(pending_frame, await pending)  # type: ignore[arg-type]
                pending_frame = frame
                pending = asyncio.ensure_future(asyncio.to_thread(warehouse.upsert, KLINES, frame))
            if pending is not None:
                report.add(pending_frame, await pending)  # type: ignore[arg-type]
                pending = None
        finally:
            if pending is not None:  # a fetch failed while a write ran: let the write finish
                await asyncio.gather(pending, return_exceptions=True)
    report.stats = client.stats
    return report


def ingest_klines(
    client: BinanceKlinesClient,
    warehouse: Warehouse,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    bars_per_write: int = DEFAULT_BARS_PER_WRITE,
) -> KlinesIngestReport:
    """Fetch and store the closed klines of [start, end) (UTC). Raises on the first failure;
    write windows already committed stay committed."""
    began = time.perf_counter()
    report = asyncio.run(
        _ingest(client, warehouse, symbol, timeframe_name, start, end, bars_per_write)
    )
    report.seconds = time.perf_counter() - began
    return report
