"""FRED through fredapi: every vintage (ALFRED) of a series' observations over a window.

fredapi reads XML from `{root_url}/series/observations?series_id=…&api_key=…` and turns FRED's
XML error bodies into `ValueError(message)`. Its `get_series_all_releases` asks for every vintage
(`realtime_start=1776-07-04&realtime_end=9999-12-31`) but of the whole history at once, unpaged,
and drops each row's `realtime_end`; so `vintages_page` asks the same endpoint through fredapi's
own request (its key handling and error translation) with the window's `observation_start` and
`observation_end`, pages by `limit`/`offset`, and keeps every attribute. fredapi (and pandas
under it) is imported when a run first asks FRED, not when definitions load.

The key (`FRED_API_KEY`, from the environment only) travels in the URL: no error raised from here
carries a URL, an exception chain, or the key.

FRED allows about 120 requests a minute per key: requests are paced to that (one budget per
process), and a 429 (`Too Many Requests`) is waited out, never hammered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse, UpstreamError, UpstreamRejected, UpstreamUnavailable
from marketdata_assets.sources.http import Clock, RequestStats, Sleep, WeightBudget
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.timeframes import end_day

SOURCE = "FRED"
KEY_VARIABLE = "FRED_API_KEY"
REQUESTS_PER_MINUTE = 120
PAGE = 100_000  # FRED's largest `limit`
EVERY_VINTAGE = ("1776-07-04", "9999-12-31")
THROTTLED_WAIT_S = 30.0
MAX_ATTEMPTS = 5


class MissingKey(UpstreamError):
    """FRED needs a key, and the environment has none."""


def vintages_page(client: Any, series_id: str, first: dt.date, last: dt.date, offset: int) -> Any:
    """The XML root of one page of every vintage of the observations dated [first, last], asked
    through `client` (a fredapi `Fred`: its request adds the key and raises FRED's error bodies)."""
    query = urlencode({
        "observation_start": first.isoformat(), "observation_end": last.isoformat(),
        "realtime_start": EVERY_VINTAGE[0], "realtime_end": EVERY_VINTAGE[1],
        "limit": PAGE, "offset": offset, "sort_order": "asc",
    })
    return client._Fred__fetch_data(f"{client.root_url}/series/observations?series_id={quote(series_id)}&{query}")


def parse_vintages(root: Any, series_id: str, table: TableSpec, origin: str) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(rows in `table`'s schema, rejected rows, FRED's `count` of the whole answer) of one page."""
    try:
        count = int(root.get("count"))
    except (TypeError, ValueError):
        raise MalformedResponse(SOURCE, f"{series_id}: the answer has no count of observations ({root.tag})") from None
    now = dt.datetime.now(dt.UTC)
    kept: dict[str, list] = {"date": [], "value": [], "realtime_start": [], "realtime_end": []}
    rejected: list[dict] = []
    for index, row in enumerate(root):
        attributes = dict(row.attrib)
        try:
            day = dt.date.fromisoformat(attributes["date"])
            start = dt.date.fromisoformat(attributes["realtime_start"])
            end = dt.date.fromisoformat(attributes["realtime_end"])
            raw = attributes["value"]
        except (KeyError, ValueError) as exc:
            raise MalformedResponse(SOURCE, f"{series_id}: observation {index} is not an observation ({exc}): "
                                            f"{str(attributes)[:160]}") from None
        reasons = []
        try:
            value = None if raw == "." else float(raw)
        except ValueError:
            value, reasons = None, [f"value {raw!r} is not a number"]
        if end < start:
            reasons.append(f"realtime_end {end} before realtime_start {start}")
        if reasons:
            rejected.append(rejected_row("macro", "fred", series_id, dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC),
                                         reasons, attributes, origin, now, timeframe=""))
            continue
        kept["date"].append(day)
        kept["value"].append(value)
        kept["realtime_start"].append(start)
        kept["realtime_end"].append(end)
    rows = len(kept["date"])
    frame = pl.DataFrame({"series_id": [series_id] * rows, **kept, "source": ["rest"] * rows,
                          "ingested_at": [now] * rows}, schema=table.schema)
    return frame, pl.DataFrame(rejected, schema=REJECTED_ROWS.schema), count


class FredVintagesSource:
    """Every vintage of one FRED series' observations over a window."""

    def __init__(
        self, base_url: str, api_key: str | None, table: TableSpec, *, clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep, throttled_wait_s: float = THROTTLED_WAIT_S,
    ):
        self.table = table
        self.rejected: list[pl.DataFrame] = []
        self.stats = RequestStats()
        self._base_url = base_url.rstrip("/")
        self._key = api_key
        self._rows = 0
        self._sleep = sleep
        self._throttled_wait = throttled_wait_s
        self._budget = WeightBudget.for_host(self._base_url, REQUESTS_PER_MINUTE, clock, sleep)

    async def __aenter__(self) -> FredVintagesSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def outcome(self) -> SourceOutcome:
        rejected, self.rejected = self.rejected, []
        return SourceOutcome(rejected=rejected, requests=self.stats.requests, rows_by_source={"rest": self._rows},
                             metadata={"rows_from_rest": self._rows, "fred_requests": self.stats.requests})

    def _client(self) -> Any:
        if not self._key:
            raise MissingKey(SOURCE, f"set {KEY_VARIABLE} to a FRED API key (https://fred.stlouisfed.org/docs/api/api_key.html)")
        from fredapi import Fred

        client = Fred(api_key=self._key)
        client.root_url = self._base_url
        return client

    def _scrubbed(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def _page(self, client: Any, series_id: str, first: dt.date, last: dt.date, offset: int) -> Any:
        request = f"{series_id} observations {first}..{last} from {offset}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await self._budget.acquire(1, self.stats)
            self.stats.requests += 1
            failure: str | None = None
            try:
                return await asyncio.to_thread(vintages_page, client, series_id, first, last, offset)
            except ValueError as exc:  # FRED's XML error body, as fredapi raises it
                message = self._scrubbed(str(exc) or "no message")
                if "Too Many Requests" in message or "429" in message:
                    self._budget.pause(self._throttled_wait)
                    failure = message
                else:
                    raise UpstreamRejected(SOURCE, request, 400, message) from None
            except Exception as exc:  # noqa: BLE001 - anything else may carry the URL and its key: say only its kind
                failure = self._scrubbed(f"{exc.__class__.__name__}: {getattr(exc, 'reason', None) or exc}")
                await self._sleep(min(0.5 * 2 ** attempt, 10.0))
            finally:
                self._budget.settle(1)
        raise UpstreamUnavailable(SOURCE, f"{request}: {failure} ({MAX_ATTEMPTS} attempts)")

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """Every vintage of the observations dated in [start, end) (UTC days), by date."""
        client = self._client()
        series_id = str(series.key)
        first, last = start.date(), end_day(end) - dt.timedelta(days=1)
        offset = 0
        while True:
            root = await self._page(client, series_id, first, last, offset)
            frame, rejected, count = parse_vintages(root, series_id, self.table, f"GET /series/observations?series_id="
                                                    f"{series_id}&observation_start={first}&offset={offset}")
            self.rejected.append(rejected)
            self._rows += frame.height
            yield frame
            seen = frame.height + rejected.height
            offset += seen
            if offset >= count:
                return
            if seen == 0:
                raise MalformedResponse(SOURCE, f"{series_id}: an empty page at offset {offset} of {count} observations")
