"""Deribit's public API v2 (www.deribit.com/api/v2) for option chains, as JSON-RPC over HTTP GET:

- `GET /api/v2/public/get_instruments?currency=BTC|ETH&kind=option[&expired=false]` →
  `{"jsonrpc":"2.0","result":[{instrument_name "BTC-27DEC24-100000-C", kind, option_type call|put,
  strike, expiration_timestamp (ms, 08:00 UTC), creation_timestamp, base_currency, contract_size 1,
  settlement_period day|week|month, is_active, …}], "usIn", "usOut", "usDiff", "testnet": false}`.
  Limited to a burst of 5, then one request every 10 s (a token bucket per IP).
- `GET /api/v2/public/get_book_summary_by_currency?currency=…&kind=option` → one entry per live
  option: instrument_name, open_interest (coins), mark_iv (percent), mark_price (in the currency),
  underlying_price, underlying_index, bid_price, ask_price, volume, creation_timestamp (ms, now).
  No greeks. At most 20 requests a second.
- Errors: `{"jsonrpc":"2.0","error":{"code":10028,"message":"too_many_requests"},"usIn",…}` with
  HTTP 429 past a limit; `-32602 Invalid params` (HTTP 400) for a currency or kind it has not.

The chain, at the clock's moment: weekly expiries (the next four Fridays), monthly (the last
Friday of the next three months) and quarterly (the last Friday of March, June, September and
December, the next four), all at 08:00 UTC; strikes on Deribit's grid around a spot that moves
with time (BTC 1,000 apart, ETH 50); implied volatility with a smile; open interest largest near
the money. Tests read `requests` (by path) and `answers` (by status), and set `refuse_next`.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import zlib
from collections import Counter

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# currency -> (spot level, strike step, strikes each side of the spot)
CURRENCIES = {"BTC": (95_000.0, 1_000.0, 12), "ETH": (3_400.0, 50.0, 12)}
INSTRUMENTS_BURST, INSTRUMENTS_EVERY_S = 5, 10.0
SUMMARIES_PER_SECOND = 20
_EXPIRY = dt.time(8, 0)


def spot_at(currency: str, moment: float) -> float:
    """The index's price at Unix second `moment`: a slow and a faster wave about the level."""
    level = CURRENCIES[currency][0]
    hours = moment / 3_600
    return round(level * (1 + 0.08 * math.sin(hours / 500.0) + 0.01 * math.sin(hours / 5.0)), 2)


def _fridays_after(moment: dt.datetime) -> list[dt.datetime]:
    day = moment.date()
    first = day + dt.timedelta(days=(4 - day.weekday()) % 7)
    fridays = [dt.datetime.combine(first + dt.timedelta(weeks=n), _EXPIRY, dt.UTC) for n in range(60)]
    return [f for f in fridays if f > moment]


def expiries(moment: dt.datetime) -> dict[dt.datetime, str]:
    """The listed expiries at `moment` and their settlement period: four weeklies, three monthlies,
    four quarterlies (a monthly or quarterly Friday is not listed twice)."""
    fridays = _fridays_after(moment)
    found: dict[dt.datetime, str] = {f: "week" for f in fridays[:4]}
    last_fridays = [f for f, after in zip(fridays, fridays[1:], strict=False) if after.month != f.month]
    for friday in last_fridays[:3]:
        found[friday] = "month"
    for friday in [f for f in last_fridays if f.month in (3, 6, 9, 12)][:4]:
        found[friday] = "month"
    return dict(sorted(found.items()))


def instrument_name(currency: str, expiry: dt.datetime, strike: float, kind: str) -> str:
    return f"{currency}-{expiry.day}{_MONTHS[expiry.month - 1]}{expiry:%y}-{strike:g}-{kind[0].upper()}"


class DeribitEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.requests: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.refuse_next = 0  # answer this many requests with 10028, as when another client spent the budget
        self._tokens, self._refilled = float(INSTRUMENTS_BURST), clock()
        self._second = (-1, 0)

    def routes(self) -> list[Route]:
        return [Route("/api/v2/public/get_instruments", self.get_instruments),
                Route("/api/v2/public/get_book_summary_by_currency", self.get_book_summary_by_currency)]

    def _answer(self, result=None, error: dict | None = None, status: int = 200) -> Response:
        now_us = int(self.clock() * 1e6)
        body = {"jsonrpc": "2.0", **({"error": error} if error else {"result": result}), "usIn": now_us,
                "usOut": now_us + 150, "usDiff": 150, "testnet": False}
        self.answers[str(status if not error else error["code"])] += 1
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    def _too_many(self) -> Response:
        return self._answer(error={"code": 10028, "message": "too_many_requests"}, status=429)

    def _invalid(self, request: Request) -> Response | None:
        currency, kind = request.query_params.get("currency"), request.query_params.get("kind")
        if currency not in CURRENCIES:
            return self._answer(error={"code": -32602, "message": "Invalid params",
                                       "data": {"reason": "wrong format", "param": "currency"}}, status=400)
        if kind != "option":
            return self._answer(error={"code": -32602, "message": "Invalid params",
                                       "data": {"reason": "this emulator lists options only", "param": "kind"}}, status=400)
        return None

    def chain(self, currency: str, moment: float) -> list[dict]:
        """Every live option of `currency` at `moment`: its instrument fields and its book summary."""
        at = dt.datetime.fromtimestamp(moment, dt.UTC)
        spot = spot_at(currency, moment)
        _, step, each_side = CURRENCIES[currency]
        middle = round(spot / step) * step
        lines = []
        for expiry, period in expiries(at).items():
            years = (expiry - at).total_seconds() / (365 * 86_400)
            for n in range(-each_side, each_side + 1):
                strike = middle + n * step
                moneyness = math.log(strike / spot)
                iv = round(45.0 + 60.0 * moneyness * moneyness + 8.0 / (1 + 20 * years), 2)
                for kind in ("call", "put"):
                    name = instrument_name(currency, expiry, strike, kind)
                    seed = zlib.crc32(name.encode()) % 1000 / 1000
                    oi = round((2_000 if currency == "BTC" else 20_000) * math.exp(-30 * moneyness * moneyness)
                               * (0.5 + seed) / (1 + 4 * years), 1)
                    intrinsic = max(0.0, spot - strike if kind == "call" else strike - spot)
                    mark = round((intrinsic + 0.4 * spot * iv / 100 * math.sqrt(years)) / spot, 4)
                    lines.append({
                        "instrument": {
                            "instrument_name": name, "kind": "option", "option_type": kind, "strike": strike,
                            "expiration_timestamp": int(expiry.timestamp() * 1000),
                            "creation_timestamp": int((expiry - dt.timedelta(days=120)).timestamp() * 1000),
                            "base_currency": currency, "quote_currency": currency, "counter_currency": "USD",
                            "settlement_currency": currency, "contract_size": 1.0, "settlement_period": period,
                            "is_active": True, "tick_size": 0.0001, "min_trade_amount": 0.1,
                        },
                        "summary": {
                            "instrument_name": name, "open_interest": oi, "mark_iv": iv, "mark_price": mark,
                            "underlying_price": round(spot * (1 + 0.01 * years), 2),
                            "underlying_index": f"{currency}-{expiry.day}{_MONTHS[expiry.month - 1]}{expiry:%y}",
                            "bid_price": round(mark * 0.98, 4), "ask_price": round(mark * 1.02, 4),
                            "volume": round(oi * 0.05, 1), "interest_rate": 0.0, "base_currency": currency,
                            "quote_currency": currency, "creation_timestamp": int(moment * 1000),
                        },
                    })
        return lines

    async def get_instruments(self, request: Request) -> Response:
        self.requests["get_instruments"] += 1
        now = self.clock()
        self._tokens = min(INSTRUMENTS_BURST, self._tokens + (now - self._refilled) / INSTRUMENTS_EVERY_S)
        self._refilled = now
        if self._tokens < 1 or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return self._too_many()
        self._tokens -= 1
        invalid = self._invalid(request)
        if invalid is not None:
            return invalid
        return self._answer([line["instrument"] for line in self.chain(request.query_params["currency"], now)])

    async def get_book_summary_by_currency(self, request: Request) -> Response:
        self.requests["get_book_summary_by_currency"] += 1
        now = self.clock()
        second, count = self._second
        self._second = (int(now), (count if second == int(now) else 0) + 1)
        if self._second[1] > SUMMARIES_PER_SECOND or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return self._too_many()
        invalid = self._invalid(request)
        if invalid is not None:
            return invalid
        return self._answer([line["summary"] for line in self.chain(request.query_params["currency"], now)])

    def stats(self) -> dict:
        return {"requests": dict(self.requests), "answers": dict(sorted(self.answers.items()))}


def build(config, failures, clock=time.time) -> DeribitEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `deribit`."""
    return DeribitEmulator(clock)
