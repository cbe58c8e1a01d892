"""Binance spot (`/api/v3`) and USD-M futures (`/fapi/v1`) kline endpoints, as Binance serves them.

Wire facts (UPSTREAMS.md): 12-field rows with decimal strings and ms times, ascending; the forming
candle included; `startTime`/`endTime`/`limit` semantics; request weight per UTC minute with
`X-MBX-USED-WEIGHT-1M` on every answer; 429 + Retry-After over budget, 418 for a client that
keeps going; error bodies `{"code": -1121, "msg": "Invalid symbol."}`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator.candles import (
    FUNDING_INTERVAL_MS,
    CandleBlock,
    synthetic_funding,
    synthetic_stats,
)
from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import FailureBudget

INTERVALS_MS = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


@dataclass
class WeightLedger:
    """Per-IP request weight of one API, counted per UTC clock minute, with Binance's penalties."""

    limit: int
    config: EmulatorConfig
    minute: int = -1
    used: int = 0
    backoff_from: float = 0.0
    backoff_until: float = 0.0
    violations: int = 0
    banned_until: float = 0.0
    weight_by_minute: Counter[int] = field(default_factory=Counter)
    refused_by_minute: Counter[tuple[int, int]] = field(default_factory=Counter)  # (minute, status)
    answers: Counter[int] = field(default_factory=Counter)

    def charge(self, weight: int, now: float) -> tuple[int, float]:
        """Count a request; (status, retry_after_s): 200 to serve, 429 over budget, 418 banned."""
        status, retry_after = self._charge(weight, now)
        if status != 200:
            self.refused_by_minute[(int(now // 60), status)] += 1
        return status, retry_after

    def _charge(self, weight: int, now: float) -> tuple[int, float]:
        if now < self.banned_until:
            return 418, self.banned_until - now
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0
        if now < self.backoff_until and now - self.backoff_from > self.config.ban_grace_s:
            self.violations += 1
            if self.violations >= self.config.ban_after_violations:
                self.banned_until = now + self.config.ban_seconds
                return 418, float(self.config.ban_seconds)
        self.used += weight
        self.weight_by_minute[minute] += weight
        if self.used > self.limit:
            if now >= self.backoff_until:
                self.backoff_from, self.violations = now, 0
            self.backoff_until = (minute + 1) * 60
            return 429, self.backoff_until - now
        return 200, 0.0


@dataclass
class RequestLedger:
    """Requests per IP counted in fixed windows (the futures statistics: 1,000 per 5 minutes)."""

    limit: int
    window_s: int
    window: int = -1
    used: int = 0
    answers: Counter[int] = field(default_factory=Counter)

    def charge(self, now: float) -> float:
        """Count a request; 0 to serve it, else the seconds until the window ends (answer 429)."""
        window = int(now // self.window_s)
        if window != self.window:
            self.window, self.used = window, 0
        if self.used >= self.limit:
            return (window + 1) * self.window_s - now
        self.used += 1
        return 0.0


# `/futures/data/<endpoint>`: which statistic each serves.
STATS_ENDPOINTS = {
    "openInterestHist": "open_interest",
    "globalLongShortAccountRatio": "global_account",
    "topLongShortAccountRatio": "top_trader_account",
    "topLongShortPositionRatio": "top_trader_position",
    "takerlongshortRatio": "taker_volume",
}
STATS_PERIODS_MS = {name: INTERVALS_MS[name] for name in ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")}
STATS_RETENTION_MS = 30 * 86_400_000


class BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str):
        self.status, self.code, self.msg = status, code, msg


def _error_body(code: int, msg: str) -> bytes:
    return orjson.dumps({"code": code, "msg": msg})


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise BinanceError(
            400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(raw)


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BinanceError(
            400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
        )
    return value


def select_open_times(
    first_open: int, interval: int, now_ms: int, start: int | None, end: int | None, limit: int,
    traded: Callable[[np.ndarray], np.ndarray] = lambda times: times,
) -> np.ndarray:
    """Open times Binance returns for these parameters: ascending, the forming bar included,
    at most `limit` of the bars `traded` keeps (an outage has none), from `start` or up to now."""
    first = first_open // interval * interval
    last = now_ms // interval * interval  # the bar forming now
    if end is not None:
        last = min(last, end // interval * interval)
    chunks: list[np.ndarray] = []
    wanted = limit
    if start is not None:
        cursor = max(first, -(-start // interval) * interval)
        while wanted > 0 and cursor <= last:
            upper = min(last, cursor + (wanted - 1) * interval)
            chunk = traded(np.arange(cursor, upper + 1, interval, dtype=np.int64))
            chunks.append(chunk)
            wanted -= len(chunk)
            cursor = upper + interval
        times = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
        return times[:limit]
    cursor = last
    while wanted > 0 and cursor >= first:
        lower = max(first, cursor - (wanted - 1) * interval)
        chunk = traded(np.arange(lower, cursor + 1, interval, dtype=np.int64))
        chunks.insert(0, chunk)
        wanted -= len(chunk)
        cursor = lower - interval
    times = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return times[len(times) - limit:] if len(times) > limit else times


def kline_rows_json(bars: CandleBlock, interval: int) -> bytes:
    """The JSON body of a klines answer: 12-field rows, decimal strings, ms times."""
    rows = [
        [
            int(t),
            f"{o:.8f}",
            f"{h:.8f}",
            f"{lo:.8f}",
            f"{c:.8f}",
            f"{v:.8f}",
            int(t) + interval - 1,
            f"{qv:.8f}",
            int(n),
            f"{tb:.8f}",
            f"{tq:.8f}",
            "0",
        ]
        for t, o, h, lo, c, v, qv, n, tb, tq in zip(
            bars.open_time.tolist(),
            bars.open.tolist(),
            bars.high.tolist(),
            bars.low.tolist(),
            bars.close.tolist(),
            bars.volume.tolist(),
            bars.quote_volume.tolist(),
            bars.trades.tolist(),
            bars.taker_buy_volume.tolist(),
            bars.taker_buy_quote_volume.tolist(),
            strict=True,
        )
    ]
    return orjson.dumps(rows)


# Binance's documented weight of one klines request, by the `limit` asked for: (up to, weight).
# Kept apart from the client's copy on purpose: a wrong table in one must fail the tests.
SPOT_KLINES_WEIGHT = ((1000, 2),)
FUTURES_KLINES_WEIGHT = ((99, 1), (499, 2), (1000, 5), (1500, 10))


@dataclass(frozen=True)
class KlinesApi:
    market: str  # 'spot' | 'perp'
    prefix: str  # '/api/v3' | '/fapi/v1'
    max_limit: int
    weights: tuple[tuple[int, int], ...]

    def weight(self, limit: int) -> int:
        return next((w for upto, w in self.weights if limit <= upto), self.weights[-1][1])


SPOT_API = KlinesApi("spot", "/api/v3", 1000, SPOT_KLINES_WEIGHT)
FUTURES_API = KlinesApi("perp", "/fapi/v1", 1500, FUTURES_KLINES_WEIGHT)


class BinanceEmulator:
    """State of the Binance emulator: one weight ledger per API, fault randomness, counters."""

    def __init__(self, config: EmulatorConfig, failures: FailureBudget, clock=time.time):
        self.config = config
        self.clock = clock
        self.failures = failures
        self.ledgers = {
            "spot": WeightLedger(config.spot_weight_limit, config),
            "perp": WeightLedger(config.futures_weight_limit, config),
        }
        self.stats_ledger = RequestLedger(config.stats_request_limit, 300)
        self._random = random.Random(config.faults.seed)

    def routes(self) -> list[Route]:
        routes = [
            Route("/api/v3/exchangeInfo", self._exchange_info_endpoint()),
            Route("/fapi/v1/fundingRate", self._funding_endpoint()),
            *(Route(f"/futures/data/{name}", self._stats_endpoint(name)) for name in STATS_ENDPOINTS),
        ]
        for api in (SPOT_API, FUTURES_API):
            routes += [
                Route(f"{api.prefix}/klines", self._klines_endpoint(api)),
                Route(f"{api.prefix}/ping", self._simple_endpoint(api, lambda now: {})),
                Route(
                    f"{api.prefix}/time",
                    self._simple_endpoint(api, lambda now: {"serverTime": int(now * 1000)}),
                ),
            ]
        return routes

    def _respond(self, api: KlinesApi, status: int, body: bytes, retry_after: float = 0.0) -> Response:
        ledger = self.ledgers[api.market]
        ledger.answers[status] += 1
        headers = {"X-MBX-USED-WEIGHT-1M": str(ledger.used), "X-MBX-USED-WEIGHT": str(ledger.used)}
        if retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def _admit(self, api: KlinesApi, weight: int) -> Response | None:
        """Charge the weight; the 429/418 answer if the request is not to be served."""
        now = self.clock()
        status, retry_after = self.ledgers[api.market].charge(weight, now)
        if status == 429:
            limit = self.ledgers[api.market].limit
            return self._respond(
                api,
                429,
                _error_body(
                    -1003,
                    f"Too much request weight used; current limit is {limit} request weight per "
                    "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
                ),
                retry_after,
            )
        if status == 418:
            until_ms = int((now + retry_after) * 1000)
            return self._respond(
                api,
                418,
                _error_body(
                    -1003,
                    f"Way too much request weight used; IP banned until {until_ms}. Please use "
                    "WebSocket Streams for live updates to avoid bans.",
                ),
                retry_after,
            )
        return None

    def _simple_endpoint(self, api: KlinesApi, payload, weight: int = 1):
        async def endpoint(request: Request) -> Response:
            refused = self._admit(api, weight)
            if refused is not None:
                return refused
            return self._respond(api, 200, orjson.dumps(payload(self.clock())))

        return endpoint

    def _exchange_info_endpoint(self):
        """Spot `/api/v3/exchangeInfo` (weight 20): the listed symbols with their price and lot
        filters, enough for a client such as ccxt to load its markets."""

        def payload(now: float) -> dict:
            symbols = [
                {
                    "symbol": symbol,
                    "status": "TRADING",
                    "baseAsset": symbol.removesuffix("USDT"),
                    "baseAssetPrecision": 8,
                    "quoteAsset": "USDT",
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": True,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
                        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "maxNotional": "9000000.00000000"},
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT", "MARGIN"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
                }
                for market, symbol in sorted(self.config.listings)
                if market == "spot"
            ]
            return {
                "timezone": "UTC",
                "serverTime": int(now * 1000),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                     "limit": self.ledgers["spot"].limit},
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            }

        return self._simple_endpoint(SPOT_API, payload, weight=20)

    def _funding_endpoint(self):
        """USD-M `/fapi/v1/fundingRate`: settlements every 8 hours from the listing, ascending;
        `limit` 1..1000 (default 100); without startTime the newest `limit` up to endTime."""

        async def endpoint(request: Request) -> Response:
            refused = self._admit(FUTURES_API, 1)
            if refused is not None:
                return refused
            try:
                body = self._funding_body(request)
            except BinanceError as exc:
                return self._respond(FUTURES_API, exc.status, _error_body(exc.code, exc.msg))
            return self._respond(FUTURES_API, 200, body)

        return endpoint

    def _perp_listing(self, symbol: str) -> int:
        """The USD-M listing time (ms) of `symbol`; -1121 for one not listed."""
        listed = self.config.listings.get(("perp", symbol))
        if listed is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return listed

    def _funding_body(self, request: Request) -> bytes:
        symbol = _required(request, "symbol")
        start, end = _int_param(request, "startTime"), _int_param(request, "endTime")
        limit = _int_param(request, "limit") or 100
        listed = self._perp_listing(symbol)
        if not 1 <= limit <= 1000:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise BinanceError(400, -1023, "Start time is greater than end time.")
        interval = FUNDING_INTERVAL_MS
        first = -(-listed // interval) * interval
        now_ms = int(self.clock() * 1000)
        last = min(now_ms, end if end is not None else now_ms) // interval * interval
        # Settlements are reported up to 30 ms after their mark: look one mark further either way,
        # then keep the `limit` whose reported time is inside [startTime, endTime].
        if start is not None:
            lo = max(first, -(-(start - 30) // interval) * interval)
            marks = np.arange(lo, min(last, lo + limit * interval) + 1, interval, dtype=np.int64)
        else:
            marks = np.arange(max(first, last - limit * interval), last + 1, interval, dtype=np.int64)
        block = synthetic_funding(symbol, marks)
        keep = (block.funding_time >= (start or 0)) & (block.funding_time <= (end if end is not None else now_ms))
        rows = [
            {"symbol": symbol, "fundingTime": int(t), "fundingRate": f"{r:.8f}", "markPrice": f"{m:.8f}"}
            for t, r, m in zip(block.funding_time[keep].tolist(), block.funding_rate[keep].tolist(),
                               block.mark_price[keep].tolist(), strict=True)
        ]
        rows = rows[:limit] if start is not None else rows[-limit:]
        return orjson.dumps(rows)

    def _stats_endpoint(self, endpoint_name: str):
        """A USD-M futures statistic (`/futures/data/...`): ascending rows on the period's marks,
        only the last 30 days (an older startTime is refused), `limit` 1..500 (default 30), 1,000
        requests per 5 minutes per IP."""
        statistic = STATS_ENDPOINTS[endpoint_name]

        async def endpoint(request: Request) -> Response:
            ledger = self.stats_ledger
            wait = ledger.charge(self.clock())
            if wait:
                ledger.answers[429] += 1
                body = _error_body(-1003, f"Too many requests; current limit is {ledger.limit} requests per 5 MINUTE.")
                return Response(body, status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))},
                                media_type="application/json")
            try:
                status, body = 200, self._stats_body(statistic, request)
            except BinanceError as exc:
                status, body = exc.status, _error_body(exc.code, exc.msg)
            ledger.answers[status] += 1
            return Response(body, status_code=status, media_type="application/json")

        return endpoint

    def _stats_body(self, statistic: str, request: Request) -> bytes:
        symbol = _required(request, "symbol")
        period_name = _required(request, "period")
        start, end = _int_param(request, "startTime"), _int_param(request, "endTime")
        limit = _int_param(request, "limit") or 30
        listed = self._perp_listing(symbol)
        if period_name not in STATS_PERIODS_MS:
            raise BinanceError(400, -1130, "Data sent for parameter 'period' is not valid.")
        if not 1 <= limit <= 500:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise BinanceError(400, -1023, "Start time is greater than end time.")
        now_ms = int(self.clock() * 1000)
        kept_from = now_ms - STATS_RETENTION_MS
        if start is not None and start < kept_from:
            raise BinanceError(400, -1130, "parameter 'startTime' is invalid.")
        period = STATS_PERIODS_MS[period_name]
        first = -(-max(listed, kept_from, start or 0) // period) * period
        last = min(now_ms, end if end is not None else now_ms) // period * period
        if start is not None:
            times = np.arange(first, min(last, first + (limit - 1) * period) + 1, period, dtype=np.int64)
        else:
            times = np.arange(max(first, last - (limit - 1) * period), last + 1, period, dtype=np.int64)
        block = synthetic_stats(symbol, times)
        stamps = [str(t) if self.config.stats_timestamp_as_string else t for t in times.tolist()]
        if statistic == "open_interest":
            rows = [
                {"symbol": symbol, "sumOpenInterest": f"{oi:.8f}", "sumOpenInterestValue": f"{value:.8f}", "timestamp": t}
                for oi, value, t in zip(block.open_interest.tolist(), block.open_interest_value.tolist(), stamps, strict=True)
            ]
        elif statistic == "taker_volume":
            ratio, buy, sell = block.taker_volume
            rows = [
                {"buySellRatio": f"{r:.4f}", "buyVol": f"{b:.4f}", "sellVol": f"{v:.4f}", "timestamp": t}
                for r, b, v, t in zip(ratio.tolist(), buy.tolist(), sell.tolist(), stamps, strict=True)
            ]
        else:
            ratio, long, short = getattr(block, statistic)
            rows = [
                {"symbol": symbol, "longShortRatio": f"{r:.4f}", "longAccount": f"{a:.4f}",
                 "shortAccount": f"{b:.4f}", "timestamp": t}
                for r, a, b, t in zip(ratio.tolist(), long.tolist(), short.tolist(), stamps, strict=True)
            ]
        return orjson.dumps(rows)

    def _klines_endpoint(self, api: KlinesApi):
        async def endpoint(request: Request) -> Response:
            try:
                limit = _int_param(request, "limit")
            except BinanceError:
                limit = None
            limit = 500 if limit is None else limit
            refused = self._admit(api, api.weight(min(limit, api.max_limit)))
            if refused is not None:
                return refused
            faults = self.config.faults
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
            internal_error = _error_body(-1001, "Internal error; unable to process your request. Please try again.")
            if faults.server_error_rate and self._random.random() < faults.server_error_rate:
                return self._respond(api, 503, internal_error)
            try:
                interval, open_times, body = self._klines_body(api, request, limit)
            except BinanceError as exc:
                return self._respond(api, exc.status, _error_body(exc.code, exc.msg))
            if len(open_times) and self.failures.fails(int(open_times[0]), int(open_times[-1]) + interval):
                return self._respond(api, 503, internal_error)
            if faults.truncate_rate and self._random.random() < faults.truncate_rate:
                body = body[: max(1, len(body) // 2)]
            return self._respond(api, 200, body)

        return endpoint

    def _klines_body(self, api: KlinesApi, request: Request, limit: int) -> tuple[int, np.ndarray, bytes]:
        """(interval ms, open times, JSON body) of a klines answer."""
        symbol = _required(request, "symbol")
        interval_name = _required(request, "interval")
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        _int_param(request, "limit")
        if interval_name not in INTERVALS_MS:
            raise BinanceError(400, -1120, "Invalid interval.")
        first_open = self.config.listings.get((api.market, symbol))
        if first_open is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        if not 1 <= limit <= api.max_limit:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise BinanceError(400, -1023, "Start time is greater than end time.")
        interval = INTERVALS_MS[interval_name]
        now_ms = int(self.clock() * 1000)
        scenario = self.config.scenario
        open_times = select_open_times(
            first_open, interval, now_ms, start, end, limit,
            traded=lambda times: scenario.trading(api.market, interval, times),
        )
        bars = scenario.candles(api.market, symbol, interval_name, interval, open_times, now_ms=now_ms)
        return interval, open_times, kline_rows_json(bars, interval)

    def stats(self) -> dict:
        futures_data = {
            "futures_data": {
                "request_limit_5m": self.stats_ledger.limit,
                "answers": {str(k): v for k, v in sorted(self.stats_ledger.answers.items())},
            }
        }
        return futures_data | {
            market: {
                "weight_limit": ledger.limit,
                "used_this_minute": ledger.used,
                "answers": {str(k): v for k, v in sorted(ledger.answers.items())},
                "weight_by_minute": {str(k * 60): v for k, v in sorted(ledger.weight_by_minute.items())},
                "refused_by_minute": {
                    f"{minute * 60}/{status}": count
                    for (minute, status), count in sorted(ledger.refused_by_minute.items())
                },
            }
            for market, ledger in self.ledgers.items()
        }


def build(config: EmulatorConfig, failures: FailureBudget, clock=time.time):
    """This upstream's emulator, for the server (emulator/server.py) to mount as `binance`."""
    return BinanceEmulator(config, failures, clock)
