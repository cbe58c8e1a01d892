"""DefiLlama: the circulating supply of every stablecoin peg, one point a UTC day, from
`GET /stablecoincharts/all` (host stablecoins.llama.fi).

The answer is a JSON list, oldest first, of `{"date": "<Unix seconds at 00:00 UTC, a string>",
"totalCirculating": {peg: units}, "totalCirculatingUSD": {peg: USD}, …}` over the whole history in
one request. Older rows are rounded and lack the pegs that did not exist yet: a peg a row does not
list is not stored for that day (nothing is invented). The newest point is the day in progress,
still moving: it is stored once the day has ended.

A peg whose USD value is not a number, negative or not finite, or a row whose date is not a UTC
midnight, is rejected (kept in rejected_rows), never stored; an answer whose dates do not ascend
is refused whole.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from typing import Any

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import DailyRestClient, Venue

SOURCE = "DefiLlama stablecoins"
PATH = "/stablecoincharts/all"
# DefiLlama's free API asks for gentle use; a window is one request.
REQUESTS_PER_MINUTE = 30
_DAY_S = 86_400

VENUE = Venue("defillama", "defillama_url")


def parse_stablecoin_supply(body: Any, table: TableSpec, origin: str, today: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows in `table`'s schema: date, peg, circulating_usd; rejected rows) of one
    `/stablecoincharts/all` answer, the days before `today` (UTC) only."""
    if not isinstance(body, list):
        raise MalformedResponse(SOURCE, f"expected a list of daily points, got {str(body)[:160]}")
    now = dt.datetime.now(dt.UTC)
    kept: dict[str, list] = {"date": [], "peg": [], "circulating_usd": []}
    rejected: list[dict] = []
    previous = None
    for index, point in enumerate(body):
        try:
            stamp = int(point["date"])
            pegs = point.get("totalCirculatingUSD") or {}
            if not isinstance(pegs, dict):
                raise TypeError(f"totalCirculatingUSD is {type(pegs).__name__}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(SOURCE, f"point {index} is not a daily point ({exc}): {str(point)[:160]}") from None
        if previous is not None and stamp <= previous:
            raise MalformedResponse(SOURCE, f"point {index} ({stamp}) is not newer than the point before ({previous})")
        previous = stamp
        day = dt.datetime.fromtimestamp(stamp - stamp % _DAY_S, dt.UTC)
        if day.date() >= today:
            continue  # the day in progress: its supply still moves
        for peg, value in sorted(pegs.items()):
            reasons = []
            if stamp % _DAY_S:
                reasons.append(f"date {stamp} is not 00:00 UTC")
            if isinstance(value, bool) or not isinstance(value, int | float):
                reasons.append(f"{peg} is {value!r}, not a number")
            elif not math.isfinite(value) or value < 0:
                reasons.append(f"{peg} is {value}, not a supply")
            if reasons:
                rejected.append(rejected_row("stablecoin_supply", VENUE.name, peg, day, reasons, {peg: value}, origin, now))
                continue
            kept["date"].append(day.date())
            kept["peg"].append(peg)
            kept["circulating_usd"].append(float(value))
    count = len(kept["date"])
    frame = pl.DataFrame({**kept, "source": ["rest"] * count, "ingested_at": [now] * count}, schema=table.schema)
    return frame, pl.DataFrame(rejected, schema=REJECTED_ROWS.schema)


class StablecoinSupplySource(DailyRestClient):
    """Every peg's supply over one window: one request for the whole history, cut to the window."""

    VENUE, SOURCE, REQUESTS_PER_MINUTE = VENUE, SOURCE, REQUESTS_PER_MINUTE

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The (day, peg) rows of [start, end) (UTC) whose day has ended, by day."""
        today = self.today()
        if start.date() >= today:
            return
        body, _ = await self._http.get_json(PATH, {}, 1)
        frame, rejected = parse_stablecoin_supply(body, self.table, f"GET {PATH}", today)
        yield self.inside(frame, rejected, start, end)
