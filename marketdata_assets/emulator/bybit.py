"""Bybit's funding-rate history (`/v5/market/funding/history`) and klines (`/v5/market/kline`:
category spot|linear, `start`/`end` ms, `limit` 1..1000, rows `[start, open, high, low, close,
volume, turnover]` newest first with the forming bar cut at now), as Bybit serves them.

Wire facts (UPSTREAMS.md): the envelope `{"retCode":0,"retMsg":"OK","result":{"category","list":[…]},
"retExtInfo":{},"time":…}`; rows `{"symbol","fundingRate","fundingRateTimestamp"}` (strings, ms),
newest first; `limit` 1..200 (default 200); `startTime` without `endTime` is an error (10001),
as is an unknown symbol or category. Over the IP limit (600 requests / 5 s): HTTP 403 and a ban;
`bybit_requests_per_s`, when set, answers retCode 10006 "Too many visits!" beyond it.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator.candles import FUNDING_INTERVAL_MS, string_rows, synthetic_candles, synthetic_funding
from marketdata_assets.emulator.scenario import FailureBudget
from marketdata_assets.emulator.config import EmulatorConfig


# Bybit's kline intervals (minutes, D, W) and their length in ms
KLINE_INTERVALS = {**{str(m): m * 60_000 for m in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720)}, "D": 86_400_000}



def bybit_values(category: str, symbol: str, step: int, opens: np.ndarray, now_ms: int) -> tuple[np.ndarray, ...]:
    """open, high, low, close, volume and turnover of the bars opening at `opens` (prices to 0.01,
    volumes to 1e-5, turnover to 1e-4), as REST pages and the `kline` topic send them."""
    block = synthetic_candles("perp" if category == "linear" else "spot", symbol, step, opens, now_ms)
    venue = 0.9998  # Bybit's prices sit a little off Binance's
    o, h, lo, c = (np.round(v * venue, 2) for v in (block.open, block.high, block.low, block.close))
    volume = np.round(block.volume, 5)
    return o, h, lo, c, volume, np.round(volume * (o + c) / 2, 4)


class BybitError(Exception):
    def __init__(self, code: int, msg: str):
        self.code, self.msg = code, msg


class BybitEmulator:
    # Pages of closed bars answered lately, kept as written: the same request is answered again
    # without building it (what `make bench` measures is the client, as with the archive's files).
    PAGES_KEPT = 2048

    def __init__(self, config: EmulatorConfig, clock=time.time):
        self.config = config
        self.clock = clock
        self._pages: OrderedDict[tuple, orjson.Fragment] = OrderedDict()
        self._five_seconds = (-1, 0)
        self._second = (-1, 0)
        self.banned_until = 0.0
        self.answers: Counter[str] = Counter()

    def routes(self) -> list[Route]:
        return [Route("/v5/market/funding/history", self._funding_history), Route("/v5/market/kline", self._kline)]

    def _envelope(self, code: int, msg: str, result: dict, now: float, status: int = 200, headers=None) -> Response:
        self.answers[str(status) if code == 0 else f"{status}/{code}"] += 1
        body = orjson.dumps({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": int(now * 1000)})
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def _count(self, slot: tuple[int, int], window: int) -> tuple[int, int]:
        return (window, slot[1] + 1) if slot[0] == window else (window, 1)

    async def _funding_history(self, request: Request) -> Response:
        now = self.clock()
        refused = self._refused(now)
        if refused is not None:
            return refused
        try:
            return self._envelope(0, "OK", self._funding_result(request, now), now)
        except BybitError as exc:
            return self._envelope(exc.code, exc.msg, {}, now)

    async def _kline(self, request: Request) -> Response:
        now = self.clock()
        refused = self._refused(now)
        if refused is not None:
            return refused
        try:
            return self._envelope(0, "OK", self._kline_result(request, now), now)
        except BybitError as exc:
            return self._envelope(exc.code, exc.msg, {}, now)

    def _kline_result(self, request: Request, now: float) -> dict:
        """Bars opening in [start, end] (ms), newest first, at most `limit` (1..1000, default 200)
        of the newest; the bar still forming is included, cut at now."""
        params = request.query_params
        category, symbol, interval = params.get("category", ""), params.get("symbol", ""), params.get("interval", "")
        listings = {"spot": self.config.bybit_spot_listings, "linear": self.config.bybit_listings}.get(category)
        if listings is None:
            raise BybitError(10001, "params error: category only support spot, linear or inverse")
        listed = listings.get(symbol)
        if listed is None:
            raise BybitError(10001, "params error: symbol invalid")
        if interval not in KLINE_INTERVALS:
            raise BybitError(10001, "params error: interval invalid")
        step = KLINE_INTERVALS[interval]
        numbers = {}
        for name in ("start", "end", "limit"):
            raw = params.get(name)
            if raw not in (None, "") and not raw.isdigit():
                raise BybitError(10001, f"params error: {name} invalid")
            numbers[name] = int(raw) if raw not in (None, "") else None
        limit = numbers["limit"] or 200
        if not 1 <= limit <= 1000:
            raise BybitError(10001, "params error: limit must be between 1 and 1000")
        now_ms = int(now * 1000)
        newest = min(now_ms, numbers["end"] if numbers["end"] is not None else now_ms) // step * step
        oldest = -(-max(listed, numbers["start"] or 0) // step) * step
        if newest < oldest:
            return {"category": category, "symbol": symbol, "list": []}
        opens = np.arange(newest, max(oldest, newest - (limit - 1) * step) - 1, -step, dtype=np.int64)
        page = (category, symbol, step, newest, len(opens))
        rows = self._pages.get(page)
        if rows is None:
            o, h, lo, c, volume, turnover = bybit_values(category, symbol, step, opens, now_ms)
            rows = string_rows(opens, *((v, 2) for v in (o, h, lo, c)), (volume, 5), (turnover, 4))
            if newest + step <= now_ms:  # every bar closed: the same page from now on
                self._pages[page] = rows
                if len(self._pages) > self.PAGES_KEPT:
                    self._pages.popitem(last=False)
        else:
            self._pages.move_to_end(page)
        return {"category": category, "symbol": symbol, "list": rows}

    def _refused(self, now: float) -> Response | None:
        """403 (and a ban) over the IP limit; retCode 10006 over the per-second one, when set."""
        if now < self.banned_until:
            self.answers["403"] += 1
            return Response("access too frequent", status_code=403, media_type="text/plain")
        self._five_seconds = self._count(self._five_seconds, int(now // 5))
        if self._five_seconds[1] > self.config.bybit_requests_per_5s:
            self.banned_until = now + self.config.bybit_ban_seconds
            self.answers["403"] += 1
            return Response("access too frequent", status_code=403, media_type="text/plain")
        self._second = self._count(self._second, int(now))
        per_second = self.config.bybit_requests_per_s
        if per_second is not None and self._second[1] > per_second:
            reset = str((int(now) + 1) * 1000)
            return self._envelope(10006, "Too many visits!", {}, now, headers={
                "X-Bapi-Limit": str(per_second), "X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": reset})
        return None

    def _funding_result(self, request: Request, now: float) -> dict:
        params = request.query_params
        category, symbol = params.get("category", ""), params.get("symbol", "")
        if category not in ("linear", "inverse"):
            raise BybitError(10001, "params error: category only support linear or inverse")
        listed = self.config.bybit_listings.get(symbol)
        if listed is None:
            raise BybitError(10001, "params error: symbol invalid")

        def number(name: str) -> int | None:
            raw = params.get(name)
            if raw in (None, ""):
                return None
            if not raw.isdigit():
                raise BybitError(10001, f"params error: {name} invalid")
            return int(raw)

        start, end, limit = number("startTime"), number("endTime"), number("limit") or 200
        if start is not None and end is None:
            raise BybitError(10001, "params error: endTime is required when startTime is passed")
        if not 1 <= limit <= 200:
            raise BybitError(10001, "params error: limit must be between 1 and 200")
        if start is not None and end is not None and start > end:
            raise BybitError(10001, "params error: startTime must be less than endTime")
        interval = FUNDING_INTERVAL_MS
        now_ms = int(now * 1000)
        newest = min(now_ms, end if end is not None else now_ms) // interval * interval
        oldest = -(-max(listed, start or 0) // interval) * interval
        if newest < oldest:
            return {"category": category, "list": []}
        marks = np.arange(newest, max(oldest, newest - (limit - 1) * interval) - 1, -interval, dtype=np.int64)
        block = synthetic_funding(symbol, marks, venue="bybit")
        rows = [
            {"symbol": symbol, "fundingRate": f"{rate:.8f}".rstrip("0").rstrip("."), "fundingRateTimestamp": str(t)}
            for t, rate in zip(block.funding_time.tolist(), block.funding_rate.tolist(), strict=True)
        ]
        return {"category": category, "list": rows}

    def stats(self) -> dict:
        return {"answers": dict(sorted(self.answers.items()))}


def build(config: EmulatorConfig, failures: FailureBudget, clock=time.time):
    """This upstream's emulator, for the server (emulator/server.py) to mount as `bybit`."""
    return BybitEmulator(config, clock)
