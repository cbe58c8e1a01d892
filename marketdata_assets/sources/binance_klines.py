"""Where Binance klines come from for one window: the archive, REST, or both (`auto`).

`auto` reads whole past months from monthly archive files, other past days (the current month,
or a window that starts or ends mid-month) from daily files, and REST for what the archive does not hold yet (today, yesterday before its file is
published, any file that is missing). `archive` reads only the archive and fails on a missing
file; `rest` reads only REST. Frames come out in `schemas.KLINES`, one archive file or one REST
window at a time, so memory holds a few months at most, never the whole window.

A piece that fails (a file that stays corrupt, a server that keeps answering 5xx or lies) does
not stop the others: its window is recorded in `failures` and the rest is read, so a range run
stores every window it could and names the ones it could not. An answer that every other piece
would get too (a rejected request such as an unknown symbol, an IP ban) stops everything at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import polars as pl

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient
from marketdata_assets.sources.binance_archive import (
    ARCHIVE_SOURCE,
    ArchiveFile,
    ArchiveFileMissing,
    BinanceArchiveClient,
)
from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.sources.http import Clock
from marketdata_assets.sources.protocol import RestAndArchive, SourceOutcome, bounded, or_failure
from marketdata_assets.timeframes import Timeframe, next_month, timeframe

SourceMode = Literal["auto", "archive", "rest"]
SOURCE_MODES: tuple[str, ...] = get_args(SourceMode)
_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Piece:
    """A part of a window and where its bars are read: an archive file, or REST."""

    start: dt.datetime
    end: dt.datetime
    file: ArchiveFile | None = None  # None: REST


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def plan_pieces(
    market: str, symbol: str, tf: Timeframe, start: dt.datetime, end: dt.datetime, now: dt.datetime,
    mode: SourceMode,
) -> list[Piece]:
    """[start, end) (UTC) cut into archive files and REST windows, oldest first.

    Whole months that are over come from monthly files; other days that are over from daily
    files (a one-day window should not download a month); the current day from REST. In `rest`
    mode the whole window is one REST piece.
    """
    if mode == "rest" or end <= start:
        return [Piece(start, end)] if end > start else []
    today = _midnight(now)
    this_month = today.replace(day=1)
    pieces: list[Piece] = []
    cursor = start
    while cursor < end:
        month = cursor.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        month_end = next_month(month)
        if cursor == month and month_end <= min(end, this_month):
            pieces.append(Piece(cursor, month_end, ArchiveFile.monthly(market, symbol, tf.name, month.date())))
            cursor = month_end
            continue
        day = _midnight(cursor)
        if day + _DAY <= today:
            upper = min(end, day + _DAY)
            pieces.append(Piece(cursor, upper, ArchiveFile.daily(market, symbol, tf.name, day.date())))
        else:
            upper = end  # today and later: only REST has it
            pieces.append(Piece(cursor, upper))
        cursor = upper
    return pieces


def _days(start: dt.datetime, end: dt.datetime) -> Iterable[tuple[dt.datetime, dt.datetime]]:
    cursor = start
    while cursor < end:
        upper = min(end, _midnight(cursor) + _DAY)
        yield cursor, upper
        cursor = upper


def _clip(frame: pl.DataFrame, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    return frame.filter((pl.col("open_time") >= start) & (pl.col("open_time") < end))


class BinanceKlinesSource(RestAndArchive):
    """Closed klines of one Binance market from the archive and/or REST, per `mode`.

    Use as `async with BinanceKlinesSource(...) as source: async for frame in source.frames(...)`.
    """

    def __init__(
        self,
        rest: BinanceKlinesClient,
        archive: BinanceArchiveClient | None,
        mode: SourceMode = "auto",
        *,
        files_in_flight: int = 6,
        clock: Clock = time.time,
    ):
        if mode not in SOURCE_MODES:
            raise ValueError(f"unknown klines source {mode!r} (one of {', '.join(SOURCE_MODES)})")
        if mode != "rest" and archive is None:
            raise ValueError(f"klines source {mode!r} needs an archive client")
        self.rest = rest
        self.archive = archive
        self.mode: SourceMode = mode
        self.market = rest.endpoint.market
        self._files_in_flight = files_in_flight
        self._clock = clock
        self.rows_by_source: Counter[str] = Counter()
        self.failures: list[PieceFailure] = []
        self.rest_bars_per_frame = 200_000  # REST bars a frame of `read` holds at most

    async def frames(
        self, symbol: str, timeframe_name: str, start: dt.datetime, end: dt.datetime, rest_bars_per_frame: int
    ) -> AsyncIterator[pl.DataFrame]:
        """Closed, valid bars with open_time in [start, end), in frames of one archive file or at
        most `rest_bars_per_frame` REST bars; frames may arrive out of time order. Windows that
        could not be read are in `failures` afterwards; rejected rows in `take_rejected()`."""
        tf = timeframe(timeframe_name)
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        pieces = plan_pieces(self.market, symbol, tf, start, end, now, self.mode)
        jobs: list[Awaitable[pl.DataFrame | PieceFailure]] = []
        for piece in pieces:
            if piece.file is None:
                step = dt.timedelta(milliseconds=tf.millis * rest_bars_per_frame)
                lower = piece.start
                while lower < piece.end:
                    # Never across a month: a write batch then holds whole partition windows, so
                    # a run stopped between two batches leaves no window half written.
                    upper = min(piece.end, lower + step, next_month(lower))
                    jobs.append(or_failure(lower, upper, self._from_rest(symbol, tf, lower, upper)))
                    lower = upper
            else:
                jobs.append(or_failure(piece.start, piece.end, self._from_file(piece, tf)))
        async for outcome in bounded(jobs, self._files_in_flight):
            if isinstance(outcome, PieceFailure):
                self.failures.append(outcome)
            elif outcome.height:
                yield outcome

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The source protocol: `frames` of a klines series (its symbol and `timeframe` option)."""
        async for frame in self.frames(series.symbol, series.options["timeframe"], start, end, self.rest_bars_per_frame):
            yield frame

    def outcome(self) -> SourceOutcome:
        return SourceOutcome(
            failures=list(self.failures), rejected=self.take_rejected(), requests=self.rest.stats.requests,
            rows_by_source=dict(self.rows_by_source), metadata={**self.summary(), **self.rest.stats.as_metadata()},
        )

    def take_rejected(self) -> list[pl.DataFrame]:
        """Rows rejected by validation so far (schemas.REJECTED_ROWS frames), handed over once."""
        taken = self.rest.take_rejected()
        if self.archive is not None:
            taken += self.archive.take_rejected()
        return taken

    async def _from_rest(self, symbol: str, tf: Timeframe, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        if self.mode == "archive":
            raise ArchiveFileMissing(
                ARCHIVE_SOURCE,
                f"{self.market} {symbol} {tf.name} [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC "
                "is not archived yet (daily files appear the day after, monthly ones after the "
                "month); source 'archive' does not fall back to REST, 'auto' does",
            )
        frame = await self.rest.fetch(symbol, tf.name, start, end)
        self.rows_by_source["rest"] += frame.height
        return frame

    async def _from_file(self, piece: Piece, tf: Timeframe) -> pl.DataFrame:
        file = piece.file
        assert file is not None and self.archive is not None
        frame = await self.archive.klines(file, tf)
        if frame is not None:
            frame = _clip(frame, piece.start, piece.end)
            self.rows_by_source["archive"] += frame.height
            return frame
        if self.mode == "archive":
            raise ArchiveFileMissing(
                ARCHIVE_SOURCE,
                f"{file.path} (or its .CHECKSUM) is not in the archive; source 'archive' does not "
                "fall back to REST, 'auto' does",
            )
        if file.day is None:  # a missing month: its daily files, then REST for days without one
            days = [
                self._from_file(Piece(lo, hi, ArchiveFile.daily(file.market, file.symbol, file.timeframe, lo.date())), tf)
                for lo, hi in _days(piece.start, piece.end)
            ]
            parts = await asyncio.gather(*days)
        else:
            parts = [await self._from_rest(file.symbol, tf, piece.start, piece.end)]
        parts = [p for p in parts if p.height]
        return pl.concat(parts) if parts else KLINES.empty_frame()

    def summary(self) -> dict[str, Any]:
        """What this source read: rows per origin, archive files, missing files, re-downloads."""
        out: dict[str, Any] = {
            "source_mode": self.mode,
            "rows_from_archive": self.rows_by_source["archive"],
            "rows_from_rest": self.rows_by_source["rest"],
        }
        if self.archive is not None:
            stats = self.archive.archive_stats
            out |= {
                "archive_files": stats.files,
                "archive_megabytes": round(stats.compressed_bytes / 1e6, 2),
                "archive_redownloads": stats.redownloads,
                "archive_missing": ", ".join(stats.missing[:10]) + (" …" if len(stats.missing) > 10 else ""),
            }
        return out
