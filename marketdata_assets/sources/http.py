"""The shared HTTP layer: request-weight pacing, concurrency, Retry-After, bans and retries.

Every upstream client sends its requests through `PacedHttp`; nothing else talks HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlencode

import httpx
import orjson
import polars as pl

from marketdata_assets.sources.errors import (
    UpstreamBanned,
    UpstreamRejected,
    UpstreamUnavailable,
)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class RequestStats:
    """What a client did: requests sent, weight spent, retries, 429s, and seconds its requests
    waited for the weight budget (summed over concurrent requests, so it can exceed wall time)."""

    requests: int = 0
    weight: int = 0
    retries: int = 0
    throttled: int = 0
    paced_seconds: float = 0.0

    def as_metadata(self) -> dict[str, int | float]:
        return {
            "requests": self.requests,
            "weight_used": self.weight,
            "retries": self.retries,
            "http_429": self.throttled,
            "seconds_paced": round(self.paced_seconds, 3),
        }


class MinuteWeightBudget:
    """A per-IP request-weight budget that resets at every UTC clock minute, as Binance counts it.

    Weight is reserved when a request is sent, so in-flight requests count. The server's own count
    (`X-MBX-USED-WEIGHT-1M`, which includes other clients on this IP) wins when it is higher.
    """

    # The server's minute may start a little after ours (clock offset, transit): open the new
    # window late by this much. The whole budget still fits in the rest of the minute.
    BOUNDARY_GUARD_S = 0.5
    _shared: dict[tuple[str, int, Clock, Sleep], MinuteWeightBudget] = {}

    def __init__(self, limit: int, clock: Clock = time.time, sleep: Sleep = asyncio.sleep):
        if limit < 1:
            raise ValueError(f"weight limit must be positive, got {limit}")
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._minute = -1
        self._used = 0
        self._paused_until = 0.0

    def _roll(self, now: float) -> int:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        return minute

    async def acquire(self, weight: int, stats: RequestStats) -> int:
        """Wait until `weight` fits in the current minute, reserve it, return that minute."""
        if weight > self.limit:
            raise ValueError(f"one request of weight {weight} exceeds the budget {self.limit}")
        while True:
            now = self._clock()
            wake = self._paused_until
            if now >= wake:
                minute = self._roll(now)
                if now - minute * 60 < self.BOUNDARY_GUARD_S and self._used == 0:
                    wake = minute * 60 + self.BOUNDARY_GUARD_S
                elif self._used + weight <= self.limit:
                    self._used += weight
                    return minute
                else:
                    wake = (minute + 1) * 60 + self.BOUNDARY_GUARD_S
            delay = max(wake - now, 0.001)
            stats.paced_seconds += delay
            await self._sleep(delay)

    def observe(self, sent_minute: int, used: int) -> None:
        """Take the server's used weight, reported on a response to a request sent in `sent_minute`."""
        # A response that crossed a minute boundary reports the old minute's count: skip it.
        if sent_minute == self._minute == int(self._clock() // 60) and used > self._used:
            self._used = used

    @classmethod
    def for_host(
        cls, base_url: str, limit: int, clock: Clock = time.time, sleep: Sleep = asyncio.sleep
    ) -> MinuteWeightBudget:
        """The one budget of this process for `base_url`: the server counts weight per IP, so
        every client in the process (one per asset step) must draw on the same budget."""
        key = (base_url.rstrip("/"), limit, clock, sleep)
        if key not in cls._shared:
            cls._shared[key] = cls(limit, clock, sleep)
        return cls._shared[key]

    def pause(self, seconds: float) -> None:
        """The server said back off (429 Retry-After): no request leaves for `seconds`."""
        now = self._clock()
        self._paused_until = max(self._paused_until, now + seconds)
        self._roll(now)
        self._used = self.limit


ErrorDetail = Callable[[httpx.Response], tuple[str, int | None]]


def _plain_error_detail(response: httpx.Response) -> tuple[str, int | None]:
    return response.text[:200] or response.reason_phrase, None


class PacedHttp:
    """GET JSON or files from one upstream host, paced by a weight budget (None: unmetered, as
    file hosts are), with bounded retries.

    - 429: wait `Retry-After` (the whole client pauses), then try again;
    - 418: raise `UpstreamBanned` naming when the ban ends;
    - 5xx, timeouts, dropped connections and unparseable bodies: retried up to `max_attempts`
      times with exponential backoff and jitter, then `UpstreamUnavailable`;
    - other 4xx: `UpstreamRejected` with the vendor's error code and message.
    """

    MAX_THROTTLED = 10

    def __init__(
        self,
        source: str,
        base_url: str,
        budget: MinuteWeightBudget | None,
        *,
        used_weight_header: str | None = None,
        error_detail: ErrorDetail = _plain_error_detail,
        max_concurrency: int = 10,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        timeout_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ):
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.stats = RequestStats()
        self._used_header = used_weight_header
        self._error_detail = error_detail
        self._max_concurrency = max_concurrency
        self._max_attempts = max_attempts
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._timeout = timeout_s
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> PacedHttp:
        limits = httpx.Limits(
            max_connections=self._max_concurrency, max_keepalive_connections=self._max_concurrency
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, limits=limits, trust_env=False
        )
        self._slots = asyncio.Semaphore(self._max_concurrency)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _backoff_delay(self, attempt: int) -> float:
        base, cap = self._backoff
        return min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random())

    async def get_json(
        self, path: str, params: Mapping[str, Any], weight: int
    ) -> tuple[Any, httpx.Headers]:
        """GET `path` with `params`; the parsed JSON body and the response headers."""
        response = await self._get(path, params, weight, decode=_json_body)
        assert response is not None
        body, headers = response
        return body, headers

    async def get_bytes(self, path: str, *, missing_ok: bool = False) -> bytes | None:
        """GET `path`; the body, or None for a 404 when `missing_ok` (a file not published)."""
        response = await self._get(path, {}, 0, decode=_raw_body, missing_ok=missing_ok)
        return None if response is None else response[0]

    async def _get(
        self,
        path: str,
        params: Mapping[str, Any],
        weight: int,
        decode: Callable[[httpx.Response], tuple[Any, httpx.Headers]],
        missing_ok: bool = False,
    ) -> tuple[Any, httpx.Headers] | None:
        if self._client is None or self._slots is None:
            raise RuntimeError("PacedHttp must be used as `async with PacedHttp(...)`")
        request = f"GET {path}?{urlencode(params)}" if params else f"GET {path}"
        attempt = throttled = 0
        while True:
            attempt += 1
            minute = await self.budget.acquire(weight, self.stats) if self.budget else 0
            self.stats.requests += 1
            self.stats.weight += weight
            try:
                async with self._slots:
                    response = await self._client.get(path, params=params)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await self._retry_or_give_up(request, attempt, cause)
                continue
            self._observe_weight(minute, response)
            status = response.status_code
            if status == 429:
                self.stats.throttled += 1
                throttled += 1
                if throttled > self.MAX_THROTTLED:
                    raise UpstreamUnavailable(
                        self.source, f"{request} answered HTTP 429 {throttled} times in a row"
                    )
                retry_after = _retry_after(response, default=60.0)
                if self.budget:
                    self.budget.pause(retry_after)
                else:
                    await self._sleep(retry_after)
                attempt -= 1  # not a failed attempt: the budget decides when to go again
                continue
            if status == 418:
                retry_after = _retry_after(response, default=120.0)
                until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=retry_after)
                detail, _ = self._error_detail(response)
                raise UpstreamBanned(self.source, request, until, detail)
            if status >= 500:
                await self._retry_or_give_up(request, attempt, f"HTTP {status}")
                continue
            if status == 404 and missing_ok:
                return None
            if status >= 400:
                detail, code = self._error_detail(response)
                raise UpstreamRejected(self.source, request, status, detail, code)
            try:
                return decode(response)
            except _Undecodable as exc:
                await self._retry_or_give_up(request, attempt, str(exc))

    def _observe_weight(self, minute: int, response: httpx.Response) -> None:
        if self._used_header is None:
            return
        raw = response.headers.get(self._used_header)
        if raw is not None and raw.isdigit():
            self.budget.observe(minute, int(raw))

    async def _retry_or_give_up(self, request: str, attempt: int, cause: str) -> None:
        if attempt >= self._max_attempts:
            raise UpstreamUnavailable(
                self.source, f"{request} failed {attempt} times; last: {cause}"
            )
        self.stats.retries += 1
        await self._sleep(self._backoff_delay(attempt))


class UpstreamClient:
    """Base of a client that sends everything through one `PacedHttp` (`self._http`): its request
    statistics, and `async with client:` opening and closing the connection pool."""

    _http: PacedHttp
    # Rows that failed validation since the last `take_rejected()` (schemas.REJECTED_ROWS frames).
    rejected: list[pl.DataFrame]

    @property
    def stats(self) -> RequestStats:
        return self._http.stats

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.__aexit__(*exc_info)

    def take_rejected(self) -> list[pl.DataFrame]:
        """The rejected rows gathered so far, handed over once."""
        taken, self.rejected = self.rejected, []
        return taken


class _Undecodable(Exception):
    """A 200 answer whose body cannot be read (cut off in transit): worth another attempt."""


def _json_body(response: httpx.Response) -> tuple[Any, httpx.Headers]:
    try:
        return orjson.loads(response.content), response.headers
    except orjson.JSONDecodeError as exc:
        raise _Undecodable(f"unparseable body ({len(response.content)} bytes: {exc})") from None


def _raw_body(response: httpx.Response) -> tuple[bytes, httpx.Headers]:
    return response.content, response.headers


def _retry_after(response: httpx.Response, default: float) -> float:
    raw = response.headers.get("Retry-After", "")
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return default
