"""blockchain.com's charts API: Bitcoin's market capitalization and the coins in circulation, one
point a UTC day, from `GET /charts/market-cap` and `GET /charts/total-bitcoins` (host
api.blockchain.info, no key).

Each answer is `{"status": "ok", "name", "unit", "period": "day", "values": [{"x": <Unix seconds at
00:00 UTC>, "y": <number>}]}`, oldest first; `start=YYYY-MM-DD` and `timespan=<n>days` choose the
days, `sampled=false` keeps one point a day (sampled answers thin long spans to ~1,500 points).
The newest day is stored once it has ended. A point whose value is not a positive number, or
whose time is not a UTC midnight, is rejected (kept in rejected_rows); an answer whose times do
not ascend is refused whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from typing import Any

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import DailyRestClient, EnvelopeError, Venue
from marketdata_assets.timeframes import end_day

SOURCE = "blockchain.com charts"
MARKET_CAP = "/charts/market-cap"
TOTAL_BITCOINS = "/charts/total-bitcoins"
# blockchain.com does not publish a limit; two requests a window, gently.
REQUESTS_PER_MINUTE = 30
_DAY_S = 86_400


def charts_envelope_error(body: Any) -> EnvelopeError | None:
    if not isinstance(body, dict) or not isinstance(body.get("values"), list):
        return EnvelopeError(-1, f"not a chart answer: {str(body)[:160]}")
    if body.get("status", "ok") != "ok":
        return EnvelopeError(-1, str(body.get("error") or body.get("status")))
    return None


VENUE = Venue("blockchain_com", "blockchain_url", envelope_check=charts_envelope_error)


def parse_chart(body: Any, origin: str, today: dt.date, name: str) -> tuple[dict[dt.date, float], list[dict]]:
    """(day -> value, the days before `today` only; rejected points as rejected_rows dicts) of one
    chart answer; `name` says which chart in errors and rejections."""
    values = body.get("values") if isinstance(body, dict) else None
    if not isinstance(values, list):
        raise MalformedResponse(SOURCE, f"{name}: expected {{\"values\": [...]}}, got {str(body)[:160]}")
    now = dt.datetime.now(dt.UTC)
    kept: dict[dt.date, float] = {}
    rejected: list[dict] = []
    previous = None
    for index, point in enumerate(values):
        try:
            stamp, value = int(point["x"]), point["y"]
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(SOURCE, f"{name}: point {index} is not a chart point ({exc}): {str(point)[:160]}") from None
        if previous is not None and stamp <= previous:
            raise MalformedResponse(SOURCE, f"{name}: point {index} ({stamp}) is not newer than the point before ({previous})")
        previous = stamp
        day = dt.datetime.fromtimestamp(stamp - stamp % _DAY_S, dt.UTC)
        if day.date() >= today:
            continue  # the day in progress
        reasons = []
        if stamp % _DAY_S:
            reasons.append(f"x {stamp} is not 00:00 UTC")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            reasons.append(f"{name} {value!r} is not a positive number")
        if reasons:
            rejected.append(rejected_row("market_cap", VENUE.name, "BTC", day, reasons, point, origin, now))
            continue
        kept[day.date()] = float(value)
    return kept, rejected


def market_cap_rows(
    caps: dict[dt.date, float], coins: dict[dt.date, float], asset: str, table: TableSpec,
) -> pl.DataFrame:
    """One row a day with a market cap, in `table`'s schema, its supply where the coins chart has
    the day (NULL where it does not)."""
    now = dt.datetime.now(dt.UTC)
    days = sorted(caps)
    return pl.DataFrame({
        "date": days, "asset": [asset] * len(days), "market_cap_usd": [caps[d] for d in days],
        "supply": [coins.get(d) for d in days], "source": ["rest"] * len(days), "ingested_at": [now] * len(days),
    }, schema=table.schema)


class MarketCapSource(DailyRestClient):
    """BTC's market cap and supply over one window: one request to each chart."""

    VENUE, SOURCE, REQUESTS_PER_MINUTE = VENUE, SOURCE, REQUESTS_PER_MINUTE
    MAX_CONCURRENCY = 2

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The days of [start, end) (UTC) that have ended, ascending."""
        today = self.today()
        first, stop = start.date(), min(end_day(end), today)
        if first >= stop:
            return
        params = {"timespan": f"{(stop - first).days}days", "start": first.isoformat(), "sampled": "false",
                  "format": "json"}
        (caps_body, _), (coins_body, _) = await asyncio.gather(
            self._http.get_json(MARKET_CAP, params, 1), self._http.get_json(TOTAL_BITCOINS, params, 1))
        query = "&".join(f"{k}={v}" for k, v in params.items())
        caps, rejected = parse_chart(caps_body, f"GET {MARKET_CAP}?{query}", today, "market cap")
        coins, _ = parse_chart(coins_body, f"GET {TOTAL_BITCOINS}?{query}", today, "total bitcoins")
        yield self.inside(market_cap_rows(caps, coins, series.key, self.table),
                          pl.DataFrame(rejected, schema=REJECTED_ROWS.schema), start, end)
