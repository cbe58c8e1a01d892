"""OKX: perpetual-swap funding rates from `/api/v5/public/funding-rate-history`, as frames in
`sources.funding.FUNDING_RATES` (no mark price: OKX's history has none).

OKX answers newest first, pages backwards with `after` (older than a ms time), and keeps only
about three months. A window reaching further back than OKX serves is not read as empty: the part
OKX no longer holds is a `failures` entry naming the oldest settlement it still has. Every answer
is an envelope `{"code","msg","data"}`: 51001 (unknown instrument) arrives with HTTP 200.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import polars as pl

from marketdata_assets.sources.errors import MalformedResponse, read_columns, same_symbol, NoSourceHolds, PieceFailure
from marketdata_assets.sources.funding import FUNDING_RATES, ReadsWholeWindows, funding_frame
from marketdata_assets.sources.http import Clock, EnvelopeError, RateLimit, Sleep, UpstreamClient, Venue

SOURCE = "okx funding"
FUNDING_PATH = "/api/v5/public/funding-rate-history"
PAGE_LIMIT = 100  # the docs allow 400; stay well inside it
REQUESTS_PER_2S = 10  # per IP and instrument, OKX's documented limit for this endpoint
RETENTION = dt.timedelta(days=92)  # about three months, OKX's own wording
FUNDING_INTERVAL = dt.timedelta(hours=8)


def okx_envelope_error(body: Any) -> EnvelopeError | None:
    """The error in an OKX envelope (`code` other than "0"); 50011 means slow down."""
    if not isinstance(body, dict) or body.get("code") in ("0", 0):
        return None
    try:
        code = int(body.get("code"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return EnvelopeError(-1, f"not an OKX envelope: {str(body)[:160]}")
    return EnvelopeError(code, str(body.get("msg", "")), throttled=code == 50011)


def okx_error_detail(response: httpx.Response) -> tuple[str, int | None]:
    try:
        body = response.json()
        return f"code {body['code']}: {body['msg']}", int(body["code"])
    except (ValueError, KeyError, TypeError):
        return (response.text[:200] or response.reason_phrase), None


# OKX: `{"code","msg","data"}` envelopes (51001 comes with HTTP 200; 50011 means slow down),
# and about three months of funding history (a seed asks only for the 90 days surely inside).
VENUE = Venue("okx", "okx_url", error_detail=okx_error_detail, envelope_check=okx_envelope_error,
              default_retry_after_s=2.0, retention={"funding": dt.timedelta(days=90)})


def parse_okx_funding(body: Any, inst_id: str) -> pl.DataFrame:
    """An OKX funding-history envelope to FUNDING_RATES rows, ascending (OKX sends newest first)."""
    where = f"{SOURCE} {inst_id}"
    rows = body.get("data") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected {{\"code\",\"msg\",\"data\": [...]}}, got {str(body)[:160]}")

    def read(row: Any) -> tuple:
        same_symbol(row, "instId", inst_id)
        return int(row["fundingTime"]), float(row["fundingRate"])

    times, rates = read_columns(rows, where, "funding", read, 2)
    if any(b >= a for a, b in zip(times, times[1:], strict=False)):
        raise MalformedResponse(where, "rows are not newest first, each once")
    return funding_frame("okx", inst_id, times[::-1], rates[::-1])


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


class OkxFundingSource(ReadsWholeWindows, UpstreamClient):
    """OKX funding settlements of one window, paged backwards; `failures` holds the part of a
    window OKX no longer keeps."""

    def __init__(
        self, base_url: str, *, max_attempts: int = 5, backoff_base_s: float = 0.5,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ):
        self.rejected = []
        self.failures: list[PieceFailure] = []
        self.rows_by_source = {"archive": 0, "rest": 0}
        self._clock = clock
        self._http = VENUE.http(
            SOURCE, base_url, RateLimit(REQUESTS_PER_2S, 2.0, FUNDING_PATH),
            max_concurrency=1, max_attempts=max_attempts, backoff_base_s=backoff_base_s, clock=clock, sleep=sleep,
        )

    @property
    def requests(self) -> int:
        return self.stats.requests

    async def fetch(self, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """Settlements with funding_time in [start, end), ascending."""
        parts, after = [], _ms(end)
        oldest: int | None = None
        while True:
            body, _ = await self._http.get_json(FUNDING_PATH, {"instId": symbol, "after": after, "limit": PAGE_LIMIT}, 1)
            page = parse_okx_funding(body, symbol)
            if page.height:
                oldest = _ms(page["funding_time"][0])
                if _ms(page["funding_time"][-1]) >= after:
                    raise MalformedResponse(f"{SOURCE} {symbol}", f"asked for settlements before {after} ms, got later ones")
                parts.append(page.filter(pl.col("funding_time") >= start))
            if page.height < PAGE_LIMIT or (oldest is not None and oldest < _ms(start)):
                break
            after = oldest  # type: ignore[assignment]
        frame = pl.concat(parts[::-1]) if parts else FUNDING_RATES.empty_frame()
        self.rows_by_source["rest"] += frame.height
        self._note_retention(symbol, start, end, oldest)
        return frame

    def _note_retention(self, symbol: str, start: dt.datetime, end: dt.datetime, oldest_ms: int | None) -> None:
        """Settlements due in the window before the oldest OKX served are gone, unless that oldest
        one is older than OKX's retention (then it is the listing, and nothing came before)."""
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        oldest = dt.datetime.fromtimestamp(oldest_ms / 1000, dt.UTC) if oldest_ms is not None else None
        if oldest is not None and (oldest < start + FUNDING_INTERVAL or oldest < now - RETENTION - FUNDING_INTERVAL):
            return
        lost_until = min(end, oldest) if oldest is not None else min(end, now)
        served = f"its oldest settlement now is {oldest:%Y-%m-%d %H:%M} UTC" if oldest else "it serves none in this window"
        self.failures.append(PieceFailure(start, lost_until, NoSourceHolds(
            SOURCE, f"{symbol}: OKX keeps only about three months of funding history ({served}), so "
            f"[{start:%Y-%m-%d %H:%M}, {lost_until:%Y-%m-%d %H:%M}) UTC cannot be read from it")))
