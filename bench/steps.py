"""The steps that measure one dataset family end to end: derivatives, Databento, the OKX and
Bybit symbol-years, export, and the bootstrap seed."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness import RAISED_OKX, dagster_materialize, emulator, run_env, run_measured, run_totals
from workload import BTC_1M, DERIVATIVES, YEAR, utc

def derivatives_backfill(work: Path, url: str) -> dict:
    """A year of BTCUSDT perp funding, open interest and long/short up to this month, in one
    `dagster asset materialize`: the archive before REST's 30 days, REST after."""
    run_dir = work / "derivatives"
    run_dir.mkdir()
    now = dt.datetime.now(dt.UTC)
    last = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first = last
    for _ in range(11):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    catalog = run_dir / "catalog.yaml"
    catalog.write_text(
        f"start_date: {first:%Y-%m-%d}\ninstruments:\n  - {{venue: binance, market: perp, symbol: BTCUSDT, "
        "datasets: [funding, open_interest, long_short]}\n"
    )
    env = run_env(run_dir, url, MARKETDATA_CATALOG=str(catalog))
    keys = [f"binance_perp/{dataset}/BTCUSDT" for dataset in DERIVATIVES]
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "marketdata_assets.definitions",
           "--select", ",".join(keys), "--partition-range", f"{first:%Y-%m-%d}...{last:%Y-%m-%d}"]
    measured = run_measured(cmd, env, run_dir, run_dir / "dagster.log")
    measured["window"] = f"{first:%Y-%m-%d} … {now:%Y-%m-%d %H:%M}"
    measured["datasets"] = {dataset: run_totals(env, key) for dataset, key in zip(DERIVATIVES, keys, strict=True)}
    return measured


DATABENTO_ROOTS = ["ES", "NQ", "YM", "CL", "NG", "GC", "SI", "ZN", "ZB", "6E"]


def databento_daily(work: Path, url: str) -> dict:
    """Fifteen years of daily bars of ten CME roots from the Databento emulator: one
    `marketdata backfill ohlcv_1d --local` (its price asked first), rows a second and peak RSS."""
    from marketdata_assets.demo import DEMO_DATABENTO_KEY
    from marketdata_assets.warehouse import open_warehouse

    run_dir = work / "databento"
    run_dir.mkdir()
    catalog = run_dir / "catalog.yaml"
    catalog.write_text("series:\n  - {source: databento_glbx, dataset: ohlcv_1d, keys: [" + ", ".join(DATABENTO_ROOTS)
                       + "], start_date: 2011-01-01}\n")
    env = run_env(run_dir, url, MARKETDATA_CATALOG=str(catalog), DATABENTO_API_KEY=DEMO_DATABENTO_KEY)
    cmd = [sys.executable, "-m", "marketdata_assets.cli", "backfill", "ohlcv_1d", "--from", "2011-01-01",
           "--to", "2025-12-31", "--local"]
    measured = run_measured(cmd, env, run_dir, run_dir / "backfill.log")
    warehouse = open_warehouse(f"duckdb:///{run_dir / '.marketdata' / 'warehouse.duckdb'}")
    measured["rows"] = int(warehouse.query("SELECT count(*) AS n FROM market_data.futures_bars")["n"][0])
    measured["roots"] = len(DATABENTO_ROOTS)
    measured["requests"] = sum(run_totals(env, f"databento_glbx/ohlcv_1d/{root}").get("databento_requests", 0)
                               for root in DATABENTO_ROOTS)
    return measured


# (asset, catalog entry, the budget it draws on: requests per second, whether the emulator's pages
# are built by a first run before the measured one: Bybit's 1,000-bar pages cost the emulator on
# the other core about as much as they cost us, and it keeps the pages it built, as the archive does)
VENUE_YEARS = [
    ("okx_perp/klines_1m/BTC_USDT_SWAP", "{venue: okx, market: perp, symbol: BTC-USDT-SWAP, timeframes: [1m]}", 10.0,
     False),
    ("bybit_perp/klines_1m/BTCUSDT", "{venue: bybit, market: perp, symbol: BTCUSDT, timeframes: [1m]}", 120.0, True),
]


