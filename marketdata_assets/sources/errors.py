"""One exception type per way an upstream can fail; each message names source, request and cause."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UpstreamError(Exception):
    """Base of every failure to get data from an upstream API."""

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source = source


class UpstreamRejected(UpstreamError):
    """The upstream refused the request (4xx with an error body): retrying will not help."""

    def __init__(self, source: str, request: str, status: int, detail: str, code: int | None = None):
        super().__init__(source, f"{request} rejected with HTTP {status}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class UpstreamBanned(UpstreamError):
    """The upstream banned this IP (Binance HTTP 418). Every request stops until `until` (UTC)."""

    def __init__(self, source: str, request: str, until: dt.datetime, detail: str):
        super().__init__(
            source,
            f"{request}: IP banned until {until:%Y-%m-%d %H:%M:%S} UTC ({detail}); "
            "no request is sent before then",
        )
        self.until = until


class UpstreamUnavailable(UpstreamError):
    """Transient failures (5xx, timeouts, broken bodies) outlasted every retry."""


class MalformedResponse(UpstreamError):
    """The upstream answered, but the answer breaks its documented format or our request."""


class NoSourceHolds(UpstreamError):
    """No upstream holds a window any more (or yet): REST keeps too little, the archive lacks it."""


@dataclass(frozen=True)
class PieceFailure:
    """A part of a window that could not be read, and why."""

    start: dt.datetime
    end: dt.datetime
    error: UpstreamError

    def describe(self) -> str:
        return f"[{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M}) UTC: {self.error}"


def read_columns(rows: Any, where: str, kind: str, read: Callable[[Any], tuple], width: int) -> list[list]:
    """The `width` columns of `read(row)` over every row of a JSON array; MalformedResponse naming
    the first row that is not a `kind` row (a missing field, a wrong type, a value `read` refuses
    with ValueError)."""
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected a JSON array of {kind} rows, got {type(rows).__name__}")
    values = []
    for index, row in enumerate(rows):
        try:
            values.append(read(row))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(where, f"row {index} is not a {kind} row ({exc}): {str(row)[:160]}") from None
    return [list(column) for column in zip(*values, strict=True)] if values else [[] for _ in range(width)]


def same_symbol(row: dict, field: str, symbol: str) -> None:
    """ValueError if the row is about another symbol than the one asked for (a lying server)."""
    if row[field] != symbol:
        raise ValueError(f"{field} {row[field]!r}")
