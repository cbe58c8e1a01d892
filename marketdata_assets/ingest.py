"""Fetch → write for one klines series over one time window, with no Dagster in sight.

Frames arrive from the source one archive file or one REST window at a time. They are gathered
into write batches of at most about `bars_per_write` bars, each upserted in one transaction in a
worker thread while the source goes on downloading, so neither side idles on the other.
Rows the source rejected go to `market_data.rejected_rows`; windows it could not read are
reported, not raised, so the caller can say which partitions landed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from marketdata_assets.schemas import FUNDING_RATES, KLINES, REJECTED_ROWS, TableSpec
from marketdata_assets.sources.binance_klines import BinanceKlinesSource
from marketdata_assets.sources.binance_metrics import TABLES, BinanceMetricsSource, Dataset
from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.sources.http import RequestStats
from marketdata_assets.sources.protocol import Source, SourceOutcome
from marketdata_assets.validation import rejected_frame
from marketdata_assets.warehouse import Warehouse

if TYPE_CHECKING:
    from marketdata_assets.catalog import Series

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
    source: dict[str, Any] = field(default_factory=dict)
    largest_write: int = 0
    rows_rejected: int = 0
    failures: list[PieceFailure] = field(default_factory=list)  # windows that could not be read

    def add(self, frame: pl.DataFrame, written: int) -> None:
        self.rows_written += written
        self.write_windows += 1
        self.largest_write = max(self.largest_write, frame.height)
        if frame.height:
            first, last = frame["open_time"].min(), frame["open_time"].max()
            if self.first_open_time is None or first < self.first_open_time:  # type: ignore[operator]
                self.first_open_time = first  # type: ignore[assignment]
            if self.last_open_time is None or last > self.last_open_time:  # type: ignore[operator]
                self.last_open_time = last  # type: ignore[assignment]


async def _ingest(
    source: BinanceKlinesSource,
    warehouse: Warehouse,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    bars_per_write: int,
) -> KlinesIngestReport:
    report = KlinesIngestReport()
    writes: list[tuple[asyncio.Future[int], pl.DataFrame]] = []
    buffered: list[pl.DataFrame] = []
    buffered_rows = 0

    async def finish_oldest() -> None:
        future, frame = writes.pop(0)
        report.add(frame, await future)

    async def write_buffered() -> None:
        nonlocal buffered, buffered_rows
        while len(writes) >= warehouse.concurrent_writes:
            await finish_oldest()
        batch = pl.concat(buffered, rechunk=True) if len(buffered) > 1 else buffered[0]
        buffered, buffered_rows = [], 0
        writes.append((asyncio.ensure_future(asyncio.to_thread(warehouse.upsert, KLINES, batch)), batch))

    async with source:
        try:
            async for frame in source.frames(symbol, timeframe_name, start, end, bars_per_write):
                if buffered_rows and buffered_rows + frame.height > bars_per_write:
                    await write_buffered()
                buffered.append(frame)
                buffered_rows += frame.height
            if buffered:
                await write_buffered()
            while writes:
                await finish_oldest()
        finally:
            # A fetch or write failed: let the writes under way finish (each is one transaction).
            await asyncio.gather(*(future for future, _ in writes), return_exceptions=True)
            # Rejected rows are kept whatever happened to the rest.
            rejected = rejected_frame(source.take_rejected())
            if rejected.height:
                report.rows_rejected = await asyncio.to_thread(warehouse.upsert, REJECTED_ROWS, rejected)
    report.stats = source.rest.stats
    report.source = source.summary()
    report.failures = list(source.failures)
    return report


def ingest_klines(
    source: BinanceKlinesSource,
    warehouse: Warehouse,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    bars_per_write: int = DEFAULT_BARS_PER_WRITE,
) -> KlinesIngestReport:
    """Fetch and store the closed, valid klines of [start, end) (UTC); rows breaking a
    validation rule go to rejected_rows. Windows that could not be read are in the report's
    `failures`; an answer that ends everything (a rejected request, a ban) or a failed write
    raises. Write batches already committed stay committed."""
    began = time.perf_counter()
    report = asyncio.run(_ingest(source, warehouse, symbol, timeframe_name, start, end, bars_per_write))
    report.seconds = time.perf_counter() - began
    return report


class FundingSource(Protocol):
    """Funding settlements of one venue: Binance's archive and REST, OKX's or Bybit's REST."""

    rows_by_source: dict[str, int]
    failures: list[PieceFailure]  # parts of a window the venue no longer holds

    @property
    def requests(self) -> int: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame: ...