def venue_years(work: Path) -> dict:
    """A symbol-year of 1m from OKX and from Bybit at their real limits (an emulator of its own,
    as the venues count): one `dagster asset materialize` of the last twelve closed months each;
    wall time, requests, the share of the limit the data path used, 429s and bans, peak RSS; then
    the bars counted against the calendar, `marketdata report --fail-on-gaps`, and the last month
    again, which must change nothing."""
    from marketdata_assets.warehouse import open_warehouse

    run_dir = work / "venues"
    run_dir.mkdir()
    now = dt.datetime.now(dt.UTC)
    last = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)).replace(day=1)
    first = last
    for _ in range(11):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    end = (last + dt.timedelta(days=32)).replace(day=1)
    catalog = run_dir / "catalog.yaml"
    catalog.write_text(f"start_date: {first:%Y-%m-%d}\ninstruments:\n"
                       + "".join(f"  - {entry}\n" for _, entry, _, _ in VENUE_YEARS))
    found: dict = {"window": f"{first:%Y-%m-%d} … {end:%Y-%m-%d}", "venues": {}}
    with emulator(real_limits=True) as url:
        real = {f"MARKETDATA_{name}": "" for name in RAISED_OKX}  # an empty setting is its default
        env = run_env(run_dir, url, MARKETDATA_CATALOG=str(catalog), **real)
        warehouse = open_warehouse(f"duckdb:///{run_dir / '.marketdata' / 'warehouse.duckdb'}")
        for key, _, per_second, warm in VENUE_YEARS:
            cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "marketdata_assets.definitions",
                   "--select", key, "--partition-range", f"{first:%Y-%m-%d}...{last:%Y-%m-%d}"]
            name = key.split("_")[0]
            print(f"  {key} …", flush=True)
            if warm:
                scratch = run_dir / f"{name}_warm"
                scratch.mkdir()
                run_measured(cmd, run_env(scratch, url, MARKETDATA_CATALOG=str(catalog), **real), scratch,
                             scratch / "warm.log")
            measured = run_measured(cmd, env, run_dir, run_dir / f"{name}.log")
            totals = run_totals(env, key)
            venue = name
            stored = warehouse.query(
                "SELECT count(*) AS n, count(DISTINCT open_time) AS d FROM market_data.klines WHERE venue = ?", [venue])
            measured |= {
                "rows": totals["rows_written"], "requests": totals["requests"], "data_seconds": totals["seconds"],
                "share_of_limit": totals["requests"] / (per_second * totals["seconds"]),
                "http_429": totals.get("http_429", 0), "limit_per_s": per_second,
                "stored": int(stored["n"][0]), "distinct": int(stored["d"][0]),
                "expected": int((end - first).total_seconds() // 60),
            }
            again = run_measured(cmd[:-1] + [f"{last:%Y-%m-%d}...{last:%Y-%m-%d}"], env, run_dir,
                                 run_dir / f"{name}_again.log")
            after = warehouse.query("SELECT count(*) AS n FROM market_data.klines WHERE venue = ?", [venue])
            measured["again_seconds"], measured["again_new_rows"] = again["seconds"], int(after["n"][0]) - measured["stored"]
            found["venues"][venue] = measured
        answers = httpx.get(url + "/emulator/stats").json()
        found["okx_429"] = answers["okx"]["answers"].get("429", 0)
        found["bybit_403"] = answers["bybit"]["answers"].get("403", 0)
        report = subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "report", "--fail-on-gaps"], env=env,
                                cwd=run_dir, capture_output=True, text=True)
        found["report_exit"] = report.returncode
        found["report"] = report.stdout.strip().splitlines()
    return found


