"""Bybit: linear-perpetual funding rates from `/v5/market/funding/history`, as frames in
`sources.funding.FUNDING_RATES` (no mark price: Bybit's history has none).

Bybit answers newest first, at most 200 rows, inside `startTime`..`endTime`; `startTime` alone
is an error, so every request sends both and pages backwards by moving `endTime`. Every answer
is an envelope `{"retCode","retMsg","result":{"list":[…]}}`: retCode 10006 means slow down,
10001 a bad parameter (an unknown symbol too); HTTP 403 is an IP ban (about 10 minutes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import polars as pl

from marketdata_assets.sources.errors import MalformedResponse, read_columns, same_symbol, PieceFailure
from marketdata_assets.sources.funding import FUNDING_RATES, ReadsWholeWindows, funding_frame
from marketdata_assets.sources.http import Clock, EnvelopeError, RateLimit, Sleep, UpstreamClient, Venue

SOURCE = "bybit funding"
FUNDING_PATH = "/v5/market/funding/history"
PAGE_LIMIT = 200
# Bybit allows 600 requests / 5 s per IP across its API (then a 403 and a ten-minute ban). Every
# Bybit client of the process (funding, klines) draws on this one budget, to its ceiling.
REQUESTS_PER_5S = 600


def bybit_envelope_error(body: Any) -> EnvelopeError | None:
    if not isinstance(body, dict) or "retCode" not in body:
        return EnvelopeError(-1, f"not a Bybit envelope: {str(body)[:160]}")
    code = body["retCode"]
    if code == 0:
        return None
    return EnvelopeError(int(code), str(body.get("retMsg", "")), throttled=code == 10006)


# Bybit: `{"retCode","retMsg","result"}` envelopes (10006 means slow down), and HTTP 403 for an IP
# over its limit, banned for about ten minutes.
VENUE = Venue("bybit", "bybit_url", envelope_check=bybit_envelope_error, default_retry_after_s=1.0,
              ban_statuses=(403,), default_ban_s=600.0)


def parse_bybit_funding(body: Any, symbol: str) -> pl.DataFrame:
    """A Bybit funding-history envelope to FUNDING_RATES rows, ascending (Bybit sends newest first)."""
    where = f"{SOURCE} {symbol}"
    result = body.get("result") if isinstance(body, dict) else None
    rows = result.get("list") if isinstance(result, dict) else None
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected {{\"result\": {{\"list\": [...]}}}}, got {str(body)[:160]}")

    def read(row: Any) -> tuple:
        same_symbol(row, "symbol", symbol)
        return int(row["fundingRateTimestamp"]), float(row["fundingRate"])

    times, rates = read_columns(rows, where, "funding", read, 2)
    if any(b >= a for a, b in zip(times, times[1:], strict=False)):
        raise MalformedResponse(where, "rows are not newest first, each once")
    return funding_frame("bybit", symbol, times[::-1], rates[::-1])


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


class BybitFundingSource(ReadsWholeWindows, UpstreamClient):
    """Bybit funding settlements of one window (linear perpetuals), paged backwards."""

    def __init__(
        self, base_url: str, *, max_attempts: int = 5, backoff_base_s: float = 0.5,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ):
        self.rejected = []
        self.failures: list[PieceFailure] = []  # Bybit keeps the whole history: none so far
        self.rows_by_source = {"archive": 0, "rest": 0}
        self._http = VENUE.http(
            SOURCE, base_url, RateLimit(REQUESTS_PER_5S, 5.0),
            max_concurrency=1, max_attempts=max_attempts, backoff_base_s=backoff_base_s, clock=clock, sleep=sleep,
        )

    @property
    def requests(self) -> int:
        return self.stats.requests

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """Settlements with funding_time in [start, end), ascending."""
        parts, upper = [], _ms(end) - 1
        while upper >= _ms(start):
            params = {"category": "linear", "symbol": symbol, "startTime": _ms(start), "endTime": upper, "limit": PAGE_LIMIT}
            body, _ = await self._http.get_json(FUNDING_PATH, params, 1)
            page = parse_bybit_funding(body, symbol)
            if page.height:
                first, last = _ms(page["funding_time"][0]), _ms(page["funding_time"][-1])
                if first < _ms(start) or last > upper:
                    raise MalformedResponse(f"{SOURCE} {symbol}", f"asked for [{_ms(start)}, {upper}] ms, got {first} to {last}")
                parts.append(page)
            if page.height < PAGE_LIMIT:
                break
            upper = first - 1
        frame = pl.concat(parts[::-1]) if parts else FUNDING_RATES.empty_frame()
        self.rows_by_source["rest"] += frame.height
        return frame
