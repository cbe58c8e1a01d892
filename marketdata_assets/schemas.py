"""Canonical table schemas shared by every dataset: klines, rejected rows and known gaps, and the
TableSpec every dataset declares its own table with (beside its source), the same columns in sql/*.sql.

Every source returns frames in its dataset's schema, the warehouse stores them and the checks read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson

import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class TableSpec:
    """A warehouse table: its name inside schema `market_data`, columns and primary key."""

    name: str
    schema: pl.Schema
    primary_key: tuple[str, ...]  # the time column last: writers probe overlap by its range
    # Columns only some sources fill: a row from a source without them keeps the stored values.
    kept_when_null: tuple[str, ...] = ()
    # An upsert that changes a stored row's values keeps the old ones in market_data.revisions
    # (off for the bookkeeping tables, and for FRED's, which keeps every vintage itself).
    keeps_revisions: bool = True

    @property
    def compared_columns(self) -> list[str]:
        """The columns whose change is a revision: all but the key, the origin and the ingest time."""
        return [c for c in self.columns if c not in self.primary_key and c not in ("source", "ingested_at")]

    @property
    def qualified_name(self) -> str:
        return f"market_data.{self.name}"

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def empty_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)

    @property
    def on_conflict_update(self) -> str:
        """SQL: on a primary-key collision, the incoming row's values replace the stored ones (but a
        NULL in a `kept_when_null` column, which keeps what is stored)."""

        def update(column: str) -> str:
            if column in self.kept_when_null:
                return f"{column} = COALESCE(excluded.{column}, {self.name}.{column})"
            return f"{column} = excluded.{column}"

        updates = ", ".join(update(c) for c in self.columns if c not in self.primary_key)
        return f"ON CONFLICT ({', '.join(self.primary_key)}) DO UPDATE SET {updates}"


KLINES = TableSpec(
    name="klines",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "market": pl.String,
            "symbol": pl.String,
            "timeframe": pl.String,
            "open_time": UTC_TIME,  # bar start, UTC; the bar covers [open_time, open_time + timeframe)
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Float64,  # base asset
            "quote_volume": pl.Float64,
            "trades": pl.Int64,
            "taker_buy_volume": pl.Float64,
            "taker_buy_quote_volume": pl.Float64,
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "market", "symbol", "timeframe", "open_time"),
)


# Upstream rows that failed validation at ingest (validation.py), kept instead of stored or dropped.
REJECTED_ROWS = TableSpec(
    name="rejected_rows",
    schema=pl.Schema(
        {
            "dataset": pl.String,
            "venue": pl.String,
            "market": pl.String,
            "symbol": pl.String,
            "timeframe": pl.String,
            "open_time": UTC_TIME,
            "reason": pl.String,  # the rules the row breaks
            "payload": pl.String,  # the row as the upstream sent it (JSON array or CSV line)
            "origin": pl.String,  # the request or archive file it came in
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("dataset", "venue", "market", "symbol", "timeframe", "open_time"),
    keeps_revisions=False,
)

# A venue's bars before they become KLINES rows: open time in ms, prices and volumes, ascending.
VENUE_BARS = pl.Schema({"open_time": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64,
                        "close": pl.Float64, "volume": pl.Float64, "quote_volume": pl.Float64})


def venue_klines_frame(venue: str, market: str, symbol: str, timeframe_name: str,
                       bars: pl.DataFrame | list[tuple]) -> pl.DataFrame:
    """KLINES rows of a venue that counts no trades and no taker volume (OKX, Bybit): `bars` in
    VENUE_BARS (or its rows as tuples), ascending; the rest is NULL, not invented."""
    if isinstance(bars, list):
        bars = pl.DataFrame(bars, schema=VENUE_BARS, orient="row")
    if bars.is_empty():
        return KLINES.empty_frame()
    return bars.with_columns(
        pl.col("open_time").cast(pl.Datetime("ms", "UTC")),
        venue=pl.lit(venue), market=pl.lit(market), symbol=pl.lit(symbol), timeframe=pl.lit(timeframe_name),
        trades=pl.lit(None, pl.Int64), taker_buy_volume=pl.lit(None, pl.Float64),
        taker_buy_quote_volume=pl.lit(None, pl.Float64), source=pl.lit("rest"),
        ingested_at=pl.lit(dt.datetime.now(dt.UTC)),
    ).select(KLINES.columns).cast(dict(KLINES.schema))


def rejected_row(
    dataset: str, venue: str, symbol: str, open_time: object, reasons: list[str], sent: object, origin: str,
    ingested_at: object, timeframe: str = "1d",
) -> dict[str, object]:
    """One REJECTED_ROWS row of a series dataset (no market): `sent` kept as JSON, as it came."""
    return {"dataset": dataset, "venue": venue, "market": "", "symbol": symbol, "timeframe": timeframe,
            "open_time": open_time, "reason": "; ".join(reasons), "payload": orjson.dumps(sent).decode(),
            "origin": origin, "source": "rest", "ingested_at": ingested_at}


# Windows with no bars at the exchange: documented maintenance, or verified empty by refetching.
KNOWN_GAPS = TableSpec(
    name="known_gaps",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "market": pl.String,
            "symbol": pl.String,  # '*': every symbol of the market
            "timeframe": pl.String,  # '*': every timeframe
            "gap_start": UTC_TIME,
            "gap_end": UTC_TIME,  # half-open [gap_start, gap_end)
            "reason": pl.String,
            "source": pl.String,  # 'maintenance' | 'verified'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "market", "symbol", "timeframe", "gap_start"),
    keeps_revisions=False,
)
