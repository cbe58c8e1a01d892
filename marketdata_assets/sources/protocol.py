"""The one source protocol: a source reads one series over a window, yielding polars frames in
its dataset's table schema, and then says in one outcome record what else it met.

    async with source:
        async for frame in source.read(series, start, end): ...
    outcome = source.outcome()
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from marketdata_assets.sources.errors import PieceFailure


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
