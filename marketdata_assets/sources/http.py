"""The shared HTTP layer: request-weight pacing, concurrency, Retry-After, bans and retries.

Every upstream client sends its requests through `PacedHttp`; nothing else talks HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
import polars as pl

from marketdata_assets.sources.errors import (
    UpstreamBanned,
    UpstreamRejected,
    UpstreamUnavailable,
)
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.timeframes import end_day

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

    def __add__(self, other: RequestStats) -> RequestStats:
        return RequestStats(self.requests + other.requests, self.weight + other.weight, self.retries + other.retries,
                            self.throttled + other.throttled, self.paced_seconds + other.paced_seconds)

    def as_metadata(self) -> dict[str, int | float]:
        return {
            "requests": self.requests,
            "weight_used": self.weight,
            "retries": self.retries,
            "http_429": self.throttled,
            "seconds_paced": round(self.paced_seconds, 3),
        }


class WeightBudget:
    """A per-IP request-weight budget that resets at every fixed window of the UTC clock: a
    minute as Binance counts weight (the default), or 5 minutes, or 2 seconds, as other limits go.

    Weight is reserved when a request is sent, so in-flight requests count. The server's own count
    (`X-MBX-USED-WEIGHT-1M`, which includes other clients on this IP) wins when it is higher.
    """

    # The server's window may start a little after ours (clock offset, transit): open the new
    # window late by this much (at most a tenth of the window). The whole budget still fits.
    BOUNDARY_GUARD_S = 0.5
    _shared: dict[tuple[str, int, float, Clock, Sleep], WeightBudget] = {}

    def __init__(self, limit: int, clock: Clock = time.time, sleep: Sleep = asyncio.sleep, window_s: float = 60.0):
        if limit < 1:
            raise ValueError(f"weight limit must be positive, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._guard = min(self.BOUNDARY_GUARD_S, window_s / 10)
        self._clock = clock
        self._sleep = sleep
        self._window = -1
        self._used = 0
        self._in_flight = 0  # weight of requests sent and not answered yet
        self._paused_until = 0.0

    def _roll(self, now: float) -> int:
        window = int(now // self.window_s)
        if window != self._window:
            # A request still in flight may reach the server after its window turned, and count
            # there: the new window starts with that weight spent.
            self._window, self._used = window, self._in_flight
        return window

    async def acquire(self, weight: int, stats: RequestStats) -> int:
        """Wait until `weight` fits in the current window, reserve it, return that window."""
        if weight > self.limit:
            raise ValueError(f"one request of weight {weight} exceeds the budget {self.limit}")
        while True:
            now = self._clock()
            wake = self._paused_until
            if now >= wake:
                window = self._roll(now)
                if now - window * self.window_s < self._guard:
                    wake = window * self.window_s + self._guard
                elif self._used + weight <= self.limit:
                    self._used += weight
                    self._in_flight += weight
                    return window
                else:
                    wake = (window + 1) * self.window_s + self._guard
            delay = max(wake - now, 0.001)
            stats.paced_seconds += delay
            await self._sleep(delay)

    def settle(self, weight: int) -> None:
        """A request of `weight` was answered (or failed): it is no longer in flight."""
        self._in_flight = max(0, self._in_flight - weight)

    def observe(self, sent_window: int, used: int) -> None:
        """Take the server's used weight, reported on a response to a request sent in `sent_window`."""
        # A response that crossed a window boundary reports the old window's count: skip it.
        if sent_window == self._window == int(self._clock() // self.window_s) and used > self._used:
            self._used = used

    @classmethod
    def for_host(
        cls, base_url: str, limit: int, clock: Clock = time.time, sleep: Sleep = asyncio.sleep, window_s: float = 60.0
    ) -> WeightBudget:
        """The one budget of this process for `base_url`: the server counts weight per IP, so
        every client in the process (one per asset step) must draw on the same budget."""
        key = (base_url.rstrip("/"), limit, window_s, clock, sleep)
        if key not in cls._shared:
            cls._shared[key] = cls(limit, clock, sleep, window_s)
        return cls._shared[key]

    def pause(self, seconds: float) -> None:
        """The server said back off (429 Retry-After): no request leaves for `seconds`."""
        now = self._clock()
        self._paused_until = max(self._paused_until, now + seconds)
        self._roll(now)
        self._used = self.limit


ErrorDetail = Callable[[httpx.Response], tuple[str, int | None]]


class Bans:
    """The IP bans this process has earned, by host. A ban is of the IP, not of one request: once
    a host has banned us, no client of this process sends it anything until the ban ends (another
    request would only lengthen it)."""

    _until: dict[str, tuple[dt.datetime, str]] = {}

    @classmethod
    def note(cls, host: str, until: dt.datetime, detail: str) -> None:
        known = cls._until.get(host)
        if known is None or until > known[0]:
            cls._until[host] = (until, detail)

    @classmethod
    def clear(cls) -> None:
        """Forget every ban (tests: an emulator's port may be handed to the next one)."""
        cls._until.clear()

    @classmethod
    def all(cls) -> dict[str, tuple[dt.datetime, str]]:
        """host -> (until, detail) of every ban still running."""
        return {host: ban for host in list(cls._until) if (ban := cls.active(host)) is not None}

    @classmethod
    def active(cls, host: str) -> tuple[dt.datetime, str] | None:
        """(until, detail) of the ban on `host` still running, if any."""
        known = cls._until.get(host)
        if known is not None and known[0] <= dt.datetime.now(dt.UTC):
            del cls._until[host]
            return None
        return known


@dataclass(frozen=True)
class EnvelopeError:
    """An error a vendor reports inside a 200 answer's body (OKX's `code`, Bybit's `retCode`)."""

    code: int
    message: str
    throttled: bool = False  # "too many requests": wait and try again, as after a 429


# Reads a decoded 200 body: the error it carries, or None when it carries data.
EnvelopeCheck = Callable[[Any], EnvelopeError | None]


def _plain_error_detail(response: httpx.Response) -> tuple[str, int | None]:
    return response.text[:200] or response.reason_phrase, None


class PacedHttp:
    """GET JSON or files from one upstream host, paced by a weight budget (None: unmetered, as
    file hosts are), with bounded retries.

    - 429 (or an envelope saying "too many requests"): wait `Retry-After` (the whole client
      pauses; `default_retry_after_s` without the header), then try again;
    - 418 (`ban_statuses`): raise `UpstreamBanned` naming when the ban ends;
    - 5xx, timeouts, dropped connections and unparseable bodies: retried up to `max_attempts`
      times with exponential backoff and jitter, then `UpstreamUnavailable`;
    - other 4xx, or an error in a 200 answer's envelope (`envelope_check`): `UpstreamRejected`
      with the vendor's error code and message.
    """

    MAX_THROTTLED = 10

    def __init__(
        self,
        source: str,
        base_url: str,
        budget: WeightBudget | None,
        *,
        used_weight_header: str | None = None,
        error_detail: ErrorDetail = _plain_error_detail,
        max_concurrency: int = 10,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        timeout_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        envelope_check: EnvelopeCheck | None = None,
        default_retry_after_s: float = 60.0,
        ban_statuses: tuple[int, ...] = (418,),
        default_ban_s: float = 120.0,
    ):
        self.source = source
        self._envelope_check = envelope_check
        self._default_retry_after = default_retry_after_s
        self._ban_statuses = ban_statuses
        self._default_ban = default_ban_s
        self.base_url = base_url.rstrip("/")
        self._host = urlsplit(self.base_url).netloc
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
            base_url=self.base_url, timeout=self._timeout, limits=limits, trust_env=False, verify=_tls_context()
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
            banned = Bans.active(self._host)
            if banned is not None:
                raise UpstreamBanned(self.source, request, banned[0], f"{banned[1]}; earned earlier by this process")
            try:
                async with self._slots:
                    # Reserve weight only once a slot is free, right before sending: a request
                    # that reserved in one minute and waited for a slot into the next would be
                    # counted by the server in the next, on top of that minute's whole budget.
                    minute = await self.budget.acquire(weight, self.stats) if self.budget else 0
                    self.stats.requests += 1
                    self.stats.weight += weight
                    try:
                        response = await self._client.get(path, params=params)
                    finally:
                        if self.budget:
                            self.budget.settle(weight)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await self._retry_or_give_up(request, attempt, cause)
                continue
            self._observe_weight(minute, response)
            status = response.status_code
            if status == 429:
                throttled += 1
                await self._back_off(request, throttled, _retry_after(response, self._default_retry_after))
                attempt -= 1  # not a failed attempt: the budget decides when to go again
                continue
            if status in self._ban_statuses:
                retry_after = _retry_after(response, default=self._default_ban)
                until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=retry_after)
                detail, _ = self._error_detail(response)
                Bans.note(self._host, until, detail)
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
                decoded = decode(response)
            except _Undecodable as exc:
                await self._retry_or_give_up(request, attempt, str(exc))
                continue
            verdict = self._envelope_check(decoded[0]) if self._envelope_check else None
            if verdict is None:
                return decoded
            if not verdict.throttled:
                raise UpstreamRejected(self.source, request, status, f"code {verdict.code}: {verdict.message}", verdict.code)
            throttled += 1
            await self._back_off(request, throttled, _retry_after(response, self._default_retry_after))
            attempt -= 1

    async def _back_off(self, request: str, throttled: int, retry_after: float) -> None:
        """Told to slow down `throttled` times in a row: pause the budget (or this request)."""
        self.stats.throttled += 1
        if throttled > self.MAX_THROTTLED:
            raise UpstreamUnavailable(self.source, f"{request} was told to slow down {throttled} times in a row")
        if self.budget:
            self.budget.pause(retry_after)
        else:
            await self._sleep(retry_after)

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