@dataclass
class FundingIngestReport:
    rows_written: int
    first: dt.datetime | None
    last: dt.datetime | None
    rows_by_source: dict[str, int]
    requests: int
    failures: list[PieceFailure]


def ingest_funding(
    source: FundingSource, warehouse: Warehouse, symbol: str, start: dt.datetime, end: dt.datetime
) -> FundingIngestReport:
    """Fetch and store every funding settlement in [start, end) (UTC) the venue holds, in one
    transaction (a month holds 93 of them); what it no longer holds is in `failures`."""

    async def fetch() -> pl.DataFrame:
        async with source:
            return await source.fetch(symbol, start, end)

    frame = asyncio.run(fetch())
    written = warehouse.upsert(FUNDING_RATES, frame)
    times = frame["funding_time"]
    return FundingIngestReport(
        written, times.min() if written else None, times.max() if written else None,  # type: ignore[arg-type]
        dict(source.rows_by_source), source.requests, list(source.failures),
    )


@dataclass
class MetricsIngestReport:
    rows_written: int
    first: dt.datetime | None
    last: dt.datetime | None
    rows_by_source: dict[str, int]
    archive_files: int
    requests: int
    failures: list[PieceFailure]  # days no source could give
    before_listing: list[dt.date]  # leading days of the listing window that no file holds


def ingest_metrics(
    source: BinanceMetricsSource, warehouse: Warehouse, dataset: Dataset, symbol: str, start: dt.datetime,
    end: dt.datetime, listing_window_end: dt.datetime | None = None,
) -> MetricsIngestReport:
    """Fetch and store the 5-minute open interest or long/short rows of [start, end) (UTC), in one
    transaction; days that could not be read are in the report's `failures`, the rest is stored."""

    async def fetch():
        async with source:
            return await source.fetch(dataset, symbol, start, end, listing_window_end)

    fetched = asyncio.run(fetch())
    written = warehouse.upsert(TABLES[dataset], fetched.frame)
    times = fetched.frame["snapshot_time"]
    return MetricsIngestReport(
        written, times.min() if written else None, times.max() if written else None,  # type: ignore[arg-type]
        dict(fetched.rows_by_source), fetched.archive_files, source.rest.stats.requests,
        fetched.failures, fetched.before_listing,
    )


# --- any dataset's source (sources/protocol.py) ---------------------------------------------------


@dataclass
class IngestReport:
    """What one ingest of one series over one window wrote, met and cost."""

    rows_written: int = 0
    first: dt.datetime | dt.date | None = None
    last: dt.datetime | dt.date | None = None
    rows_rejected: int = 0
    seconds: float = 0.0
    outcome: SourceOutcome = field(default_factory=SourceOutcome)

    @property
    def failures(self) -> list[PieceFailure]:
        return self.outcome.failures

    def metadata(self) -> dict[str, Any]:
        def moment(value: dt.datetime | dt.date | None) -> str:
            return value.isoformat() if value is not None else "none"

        return {
            "rows_written": self.rows_written,
            "first_row": moment(self.first),
            "last_row": moment(self.last),
            "rows_rejected": self.rows_rejected,
            "requests": self.outcome.requests,
            **{f"rows_from_{origin}": rows for origin, rows in sorted(self.outcome.rows_by_source.items())},
            "seconds": round(self.seconds, 3),
        }


def ingest(
    source: Source, warehouse: Warehouse, table: TableSpec, time_column: str, series: Series,
    start: dt.datetime, end: dt.datetime,
) -> IngestReport:
    """Fetch and store the rows of `series` in [start, end) (UTC), each frame upserted in one
    transaction as it arrives; rows the source rejected go to rejected_rows whatever else
    happens. Windows the source could not read are in the report's `failures`."""
    began = time.perf_counter()
    report = IngestReport(outcome=source.outcome)

    async def run() -> None:
        try:
            async with source:
                async for frame in source.frames(series, start, end):
                    if frame.is_empty():
                        continue
                    report.rows_written += await asyncio.to_thread(warehouse.upsert, table, frame)
                    first, last = frame[time_column].min(), frame[time_column].max()
                    report.first = first if report.first is None else min(report.first, first)  # type: ignore[type-var]
                    report.last = last if report.last is None else max(report.last, last)  # type: ignore[type-var]
        finally:
            rejected = rejected_frame(source.outcome.rejected)
            if rejected.height:
                report.rows_rejected = await asyncio.to_thread(warehouse.upsert, REJECTED_ROWS, rejected)

    asyncio.run(run())
    report.seconds = time.perf_counter() - began
    return report
