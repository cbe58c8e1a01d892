"""The live tail (issue 23): `marketdata stream` against the emulator's kline streams and a real
redis-server. The emulator's clock runs 60 times faster than real time (a minute a second) from
three hours ago, so minutes close every second and a 3-minute disconnect takes three seconds,
while everything it serves is in the past for the client."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import dagster as dg
import httpx
import pytest
import redis
import yaml

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.server import EmulatorServer
from marketdata_assets.settings import Settings
from marketdata_tests.conftest import TimeWarp, cli_env, write_catalog
from marketdata_tests.test_deployment import DOCKER, free_port

SYMBOLS = ("BTCUSDT", "ETHUSDT")
CHANNELS = {"BTCUSDT": "binance:spot:ohlcv:1m:BTC-USDT", "ETHUSDT": "binance:spot:ohlcv:1m:ETH-USDT"}


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen]:
    """Debian's redis-server on a loopback port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("redis-server is missing: .ci/run installs it")
        pytest.skip("no redis-server here: apt-get install redis-server")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
        client.close()


class Subscriber:
    """Every message on the candle channels, as a service subscribed to them sees it."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = redis.Redis(port=self.port).pubsub()
                pubsub.psubscribe("binance:spot:ohlcv:1m:*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message["type"] == "pmessage":
                        self.messages.append((message["channel"].decode(), json.loads(message["data"])))
            except redis.ConnectionError:
                time.sleep(0.1)  # Redis is down: subscribe again when it is back

    def closed(self, symbol: str) -> list[dict]:
        return [body for channel, body in self.messages if channel == CHANNELS[symbol] and body["closed"]]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start_stream(cwd, env: dict[str, str]) -> tuple[subprocess.Popen, list[str], str]:
    """`marketdata stream` as docker/compose.yaml runs it, on a loopback port: the process, what
    it says on stderr (as it says it), and its /healthz URL once it listens."""
    program, *args = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["stream"]["command"]
    assert program == "marketdata"
    args = [{"0.0.0.0": "127.0.0.1", "9109": "0"}.get(arg, arg) for arg in args]
    process = subprocess.Popen([sys.executable, "-m", "marketdata_assets.cli", *args],
                               cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(process.stderr), daemon=True).start()
    wait_until("the health port", lambda: any("health on" in line for line in said) or process.poll() is not None, 60)
    assert process.poll() is None, said
    health = re.search(r"http://\S+/healthz", next(line for line in said if "health on" in line)).group(0)
    return process, said, health


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


def test_streamed_candles_land_closed_once_on_redis_and_in_the_warehouse_across_a_disconnect(tmp_path, dagster_home):
    from marketdata_tests.test_cli import marketdata_here
    from marketdata_tests.test_venue_klines import run_together
    from marketdata_assets.warehouse import open_warehouse

    warp = TimeWarp(60, start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    config = replace(EmulatorConfig(), ws_update_seconds=0.1)
    redis_port = free_port()
    with EmulatorServer(config, clock=warp) as emu, redis_server(redis_port) as first_redis:
        month = dt.datetime.fromtimestamp(warp(), dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        catalog = write_catalog(tmp_path / "c.yaml", [
            {"venue": "binance", "market": "spot", "symbol": symbol, "timeframes": ["1m"], "stream": True}
            for symbol in SYMBOLS], start_date=month.date().isoformat())
        settings = Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog,
                            binance_spot_url=emu.url, binance_futures_url=emu.url, binance_archive_url=emu.url,
                            klines_source="rest")
        # the month so far, as the daily backfill stores it: the stream joins its last bar
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        try:
            keys = [dg.AssetKey(["binance_spot", "klines_1m", symbol]) for symbol in SYMBOLS]
            assert run_together(settings, keys, f"{month:%Y-%m-%d}", f"{month:%Y-%m-%d}", instance).success
        finally:
            instance.dispose()
        warehouse = open_warehouse(settings.warehouse_url)
        backfilled = warehouse.query("SELECT max(open_time) AS t FROM market_data.klines").item()

        subscriber = Subscriber(redis_port)
        env = {**cli_env(settings, dagster_home, catalog), "MARKETDATA_BINANCE_SPOT_WS_URL": emu.url,
               "MARKETDATA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "MARKETDATA_STREAM_SILENT_SECONDS": "2"}
        process, said, health = start_stream(tmp_path, env)
        try:
            assert said[0].strip() == "streaming 2 series on 1 connection(s), publishing on redis://127.0.0.1:" \
                                      f"{redis_port}/0"
            wait_until("3 closed candles of each", lambda: all(len(subscriber.closed(s)) >= 3 for s in SYMBOLS))
            assert httpx.get(health).status_code == 200

            # the server drops every connection and refuses new ones for 3 minutes of its clock
            before = len(subscriber.closed("BTCUSDT"))
            httpx.post(f"{emu.url}/emulator/ws/disconnect", params={"seconds": 180})
            wait_until("streaming again", lambda: len(subscriber.closed("BTCUSDT")) >= before + 3)

            # Redis goes away: candles are still stored; publishing resumes when it is back
            first_redis.terminate()
            first_redis.wait(timeout=10)
            time.sleep(3)  # three minutes of the emulator's clock without Redis
            with redis_server(redis_port):
                resumed = len(subscriber.messages)
                wait_until("publishing again", lambda: len(subscriber.messages) >= resumed + 4)

                # a silent server: the health check says so, the connection is made again
                httpx.post(f"{emu.url}/emulator/ws/stall", params={"seconds": 300})
                wait_until("a 503 from /healthz", lambda: httpx.get(health).status_code == 503, 20)
                assert httpx.get(health).json()["status"] == "silent"
                wait_until("a 200 again", lambda: httpx.get(health).status_code == 200, 30)
                recovered = len(subscriber.closed("BTCUSDT"))
                wait_until("candles after the stall", lambda: len(subscriber.closed("BTCUSDT")) >= recovered + 2)
                metrics = httpx.get(health.replace("/healthz", "/metrics")).text
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            subscriber.stop()

        # every minute from the month's start to the newest stored, each once, closed as REST serves it
        rows = warehouse.query("SELECT symbol, open_time, close, volume, source FROM market_data.klines "
                               "ORDER BY symbol, open_time")
        for symbol in SYMBOLS:
            mine = rows.filter(rows["symbol"] == symbol)
            first, last = mine["open_time"].min(), mine["open_time"].max()
            assert first == month and mine.height == (last - first) // dt.timedelta(minutes=1) + 1, symbol
            assert last > backfilled + dt.timedelta(minutes=10)
            streamed = mine.filter(mine["source"] == "ws")
            joined = mine.filter((mine["source"] == "rest") & (mine["open_time"] > streamed["open_time"].min()))
            assert streamed.height >= 10 and joined.height >= 3  # the disconnect's minutes came from REST
            served = httpx.get(f"{emu.url}/api/v3/klines", params={
                "symbol": symbol, "interval": "1m", "startTime": int(streamed["open_time"].min().timestamp() * 1000),
                "limit": 1000}).json()
            by_open = {dt.datetime.fromtimestamp(r[0] / 1000, dt.UTC): (float(r[4]), float(r[5])) for r in served}
            for open_time, close, volume in streamed.select("open_time", "close", "volume").iter_rows():
                assert by_open[open_time] == (close, volume), (symbol, open_time)  # the whole bar, not a part
            # each candle published is the stored one, once
            published = subscriber.closed(symbol)
            stamps = [body["timestamp"] for body in published]
            assert len(stamps) == len(set(stamps)) and set(published[0]) == {
                "timestamp", "open", "high", "low", "close", "volume", "closed"}
            stored = {int(t.timestamp() * 1000): c for t, c in mine.select("open_time", "close").iter_rows()}
            assert all(stored[body["timestamp"]] == body["close"] for body in published)
        reconnects = float(re.search(r'stream_reconnects_total\{market="spot",venue="binance"\} (\S+)', metrics).group(1))
        assert reconnects >= 2  # the forced disconnect and the stall

        # the daily run of a streamed series fetches nothing stored: only the bars after the newest one
        before = warehouse.query("SELECT symbol, count(*) AS n FROM market_data.klines GROUP BY symbol ORDER BY symbol")
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        try:
            daily = run_together(settings, keys, f"{month:%Y-%m-%d}", f"{month:%Y-%m-%d}", instance)
        finally:
            instance.dispose()
        assert daily.success
        after = warehouse.query("SELECT symbol, count(*) AS n FROM market_data.klines GROUP BY symbol ORDER BY symbol")
        for event in daily.get_asset_observation_events():
            totals = event.asset_observation_data.asset_observation.metadata["run"].value
            symbol = event.asset_key.path[-1]
            added = after.filter(after["symbol"] == symbol)["n"].item() - before.filter(before["symbol"] == symbol)["n"].item()
            # one window, the tail: a page of it and the empty page that ends it (the month took 43)
            assert (totals["windows_fetched"], totals["rows_written"]) == (1, added) and totals["requests"] <= 2, totals

        # the report: every streamed series whole, 0 unexplained gaps
        report = marketdata_here("report", "--format", "json", cwd=tmp_path, env=cli_env(settings, dagster_home, catalog))
        records = {r["asset"]: r for r in json.loads(report.stdout)}
        for symbol in SYMBOLS:
            record = records[f"binance_spot/klines_1m/{symbol}"]
            assert (record["unexplained_bars"], record["checks"]["no_unclosed_bars"]) == (0, "passed"), record


def test_the_emulator_streams_binances_envelope_closing_updates_as_rest_serves_them_and_refuses_1025_streams():
    import asyncio

    import websockets

    warp = TimeWarp(60, start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    with EmulatorServer(replace(EmulatorConfig(), ws_update_seconds=0.05), clock=warp) as emu:
        base = emu.url.replace("http://", "ws://")

        async def listen() -> list[dict]:
            got = []
            async with websockets.connect(f"{base}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m") as ws:
                while sum(m["data"]["k"]["x"] for m in got) < 4:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return got

        messages = asyncio.run(listen())
        first = messages[0]
        assert set(first) == {"stream", "data"} and first["stream"] in ("btcusdt@kline_1m", "ethusdt@kline_1m")
        assert first["data"]["e"] == "kline" and first["data"]["s"] == first["data"]["k"]["s"]
        assert set(first["data"]["k"]) >= {"t", "T", "s", "i", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q"}
        assert isinstance(first["data"]["k"]["o"], str) and first["data"]["k"]["T"] == first["data"]["k"]["t"] + 59_999
        closing = [m["data"]["k"] for m in messages if m["data"]["k"]["x"]]
        forming = [m["data"]["k"] for m in messages if not m["data"]["k"]["x"]]
        assert forming  # the candle in progress comes between closings, marked x: false
        for k in closing:  # a closing update is the bar REST serves
            (row,) = httpx.get(f"{emu.url}/api/v3/klines", params={"symbol": k["s"], "interval": "1m",
                                                                   "startTime": k["t"], "limit": 1}).json()
            assert (float(k["o"]), float(k["c"]), float(k["v"]), k["n"]) == (float(row[1]), float(row[4]),
                                                                            float(row[5]), row[8])

        async def refused(streams: str) -> int:
            try:
                async with websockets.connect(f"{base}/stream?streams={streams}"):
                    return 101
            except websockets.InvalidStatus as exc:
                return exc.response.status_code

        assert asyncio.run(refused("dogeusdt@kline_1m")) == 403  # no such symbol
        assert asyncio.run(refused("btcusdt@kline_2m")) == 403  # no such interval
        httpx.post(f"{emu.url}/emulator/ws/disconnect", params={"seconds": 60})
        assert asyncio.run(refused("btcusdt@kline_1m")) == 403  # refused for a minute of its clock
        time.sleep(1.5)
        assert asyncio.run(refused("btcusdt@kline_1m")) == 101


def test_a_client_opens_a_connection_per_1024_streams():
    from marketdata_assets.sources.binance_ws import connection_urls, stream_name

    names = [stream_name(f"S{i}USDT", "1m") for i in range(2050)]
    urls = connection_urls("https://stream.binance.com:9443", names)
    assert [len(chunk) for _, chunk in urls] == [1024, 1024, 2]
    assert urls[0][0].startswith("wss://stream.binance.com:9443/stream?streams=s0usdt@kline_1m/s1usdt@kline_1m/")
    assert [name for _, chunk in urls for name in chunk] == names


def test_okx_and_bybit_stream_through_the_same_paths_and_join_a_disconnect_through_their_rest(tmp_path, dagster_home):
    """OKX's candle channel (spot) and Bybit's kline topic (linear) with their own subscribe and
    ping messages; no Redis (MARKETDATA_REDIS_URL unset): candles are stored all the same."""
    from marketdata_assets.warehouse import open_warehouse

    warp = TimeWarp(60, start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    config = replace(EmulatorConfig(), ws_update_seconds=0.1)
    with EmulatorServer(config, clock=warp) as emu:
        catalog = write_catalog(tmp_path / "c.yaml", [
            {"venue": "okx", "market": "spot", "symbol": "BTC-USDT", "timeframes": ["1m"], "stream": True},
            {"venue": "bybit", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1m"], "stream": ["1m"],
             "datasets": ["klines"]},
        ], start_date="2025-01-01")
        settings = Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog)
        env = {**cli_env(settings, dagster_home, catalog), "MARKETDATA_OKX_URL": emu.url, "MARKETDATA_BYBIT_URL": emu.url,
               "MARKETDATA_OKX_WS_URL": emu.url, "MARKETDATA_BYBIT_WS_URL": emu.url,
               "MARKETDATA_STREAM_SILENT_SECONDS": "2"}
        process, said, health = start_stream(tmp_path, env)
        warehouse = open_warehouse(settings.warehouse_url)

        def stored(venue: str) -> int:
            return warehouse.query("SELECT count(*) AS n FROM market_data.klines WHERE venue = ?", [venue])["n"].item()

        try:
            assert said[0].strip() == "streaming 2 series on 2 connection(s), no Redis"
            wait_until("3 bars of each", lambda: min(stored("okx"), stored("bybit")) >= 3)
            httpx.post(f"{emu.url}/emulator/ws/disconnect", params={"seconds": 180})
            counts = {venue: stored(venue) for venue in ("okx", "bybit")}
            wait_until("streaming again", lambda: all(stored(v) >= counts[v] + 6 for v in counts))
            status = httpx.get(health).json()
            assert set(status["subscriptions"]) == {"okx:spot:candle1m:BTC-USDT", "bybit:perp:kline.1.BTCUSDT"}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        rows = warehouse.query("SELECT venue, open_time, open, close, volume, quote_volume, source FROM market_data.klines "
                               "ORDER BY venue, open_time")
        for venue in ("okx", "bybit"):
            mine = rows.filter(rows["venue"] == venue)
            first, last = mine["open_time"].min(), mine["open_time"].max()
            assert mine.height == (last - first) // dt.timedelta(minutes=1) + 1, venue  # each minute once, no seam
            assert mine.filter(mine["source"] == "rest").height >= 2, venue  # the disconnect's minutes, from REST
            assert mine["source"][0] == "ws"
        # the streamed bars are those REST serves, to the digit
        newest = int(rows["open_time"].max().timestamp() * 1000)
        okx = httpx.get(f"{emu.url}/api/v5/market/history-candles",
                        params={"instId": "BTC-USDT", "bar": "1m", "after": newest + 1, "limit": 100}).json()["data"]
        bybit = httpx.get(f"{emu.url}/v5/market/kline", params={"category": "linear", "symbol": "BTCUSDT", "interval": "1",
                                                                 "end": newest, "limit": 200}).json()["result"]["list"]
        served = {("okx", int(r[0])): (float(r[1]), float(r[4]), float(r[5]), float(r[7])) for r in okx} | {
            ("bybit", int(r[0])): (float(r[1]), float(r[4]), float(r[5]), float(r[6])) for r in bybit}
        compared = {"okx": 0, "bybit": 0}
        for venue, open_time, *values in rows.filter(rows["source"] == "ws").select(
                "venue", "open_time", "open", "close", "volume", "quote_volume").iter_rows():
            key = (venue, int(open_time.timestamp() * 1000))
            if key in served:
                assert served[key] == tuple(values), key
                compared[venue] += 1
        assert min(compared.values()) >= 3, compared


def test_a_stream_entry_names_timeframes_the_instrument_keeps(tmp_path):
    from marketdata_assets.catalog import CatalogError, load_catalog

    for entry, said in (
        ({"timeframes": ["1m"], "stream": ["1h"]}, "stream: '1h' is not one of this instrument's timeframes (1m)"),
        ({"stream": True, "datasets": ["funding"], "market": "perp"}, "stream: streams klines: name the timeframes"),
    ):
        path = write_catalog(tmp_path / "c.yaml", [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT", **entry}])
        with pytest.raises(CatalogError, match=re.escape(said)):
            load_catalog(path)
