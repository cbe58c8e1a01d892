"""OKX's public funding-rate history (`/api/v5/public/funding-rate-history`) and candles
(`/api/v5/market/history-candles`, `/api/v5/market/candles`), as OKX serves them.

Wire facts (UPSTREAMS.md): the envelope `{"code":"0","msg":"","data":[…]}` with every value a
string and times in ms; rows newest first, `after` = older than, `before` = newer than, `limit`
1..400 (default 400); only about three months kept. Errors: 51001 "instrument doesn't exist"
with HTTP 200, 51000 parameter errors with 400, 50011 Too Many Requests with 429 beyond 10
requests per 2 s (per IP and instrument).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator.candles import FUNDING_INTERVAL_MS, string_rows, synthetic_candles, synthetic_funding
from marketdata_assets.emulator.scenario import FailureBudget
from marketdata_assets.emulator.config import EmulatorConfig

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# OKX's bar names: (length ms, offset of the grid from UTC midnight). Plain 6H, 12H and 1D follow UTC+8.
OKX_BARS = {"1m": (60_000, 0), "3m": (180_000, 0), "5m": (300_000, 0), "15m": (900_000, 0), "30m": (1_800_000, 0),
            "1H": (_HOUR_MS, 0), "2H": (2 * _HOUR_MS, 0), "4H": (4 * _HOUR_MS, 0), "6Hutc": (6 * _HOUR_MS, 0),
            "12Hutc": (12 * _HOUR_MS, 0), "1Dutc": (_DAY_MS, 0), "6H": (6 * _HOUR_MS, -8 * _HOUR_MS),
            "12H": (12 * _HOUR_MS, -8 * _HOUR_MS), "1D": (_DAY_MS, -8 * _HOUR_MS)}



def okx_rows(market: str, inst_id: str, step: int, opens: np.ndarray, now_ms: int) -> orjson.Fragment:
    """OKX's candle rows (`[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`, strings) of the
    bars opening at `opens`, as REST pages and the `candle` channel send them; the bar still
    forming at `now_ms` is cut there, with confirm "0"."""
    binance_symbol = inst_id.removesuffix("-SWAP").replace("-", "")
    block = synthetic_candles(market, binance_symbol, step, opens, now_ms)
    venue = 1.0002  # OKX's prices sit a little off Binance's
    contracts = 100.0 if market == "perp" else 1.0  # a BTC-USDT-SWAP contract is 0.01 BTC
    o, h, lo, c = (np.round(v * venue, 1) for v in (block.open, block.high, block.low, block.close))
    base = block.volume
    quote = base * (o + c) / 2
    vol, vol_ccy = (base * contracts, base) if market == "perp" else (base, quote)
    confirm = ["0" if opened + step > now_ms else "1" for opened in opens.tolist()]
    return string_rows(opens, *((v, 1) for v in (o, h, lo, c)), (vol, 4), (vol_ccy, 6), (quote, 5), confirm)


class OkxError(Exception):
    def __init__(self, status: int, code: str, msg: str):
        self.status, self.code, self.msg = status, code, msg


def _envelope(data: list | orjson.Fragment, code: str = "0", msg: str = "") -> bytes:
    return orjson.dumps({"code": code, "msg": msg, "data": data})


def _ms_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise OkxError(400, "51000", f"Parameter {name} error")
    return int(raw)


class OkxEmulator:
    def __init__(self, config: EmulatorConfig, clock=time.time):
        self.config = config
        self.clock = clock
        self._window: dict[str, tuple[int, int]] = {}  # instId -> (2-second window, requests in it)
        self.answers: Counter[str] = Counter()

    def routes(self) -> list[Route]:
        return [Route("/api/v5/public/funding-rate-history", self._funding_history),
                Route("/api/v5/market/history-candles", self._history_candles),
                Route("/api/v5/market/candles", self._candles)]

    # ---- klines ------------------------------------------------------------------------------

    def _limited(self, name: str, per_2s: int) -> Response | None:
        window = int(self.clock() // 2)
        seen_window, used = self._window.get(name, (window, 0))
        used = used + 1 if seen_window == window else 1
        self._window[name] = (window, used)
        if used > per_2s:
            return self._respond(429, _envelope([], "50011", "Too Many Requests"))
        return None

    async def _history_candles(self, request: Request) -> Response:
        return self._limited("history-candles", self.config.okx_history_candles_per_2s) or \
            self._answer_candles(request, history=True)

    async def _candles(self, request: Request) -> Response:
        return self._limited("candles", self.config.okx_candles_per_2s) or self._answer_candles(request, history=False)

    def _answer_candles(self, request: Request, history: bool) -> Response:
        try:
            return self._respond(200, self._candles_body(request, history))
        except OkxError as exc:
            return self._respond(exc.status, _envelope([], exc.code, exc.msg))

    def _candles_body(self, request: Request, history: bool) -> bytes:
        """Bars of one instrument newest first: `after` older than, `before` newer than (ms, both
        exclusive); history-candles at most 100 a page whatever `limit` says (up to 300 accepted),
        candles only the newest 1,440 bars. The forming bar is sent with confirm "0"."""
        inst_id = request.query_params.get("instId", "")
        if not inst_id:
            raise OkxError(400, "50014", "Parameter instId can not be empty.")
        market = "perp" if inst_id.endswith("-SWAP") else "spot"
        listed = (self.config.okx_listings if market == "perp" else self.config.okx_spot_listings).get(inst_id)
        if listed is None:
            raise OkxError(200, "51001", "Instrument ID does not exist.")
        bar = request.query_params.get("bar", "1m")
        if bar not in OKX_BARS:
            raise OkxError(400, "51000", "Parameter bar error")
        step, offset = OKX_BARS[bar]
        after, before = _ms_param(request, "after"), _ms_param(request, "before")
        limit = _ms_param(request, "limit") or 100
        if not 1 <= limit <= 300:
            raise OkxError(400, "51000", "Parameter limit error")
        limit = min(limit, 100 if history else 300)
        now_ms = int(self.clock() * 1000)

        def floor(ms: int) -> int:
            return (ms - offset) // step * step + offset

        newest = floor(now_ms)
        oldest = -(-(listed - offset) // step) * step + offset
        if not history:
            oldest = max(oldest, newest - 1439 * step)
        if after is not None:
            newest = min(newest, floor(after - 1))
        if before is not None:
            oldest = max(oldest, floor(before) + step)
        if newest < oldest:
            return _envelope([])
        opens = np.arange(newest, max(oldest, newest - (limit - 1) * step) - 1, -step, dtype=np.int64)
        return _envelope(okx_rows(market, inst_id, step, opens, now_ms))

    def _respond(self, status: int, body: bytes) -> Response:
        self.answers[str(status)] += 1
        return Response(body, status_code=status, media_type="application/json")

    async def _funding_history(self, request: Request) -> Response:
        inst_id = request.query_params.get("instId", "")
        window = int(self.clock() // 2)
        seen_window, used = self._window.get(inst_id, (window, 0))
        used = used + 1 if seen_window == window else 1
        self._window[inst_id] = (window, used)
        if used > self.config.okx_funding_requests_per_2s:
            return self._respond(429, _envelope([], "50011", "Too Many Requests"))
        try:
            return self._respond(200, self._funding_body(request, inst_id))
        except OkxError as exc:
            return self._respond(exc.status, _envelope([], exc.code, exc.msg))

    def _funding_body(self, request: Request, inst_id: str) -> bytes:
        if not inst_id:
            raise OkxError(400, "50014", "Parameter instId can not be empty.")
        listed = self.config.okx_listings.get(inst_id)
        if listed is None:
            raise OkxError(200, "51001", "Instrument ID does not exist.")  # HTTP 200, as OKX answers it
        after, before = _ms_param(request, "after"), _ms_param(request, "before")
        limit = _ms_param(request, "limit") or 400
        if not 1 <= limit <= 400:
            raise OkxError(400, "51000", "Parameter limit error")
        now_ms = int(self.clock() * 1000)
        kept_from = max(listed, now_ms - self.config.okx_funding_retention_days * _DAY_MS)
        interval = FUNDING_INTERVAL_MS
        first = -(-kept_from // interval) * interval
        newest = now_ms // interval * interval
        if after is not None:
            newest = min(newest, (after - 1) // interval * interval)
        oldest = first if before is None else max(first, (before // interval + 1) * interval)
        if newest < oldest:
            return _envelope([])
        marks = np.arange(newest, max(oldest, newest - (limit - 1) * interval) - 1, -interval, dtype=np.int64)
        block = synthetic_funding(inst_id, marks, venue="okx")
        rows = [
            {"fundingRate": f"{rate:.8f}".rstrip("0").rstrip("."), "fundingTime": str(t), "instId": inst_id,
             "instType": "SWAP", "method": "current_period", "realizedRate": f"{rate:.8f}".rstrip("0").rstrip(".")}
            for t, rate in zip(block.funding_time.tolist(), block.funding_rate.tolist(), strict=True)
        ]
        return _envelope(rows)

    def stats(self) -> dict:
        return {"answers": dict(sorted(self.answers.items()))}


def build(config: EmulatorConfig, failures: FailureBudget, clock=time.time):
    """This upstream's emulator, for the server (emulator/server.py) to mount as `okx`."""
    return OkxEmulator(config, clock)
