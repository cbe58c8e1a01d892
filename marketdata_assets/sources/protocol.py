"""The one source protocol: a source reads one series over a window, yielding polars frames in
its dataset's table schema, and then says in one outcome record what else it met.

    async with source:
        async for frame in source.read(series, start, end): ...
    outcome = source.outcome()
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import polars as pl

from marketdata_assets.sources.errors import PieceFailure, UpstreamBanned, UpstreamError, UpstreamRejected


@dataclass
class SourceOutcome:
    """What a source met besides the rows it yielded: windows it could not read, rows it
    rejected (schemas.REJECTED_ROWS frames), requests sent, rows per origin (rest, archive), what
    else it wants on the materialization (archive files read, weight spent, …), and rows it keeps
    in other tables."""

    failures: list[PieceFailure] = field(default_factory=list)
    rejected: list[pl.DataFrame] = field(default_factory=list)
    requests: int = 0
    rows_by_source: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Rows of other tables the window also fills (a GEX snapshot's raw chain and summary), each
    # (TableSpec, frame), written with the rejected rows, before any partition is recorded.
    side_tables: list[tuple[Any, pl.DataFrame]] = field(default_factory=list)


class Source(Protocol):
    """Rows of one series (a catalog.Series) over [start, end) UTC, frame by frame; frames may
    arrive out of time order. A window it cannot read is a failure of the outcome, not an
    exception; an answer every window would get (an unknown symbol, a ban) raises."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]: ...

    def outcome(self) -> SourceOutcome:
        """What the reads so far met; rejected rows are handed over once."""
        ...


class RestAndArchive:
    """A source reading from a REST client and (when it has one) an archive client: `async with`
    opens both and closes both."""

    rest: Any
    archive: Any

    async def __aenter__(self) -> Any:
        await self.rest.__aenter__()
        if self.archive is not None:
            await self.archive.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.rest.__aexit__(*exc_info)
        if self.archive is not None:
            await self.archive.__aexit__(*exc_info)


# Answers every other piece would get as well: carrying on would only repeat them.
_STOPS_EVERYTHING = (UpstreamRejected, UpstreamBanned)


async def or_failure(
    start: dt.datetime, end: dt.datetime, job: Awaitable[pl.DataFrame]
) -> pl.DataFrame | PieceFailure:
    """The job's frame, or the failure of its window; failures that end everything are raised."""
    try:
        return await job
    except _STOPS_EVERYTHING:
        raise
    except UpstreamError as exc:
        return PieceFailure(start, end, exc)


async def bounded(jobs: list[Awaitable[Any]], limit: int) -> AsyncIterator[Any]:
    """Results of `jobs`, at most `limit` running at once, in completion order; the first failure
    cancels the rest and is raised. Finished results are not kept: memory holds `limit` at most."""
    queue = iter(jobs)
    running: set[asyncio.Future[Any]] = {asyncio.ensure_future(j) for j in islice(queue, limit)}
    try:
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running |= {asyncio.ensure_future(j) for j in islice(queue, len(done))}
            for task in done:
                if not task.cancelled():
                    task.exception()  # marks every failure as seen; the first one is raised below
            for task in done:
                yield task.result()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for job in queue:  # never started: close the coroutine so Python does not warn
            if asyncio.iscoroutine(job):
                job.close()
