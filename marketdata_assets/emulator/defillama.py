"""DefiLlama's stablecoin chart, `GET /stablecoincharts/all` (stablecoins.llama.fi), as its
documentation and real answers show it.

- A JSON list, oldest first, one point a UTC day from 2017-11-29 to today: `{"date": "<Unix
  seconds at 00:00 UTC, a string>", "totalCirculating": {peg: units}, "totalUnreleased": {…},
  "totalCirculatingUSD": {peg: USD}, "totalMintedUSD": {…}, "totalBridgedToUSD": {…}}`.
- Pegs appear as they did: peggedUSD from the start, peggedEUR from 2018-09-10, peggedVAR (a
  basket) from 2020-08-01, peggedCHF from 2021-03-01. Points before 2020 are whole dollars.
- Today's point is there from 00:00 UTC and moves with each answer until the day ends.
- More than 500 requests in a minute: HTTP 429 with a plain-text body.

Tests shape the history through `missing_days` (days without a point) and `overrides` (day ->
peg -> the value served in totalCirculatingUSD, anything JSON can hold; None drops the peg).
"""

from __future__ import annotations

import datetime as dt
import math
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FIRST_DAY = dt.date(2017, 11, 29)
PER_MINUTE = 500
# peg -> (first day, USD price of one unit)
PEGS = {
    "peggedUSD": (FIRST_DAY, 1.0),
    "peggedEUR": (dt.date(2018, 9, 10), 1.08),
    "peggedVAR": (dt.date(2020, 8, 1), 1.0),
    "peggedCHF": (dt.date(2021, 3, 1), 1.12),
}
ROUNDED_BEFORE = dt.date(2020, 1, 1)
_DAY_S = 86_400


def supply_usd(peg: str, day: dt.date, fraction: float = 0.0) -> float:
    """A made-up but steady history: the USD peg from 1.4 bn to hundreds of billions, the others
    small; `fraction` of the day gone moves today's point."""
    first, _ = PEGS[peg]
    n = (day - first).days + fraction
    scale = {"peggedUSD": 1.4e9, "peggedEUR": 2.0e6, "peggedVAR": 5.0e6, "peggedCHF": 1.0e6}[peg]
    return scale * math.exp(0.00163 * n) * (1 + 0.03 * math.sin(n / 40.0))


class DefiLlamaEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.missing_days: set[dt.date] = set()
        self.overrides: dict[dt.date, dict[str, object]] = {}
        self.requests = 0
        self._minute = (-1, 0)

    def routes(self) -> list[Route]:
        return [Route("/stablecoincharts/all", self.chart)]

    async def chart(self, request: Request) -> Response:
        now = self.clock()
        minute, count = self._minute
        self._minute = (int(now // 60), (count if minute == int(now // 60) else 0) + 1)
        if self._minute[1] > PER_MINUTE:
            return Response("Too many requests", status_code=429, media_type="text/plain")
        self.requests += 1
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        points, day = [], FIRST_DAY
        while day <= today:
            if day not in self.missing_days:
                points.append(self._point(day, (now % _DAY_S) / _DAY_S if day == today else 0.0))
            day += dt.timedelta(days=1)
        return Response(orjson.dumps(points), media_type="application/json")

    def _point(self, day: dt.date, fraction: float) -> dict:
        usd: dict[str, object] = {}
        units: dict[str, object] = {}
        for peg, (first, price) in PEGS.items():
            if day < first:
                continue
            value = supply_usd(peg, day, fraction)
            usd[peg] = round(value) if day < ROUNDED_BEFORE else round(value, 2)
            units[peg] = round(value / price) if day < ROUNDED_BEFORE else round(value / price, 2)
        for peg, value in self.overrides.get(day, {}).items():
            if value is None:
                usd.pop(peg, None)
                units.pop(peg, None)
            else:
                usd[peg] = value
        stamp = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
        return {
            "date": str(stamp), "totalCirculating": units, "totalUnreleased": {peg: 0 for peg in units},
            "totalCirculatingUSD": usd, "totalMintedUSD": dict(usd), "totalBridgedToUSD": {peg: 0 for peg in usd},
        }

    def stats(self) -> dict:
        return {"requests": self.requests}


def build(config, failures, clock=time.time) -> DefiLlamaEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `defillama`."""
    return DefiLlamaEmulator(clock)
