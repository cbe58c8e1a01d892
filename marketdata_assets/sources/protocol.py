"""The one source protocol: a source yields the rows of one series over a window as polars
frames in its dataset's table schema, and keeps one outcome record of what else it met."""

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
    rejected (schemas.REJECTED_ROWS frames), requests sent, and rows per origin (rest, archive)."""

    failures: list[PieceFailure] = field(default_factory=list)
    rejected: list[pl.DataFrame] = field(default_factory=list)
    requests: int = 0
    rows_by_source: dict[str, int] = field(default_factory=dict)


class Source(Protocol):
    """Rows of one series (a catalog.Series) over [start, end) UTC, frame by frame, and one outcome."""

    outcome: SourceOutcome

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def frames(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]: ...
