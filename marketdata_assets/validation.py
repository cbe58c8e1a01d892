"""What makes a stored bar valid, declared once as SQL: ingest splits rows with it (through
polars' SQL expressions) and the `ohlc_valid` check counts stored rows that break it.

A row that breaks a rule is not a broken response: the upstream spoke its format, the values
are impossible. Such rows go to `market_data.rejected_rows` with the rules they break and the row
exactly as sent, never into `klines`, and the checks report them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS


@dataclass(frozen=True)
class Rule:
    """One property every stored row has: `holds` is SQL over the dataset's columns."""

    reason: str  # what a row that breaks it shows
    holds: str


KLINE_RULES: tuple[Rule, ...] = (
    Rule("high below low", "low <= high"),
    Rule("low above open or close", "low <= LEAST(open, close)"),
    Rule("high below open or close", "GREATEST(open, close) <= high"),
    Rule("low not positive", "low > 0"),
    Rule("negative volume", "volume >= 0"),
    Rule("taker buy volume above volume", "taker_buy_volume IS NULL OR taker_buy_volume <= volume"),
    Rule("negative trades", "trades IS NULL OR trades >= 0"),
)

# A stored row that breaks any rule, as a SQL condition (DuckDB and PostgreSQL alike).
KLINE_BREAKS_A_RULE = "NOT (" + " AND ".join(f"({rule.holds})" for rule in KLINE_RULES) + ")"
_KLINE_CHECKS = [pl.sql_expr(rule.holds).alias(f"rule_{i}") for i, rule in enumerate(KLINE_RULES)]


def broken_rules(frame: pl.DataFrame) -> pl.Series:
    """Per row of a KLINES frame: the reasons of the rules it breaks joined by '; ', '' if none."""
    flags = frame.select(_KLINE_CHECKS)
    return flags.select(
        pl.concat_str(
            [pl.when(~pl.col(f"rule_{i}")).then(pl.lit(rule.reason)) for i, rule in enumerate(KLINE_RULES)],
            separator="; ",
            ignore_nulls=True,
        ).alias("reason")
    ).to_series()


def split_invalid_klines(
    frame: pl.DataFrame, payloads: Callable[[Sequence[int]], list[str]], origin: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, rejected rows in `schemas.REJECTED_ROWS`) of a KLINES frame.

    `payloads(indices)` gives the rows at those positions as the upstream sent them; `origin`
    names the request or file they came in.
    """
    if frame.is_empty():
        return frame, REJECTED_ROWS.empty_frame()
    valid = frame.select(pl.all_horizontal(_KLINE_CHECKS)).to_series()
    if valid.all():
        return frame, REJECTED_ROWS.empty_frame()
    bad = frame.filter(~valid)
    indices = (~valid).arg_true().to_list()
    rejected = bad.select(
        pl.lit("klines").alias("dataset"),
        "venue", "market", "symbol", "timeframe", "open_time",
        broken_rules(bad).alias("reason"),
        pl.Series("payload", payloads(indices), dtype=pl.String),
        pl.lit(origin).alias("origin"),
        "source", "ingested_at",
    )
    return frame.filter(valid), rejected.cast(REJECTED_ROWS.schema)  # type: ignore[arg-type]


def rejected_frame(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Rejected rows gathered from several responses, one row per key (the last one wins)."""
    parts = [part for part in parts if part.height]
    if not parts:
        return REJECTED_ROWS.empty_frame()
    return pl.concat(parts).unique(subset=list(REJECTED_ROWS.primary_key), keep="last", maintain_order=True)

