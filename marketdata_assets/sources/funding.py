"""What every venue's funding source shares: the funding_rates table, one row per settlement at
its exact reported time, and the source protocol for a source that reads a whole window at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import polars as pl

from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.sources.protocol import SourceOutcome

# Funding rates of perpetual futures, one row per settlement.
FUNDING_RATES = TableSpec(
    name="funding_rates",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "symbol": pl.String,
            "funding_time": UTC_TIME,  # exact, as reported: a few ms after the 8-hour mark
            "funding_rate": pl.Float64,  # per funding interval, e.g. 0.0001 = 0.01%
            "mark_price": pl.Float64,  # null where the source has none (Binance's archive, OKX, Bybit)
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "symbol", "funding_time"),
    kept_when_null=("mark_price",),  # REST's mark price outlives a later re-read from the archive
)


def funding_frame(
    venue: str, symbol: str, times_ms: list[int], rates: list[float], marks: list[float | None] | None = None,
    source: str = "rest",
) -> pl.DataFrame:
    """FUNDING_RATES rows from exact ms times, rates and (where the venue gives them) mark prices."""
    count = len(times_ms)
    return pl.DataFrame({
        "venue": [venue] * count,
        "symbol": [symbol] * count,
        "funding_time": pl.Series(times_ms, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
        "funding_rate": pl.Series(rates, dtype=pl.Float64),
        "mark_price": pl.Series(marks if marks is not None else [None] * count, dtype=pl.Float64),
        "source": [source] * count,
        "ingested_at": [dt.datetime.now(dt.UTC)] * count,
    }).cast(FUNDING_RATES.schema)  # type: ignore[arg-type]




class ReadsWholeWindows:
    """The protocol for a source whose `fetch(symbol, start, end)` reads a whole window into one
    frame, keeping `failures`, `rows_by_source` and `requests` (every venue here)."""

    failures: list[PieceFailure]
    rows_by_source: dict[str, int]
    requests: int

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame: ...

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        yield await self.fetch(series.symbol, start, end)

    def outcome(self) -> SourceOutcome:
        take = getattr(self, "take_rejected", None)
        return SourceOutcome(
            failures=list(self.failures), rejected=take() if take else [], requests=self.requests,
            rows_by_source=dict(self.rows_by_source),
            metadata={f"rows_from_{origin}": rows for origin, rows in sorted(self.rows_by_source.items())},
        )
