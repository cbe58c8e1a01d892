"""OKX klines: the bar names OKX has for our timeframes, its candle rows read into market_data.klines'
schema, and the client that pages `GET /api/v5/market/candles` and `history-candles` back from a window's end.

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
from typing import Any, Self

import numpy as np
import polars as pl

from marketdata_assets.schemas import venue_klines_frame
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import Clock, RateLimit, RequestStats, Sleep, UpstreamClient
from marketdata_assets.sources.okx import VENUE
from marketdata_assets.sources.venue_klines import as_bars, closed_ascending, numbered_rows
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
    kept, still_open = okx_candle_rows(body, inst_id, market, timeframe_name)
    return venue_klines_frame("okx", market, inst_id, timeframe_name, kept), still_open


_COLUMNS = ("open_time", "open", "high", "low", "close", "vol", "vol_ccy", "quote_volume", "confirm")


def okx_candle_rows(body: Any, inst_id: str, market: str, timeframe_name: str) -> tuple[pl.DataFrame, int]:
    """`parse_okx_candles`' closed bars in VENUE_BARS (a client builds one frame of many pages). A
    page is read at once; one with anything wrong in it is read row by row, which names it."""
    where = f"{SOURCE} {inst_id} {timeframe_name}"
    rows = body.get("data") if isinstance(body, dict) and body.get("code") in ("0", 0) else None
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected {{\"code\": \"0\", \"data\": [...]}}, got {str(body)[:160]}")
    step = timeframe(timeframe_name).millis
    page = numbered_rows(rows, _COLUMNS, strings=("confirm",))
    if page is not None and not np.any(page["open_time"].to_numpy() % step):  # every row on the grid, open or not
        closed = (page["confirm"] == "1").to_numpy()
        bars = closed_ascending(page, closed, step)
        if bars is not None:
            volume = "vol" if market == "spot" else "vol_ccy"
            return bars.select("open_time", "open", "high", "low", "close", pl.col(volume).alias("volume"),
                               "quote_volume"), int((~closed).sum())
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
    return as_bars(kept[::-1]), still_open


HISTORY_PATH = "/api/v5/market/history-candles"
RECENT_PATH = "/api/v5/market/candles"
# OKX counts each endpoint per IP: history-candles 20 requests per 2 s, candles 40 (funding's
# endpoint has its own). Every OKX client of the process draws on the same budget of each.
HISTORY_PER_2S, RECENT_PER_2S = 20, 40
HISTORY_PAGE = 100  # what history-candles sends a page, whatever a larger `limit` asks
RECENT_PAGE = 300
RECENT_BARS = 1440  # candles serves the newest 1,440 bars only
RECENT_MARGIN = 10  # bars kept clear of candles' horizon, for a server clock a little ahead


class OkxKlinesClient(UpstreamClient):
    """Closed bars of one OKX instrument over a window, paged back from its end with `after`:
    pages inside the newest 1,440 bars from `candles` (300 a page, the larger budget), older ones
    from `history-candles` (100 a page)."""

    venue = VENUE

    @staticmethod
    def binance_symbol(inst_id: str) -> str:
        """Binance's name of the same pair (`BTC-USDT-SWAP` and `BTC-USDT` are `BTCUSDT`)."""
        return inst_id.removesuffix("-SWAP").replace("-", "")

    def __init__(self, base_url: str, *, history_per_2s: int = HISTORY_PER_2S,
                 recent_per_2s: int = RECENT_PER_2S, clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
                 backoff_base_s: float = 0.5):
        self.rejected: list[pl.DataFrame] = []
        self.still_open = 0
        self._clock = clock
        self._http = VENUE.http(SOURCE, base_url, RateLimit(history_per_2s, 2.0, HISTORY_PATH), max_concurrency=4,
                                clock=clock, sleep=sleep, backoff_base_s=backoff_base_s)
        self._recent = VENUE.http(SOURCE, base_url, RateLimit(recent_per_2s, 2.0, RECENT_PATH), max_concurrency=4,
                                  clock=clock, sleep=sleep, backoff_base_s=backoff_base_s)

    @classmethod
    def from_upstreams(cls, upstreams: Any) -> OkxKlinesClient:
        """The client a run opens (defs/ingest/resources.py): OKX's URL and per-IP budgets."""
        return cls(upstreams.url(VENUE.url_setting), history_per_2s=upstreams.okx_history_candles_per_2s,
                   recent_per_2s=upstreams.okx_candles_per_2s)

    @property
    def stats(self) -> RequestStats:
        return self._http.stats + self._recent.stats

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        await self._recent.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._recent.__aexit__(*exc_info)
        await self._http.__aexit__(*exc_info)

    async def fetch(self, inst_id: str, market: str, timeframe_name: str, start: dt.datetime,
                    end: dt.datetime) -> pl.DataFrame:
        """Closed bars opening in [start, end) UTC, ascending. A page that does not move back past
        the cursor (a server repeating itself) is refused, naming the cursor: the loop never spins."""
        bar, where = okx_bar(timeframe_name), f"{SOURCE} {inst_id} {timeframe_name}"
        step = timeframe(timeframe_name).millis
        start_ms, cursor = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        horizon = int(self._clock() * 1000) // step * step - (RECENT_BARS - RECENT_MARGIN) * step
        pages: list[pl.DataFrame] = []
        while True:
            recent = cursor - RECENT_PAGE * step >= horizon
            http, path, page = (self._recent, RECENT_PATH, RECENT_PAGE) if recent else \
                (self._http, HISTORY_PATH, HISTORY_PAGE)
            body, _ = await http.get_json(path, {"instId": inst_id, "bar": bar, "after": cursor, "limit": page}, 1)
            kept, still_open = okx_candle_rows(body, inst_id, market, timeframe_name)
            self.still_open += still_open
            if not body["data"]:
                break
            oldest = int(body["data"][-1][0])
            if int(body["data"][0][0]) >= cursor or oldest >= cursor:
                raise MalformedResponse(where, f"the page after {cursor} holds rows from {body['data'][0][0]}: "
                                               "not older than the cursor (a repeated page)")
            pages.append(kept.filter(pl.col("open_time") >= start_ms))
            if oldest <= start_ms:
                break
            cursor = oldest
        return venue_klines_frame("okx", market, inst_id, timeframe_name, pl.concat(pages[::-1]) if pages else [])