def export_year(work: Path, url: str) -> dict:
    """A year of BTCUSDT 1m (archive, through Dagster), then `marketdata export` of it to CSV and
    to Parquet, each a process of its own: wall time, peak RSS, and the files read back against
    the warehouse's rows."""
    import polars as pl

    from marketdata_assets.schemas import KLINES
    from marketdata_assets.warehouse import open_warehouse

    stored = dagster_materialize(work, "export", url, BTC_1M, *YEAR)
    run_dir = work / "export"
    env = stored["env"]
    warehouse = open_warehouse(f"duckdb:///{run_dir / '.marketdata' / 'warehouse.duckdb'}")
    rows = warehouse.query(f"SELECT {', '.join(KLINES.columns)} FROM market_data.klines ORDER BY open_time")
    rows = rows.cast(dict(KLINES.schema))
    found: dict = {"rows": rows.height}
    for fmt in ("csv", "parquet"):
        cmd = [sys.executable, "-m", "marketdata_assets.cli", "export", BTC_1M, "--from", "2023-01-01",
               "--to", "2023-12-31", "--format", fmt, "--path", str(run_dir / fmt)]
        found[fmt] = run_measured(cmd, env, run_dir, run_dir / f"export_{fmt}.log")
        (path,) = (run_dir / fmt).iterdir()
        read = pl.read_csv(path, try_parse_dates=True) if fmt == "csv" else pl.read_parquet(path)
        found[fmt] |= {"megabytes": path.stat().st_size / 1e6, "equal": read.cast(dict(KLINES.schema)).equals(rows)}
    return found


def seed_year(work: Path, url: str) -> dict:
    """`marketdata seed` of the default catalog on a fresh environment (every dataset, the last
    year), then the same command again, which must find nothing to fetch."""
    from marketdata_assets.datasets import all_datasets
    from marketdata_assets.warehouse import open_warehouse

    run_dir = work / "seed"
    run_dir.mkdir()
    env = run_env(run_dir, url)
    cmd = [sys.executable, "-m", "marketdata_assets.cli", "seed"]
    measured = run_measured(cmd, env, run_dir, run_dir / "seed.log")
    again = run_measured(cmd, env, run_dir, run_dir / "seed_again.log")
    log = (run_dir / "seed.log").read_text()
    measured["partitions"] = int(re.search(r"^(\d+) partitions", log, re.MULTILINE).group(1))  # type: ignore[union-attr]
    measured["runs"] = log.count("\ndone   ")
    warehouse = open_warehouse(f"duckdb:///{run_dir / '.marketdata' / 'warehouse.duckdb'}")
    measured["rows"] = {
        table: warehouse.query(f"SELECT count(*) AS n FROM market_data.{table}")["n"][0]
        for table in dict.fromkeys(d.table.name for d in all_datasets())
    }
    measured["again_seconds"] = again["seconds"]
    measured["again_said"] = (run_dir / "seed_again.log").read_text().strip().splitlines()[-1]
    return measured


STREAMS = 50


