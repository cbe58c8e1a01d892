"""Fetch → write for one series over one time window, with no Dagster in sight: the one ingest
every dataset's asset runs.

Frames arrive from the source (sources/protocol.py) one archive file, one REST window or one whole
window at a time. They are gathered into write batches of at most about `rows_per_write` rows,
each upserted in one transaction in a worker thread while the source goes on downloading, so
neither side idles on the other. Rows the source rejected go to `market_data.rejected_rows`;
windows it could not read are reported, not raised, so the caller can say which partitions landed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from marketdata_assets.schemas import KLINES, REJECTED_ROWS, TableSpec
from marketdata_assets.sources.binance_klines import BinanceKlinesSource
from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.sources.protocol import Source, SourceOutcome
from marketdata_assets.tally import PartitionTally, Tally
from marketdata_assets.validation import rejected_frame
from marketdata_assets.warehouse import Warehouse

if TYPE_CHECKING:
    from marketdata_assets.catalog import Series

DEFAULT_ROWS_PER_WRITE = 400_000


@dataclass
class IngestReport:
    """What one ingest of one series over one window wrote, met and cost."""

    rows_written: int = 0
    first: Any = None  # the earliest and latest time-column value written
    last: Any = None
    write_windows: int = 0  # write batches, one transaction each
    largest_write: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    outcome: SourceOutcome = field(default_factory=SourceOutcome)
    by_partition: dict[str, PartitionTally] = field(default_factory=dict)  # when asked for (`partitions`)

    @property
    def failures(self) -> list[PieceFailure]:
        return self.outcome.failures

    def add(self, frame: pl.DataFrame, written: int, time_column: str) -> None:
        self.rows_written += written
        self.write_windows += 1
        self.largest_write = max(self.largest_write, frame.height)
        if frame.height:
            first, last = frame[time_column].min(), frame[time_column].max()
            self.first = first if self.first is None else min(self.first, first)
            self.last = last if self.last is None else max(self.last, last)


async def _ingest(
    source: Source, warehouse: Warehouse, table: TableSpec, time_column: str, series: Series,
    start: dt.datetime, end: dt.datetime, rows_per_write: int,
    partitions: Sequence[tuple[str, dt.datetime, dt.datetime]],
) -> IngestReport:
    report = IngestReport()
    tally = Tally(partitions, time_column) if partitions else None
    writes: list[tuple[asyncio.Future[int], pl.DataFrame]] = []
    buffered: list[pl.DataFrame] = []
    buffered_rows = 0

    async def finish_oldest() -> None:
        future, frame = writes.pop(0)
        report.add(frame, await future, time_column)
        if tally is not None:
            tally.written(frame)

    async def write_buffered() -> None:
        nonlocal buffered, buffered_rows
        while len(writes) >= warehouse.concurrent_writes:
            await finish_oldest()
        batch = pl.concat(buffered, rechunk=True) if len(buffered) > 1 else buffered[0]
        buffered, buffered_rows = [], 0
        writes.append((asyncio.ensure_future(asyncio.to_thread(warehouse.upsert, table, batch)), batch))

    try:
        async with source:
            try:
                async for frame in source.read(series, start, end):
                    if frame.is_empty():
                        continue
                    if buffered_rows and buffered_rows + frame.height > rows_per_write:
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
    finally:
        report.outcome = source.outcome()
        if tally is not None:
            tally.share(report.outcome)
            report.by_partition = tally.partitions
        # Rows of the window's other tables, then rejected rows, kept whatever happened to the rest.
        for side_table, side_frame in report.outcome.side_tables:
            if side_frame.height:
                await asyncio.to_thread(warehouse.upsert, side_table, side_frame)
        kept = rejected_frame(report.outcome.rejected)
        if kept.height:
            report.rows_rejected = await asyncio.to_thread(warehouse.upsert, REJECTED_ROWS, kept)
            if tally is not None:
                for key, rows in tally.rows_by_partition(kept, "open_time").items():
                    report.by_partition[key].rejected = rows
    return report


def ingest(
    source: Source, warehouse: Warehouse, table: TableSpec, time_column: str, series: Series,
    start: dt.datetime, end: dt.datetime, *, rows_per_write: int = DEFAULT_ROWS_PER_WRITE,
    partitions: Sequence[tuple[str, dt.datetime, dt.datetime]] = (),
) -> IngestReport:
    """Fetch and store the rows of `series` with `time_column` in [start, end) (UTC); rows the
    source rejected go to rejected_rows. Windows that could not be read are in the report's
    `failures`; an answer that ends everything (a rejected request, a ban) or a failed write
    raises. Write batches already committed stay committed. Given `partitions` (key, start, end),
    the report also tallies each one's rows and share of the source's cost (tally.py)."""
    began = time.perf_counter()
    report = asyncio.run(_ingest(source, warehouse, table, time_column, series, start, end, rows_per_write, partitions))
    report.seconds = time.perf_counter() - began
    return report


class KlinesIngestReport(IngestReport):
    """`ingest_klines`'s report: the bars' first and last open times, and where they came from
    and what REST cost (`source`)."""

    @property
    def first_open_time(self) -> dt.datetime | None:
        return self.first

    @property
    def last_open_time(self) -> dt.datetime | None:
        return self.last

    @property
    def source(self) -> dict[str, Any]:
        return self.outcome.metadata


def ingest_klines(
    source: BinanceKlinesSource,
    warehouse: Warehouse,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    bars_per_write: int = DEFAULT_ROWS_PER_WRITE,
) -> KlinesIngestReport:
    """`ingest` for one klines series of `source`'s market, by symbol and timeframe name."""
    from marketdata_assets.catalog import Series

    series = Series("klines", f"binance_{source.market}", symbol, start.date(), options={"timeframe": timeframe_name})
    source.rest_bars_per_frame = bars_per_write
    report = ingest(source, warehouse, KLINES, "open_time", series, start, end, rows_per_write=bars_per_write)
    return KlinesIngestReport(**{name: getattr(report, name) for name in report.__dataclass_fields__})
