"""FRED and ALFRED (api.stlouisfed.org/fred), speaking XML as fredapi 0.5 reads it:
`GET /fred/series/observations` and `GET /fred/series`.

- `api_key` is required: 32 lower-case letters and digits (the emulator accepts any such key);
  missing or malformed, HTTP 400 with FRED's XML error body.
- Observations: `series_id`, `observation_start`/`observation_end` (dates of the observations),
  `realtime_start`/`realtime_end` (which vintages; both default to today: the latest values),
  `limit` (1–100,000, default 100,000), `offset`, `sort_order` (asc|desc by date).
  `<observations realtime_start=… realtime_end=… observation_start=… observation_end=… units="lin"
  output_type="1" file_type="xml" order_by="observation_date" sort_order="asc" count="N" offset=…
  limit=…><observation realtime_start=… realtime_end=… date=… value=…/></observations>`, a row per
  observation and vintage period overlapping the realtime window; `.` where there is no value.
- Monthly series are first released ~45 days after their period starts and revised a month
  later (a second vintage, its own value); daily series once, the next day, a holiday as `.`.
- An unknown series: HTTP 400 `Bad Request.  The series does not exist.`; more than 120 requests
  in a minute: HTTP 429 `Too Many Requests.  Exceeded Rate Limit`.

Tests shape a series through `revisions` ((series, date) -> [(realtime_start, value), …], the
whole vintage history of that date; [] for a date never published), `refuse_next` (that many
429s) and learn which keys were sent from `seen_keys`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from xml.sax.saxutils import quoteattr

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PER_MINUTE = 120
MAX_LIMIT = 100_000
EARLIEST = "1776-07-04"
LATEST = dt.date(9999, 12, 31)
# series -> (title, frequency_short, units, first observation, level)
SERIES = {
    "DGS10": ("Market Yield on U.S. Treasury Securities at 10-Year Constant Maturity", "D", "Percent", dt.date(1962, 1, 2), 4.0),
    "DGS2": ("Market Yield on U.S. Treasury Securities at 2-Year Constant Maturity", "D", "Percent", dt.date(1976, 6, 1), 3.5),
    "DFF": ("Federal Funds Effective Rate", "D", "Percent", dt.date(1954, 7, 1), 3.0),
    "VIXCLS": ("CBOE Volatility Index: VIX", "D", "Index", dt.date(1990, 1, 2), 19.0),
    "DCOILWTICO": ("Crude Oil Prices: West Texas Intermediate (WTI)", "D", "Dollars per Barrel", dt.date(1986, 1, 2), 60.0),
    "DCOILBRENTEU": ("Crude Oil Prices: Brent - Europe", "D", "Dollars per Barrel", dt.date(1987, 5, 20), 64.0),
    "DTWEXBGS": ("Nominal Broad U.S. Dollar Index", "D", "Index Jan 2006=100", dt.date(2006, 1, 2), 115.0),
    "NASDAQQGLDI": ("NASDAQ Gold FLOWS103 Price Index", "D", "Index", dt.date(1978, 1, 3), 1500.0),
    "CPIAUCSL": ("Consumer Price Index for All Urban Consumers: All Items", "M", "Index 1982-1984=100", dt.date(1947, 1, 1), 250.0),
    "PCEPILFE": ("Personal Consumption Expenditures Excluding Food and Energy", "M", "Index 2017=100", dt.date(1959, 1, 1), 110.0),
    "UNRATE": ("Unemployment Rate", "M", "Percent", dt.date(1948, 1, 1), 5.0),
    "M2SL": ("M2", "M", "Billions of Dollars", dt.date(1959, 1, 1), 18000.0),
}
# US market holidays that recur on fixed dates: a daily series has `.` then.
HOLIDAYS = {(1, 1), (7, 4), (12, 25)}
_KEY = re.compile(r"[a-z0-9]{32}")
_DAY = dt.timedelta(days=1)


def _error(status: int, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="utf-8" ?>\n<error code="{status}" message={quoteattr(message)}/>'
    return Response(body, status_code=status, media_type="text/xml; charset=UTF-8")


def _value(series: str, day: dt.date, vintage: int) -> float:
    _, _, _, first, level = SERIES[series]
    n = (day - first).days
    wave = 1 + 0.15 * math.sin(n / 97.0) + 0.05 * math.sin(n / 11.0)
    return round(level * wave * (1 + 0.002 * vintage), 2 if level < 1000 else 1)


def _month_after(day: dt.date, months: int) -> dt.date:
    month = day.month - 1 + months
    return dt.date(day.year + month // 12, month % 12 + 1, 1)


def default_vintages(series: str, day: dt.date) -> list[tuple[dt.date, str]]:
    """(realtime_start, value) of each vintage of `series` at observation `day`, oldest first."""
    _, frequency, _, _, _ = SERIES[series]
    if frequency == "M":
        first = _month_after(day, 1) + dt.timedelta(days=14)  # released mid next month
        return [(first, f"{_value(series, day, 0):g}"), (_month_after(first, 1), f"{_value(series, day, 1):g}")]
    value = "." if (day.month, day.day) in HOLIDAYS else f"{_value(series, day, 0):g}"
    return [(day + _DAY, value)]


def observation_dates(series: str, first: dt.date, last: dt.date) -> list[dt.date]:
    """The observation dates of `series` in [first, last]: weekdays (and holidays) for a daily
    series, the first of each month for a monthly one."""
    _, frequency, _, start, _ = SERIES[series]
    first = max(first, start)
    if frequency == "M":
        day, found = dt.date(first.year, first.month, 1), []
        if day < first:
            day = _month_after(day, 1)
        while day <= last:
            found.append(day)
            day = _month_after(day, 1)
        return found
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)
            if (first + dt.timedelta(days=n)).weekday() < 5]


class FredEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.revisions: dict[tuple[str, dt.date], list[tuple[dt.date, str]]] = {}
        self.requests = 0
        self.seen_keys: set[str] = set()
        self.refuse_next = 0  # answer this many requests with 429, as when another client spent the minute
        self._minute = (-1, 0)

    def routes(self) -> list[Route]:
        return [Route("/fred/series/observations", self.observations), Route("/fred/series", self.series)]

    def _refused(self, request: Request) -> Response | None:
        now = self.clock()
        minute, count = self._minute
        self._minute = (int(now // 60), (count if minute == int(now // 60) else 0) + 1)
        if self._minute[1] > PER_MINUTE or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return _error(429, "Too Many Requests.  Exceeded Rate Limit")
        self.requests += 1
        key = request.query_params.get("api_key")
        if key is None:
            return _error(400, "Bad Request.  Variable api_key is not set.  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information.")
        self.seen_keys.add(key)
        if not _KEY.fullmatch(key):
            return _error(400, "Bad Request.  The value for variable api_key is not a 32 character alpha-numeric "
                               "lower-case string.  Read https://fred.stlouisfed.org/docs/api/api_key.html for more information.")
        series = request.query_params.get("series_id", "")
        if series not in SERIES:
            return _error(400, "Bad Request.  The series does not exist.")
        return None

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    async def series(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        series_id = request.query_params["series_id"]
        title, frequency, units, start, _ = SERIES[series_id]
        today = self._today().isoformat()
        names = {"D": "Daily", "M": "Monthly"}
        body = (f'<?xml version="1.0" encoding="utf-8" ?>\n<seriess realtime_start="{today}" realtime_end="{today}">'
                f'<series id="{series_id}" realtime_start="{today}" realtime_end="{today}" title={quoteattr(title)} '
                f'observation_start="{start}" observation_end="{today}" frequency="{names[frequency]}" '
                f'frequency_short="{frequency}" units={quoteattr(units)} units_short={quoteattr(units)} '
                f'seasonal_adjustment="Not Seasonally Adjusted" seasonal_adjustment_short="NSA" '
                f'last_updated="{today} 07:00:00-05" popularity="90" notes=""/></seriess>')
        return Response(body, media_type="text/xml; charset=UTF-8")

    async def observations(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        params = request.query_params
        series_id = params["series_id"]
        today = self._today()
        try:
            realtime_start = dt.date.fromisoformat(params.get("realtime_start", today.isoformat()))
            realtime_end = dt.date.fromisoformat(params.get("realtime_end", today.isoformat()))
            observation_start = dt.date.fromisoformat(params.get("observation_start", "1776-07-04"))
            observation_end = dt.date.fromisoformat(params.get("observation_end", "9999-12-31"))
        except ValueError as exc:
            return _error(400, f"Bad Request.  {exc}.")
        if realtime_start > realtime_end:
            return _error(400, "Bad Request.  The value for variable realtime_start is greater than the value of realtime_end.")
        limit = params.get("limit", str(MAX_LIMIT))
        offset = params.get("offset", "0")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
            return _error(400, "Bad Request.  Variable limit is not between 1 and 100000.")
        if not offset.isdigit():
            return _error(400, "Bad Request.  Variable offset is not a non-negative integer.")
        rows = []
        for day in observation_dates(series_id, observation_start, min(observation_end, today)):
            vintages = [(start, value) for start, value in self.revisions.get((series_id, day), default_vintages(series_id, day))
                        if start <= today]  # nothing is known before its release
            for index, (start, value) in enumerate(vintages):
                end = vintages[index + 1][0] - _DAY if index + 1 < len(vintages) else LATEST
                if start <= realtime_end and end >= realtime_start:  # the period overlaps the realtime window
                    shown_start, shown_end = max(start, realtime_start), min(end, realtime_end)
                    rows.append(f'<observation realtime_start="{shown_start}" realtime_end="{shown_end}" '
                                f'date="{day}" value="{value}"/>')
        if params.get("sort_order", "asc") == "desc":
            rows.reverse()
        page = rows[int(offset):int(offset) + int(limit)]
        body = (f'<?xml version="1.0" encoding="utf-8" ?>\n<observations realtime_start="{realtime_start}" '
                f'realtime_end="{realtime_end}" observation_start="{observation_start}" observation_end="{observation_end}" '
                f'units="lin" output_type="1" file_type="xml" order_by="observation_date" '
                f'sort_order="{params.get("sort_order", "asc")}" count="{len(rows)}" offset="{offset}" limit="{limit}">\n'
                + "\n".join(f"  {row}" for row in page) + "\n</observations>")
        return Response(body, media_type="text/xml; charset=UTF-8")

    def stats(self) -> dict:
        return {"requests": self.requests}


def build(config, failures, clock=time.time) -> FredEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `fred`."""
    return FredEmulator(clock)
