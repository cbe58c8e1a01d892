"""Canonical dataset schemas, declared once: polars dtypes here, the same columns in sql/*.sql.

Every source returns frames in these schemas, the warehouse stores them and the checks read them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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
)

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
)


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


# Open interest of perpetual futures: one snapshot every 5 minutes.
OPEN_INTEREST = TableSpec(
    name="open_interest",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "symbol": pl.String,
            "snapshot_time": UTC_TIME,  # on the 5-minute grid
            "open_interest": pl.Float64,  # contracts, in the base asset
            "open_interest_value": pl.Float64,  # in the quote asset
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "symbol", "snapshot_time"),
)

# Positioning of perpetual futures traders, one row per 5-minute snapshot and metric:
#   global_account       longs / shorts among all accounts     long/short_value: account shares
#   top_trader_account   the same among the top traders         account shares
#   top_trader_position  top traders' long / short positions    position shares
#   taker_volume         taker buy / sell volume                 buy and sell volume (base asset)
LONG_SHORT_METRICS = ("global_account", "top_trader_account", "top_trader_position", "taker_volume")
LONG_SHORT_RATIOS = TableSpec(
    name="long_short_ratios",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "symbol": pl.String,
            "metric": pl.String,  # one of LONG_SHORT_METRICS
            "snapshot_time": UTC_TIME,  # on the 5-minute grid
            "ratio": pl.Float64,  # long / short (taker_volume: buy / sell)
            "long_value": pl.Float64,  # null where the source has none (Binance's archive)
            "short_value": pl.Float64,
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "symbol", "metric", "snapshot_time"),
    kept_when_null=("long_value", "short_value"),  # REST's detail outlives a re-read from the archive
)
