"""Bybit klines: Bybit's interval names for our timeframes, its kline rows read into
market_data.klines' schema, and the client that pages `GET /v5/market/kline` back from a window's end.

Bybit answers `{"retCode": 0, "result": {"category", "symbol", "list": [[start, open, high, low,
close, volume, turnover], …]}, "time": server ms}`, newest first; the newest candle may still be
open: a bar is kept only once its end is at or before the answer's `time`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import polars as pl

from marketdata_assets.schemas import venue_klines_frame
from marketdata_assets.sources.bybit import REQUESTS_PER_5S, VENUE
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import Clock, RateLimit, Sleep, UpstreamClient
from marketdata_assets.sources.venue_klines import as_bars, closed_ascending, numbered_rows
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
    kept, still_open = bybit_kline_rows(body, symbol, market, timeframe_name)
    return venue_klines_frame("bybit", market, symbol, timeframe_name, kept), still_open


_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "quote_volume")


def bybit_kline_rows(body: Any, symbol: str, market: str, timeframe_name: str) -> tuple[pl.DataFrame, int]:
    """`parse_bybit_klines`' closed bars in VENUE_BARS (a client builds one frame of many pages).
    A page is read at once; one with anything wrong in it is read row by row, which names it."""
    where = f"{SOURCE} {symbol} {timeframe_name}"
    result = body.get("result") if isinstance(body, dict) and body.get("retCode") == 0 else None
    rows = result.get("list") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not isinstance(body.get("time"), int):
        raise MalformedResponse(where, f"expected {{\"retCode\": 0, \"result\": {{\"list\": [...]}}, \"time\"}}, "
                                       f"got {str(body)[:160]}")
    if result.get("symbol") not in (None, symbol) or result.get("category") not in (None, CATEGORIES[market]):
        raise MalformedResponse(where, f"answered for {result.get('category')} {result.get('symbol')}")
    step = timeframe(timeframe_name).millis
    page = numbered_rows(rows, _COLUMNS)
    if page is not None:
        closed = page["open_time"].to_numpy() + step <= body["time"]
        bars = closed_ascending(page, closed, step)
        if bars is not None:
            return bars, int((~closed).sum())
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
    return as_bars(kept[::-1]), still_open


KLINE_PATH = "/v5/market/kline"
PAGE = 1000  # Bybit's largest `limit`


class BybitKlinesClient(UpstreamClient):
    """Closed bars of one Bybit symbol over a window, paged back from its end; the IP budget is the
    one Bybit's funding client draws on (Bybit counts every request of the IP together)."""

    venue = VENUE

    @staticmethod
    def binance_symbol(symbol: str) -> str:
        """Binance's name of the same pair: Bybit's own (`BTCUSDT`, spot and linear alike)."""
        return symbol

    @classmethod
    def from_upstreams(cls, upstreams: Any) -> BybitKlinesClient:
        """The client a run opens (defs/ingest/resources.py): Bybit's URL."""
        return cls(upstreams.url(VENUE.url_setting))

    def __init__(self, base_url: str, *, clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
                 backoff_base_s: float = 0.5):
        self.rejected: list[pl.DataFrame] = []
        self.still_open = 0
        self._http = VENUE.http(SOURCE, base_url, RateLimit(REQUESTS_PER_5S, 5.0), max_concurrency=4, clock=clock,
                                sleep=sleep, backoff_base_s=backoff_base_s)

    async def fetch(self, symbol: str, market: str, timeframe_name: str, start: dt.datetime,
                    end: dt.datetime) -> pl.DataFrame:
        """Closed bars opening in [start, end) UTC, ascending; a page that does not move back past
        its `end` is refused, naming it."""
        interval, where = bybit_interval(timeframe_name), f"{SOURCE} {symbol} {timeframe_name}"
        start_ms, last_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1
        pages: list[pl.DataFrame] = []
        while last_ms >= start_ms:
            body, _ = await self._http.get_json(KLINE_PATH, {
                "category": CATEGORIES[market], "symbol": symbol, "interval": interval, "start": start_ms,
                "end": last_ms, "limit": PAGE}, 1)
            kept, still_open = bybit_kline_rows(body, symbol, market, timeframe_name)
            self.still_open += still_open
            rows = body["result"]["list"]
            if not rows:
                break
            newest, oldest = int(rows[0][0]), int(rows[-1][0])
            if newest > last_ms or oldest < start_ms:
                raise MalformedResponse(where, f"asked for bars in [{start_ms}, {last_ms}], got {oldest} to {newest}")
            pages.append(kept)
            last_ms = oldest - 1
        return venue_klines_frame("bybit", market, symbol, timeframe_name, pl.concat(pages[::-1]) if pages else [])
