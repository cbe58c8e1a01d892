"""Canonical dataset schemas, declared once: polars dtypes here, the same columns in sql/*.sql.

Every source returns frames in these schemas, the warehouse stores them and the checks read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class TableSpec:
    """A warehouse table: its name inside schema `market_data`, columns and primary key."""

    name: str
    schema: pl.Schema
    primary_key: tuple[str, ...]  # the time column last: writers probe overlap by its range

    @property
    def qualified_name(self) -> str:
        return f"market_data.{self.name}"

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def empty_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)


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