class DailyRestClient(UpstreamClient):
    """A source whose window is a request or two to one paced venue (alternative.me, DefiLlama,
    blockchain.com): its client, the rejected rows it gathers and the rows it yields, and `inside`
    to keep a window's days of an answer. Subclasses say the venue, name and rate (`VENUE`,
    `SOURCE`, `REQUESTS_PER_MINUTE`) and `read`."""

    VENUE: Venue
    SOURCE: str
    REQUESTS_PER_MINUTE: int
    MAX_CONCURRENCY = 1

    def __init__(
        self, base_url: str, table: Any, *, max_attempts: int = 5, backoff_base_s: float = 0.5,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ):
        self.rejected = []
        self.table = table
        self._rows = 0
        self._clock = clock
        self._http = self.VENUE.http(
            self.SOURCE, base_url, RateLimit(self.REQUESTS_PER_MINUTE), max_concurrency=self.MAX_CONCURRENCY,
            max_attempts=max_attempts, backoff_base_s=backoff_base_s, clock=clock, sleep=sleep,
        )

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC).date()

    def outcome(self) -> SourceOutcome:
        return SourceOutcome(rejected=self.take_rejected(), requests=self.stats.requests,
                             rows_by_source={"rest": self._rows}, metadata={"rows_from_rest": self._rows})

    def inside(self, frame: pl.DataFrame, rejected: pl.DataFrame, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """`frame`'s days of [start, end) (UTC; counted as yielded), and `rejected`'s kept."""
        self.rejected.append(rejected.filter((pl.col("open_time") >= start) & (pl.col("open_time") < end)))
        frame = frame.filter((pl.col("date") >= start.date()) & (pl.col("date") < end_day(end)))
        self._rows += frame.height
        return frame


class _Undecodable(Exception):
    """A 200 answer whose body cannot be read (cut off in transit): worth another attempt."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (certifi's CA bundle, as httpx's default): building
    one costs ~25 ms, which each client of each asset of a run paid before (a 2,100-asset seed
    opens thousands)."""
    return httpx.create_ssl_context(trust_env=False)


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


# --- venues ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """A budget the upstream counts per IP: `limit` weight (or requests, each of weight 1) per
    fixed window of `window_s` seconds of the UTC clock, over the paths under `scope`."""

    limit: int
    window_s: float = 60.0
    scope: str = ""  # a path prefix: the endpoints that share the budget ('' the whole host)


@dataclass(frozen=True)
class Venue:
    """One upstream as a declaration, as ccxt's `describe()` and freqtrade's `_ft_has` make one:
    where it is (the setting naming its base URL), how it reports weight used, how it says no (an
    error body, an error inside a 200 envelope, a ban), and how far back its history reaches per
    dataset. `http()` builds the paced client every source of the venue sends through."""

    name: str
    url_setting: str  # the Settings attribute holding the base URL (settings.ENDPOINT_DEFAULTS)
    error_detail: ErrorDetail = _plain_error_detail
    envelope_check: EnvelopeCheck | None = None
    used_weight_header: str | None = None
    default_retry_after_s: float = 60.0  # a 429 (or "slow down" envelope) without Retry-After
    ban_statuses: tuple[int, ...] = (418,)
    default_ban_s: float = 120.0
    retention: Mapping[str, dt.timedelta] = field(default_factory=dict)  # dataset -> history kept

    def http(
        self, source: str, base_url: str, limit: RateLimit | None, *, max_concurrency: int = 10,
        max_attempts: int = 5, backoff_base_s: float = 0.5, timeout_s: float = 30.0,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ) -> PacedHttp:
        """A PacedHttp for `source` (its name in errors) at `base_url`, drawing on the one budget
        of this process for `limit` (None: unmetered, as file hosts are)."""
        budget = None
        if limit is not None:
            budget = WeightBudget.for_host(base_url.rstrip("/") + limit.scope, limit.limit, clock, sleep, limit.window_s)
        return PacedHttp(
            source, base_url, budget, used_weight_header=self.used_weight_header, error_detail=self.error_detail,
            max_concurrency=max_concurrency, max_attempts=max_attempts, backoff_base_s=backoff_base_s,
            timeout_s=timeout_s, sleep=sleep, envelope_check=self.envelope_check,
            default_retry_after_s=self.default_retry_after_s, ban_statuses=self.ban_statuses,
            default_ban_s=self.default_ban_s,
        )
