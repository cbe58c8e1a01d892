"""Klines of a venue served only by REST (OKX, Bybit): a window read month by month through the
venue's paging client, a few months in flight, each month a frame and a unit of failure.

A month that fails (a server that keeps answering 5xx, or lies) is a `failures` entry and the
others are still read; an answer every month would get (an unknown instrument, a ban) stops
everything. Bars still forming are dropped by the client and counted (`unclosed_bars_dropped`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np
import polars as pl

from marketdata_assets.schemas import VENUE_BARS
from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.sources.http import RequestStats
from marketdata_assets.sources.protocol import SourceOutcome, bounded, or_failure
from marketdata_assets.timeframes import month_windows


def numbered_rows(rows: Any, names: tuple[str, ...], strings: tuple[str, ...] = ()) -> pl.DataFrame | None:
    """A page of rows of numbers written as strings, as a frame: the first column Int64 (a ms
    time), the others Float64 but `strings`; None when any row is not such a row, for the
    venue's row-by-row reading to name it. A page of 1,000 rows at once, not a row at a time."""
    try:
        columns = list(zip(*rows, strict=True))
        if len(columns) != len(names):
            return None
        # int() and float() of a page's strings: a fraction of what a polars cast of them costs
        read = {names[0]: pl.Series(list(map(int, columns[0])), dtype=pl.Int64)}
        for name, column in zip(names[1:], columns[1:], strict=True):
            read[name] = pl.Series(column, dtype=pl.String) if name in strings else \
                pl.Series(list(map(float, column)), dtype=pl.Float64)
        return pl.DataFrame(read)
    except (TypeError, ValueError):
        return None


def closed_ascending(page: pl.DataFrame, closed: np.ndarray, step_ms: int) -> pl.DataFrame | None:
    """The rows of a newest-first `page` where `closed`, oldest first; None unless the page's
    times fall strictly and sit on the UTC grid of `step_ms` (for the row-by-row reading to say
    which row does not)."""
    times = page["open_time"].to_numpy()
    if np.any(np.diff(times) >= 0) or np.any(times[closed] % step_ms):
        return None
    return page[np.flatnonzero(closed)[::-1]]


def as_bars(rows: list[tuple]) -> pl.DataFrame:
    """Rows read one by one, (open ms, open, high, low, close, volume, quote volume), as VENUE_BARS."""
    return pl.DataFrame(rows, schema=VENUE_BARS, orient="row")


class PagingKlinesClient(Protocol):
    """A venue's klines client (okx_klines, bybit_klines): closed bars of a window, ascending."""

    still_open: int
    stats: RequestStats

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def fetch(self, symbol: str, market: str, timeframe_name: str, start: dt.datetime,
                    end: dt.datetime) -> pl.DataFrame: ...

    def take_rejected(self) -> list[pl.DataFrame]: ...


class RestKlinesSource:
    """The source protocol over one venue's paging klines client."""

    def __init__(self, client: PagingKlinesClient, *, months_in_flight: int = 4):
        self.client = client
        self._in_flight = months_in_flight
        self.failures: list[PieceFailure] = []
        self.rows = 0

    async def __aenter__(self) -> RestKlinesSource:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.__aexit__(*exc_info)

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        months = [or_failure(lower, upper, self.client.fetch(series.symbol, series.market, series.options["timeframe"],
                                                             lower, upper))
                  for lower, upper in month_windows(start, end)]
        async for outcome in bounded(months, self._in_flight):
            if isinstance(outcome, PieceFailure):
                self.failures.append(outcome)
            elif outcome.height:
                self.rows += outcome.height
                yield outcome

    def outcome(self) -> SourceOutcome:
        stats = self.client.stats
        return SourceOutcome(
            failures=list(self.failures), rejected=self.client.take_rejected(), requests=stats.requests,
            rows_by_source={"rest": self.rows},
            metadata={"rows_from_rest": self.rows, "unclosed_bars_dropped": self.client.still_open,
                      **stats.as_metadata()},
        )
