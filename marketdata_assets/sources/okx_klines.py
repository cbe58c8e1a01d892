"""OKX klines: the bar names OKX has for our timeframes, its candle rows read into market_data.klines'
schema, and the client that pages `GET /api/v5/market/history-candles` back from a window's end.

OKX answers `[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]` rows, newest first. `vol` counts
the base currency for spot and contracts for swaps, where `volCcy` is the base currency; the quote
volume is `volCcyQuote`. Only closed bars (`confirm` "1") are kept. OKX's daily and longer bars
without `utc` (`1D`, `6H`, `12H`) are aligned to UTC+8: they are never asked for, and a row whose
time is not on the UTC grid of its timeframe is refused whatever was asked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import polars as pl

from marketdata_assets.schemas import KLINES, venue_klines_frame
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import Clock, RateLimit, Sleep, UpstreamClient
from marketdata_assets.sources.okx import VENUE
from marketdata_assets.timeframes import timeframe

SOURCE = "okx klines"
# our timeframe -> OKX's bar, UTC-aligned only (plain 6H, 12H and 1D follow UTC+8)
BARS = {"1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H",
        "6h": "6Hutc", "12h": "12Hutc", "1d": "1Dutc"}


def okx_bar(timeframe_name: str) -> str:
    """OKX's bar name for a timeframe; ValueError for one OKX has only aligned to UTC+8."""
    if timeframe_name not in BARS:
        raise ValueError(f"OKX has no UTC-aligned bar for timeframe {timeframe_name!r} (it has: {', '.join(BARS)})")
    return BARS[timeframe_name]


def parse_okx_candles(body: Any, inst_id: str, market: str, timeframe_name: str) -> tuple[pl.DataFrame, int]:
    """(closed bars in KLINES' schema, ascending; how many rows were still open) of one OKX candles
    answer for `inst_id` (`BTC-USDT` spot, `BTC-USDT-SWAP` perp)."""
    where = f"{SOURCE} {inst_id} {timeframe_name}"
    rows = body.get("data") if isinstance(body, dict) and body.get("code") in ("0", 0) else None
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected {{\"code\": \"0\", \"data\": [...]}}, got {str(body)[:160]}")
    step = timeframe(timeframe_name).millis
    kept, still_open, previous = [], 0, None
    for index, row in enumerate(rows):
        try:
            ts, o, h, low, c, vol, vol_ccy, vol_quote, confirm = row
            ts = int(ts)
            values = [float(v) for v in (o, h, low, c, vol, vol_ccy, vol_quote)]
        except (TypeError, ValueError) as exc:
            raise MalformedResponse(where, f"row {index} is not a candle ({exc}): {str(row)[:160]}") from None
        if previous is not None and ts >= previous:
            raise MalformedResponse(where, f"rows are not newest first, each once (row {index} at {ts})")
        previous = ts
        if ts % step:
            raise MalformedResponse(where, f"row {index} opens at {ts}, off the UTC grid of {timeframe_name} bars "
                                           "(a UTC+8-aligned bar): refused")
        if confirm != "1":
            still_open += 1
            continue
        o, h, low, c, vol, vol_ccy, vol_quote = values
        volume = vol if market == "spot" else vol_ccy
        kept.append((ts, o, h, low, c, volume, vol_quote))
    return venue_klines_frame("okx", market, inst_id, timeframe_name, kept[::-1]), still_open


HISTORY_PATH = "/api/v5/market/history-candles"
# OKX counts history-candles per IP: 20 requests per 2 s (its own budget; funding's endpoint has another)
HISTORY_LIMIT = RateLimit(20, 2.0, HISTORY_PATH)
PAGE = 100  # what OKX sends a page, whatever a larger `limit` asks


class OkxKlinesClient(UpstreamClient):
    """Closed bars of one OKX instrument over a window, paged back from its end with `after`."""

    def __init__(self, base_url: str, *, clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
                 backoff_base_s: float = 0.5):
        self.rejected: list[pl.DataFrame] = []
        self.still_open = 0
        self._http = VENUE.http(SOURCE, base_url, HISTORY_LIMIT, max_concurrency=1, clock=clock, sleep=sleep,
                                backoff_base_s=backoff_base_s)

    async def fetch(self, inst_id: str, market: str, timeframe_name: str, start: dt.datetime,
                    end: dt.datetime) -> pl.DataFrame:
        """Closed bars opening in [start, end) UTC, ascending. A page that does not move back past
        the cursor (a server repeating itself) is refused, naming the cursor: the loop never spins."""
        bar, where = okx_bar(timeframe_name), f"{SOURCE} {inst_id} {timeframe_name}"
        start_ms, cursor = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        parts = []
        while True:
            body, _ = await self._http.get_json(HISTORY_PATH, {"instId": inst_id, "bar": bar, "after": cursor,
                                                               "limit": PAGE}, 1)
            frame, still_open = parse_okx_candles(body, inst_id, market, timeframe_name)
            self.still_open += still_open
            if not body["data"]:
                break
            oldest = int(body["data"][-1][0])
            if int(body["data"][0][0]) >= cursor or oldest >= cursor:
                raise MalformedResponse(where, f"the page after {cursor} holds rows from {body['data'][0][0]}: "
                                               "not older than the cursor (a repeated page)")
            parts.append(frame.filter(pl.col("open_time") >= start))
            if oldest <= start_ms:
                break
            cursor = oldest
        return pl.concat(parts[::-1]) if parts else KLINES.empty_frame()
