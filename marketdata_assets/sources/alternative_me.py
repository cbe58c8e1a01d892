"""alternative.me: the Crypto Fear & Greed Index, one value a UTC day, from `GET /fng/`.

The answer is `{"name", "data": [{"value", "value_classification", "timestamp",
"time_until_update"}], "metadata": {"error"}}`: every field a string, `timestamp` Unix seconds at
00:00 UTC, newest first, `time_until_update` on the newest row only. `limit=N` gives the newest N
days (0: all of them, from 2018-02-01). A bad parameter is answered with `metadata.error`.

Rows whose value is outside 0–100, whose classification is not the one alternative.me gives that
value, or whose time is not a UTC midnight are rejected (kept in rejected_rows), never stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import DailyRestClient, EnvelopeError, Venue

SOURCE = "alternative.me fear & greed"
PATH = "/fng/"
# alternative.me asks for at most 60 requests a minute; a window is one request.
REQUESTS_PER_MINUTE = 60
# The classification alternative.me gives each value: (lowest value, name), ascending.
BANDS = ((0, "Extreme Fear"), (25, "Fear"), (47, "Neutral"), (55, "Greed"), (76, "Extreme Greed"))
_DAY_S = 86_400


def classification_of(value: int) -> str:
    """alternative.me's name for an index value of 0–100."""
    return [name for lowest, name in BANDS if value >= lowest][-1]


def fear_greed_envelope_error(body: Any) -> EnvelopeError | None:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return EnvelopeError(-1, f"not a Fear & Greed answer: {str(body)[:160]}")
    error = (body.get("metadata") or {}).get("error")
    return EnvelopeError(-1, str(error)) if error else None


# alternative.me: a bad parameter is answered 200 with `metadata.error`.
VENUE = Venue("alternative_me", "fear_greed_url", envelope_check=fear_greed_envelope_error)


def parse_fear_greed(body: Any, table: TableSpec, origin: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows in `table`'s schema, ascending by day; rejected rows) of one `/fng/` answer."""
    rows = body.get("data") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise MalformedResponse(SOURCE, f"expected {{\"data\": [...]}}, got {str(body)[:160]}")
    now = dt.datetime.now(dt.UTC)
    kept: dict[str, list] = {"date": [], "value": [], "classification": []}
    rejected: list[dict] = []
    previous = None
    for index, row in enumerate(rows):
        try:
            value, name, stamp = int(row["value"]), str(row["value_classification"]), int(row["timestamp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(SOURCE, f"row {index} is not a Fear & Greed row ({exc}): {str(row)[:160]}") from None
        if previous is not None and stamp >= previous:
            raise MalformedResponse(SOURCE, f"row {index} ({stamp}) is not older than the row before ({previous})")
        previous = stamp
        day = dt.datetime.fromtimestamp(stamp - stamp % _DAY_S, dt.UTC)
        reasons = []
        if not 0 <= value <= 100:
            reasons.append(f"value {value} outside 0-100")
        elif name != classification_of(value):
            reasons.append(f"classification {name!r} is not {classification_of(value)!r}")
        if stamp % _DAY_S:
            reasons.append(f"timestamp {stamp} is not 00:00 UTC")
        if reasons:
            rejected.append(rejected_row("fear_greed", VENUE.name, "", day, reasons, row, origin, now))
            continue
        kept["date"].append(day.date())
        kept["value"].append(value)
        kept["classification"].append(name)
    count = len(kept["date"])
    frame = pl.DataFrame(
        {**kept, "source": ["rest"] * count, "ingested_at": [now] * count}, schema=table.schema
    ).reverse()
    return frame, pl.DataFrame(rejected, schema=REJECTED_ROWS.schema)


class FearGreedSource(DailyRestClient):
    """The index over one window: one request for the newest days back to the window's start."""

    VENUE, SOURCE, REQUESTS_PER_MINUTE = VENUE, SOURCE, REQUESTS_PER_MINUTE

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The days in [start, end) (UTC) alternative.me has, ascending."""
        today = self.today()
        if start.date() > today:
            return
        params = {"limit": (today - start.date()).days + 1, "format": "json"}
        body, _ = await self._http.get_json(PATH, params, 1)
        frame, rejected = parse_fear_greed(body, self.table, f"GET {PATH}?limit={params['limit']}")
        yield self.inside(frame, rejected, start, end)