def stream_latency(work: Path, seconds: float = 60.0) -> dict:
    """`marketdata stream`'s Streamer over 50 kline streams of the emulator (its clock 60 times
    real time: every stream closes a bar a second) with a real redis-server and a subscriber:
    from each closing update leaving the emulator (its E) to the warehouse commit, and to the
    subscriber, median and p99."""
    import asyncio
    import statistics
    import threading
    from dataclasses import replace

    import orjson
    import redis
    import yaml

    from marketdata_assets.emulator.config import EmulatorConfig
    from marketdata_assets.emulator.server import EmulatorServer
    from marketdata_assets.settings import Settings
    from marketdata_assets.stream import Streamer

    run_dir = work / "stream"
    run_dir.mkdir()
    symbols = [f"S{i:02d}USDT" for i in range(STREAMS)]
    config = replace(EmulatorConfig(), ws_update_seconds=0.25)
    for symbol in symbols:
        config = config.with_listing("spot", symbol, utc("2024-01-01"))
    origin, real0 = time.time() - 7200, time.monotonic()

    def clock() -> float:
        return origin + (time.monotonic() - real0) * 60

    (run_dir / "catalog.yaml").write_text(yaml.safe_dump({"start_date": "2024-01-01", "instruments": [
        {"venue": "binance", "market": "spot", "symbol": s, "timeframes": ["1m"], "stream": True} for s in symbols]}))
    port = _free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    received: dict[tuple[str, int], float] = {}
    stop = threading.Event()

    def listen() -> None:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        pubsub = client.pubsub()
        pubsub.psubscribe("binance:spot:ohlcv:1m:*")
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                body = orjson.loads(message["data"])
                received[(message["channel"].decode(), body["timestamp"])] = time.time()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    try:
        with EmulatorServer(config, clock=clock) as emu:
            settings = Settings(warehouse_url=f"duckdb:///{run_dir / 'w.duckdb'}", catalog_path=run_dir / "catalog.yaml",
                                binance_spot_url=emu.url, binance_spot_ws_url=emu.url,
                                redis_url=f"redis://127.0.0.1:{port}/0")
            streamer = Streamer(settings)

            async def run() -> None:
                asyncio.get_running_loop().call_later(seconds, streamer.stopping.set)
                await streamer.run("127.0.0.1", 0)

            asyncio.run(run())
            emulator_counts = emu.streams.stats()
        time.sleep(0.5)
    finally:
        stop.set()
        listener.join(timeout=5)
        server.terminate()
        server.wait(timeout=10)
    channels = {sub.stream: sub.channel for sub in streamer.subscriptions.values()}
    to_warehouse = [committed - sent for _, _, sent, _, committed in streamer.timings]
    to_redis = [received[(channels[stream], open_ms)] - sent for stream, open_ms, sent, _, _ in streamer.timings
                if (channels[stream], open_ms) in received]

    def spread(values: list[float]) -> dict:
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1000, 1),
                "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1), "count": len(ordered)}

    return {"streams": STREAMS, "seconds": seconds, "closing_updates_sent": emulator_counts["closing_updates"],
            "messages_sent": emulator_counts["messages"], "to_warehouse": spread(to_warehouse),
            "to_redis": spread(to_redis)}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def revisions_cost(work: Path, times: int = 5) -> dict:
    """What keeping revisions costs an unchanged re-write: a year of 1m bars stored, then one month
    of it (44,640 rows) upserted again unchanged into DuckDB and PostgreSQL, with the revision
    check and without it, interleaved; the median of each."""
    import statistics
    from dataclasses import replace

    import numpy as np
    import polars as pl

    from marketdata_assets.emulator.candles import synthetic_candles
    from marketdata_assets.schemas import KLINES
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_assets.warehouse.postgres import temporary_database

    def bars(first: str, last: str) -> pl.DataFrame:
        opens = np.arange(int(utc(first).timestamp() * 1000), int(utc(last).timestamp() * 1000), 60_000)
        block = synthetic_candles("spot", "BTCUSDT", 60_000, opens)
        return pl.DataFrame({
            "venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframe": "1m",
            "open_time": pl.Series(opens).cast(pl.Datetime("ms", "UTC")), "open": block.open, "high": block.high,
            "low": block.low, "close": block.close, "volume": block.volume, "quote_volume": block.quote_volume,
            "trades": block.trades, "taker_buy_volume": block.taker_buy_volume,
            "taker_buy_quote_volume": block.taker_buy_quote_volume, "source": "archive",
            "ingested_at": utc("2024-02-02"),
        }).select(KLINES.columns).cast(dict(KLINES.schema))

    year, month = bars("2023-01-01", "2024-01-01"), bars("2023-06-01", "2023-07-01")
    unkept = replace(KLINES, keeps_revisions=False)
    found: dict = {"stored": year.height, "rows": month.height}

    def measure(url: str) -> dict:
        warehouse = open_warehouse(url)
        for first in range(0, year.height, 100_000):
            warehouse.upsert(KLINES, year.slice(first, 100_000))
        seconds: dict[str, list[float]] = {"kept": [], "not_kept": []}
        for _ in range(times):
            for name, table in (("kept", KLINES), ("not_kept", unkept)):
                began = time.perf_counter()
                warehouse.upsert(table, month)
                seconds[name].append(time.perf_counter() - began)
        revisions = warehouse.query("SELECT count(*) AS n FROM market_data.revisions")["n"].item()
        return {name: round(statistics.median(values), 3) for name, values in seconds.items()} | {"revisions": revisions}

    found["duckdb"] = measure(f"duckdb:///{work / 'revisions.duckdb'}")
    with temporary_database(os.environ.get("MARKETDATA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
                            "md_bench_revisions") as url:
        found["postgres"] = measure(url)
    return found
