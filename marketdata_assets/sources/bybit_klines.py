"""Bybit klines (issue 21, in progress): Bybit's interval names for our timeframes, and its kline
rows read into market_data.klines' schema. The client that pages `/v5/market/kline` comes next.

Bybit answers `{"retCode": 0, "result": {"category", "symbol", "list": [[start, open, high, low,
close, volume, turnover], …]}, "time": server ms}`, newest first; the newest candle may still be
open: a bar is kept only once its end is at or before the answer's `time`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.timeframes import timeframe

SOURCE = "bybit klines"
INTERVALS = {"1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120", "4h": "240",
             "6h": "360", "12h": "720", "1d": "D"}
CATEGORIES = {"spot": "spot", "perp": "linear"}


def bybit_interval(timeframe_name: str) -> str:
    if timeframe_name not in INTERVALS:
        raise ValueError(f"Bybit has no interval for timeframe {timeframe_name!r} (it has: {', '.join(INTERVALS)})")
    return INTERVALS[timeframe_name]


def parse_bybit_klines(body: Any, symbol: str, market: str, timeframe_name: str) -> tuple[pl.DataFrame, int]:
    """(closed bars in KLINES' schema, ascending; how many were still open at the answer's time)
    of one `/v5/market/kline` answer."""
    where = f"{SOURCE} {symbol} {timeframe_name}"
    result = body.get("result") if isinstance(body, dict) and body.get("retCode") == 0 else None
    rows = result.get("list") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not isinstance(body.get("time"), int):
        raise MalformedResponse(where, f"expected {{\"retCode\": 0, \"result\": {{\"list\": [...]}}, \"time\"}}, "
                                       f"got {str(body)[:160]}")
    if result.get("symbol") not in (None, symbol) or result.get("category") not in (None, CATEGORIES[market]):
        raise MalformedResponse(where, f"answered for {result.get('category')} {result.get('symbol')}")
    step = timeframe(timeframe_name).millis
    kept, still_open, previous = [], 0, None
    for index, row in enumerate(rows):
        try:
            start, o, h, low, c, volume, turnover = row
            start = int(start)
            values = [float(v) for v in (o, h, low, c, volume, turnover)]
        except (TypeError, ValueError) as exc:
            raise MalformedResponse(where, f"row {index} is not a kline ({exc}): {str(row)[:160]}") from None
        if previous is not None and start >= previous:
            raise MalformedResponse(where, f"rows are not newest first, each once (row {index} at {start})")
        previous = start
        if start + step > body["time"]:
            still_open += 1
            continue
        if start % step:
            raise MalformedResponse(where, f"row {index} opens at {start}, off the UTC grid of {timeframe_name} bars")
        kept.append((start, *values))
    kept.reverse()
    if not kept:
        return KLINES.empty_frame(), still_open
    frame = pl.DataFrame({
        "venue": "bybit", "market": market, "symbol": symbol, "timeframe": timeframe_name,
        "open_time": pl.Series([r[0] for r in kept], dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
        **{name: pl.Series([r[i] for r in kept], dtype=pl.Float64)
           for i, name in enumerate(("open", "high", "low", "close", "volume", "quote_volume"), start=1)},
        "trades": pl.Series([None] * len(kept), dtype=pl.Int64),  # Bybit does not count trades
        "taker_buy_volume": pl.Series([None] * len(kept), dtype=pl.Float64),
        "taker_buy_quote_volume": pl.Series([None] * len(kept), dtype=pl.Float64),
        "source": "rest", "ingested_at": dt.datetime.now(dt.UTC),
    })
    return frame.select(KLINES.columns).cast(dict(KLINES.schema)), still_open
