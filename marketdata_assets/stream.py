"""`marketdata stream`: the live tail. Closed candles of every catalog klines series marked
`stream` arrive over its venue's kline streams (Binance, OKX, Bybit: the klines dataset's
STREAM_APIS), are upserted into market_data.klines (`source = 'ws'`) in batches at most half a
second old, and are published on Redis.

- Connections: per venue and market, as many streams each as the venue takes (Binance 1,024),
  subscribed and kept alive as the venue asks; remade before Binance's 24-hour cut, after a
  disconnect (backoff with jitter: 0.5 s doubling to 30 s, times 0.5–1), and when a connection
  stays silent past MARKETDATA_STREAM_SILENT_SECONDS (a stall).
- No seam leaves a hole: after every (re)connect, a series' first closing update waits until the
  bars between its last stored one and it are fetched through the klines dataset's REST source
  and stored. Nothing stored yet: nothing to join (a backfill's job).
- Only closing updates (`x: true`) are stored; the candle in progress is published when
  MARKETDATA_STREAM_PUBLISH_OPEN is set, never stored.
- Redis (MARKETDATA_REDIS_URL; unset: no publishing) on `<venue>:<market>:ohlcv:<tf>:<BASE-QUOTE>`
  (`binance:spot:ohlcv:1m:BTC-USDT`) as JSON `{"timestamp": open ms, "open", "high", "low",
  "close", "volume", "closed"}`. Redis being down never holds the warehouse up: what cannot be
  published is dropped (pub/sub keeps nothing for absent subscribers anyway), and publishing
  resumes when Redis answers again.
- `GET /healthz` (MARKETDATA_STREAM_PORT): 200 with each subscription's last message, 503 when one
  is silent past the threshold; `GET /metrics`: messages, reconnects, lag, rows written, publish
  failures, for Prometheus.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from marketdata_assets.catalog import Series
from marketdata_assets.schemas import KLINES
from marketdata_assets.settings import Settings, redact
from marketdata_assets.sources.binance_ws import Candle
from marketdata_assets.sources.errors import MalformedResponse

log = logging.getLogger("marketdata.stream")
RECONNECT_BEFORE_S = 23.5 * 3600  # Binance cuts a connection after 24 hours: remake it first
WRITE_EVERY_S = 0.5
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "DAI", "EUR", "TRY", "BRL", "BTC", "ETH", "BNB")


def pair(symbol: str) -> str:
    """`BTCUSDT` (and OKX's `BTC-USDT`, `BTC-USDT-SWAP`) as `BTC-USDT` (the quote asset recognised
    by its suffix)."""
    if "-" in symbol:
        return "-".join(symbol.split("-")[:2])
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[:-len(quote)]}-{quote}"
    return symbol


@dataclass
class Subscription:
    """One streamed series: its stream, where it is published, and what arrived of it."""

    series: Series
    venue: str
    market: str
    stream: str
    channel: str
    step: dt.timedelta
    last_stored: dt.datetime | None = None
    last_message: float | None = None  # time.time() of the newest message
    seam_open: bool = True  # set on every (re)connect: the bars before the first closing update are due


@dataclass
class Health:
    started: float = field(default_factory=time.time)
    redis: str = "off"


class Publisher:
    """Redis publishing that never blocks the stream: a queue, one task draining it, messages
    dropped while Redis is down (tried again at most every second)."""

    def __init__(self, url: str | None, failures: Counter, health: Health):
        self._client: Any = None
        if url:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
            health.redis = "up"
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=100_000)
        self._failures = failures
        self._health = health
        self._down_until = 0.0
        self.published = 0

    def offer(self, channel: str, message: bytes) -> None:
        if self._client is not None and not self._queue.full():
            self._queue.put_nowait((channel, message))

    async def run(self) -> None:
        if self._client is None:
            return
        import redis

        while True:
            channel, message = await self._queue.get()
            if time.monotonic() < self._down_until:
                self._failures.inc()
                continue
            try:
                await self._client.publish(channel, message)
                self.published += 1
                if self._health.redis != "up":
                    log.warning("redis answers again: publishing resumed")
                self._health.redis = "up"
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._failures.inc()
                if self._health.redis == "up":
                    log.warning(f"redis is down ({exc.__class__.__name__}): candles are stored, not published")
                self._health.redis = "down"
                self._down_until = time.monotonic() + 1.0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class Streamer:
    """Every streamed series of the catalog, from connection to warehouse and Redis."""

    def __init__(self, settings: Settings, reconnect_before_s: float = RECONNECT_BEFORE_S):
        from marketdata_assets.catalog import load_catalog
        from marketdata_assets.datasets import dataset
        from marketdata_assets.datasets.klines import STREAM_APIS
        from marketdata_assets.defs.ingest.resources import resources_from
        from marketdata_assets.timeframes import timeframe
        from marketdata_assets.warehouse import open_warehouse

        self.settings = settings
        self.klines = dataset("klines")
        self.warehouse = open_warehouse(settings.warehouse_url)
        self.upstreams = resources_from(settings)["upstreams"]
        self.reconnect_before_s = reconnect_before_s
        self.apis = STREAM_APIS
        self.subscriptions: dict[tuple[str, str, str], Subscription] = {}
        for series in self.klines.series_of(load_catalog(settings.catalog_path)):
            instrument = series.instrument
            name = series.options["timeframe"]
            if instrument is None or name not in instrument.streamed:
                continue
            stream = self.apis[instrument.venue].key(instrument.symbol, name)
            channel = f"{instrument.venue}:{instrument.market}:ohlcv:{name}:{pair(instrument.symbol)}"
            self.subscriptions[(instrument.venue, instrument.market, stream)] = Subscription(
                series, instrument.venue, instrument.market, stream, channel,
                dt.timedelta(milliseconds=timeframe(name).millis))
        self.registry = CollectorRegistry(auto_describe=False)
        self.messages = Counter("stream_messages", "Kline messages received", ["stream"], registry=self.registry)
        self.reconnects = Counter("stream_reconnects", "Connections made again", ["venue", "market"],
                                  registry=self.registry)
        self.lag = Gauge("stream_lag_seconds", "From a bar's close to its closing update's arrival", ["stream"],
                         registry=self.registry)
        self.rows = Counter("stream_rows_written", "Closed candles stored, by origin (ws, rest)", ["origin"],
                            registry=self.registry)
        self.publish_failures = Counter("stream_publish_failures", "Candles not published: Redis was down",
                                        registry=self.registry)
        self.commit_latency = Histogram(
            "stream_commit_latency_seconds", "From a closing update leaving the server (its E) to its warehouse commit",
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0), registry=self.registry)
        # (stream, open ms, sent, received, committed) of the newest closing updates stored
        self.timings: deque[tuple[str, int, float, float, float]] = deque(maxlen=100_000)
        self.health = Health()
        self.publisher = Publisher(settings.redis_url, self.publish_failures, self.health)
        # closed candles to store, each with (stream, open ms, sent, received): one list, swapped whole
        self.pending: list[tuple[dict[str, Any], tuple[str, int, float, float]]] = []
        self.stopping = asyncio.Event()

    # --- the process ---------------------------------------------------------------------------

    def connections(self) -> list[tuple[str, str, str, list[str]]]:
        """(venue, market, URL, streams) of every connection."""
        by_market: dict[tuple[str, str], list[str]] = defaultdict(list)
        for venue, market, stream in self.subscriptions:
            by_market[(venue, market)].append(stream)
        return [(venue, market, url, names) for (venue, market), keys in sorted(by_market.items())
                for url, names in self.apis[venue].connections(
                    getattr(self.settings, self.apis[venue].url_settings[market]), market, keys)]

    async def run(self, host: str, port: int, started: Any = None) -> None:
        """Stream until `stopping` is set; then write what is pending and close."""
        import uvicorn

        for sub in self.subscriptions.values():
            sub.last_stored = await asyncio.to_thread(self._newest_stored, sub.series)
        server = uvicorn.Server(uvicorn.Config(self.web_app(), host=host, port=port, log_level="warning",
                                               access_log=False, lifespan="off"))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        web = asyncio.create_task(server.serve())
        while not server.started:
            if web.done():
                web.result()  # raises what stopped it (a port taken)
                raise OSError(f"cannot listen on {host}:{port}")
            await asyncio.sleep(0.02)
        if started is not None:
            started(server.servers[0].sockets[0].getsockname()[1])
        tasks = [asyncio.create_task(self._connection(venue, market, url, names))
                 for venue, market, url, names in self.connections()]
        tasks += [asyncio.create_task(self._writer()), asyncio.create_task(self.publisher.run())]
        await self.stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._write_pending)
        await self.publisher.close()
        server.should_exit = True
        await web

    def _newest_stored(self, series: Series) -> dt.datetime | None:
        where, params = self.klines.row_filter(series)
        return self.warehouse.query(f"SELECT max(open_time) AS t FROM market_data.klines WHERE {where}", params).item()

    async def _connection(self, venue: str, market: str, url: str, names: list[str]) -> None:
        import websockets

        api = self.apis[venue]
        where = f"{venue} {market}"
        attempt, first = 0, True
        while not self.stopping.is_set():
            try:
                async with websockets.connect(url, open_timeout=10, ping_interval=20, ping_timeout=60,
                                              close_timeout=2, max_size=2**22) as ws:
                    if not first:
                        self.reconnects.labels(venue, market).inc()
                    first, attempt = False, 0
                    opened = time.monotonic()
                    for name in names:
                        self.subscriptions[(venue, market, name)].seam_open = True
                    for request in api.subscribe(market, names):
                        await ws.send(request)
                    alive = asyncio.create_task(self._keep_alive(ws, api.keepalive)) if api.keepalive else None
                    log.info(f"{where}: connected, {len(names)} streams")
                    try:
                        await self._receive(ws, api, venue, market, opened)
                    finally:
                        if alive is not None:
                            alive.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a refused handshake, a dropped connection, a network error
                log.warning(f"{where}: {exc.__class__.__name__}: {exc}")
            if self.stopping.is_set():
                return
            delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def _receive(self, ws: Any, api: Any, venue: str, market: str, opened: float) -> None:
        """Read the connection's messages until it is old enough to be made again, goes silent
        past the threshold, or closes (ConnectionClosed)."""
        where = f"{venue} {market}"
        while True:
            left = self.reconnect_before_s - (time.monotonic() - opened)
            if left <= 0:
                log.info(f"{where}: connection {self.reconnect_before_s / 3600:g} h old: made again")
                return
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=min(self.settings.stream_silent_seconds, left))
            except TimeoutError:
                if time.monotonic() - opened < self.reconnect_before_s:
                    log.warning(f"{where}: silent for {self.settings.stream_silent_seconds:g} s: made again")
                return
            try:
                candles = api.parse(raw, market)
            except MalformedResponse as exc:
                log.error(str(exc))
                continue
            for candle in candles:
                await self._on_candle(venue, market, candle)

    @staticmethod
    async def _keep_alive(ws: Any, keepalive: tuple[float, str]) -> None:
        """Send the venue's ping every so many seconds (OKX drops a connection silent for 30 s)."""
        seconds, message = keepalive
        while True:
            await asyncio.sleep(seconds)
            await ws.send(message)

    async def _on_candle(self, venue: str, market: str, candle: Candle) -> None:
        sub = self.subscriptions.get((venue, market, candle.stream))
        if sub is None:
            return
        now = time.time()
        sub.last_message = now
        self.messages.labels(sub.stream).inc()
        if candle.closed or self.settings.stream_publish_open:
            self.publisher.offer(sub.channel, orjson.dumps({
                "timestamp": int(candle.open_time.timestamp() * 1000), **{k: candle.values[k] for k in (
                    "open", "high", "low", "close", "volume")}, "closed": candle.closed}))
        if not candle.closed:
            return
        self.lag.labels(sub.stream).set(now - candle.close_time.timestamp())
        if sub.seam_open:
            sub.seam_open = not await self._join(sub, candle.open_time)
        instrument = sub.series.instrument
        assert instrument is not None
        row = {
            "venue": instrument.venue, "market": instrument.market, "symbol": instrument.symbol,
            "timeframe": candle.timeframe, "open_time": candle.open_time,
            **{name: candle.values.get(name) for name in ("open", "high", "low", "close", "volume", "quote_volume",
                                                           "taker_buy_volume", "taker_buy_quote_volume")},
            "trades": candle.trades, "source": "ws", "ingested_at": dt.datetime.now(dt.UTC),
        }
        self.pending.append((row, (sub.stream, int(candle.open_time.timestamp() * 1000), candle.event_ms / 1000, now)))
        sub.last_stored = max(sub.last_stored or candle.open_time, candle.open_time)

    async def _join(self, sub: Subscription, first_streamed: dt.datetime) -> bool:
        """Fetch and store the bars between the last stored one and `first_streamed` through REST;
        whether the seam is closed (a failed window is tried again at the next closing update)."""
        if sub.last_stored is None or sub.last_stored + sub.step >= first_streamed:
            return True
        start = sub.last_stored + sub.step
        await asyncio.to_thread(self._write_pending)  # what came before the seam first
        source = self.klines.rest_source(sub.series, self.upstreams)
        async with source:
            async for frame in source.read(sub.series, start, first_streamed):
                await asyncio.to_thread(self.warehouse.upsert, KLINES, frame)
                self.rows.labels("rest").inc(frame.height)
                if frame.height:
                    sub.last_stored = max(sub.last_stored, frame["open_time"].max())  # type: ignore[type-var]
            failures = source.outcome().failures
        if failures:
            log.warning(f"{sub.stream}: {failures[0].describe()} could not be fetched; tried again at the next "
                        "closed bar")
            return False
        log.info(f"{sub.stream}: joined [{start:%Y-%m-%d %H:%M}, {first_streamed:%Y-%m-%d %H:%M}) UTC through REST")
        return True

    async def _writer(self) -> None:
        while True:
            await asyncio.sleep(WRITE_EVERY_S)
            await asyncio.to_thread(self._write_pending)

    def _write_pending(self) -> None:
        taken, self.pending = self.pending, []
        if taken:
            rows = pl.DataFrame([row for row, _ in taken])
            self.warehouse.upsert(KLINES, rows.select(KLINES.columns).cast(dict(KLINES.schema)))
            committed = time.time()
            self.rows.labels("ws").inc(len(taken))
            for _, (stream, open_ms, left, received) in taken:
                self.commit_latency.observe(committed - left)
                self.timings.append((stream, open_ms, left, received, committed))

    # --- health ---------------------------------------------------------------------------------

    def status(self) -> tuple[int, dict[str, Any]]:
        now = time.time()
        subscriptions, silent = {}, False
        for sub in self.subscriptions.values():
            since = now - (sub.last_message or self.health.started)
            silent |= since > self.settings.stream_silent_seconds
            subscriptions[f"{sub.venue}:{sub.market}:{sub.stream}"] = {
                "last_message": dt.datetime.fromtimestamp(sub.last_message, dt.UTC).isoformat()
                if sub.last_message else None,
                "silent_seconds": round(since, 3),
                "last_stored": sub.last_stored.isoformat() if sub.last_stored else None,
            }
        body = {"status": "silent" if silent else "ok", "redis": self.health.redis, "subscriptions": subscriptions}
        return (503 if silent else 200), body

    def web_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def healthz(request: Any) -> Response:
            code, body = self.status()
            return JSONResponse(body, status_code=code)

        async def metrics(request: Any) -> Response:
            return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")

        return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])

    def describe(self) -> str:
        connections = self.connections()
        return (f"streaming {len(self.subscriptions)} series on {len(connections)} connection(s)"
                + (f", publishing on {redact(self.settings.redis_url)}" if self.settings.redis_url else ", no Redis"))
