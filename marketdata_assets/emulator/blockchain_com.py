"""blockchain.com's charts API (api.blockchain.info), `GET /charts/<name>`, for the charts Bitcoin's
market cap needs: `market-price` (USD), `total-bitcoins` (coins in circulation) and `market-cap`
(their product, USD).

- `format=json` (the only format served here); `timespan=<n><unit>` (days, weeks, months, years;
  `all`), `start=YYYY-MM-DD` (or Unix seconds): the span from `start`, or the span back from now
  without it; `sampled` defaults to true, which thins an answer to at most 1,500 points;
  `sampled=false` keeps one point a day.
- `{"status": "ok", "name", "unit", "period": "day", "description", "values": [{"x", "y"}]}`,
  oldest first, `x` Unix seconds at 00:00 UTC. Points from 2010-08-17; today's is not there until
  the day has ended.
- An unknown chart: HTTP 404 `{"error": "Chart not found"}`; a timespan it cannot read: HTTP 400
  `{"error": "Invalid timespan"}`.

Tests shape the history through `missing_days` (day -> set of chart names without that point)
and `overrides` ((chart, day) -> the `y` served instead).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FIRST_DAY = dt.date(2010, 8, 17)
GENESIS = dt.date(2009, 1, 3)
MAX_SAMPLED = 1_500
CHARTS = {
    "market-price": ("Market Price (USD)", "USD"),
    "total-bitcoins": ("Total Circulating Bitcoin", "BTC"),
    "market-cap": ("Market Capitalization (USD)", "USD"),
}
_UNITS = {"day": 1, "days": 1, "week": 7, "weeks": 7, "month": 30, "months": 30, "year": 365, "years": 365}


def coins(day: dt.date) -> float:
    """Coins mined by the start of `day`: 144 blocks a day from the genesis block, the subsidy
    halving every 210,000 blocks."""
    blocks, mined, subsidy = (day - GENESIS).days * 144, 0.0, 50.0
    while blocks > 0:
        era = min(blocks, 210_000)
        mined += era * subsidy
        blocks -= era
        subsidy /= 2
    return mined


def price(day: dt.date) -> float:
    """A made-up BTC price: from cents in 2010 to tens of thousands, with cycles."""
    years = (day - FIRST_DAY).days / 365.25
    return round(0.07 * math.exp(0.85 * years + 0.4 * math.sin(years * 1.6)), 2)


class ChartsEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.missing_days: dict[dt.date, set[str]] = {}
        self.overrides: dict[tuple[str, dt.date], object] = {}
        self.requests = 0

    def routes(self) -> list[Route]:
        return [Route("/charts/{name}", self.chart)]

    def _value(self, name: str, day: dt.date) -> object:
        if (name, day) in self.overrides:
            return self.overrides[name, day]
        if name == "market-price":
            return price(day)
        if name == "total-bitcoins":
            return coins(day)
        return round(price(day) * coins(day), 2)

    async def chart(self, request: Request) -> Response:
        self.requests += 1
        name = request.path_params["name"]
        if name not in CHARTS:
            return Response(orjson.dumps({"error": "Chart not found"}), status_code=404, media_type="application/json")
        params = request.query_params
        today = dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()
        span = params.get("timespan", "1year")
        matched = re.fullmatch(r"(\d*)\s*([a-z]+)", span)
        if span == "all":
            days = (today - FIRST_DAY).days
        elif matched and matched.group(2) in _UNITS:
            days = int(matched.group(1) or 1) * _UNITS[matched.group(2)]
        else:
            return Response(orjson.dumps({"error": "Invalid timespan"}), status_code=400, media_type="application/json")
        raw_start = params.get("start")
        if raw_start:
            try:
                first = (dt.datetime.fromtimestamp(int(raw_start), dt.UTC).date() if raw_start.isdigit()
                         else dt.date.fromisoformat(raw_start))
            except ValueError:
                return Response(orjson.dumps({"error": "Invalid start"}), status_code=400, media_type="application/json")
        else:
            first = today - dt.timedelta(days=days)
        first = max(first, FIRST_DAY)
        stop = min(first + dt.timedelta(days=days), today)  # today's point is not there yet
        wanted = [first + dt.timedelta(days=n) for n in range((stop - first).days)]
        wanted = [d for d in wanted if name not in self.missing_days.get(d, set())]
        if params.get("sampled", "true") != "false" and len(wanted) > MAX_SAMPLED:
            step = math.ceil(len(wanted) / MAX_SAMPLED)
            wanted = wanted[::step]
        values = [{"x": int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()), "y": self._value(name, d)}
                  for d in wanted]
        title, unit = CHARTS[name]
        body = {"status": "ok", "name": title, "unit": unit, "period": "day",
                "description": f"{title}, one point a day.", "values": values}
        return Response(orjson.dumps(body), media_type="application/json")

    def stats(self) -> dict:
        return {"requests": self.requests}


def build(config, failures, clock=time.time) -> ChartsEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `blockchain_com`."""
    return ChartsEmulator(clock)
