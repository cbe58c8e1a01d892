"""alternative.me's Fear & Greed endpoint, `GET /fng/`, as its documentation and real answers show it.

- `limit`: the newest N days (default 1; 0 = every day since 2018-02-01); `format=json` (the
  only format served here); `date_format` (`us`, `cn`, `kr`, `world`) turns `timestamp` into a date.
- Every field a string; `timestamp` is Unix seconds at 00:00 UTC; newest first; today's value is
  there from 00:00 UTC and carries `time_until_update` (seconds to the next), the only row that does.
- A bad parameter: HTTP 200, empty `data`, the reason in `metadata.error`.
- More than 60 requests in a minute: HTTP 429.

Tests shape the history through `missing_days` (days the index has no value) and `overrides`
(day -> fields served instead, e.g. a value of 150).
"""

from __future__ import annotations

import datetime as dt
import math
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FIRST_DAY = dt.date(2018, 2, 1)
PER_MINUTE = 60
# alternative.me's classes: the highest value of each.
CLASSES = ((24, "Extreme Fear"), (46, "Fear"), (54, "Neutral"), (75, "Greed"), (100, "Extreme Greed"))
DATE_FORMATS = {"us": "%m-%d-%Y", "cn": "%Y-%m-%d", "kr": "%Y-%m-%d", "world": "%d-%m-%Y"}


def index_value(day: dt.date) -> int:
    """A made-up but steady index: slow waves through every class."""
    n = (day - FIRST_DAY).days
    return max(0, min(100, round(50 + 38 * math.sin(n / 23.0) + 12 * math.sin(n / 5.0))))


def classify(value: int) -> str:
    for highest, name in CLASSES:
        if value <= highest:
            return name
    raise ValueError(value)


class FearGreedEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.missing_days: set[dt.date] = set()
        self.overrides: dict[dt.date, dict[str, str]] = {}
        self.requests = 0
        self._minute = (-1, 0)

    def routes(self) -> list[Route]:
        return [Route("/fng/", self.fng)]

    def _answer(self, data: list[dict], error: str | None = None, status: int = 200) -> Response:
        body = {"name": "Fear and Greed Index", "data": data, "metadata": {"error": error}}
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def fng(self, request: Request) -> Response:
        now = self.clock()
        minute, count = self._minute
        self._minute = (int(now // 60), (count if minute == int(now // 60) else 0) + 1)
        if self._minute[1] > PER_MINUTE:
            return Response("Too Many Requests", status_code=429, headers={"Retry-After": "60"})
        self.requests += 1
        raw_limit = request.query_params.get("limit", "1")
        if not raw_limit.isdigit():
            return self._answer([], "Limit must be a positive integer or 0.")
        if request.query_params.get("format", "json") != "json":
            return self._answer([], "Only the json format is emulated.")
        date_format = request.query_params.get("date_format", "")
        if date_format and date_format not in DATE_FORMATS:
            return self._answer([], "Date format must be us, cn, kr or world.")
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        days, day = [], today
        while day >= FIRST_DAY and (int(raw_limit) == 0 or len(days) < int(raw_limit)):
            if day not in self.missing_days:
                days.append(day)
            day -= dt.timedelta(days=1)
        data = []
        for day in days:
            value = index_value(day)
            midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            row = {
                "value": str(value),
                "value_classification": classify(value),
                "timestamp": midnight.strftime(DATE_FORMATS[date_format]) if date_format
                else str(int(midnight.timestamp())),
            }
            row.update(self.overrides.get(day, {}))
            if day == today:
                row["time_until_update"] = str(int(midnight.timestamp()) + 86_400 - int(now))
            data.append(row)
        return self._answer(data)

    def stats(self) -> dict:
        return {"requests": self.requests}


def build(config, failures, clock=time.time) -> FearGreedEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `alternative_me`."""
    return FearGreedEmulator(clock)
