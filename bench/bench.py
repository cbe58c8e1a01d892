"""`make bench`: every speed and memory claim, measured against the emulators over loopback.

Runs real `dagster asset materialize` processes (fresh SQLite instance and DuckDB file each),
the ingest path alone, the warehouse alone, and ccxt's `fetch_ohlcv` loop, then writes
bench/RESULTS.md with the machine, date and commit. Each measurement runs in its own process,
whose peak RSS is read with wait4. Nothing here is asserted: it is written down.

    uv run python bench/bench.py            # everything (about 8 minutes)
    uv run python bench/bench.py --quick    # skip the 4-minute rate-limit run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BTC_1M = "binance_spot/klines_1m/BTCUSDT"
SIX_YEARS = ("2019-01-01", "2024-12-01")  # monthly partition keys: 72 months, 3,156,480 bars
YEAR = ("2023-01-01", "2023-12-01")
REPORT_CHECKED = 3  # partitions of each asset with a result of each check, one event each
PER_PARTITION_SAMPLE = ["2023-03-01", "2023-06-15", "2023-09-10", "2023-11-20", "2023-12-31"]


def utc(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """Run `cmd`; wall seconds, peak RSS (MB) of that process and its exit code."""
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:8])} … failed ({code}); see {log}\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024, "exit": code}


@contextmanager
def emulator(*args: str):
    """`marketdata emulator` in its own process, as a user runs it; yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "marketdata_assets.cli", "emulator", "--port", "0", *args],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        line = process.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            raise SystemExit(f"emulator did not start: {line}{process.stderr.read()}")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def warm_archive(url: str, paths: list[str]) -> float:
    """Request every file once so the emulator has built it: its build time is not ours."""
    began = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as client, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: client.get(p).raise_for_status(), paths))
    return time.perf_counter() - began


def archive_paths(symbol: str, first: str, last: str, daily: list[str] = ()) -> list[str]:
    from marketdata_assets.sources.binance_archive import ArchiveFile

    months, cursor, end = [], utc(first).date(), utc(last).date()
    while cursor <= end:
        months.append(ArchiveFile.monthly("spot", symbol, "1m", cursor).path)
        cursor = (cursor + dt.timedelta(days=32)).replace(day=1)
    return months + [ArchiveFile.daily("spot", symbol, "1m", utc(d).date()).path for d in daily]


def run_env(run_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """A fresh user environment: default warehouse and SQLite instance under run_dir/.marketdata."""
    home = run_dir / ".marketdata" / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "marketdata_assets" / "dagster_instance.yaml", home / "dagster.yaml")
    from marketdata_assets.settings import ENDPOINT_DEFAULTS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(REPO),
        **{variable: url for variable, _ in ENDPOINT_DEFAULTS.values()},  # every upstream, emulated
        **extra,
    )
    return env


def run_totals(env: dict[str, str], key: str) -> dict:
    """The latest run's totals for `key`: the `run` JSON of the observation every run records
    (rows, seconds of the data path, requests, archive files, bookkeeping seconds)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        records = instance.fetch_observations(dg.AssetKey(key.split("/")), limit=1).records
        assert records and records[0].asset_observation is not None, f"no observation of {key}"
        return records[0].asset_observation.metadata["run"].value  # type: ignore[return-value]
    finally:
        instance.dispose()


def dagster_materialize(work: Path, name: str, url: str, select: str, first: str, last: str,
                        module: str = "marketdata_assets.definitions", **env_extra: str) -> dict:
    run_dir = work / name
    run_dir.mkdir()
    env = run_env(run_dir, url, **env_extra)
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", module,
           "--select", select, "--partition-range", f"{first}...{last}"]
    measured = run_measured(cmd, env, run_dir, run_dir / "dagster.log")
    keys = select.split(",")
    metadata = [run_totals(env, key) for key in keys]
    measured["rows"] = sum(m["rows_written"] for m in metadata)
    measured["ingest_seconds"] = sum(m["seconds"] for m in metadata)
    measured["partitions"] = len(re.findall(r" - ASSET_MATERIALIZATION - ", (run_dir / "dagster.log").read_text()))
    measured["metadata"] = metadata[0]
    measured["env"] = env
    return measured


DERIVATIVES = ("funding", "open_interest", "long_short")


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


def seed_year(work: Path, url: str) -> dict:
    """`marketdata seed` of the default catalog on a fresh environment (every dataset, the last
    year), then the same command again, which must find nothing to fetch."""
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
        for table in ("klines", "funding_rates", "open_interest", "long_short_ratios")
    }
    measured["again_seconds"] = again["seconds"]
    measured["again_said"] = (run_dir / "seed_again.log").read_text().strip().splitlines()[-1]
    return measured


def repeated(times: int, run) -> dict:
    """The median of `times` runs by wall time, with every run's wall time: this shared 2-core
    machine varies by about ±10% from one run to the next."""
    runs = sorted((run(i) for i in range(times)), key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "runs": [r["seconds"] for r in runs]}


LOAD_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
LOAD_MONTHS = ("2022-01-01", "2023-12-01")


def concurrent_backfills(work: Path, url: str, name: str, warehouse_url: str) -> dict:
    """Four `dagster asset materialize` processes at once, one symbol each, two years of 1m bars
    from the archive into one warehouse; wall time until the last one ends."""
    import dagster as dg

    run_dir = work / name
    run_dir.mkdir()
    catalog = run_dir / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"start_date": LOAD_MONTHS[0], "instruments": [
        {"venue": "binance", "market": "spot", "symbol": s, "timeframes": ["1m"]} for s in LOAD_SYMBOLS]}))
    env = run_env(run_dir, url, MARKETDATA_CATALOG=str(catalog), MARKETDATA_WAREHOUSE_URL=warehouse_url)
    dg.DagsterInstance.from_config(env["DAGSTER_HOME"]).dispose()  # its tables, before four processes race
    began = time.perf_counter()
    processes = []
    for symbol in LOAD_SYMBOLS:
        log = (run_dir / f"{symbol}.log").open("w")
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "marketdata_assets.definitions",
               "--select", f"binance_spot/klines_1m/{symbol}", "--partition-range", "...".join(LOAD_MONTHS)]
        processes.append((subprocess.Popen(cmd, env=env, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        if process.wait() != 0:
            raise SystemExit(f"{name}: a backfill failed; see {log.name}")
        log.close()
    seconds = time.perf_counter() - began
    from marketdata_assets.warehouse import open_warehouse

    counts = open_warehouse(warehouse_url).query(
        "SELECT count(*) AS n, count(DISTINCT symbol || CAST(open_time AS TEXT)) AS distinct_rows FROM market_data.klines"
    ).row(0, named=True)
    return {"seconds": seconds, "rows": counts["n"], "distinct": counts["distinct_rows"]}


def load_postgres(work: Path, url: str) -> dict:
    warm_archive(url, [p for symbol in LOAD_SYMBOLS for p in archive_paths(symbol, *LOAD_MONTHS)])
    from marketdata_assets.warehouse.postgres import temporary_database

    server = os.environ.get("MARKETDATA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    with temporary_database(server, "md_bench") as warehouse_url:
        return concurrent_backfills(work, url, "load_postgres", warehouse_url)


def per_partition_runs(work: Path, url: str) -> dict:
    """Single-partition runs of the daily-partitioned variant, one process each."""
    samples = []
    for index, key in enumerate(PER_PARTITION_SAMPLE):
        run_dir = work / f"per_partition_{index}"
        run_dir.mkdir()
        env = run_env(run_dir, url)
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "bench.daily_definitions",
               "--select", BTC_1M, "--partition", key]
        samples.append(run_measured(cmd, env, run_dir, run_dir / "dagster.log"))
    seconds = [s["seconds"] for s in samples]
    return {"samples": seconds, "mean": sum(seconds) / len(seconds), "rss_mb": max(s["rss_mb"] for s in samples)}


# ---- measurements run in a child process (`bench.py child NAME URL`), printing JSON ----------


def child_data_path(url: str, write: bool) -> dict:
    """6 years of 1m spot through the ingest path alone, no Dagster: with or without writing."""
    from marketdata_assets.ingest import ingest_klines
    from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient
    from marketdata_assets.sources.binance_archive import BinanceArchiveClient
    from marketdata_assets.sources.binance_klines import BinanceKlinesSource
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    start, end = utc(SIX_YEARS[0]), utc("2025-01-01")
    source = BinanceKlinesSource(BinanceKlinesClient("spot", url), BinanceArchiveClient(url), "archive")
    began = time.perf_counter()
    if write:
        with tempfile.TemporaryDirectory() as scratch:
            report = ingest_klines(source, DuckDBWarehouse(Path(scratch) / "w.duckdb"), "BTCUSDT", "1m", start, end)
            rows = report.rows_written
    else:
        async def drain() -> int:
            async with source:
                return sum([f.height async for f in source.frames("BTCUSDT", "1m", start, end, 200_000)])

        rows = asyncio.run(drain())
    return {"rows": rows, "seconds": time.perf_counter() - began}


def child_warehouse(url: str) -> dict:
    """DuckDB alone: a year of 1m bars upserted in the ingest's write batches, into an empty
    table (plain insert) and again over the same keys (ON CONFLICT update)."""
    import polars as pl

    from marketdata_assets.schemas import KLINES
    from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient
    from marketdata_assets.sources.binance_archive import BinanceArchiveClient
    from marketdata_assets.sources.binance_klines import BinanceKlinesSource
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    source = BinanceKlinesSource(BinanceKlinesClient("spot", url), BinanceArchiveClient(url), "archive")

    async def collect() -> pl.DataFrame:
        async with source:
            frames = [f async for f in source.frames("BTCUSDT", "1m", utc("2023-01-01"), utc("2024-01-01"), 200_000)]
        return pl.concat(frames).sort("open_time")

    frame = asyncio.run(collect())
    batches = [frame.slice(i, 200_000) for i in range(0, frame.height, 200_000)]
    out = {"rows": frame.height}
    with tempfile.TemporaryDirectory() as scratch:
        warehouse = DuckDBWarehouse(Path(scratch) / "w.duckdb")
        for label in ("insert", "upsert_existing"):
            began = time.perf_counter()
            for batch in batches:
                warehouse.upsert(KLINES, batch)
            out[label] = time.perf_counter() - began
        # What the primary key costs: the same batches into a copy of the table without it.
        with warehouse.connect() as con:
            con.execute("CREATE TABLE market_data.klines_no_key AS FROM market_data.klines LIMIT 0")
            began = time.perf_counter()
            for batch in batches:
                con.register("incoming", batch.to_arrow())
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO market_data.klines_no_key SELECT * FROM incoming")
                con.execute("COMMIT")
            out["insert_without_key"] = time.perf_counter() - began
    return out


def child_ccxt(url: str) -> dict:
    """A symbol-year of 1m klines the way a ccxt user writes it: a `since` loop, then a file."""
    import ccxt
    import polars as pl

    began = time.perf_counter()
    exchange = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = url + "/api/v3"
    since = exchange.parse8601("2023-01-01T00:00:00Z")
    end = exchange.parse8601("2024-01-01T00:00:00Z")
    rows: list[list] = []
    while since < end:
        batch = exchange.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=1000)
        if not batch:
            break
        rows += [row for row in batch if row[0] < end]
        since = batch[-1][0] + 60_000
    frame = pl.DataFrame(rows, schema=["timestamp", "open", "high", "low", "close", "volume"], orient="row")
    with tempfile.TemporaryDirectory() as scratch:
        frame.write_parquet(Path(scratch) / "BTC_USDT-1m.parquet")
    return {"rows": frame.height, "seconds": time.perf_counter() - began}


REPORT_ASSETS = 200  # 100 symbols, spot and perp, 1h bars
REPORT_START = "2021-11-22"  # five years of daily partitions up to the bench date


def build_report_state(work: Path) -> tuple[Path, dict[str, str]]:
    """A warehouse and a Dagster instance as five years of daily runs of 200 assets leave them:
    the bars (with a few holes), partition status as Dagster caches it (a few partitions missing
    or failed), and a result of each check on each of its first REPORT_CHECKED partitions. Recording 365,000 partition events one by one
    would take the SQLite instance most of an hour, so each asset gets one real materialization
    event and then the status cache Dagster itself writes after reading them all."""
    import dagster as dg
    from dagster._core.storage.partition_status_cache import AssetStatusCacheValue

    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.coverage import klines_assets
    from marketdata_assets.defs.quality.checks import KLINES_CHECKS
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    catalog_path = work / "report_catalog.yaml"
    symbols = [f"S{i:03d}USDT" for i in range(REPORT_ASSETS // 2)]
    catalog_path.write_text(yaml.safe_dump({"start_date": REPORT_START, "instruments": [
        {"venue": "binance", "market": market, "symbol": symbol, "timeframes": ["1h"]}
        for symbol in symbols for market in ("spot", "perp")
    ]}))
    warehouse = DuckDBWarehouse(work / "report.duckdb")
    with warehouse.connect() as con:
        con.execute(
            "INSERT INTO market_data.klines SELECT 'binance', m.market, 'S' || lpad(s.i::VARCHAR, 3, '0') || 'USDT', "
            "'1h', ?::TIMESTAMPTZ + to_hours(h.i), 100, 101, 99, 100, 1, 100, 10, 0.5, 50, 'archive', now() "
            "FROM range(?) s(i), (VALUES ('spot'), ('perp')) m(market), range(?) h(i) "
            "WHERE h.i % 5000 != 17",  # a missing hour every ~7 months
            [REPORT_START, REPORT_ASSETS // 2, 5 * 365 * 24],
        )
    home = work / "report_dagster"
    home.mkdir()
    shutil.copy(REPO / "marketdata_assets" / "dagster_instance.yaml", home / "dagster.yaml")
    assets = klines_assets(load_catalog(catalog_path), cadence="daily")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        for asset in assets:
            keys = asset.partitions.get_partition_keys()
            for key in keys[:REPORT_CHECKED]:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset.key, partition=key))
            for key in keys[:REPORT_CHECKED]:
                for name in KLINES_CHECKS:
                    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                        asset_key=asset.key, check_name=name, passed=True, partition=key,
                        metadata={"window": f"[{key} 00:00, … ) UTC"}))
            (record,) = instance.fetch_materializations(asset.key, limit=1).records
            empty = asset.partitions.empty_subset()
            instance.update_asset_cached_status_data(asset.key, AssetStatusCacheValue(
                latest_storage_id=record.storage_id,
                partitions_def_id=asset.partitions.get_serializable_unique_identifier(),
                serialized_materialized_partition_subset=empty.with_partition_keys(
                    k for i, k in enumerate(keys) if i % 400 not in (5, 6)).serialize(),
                serialized_failed_partition_subset=empty.with_partition_keys(keys[5::400]).serialize(),
                serialized_in_progress_partition_subset=empty.serialize(),
            ))
    finally:
        instance.dispose()
    env = {"MARKETDATA_CATALOG": str(catalog_path), "MARKETDATA_WAREHOUSE_URL": f"duckdb:///{work / 'report.duckdb'}",
           "DAGSTER_HOME": str(home)}
    return catalog_path, env


def child_report(url: str) -> dict:
    """`marketdata report`'s work for 200 assets with five years of daily partitions: Dagster's
    partition status and check results, and the warehouse (8.7M hourly bars), three times."""
    import dagster as dg

    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.coverage import klines_assets, klines_coverage
    from marketdata_assets.report import render
    from marketdata_assets.warehouse import open_warehouse

    work = Path(tempfile.mkdtemp(prefix="marketdata-report-"))
    try:
        began = time.perf_counter()
        catalog_path, env = build_report_state(work)
        setup = time.perf_counter() - began
        assets = klines_assets(load_catalog(catalog_path), cadence="daily")
        warehouse = open_warehouse(env["MARKETDATA_WAREHOUSE_URL"])
        seconds = []
        for _ in range(3):
            began = time.perf_counter()
            instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
            items = klines_coverage(instance, warehouse, assets, cadence="daily")
            text = render(items, [], "table")
            instance.dispose()
            seconds.append(time.perf_counter() - began)
        rows = sum(item.stored.rows for item in items)
        partitions = sum(item.partitions_total for item in items)
        # The command itself, as a user runs it (its partitions are the monthly ones of the code).
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
        command = []
        for _ in range(2):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "report", "--format", "json"],
                           env={**cli_env, **env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
            command.append(time.perf_counter() - began)
        return {"assets": len(items), "partitions": partitions, "rows": rows, "seconds": seconds,
                "setup_seconds": setup, "lines": len(text.splitlines()), "command_seconds": command,
                "unexplained": sum(len(item.gaps.unexplained) for item in items)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


CATALOG_SIZES = (10, 100, 300)  # symbols of the catalogs whose definitions `child_load` times


def child_load(url: str) -> dict:
    """The code location's definitions for catalogs of 10, 100 and 300 symbols (spot and perp, 1m
    and 1h klines; funding, open interest and long/short for the perps), built and resolved as
    every run process and CLI call does, after the imports (timed apart)."""
    began = time.perf_counter()
    from marketdata_assets.defs.location import build_definitions  # Dagster with it
    from marketdata_assets.settings import Settings

    imports = time.perf_counter() - began
    found = {"imports_seconds": imports, "catalogs": []}
    for count in CATALOG_SIZES:
        with tempfile.TemporaryDirectory() as scratch:
            catalog = Path(scratch) / "catalog.yaml"
            catalog.write_text(yaml.safe_dump({"start_date": "2024-01-01", "instruments": [
                {"venue": "binance", "market": market, "symbol": f"S{i:03d}USDT", "timeframes": ["1m", "1h"]}
                for i in range(count) for market in ("spot", "perp")]}))
            began = time.perf_counter()
            definitions = build_definitions(Settings(catalog_path=catalog, warehouse_url=f"duckdb:///{scratch}/w.duckdb"))
            assets = len(list(definitions.resolve_all_asset_specs()))
            found["catalogs"].append({"symbols": count, "assets": assets, "seconds": time.perf_counter() - began})
    return found


def run_child(work: Path, name: str, url: str, *args: str) -> dict:
    log = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__)), "child", name, url, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    measured = run_measured(cmd, env, REPO, log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {**result, "rss_mb": measured["rss_mb"], "process_seconds": measured["seconds"]}


# ---- the rate-limit run --------------------------------------------------------------------


def at_the_limit(work: Path) -> dict:
    """Three spot symbols' whole 1m history over REST at Binance's real limit (~26,000 weight,
    about 4.5 minutes), then the emulator's own count of weight, 429s and 418s per minute."""
    catalog = work / "limit_catalog.yaml"
    catalog.write_text(yaml.safe_dump({"start_date": "2017-08-01", "instruments": [
        {"venue": "binance", "market": "spot", "symbol": s, "timeframes": ["1m"]}
        for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    ]}))
    keys = ",".join(f"binance_spot/klines_1m/{s}" for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT"))
    with emulator() as url:
        run = dagster_materialize(work, "at_the_limit", url, keys, "2017-08-01", "2025-12-01",
                                  MARKETDATA_CATALOG=str(catalog), MARKETDATA_KLINES_SOURCE="rest")
        stats = httpx.get(url + "/emulator/stats").json()["binance"]["spot"]
    by_minute = {int(k): v for k, v in stats["weight_by_minute"].items()}
    refused: dict[tuple[int, int], int] = {}
    for key, count in stats["refused_by_minute"].items():
        minute, status = key.split("/")
        refused[(int(minute), int(status))] = count
    minutes = sorted(by_minute)
    full = minutes[1:-1]  # the first and last minute are partly outside the run
    rows = [
        {
            "minute": dt.datetime.fromtimestamp(m, dt.UTC).strftime("%H:%M"),
            "weight": by_minute[m],
            "share": by_minute[m] / stats["weight_limit"],
            "http_429": refused.get((m, 429), 0),
            "http_418": refused.get((m, 418), 0),
        }
        for m in full
    ]
    return {
        "run": run,
        "limit": stats["weight_limit"],
        "minutes": rows,
        "total_weight": sum(by_minute.values()),
        "answers": stats["answers"],
    }


# ---- the report ----------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "marketdata_assets", "bench"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "cpu": f"{os.cpu_count()} × {cpu}",
        "memory": f"{int(mem) / 1024 / 1024:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": ", ".join(f"{p} {version(p)}" for p in ("dagster", "duckdb", "polars", "httpx", "isal", "ccxt")),
    }


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1e6:.2f} M rows/s"


def report(results: dict) -> str:
    m = results["machine"]
    t, a_arch, a_rest = results["target"], results["a_archive"], results["a_rest"]
    dp, fetch, wh = results["data_path"], results["fetch_only"], results["warehouse"]
    ours_limited, ccxt = results["c_ours"], results["c_ccxt"]
    rp = results["report"]
    d_daily, d_monthly, d_per = results["d_daily_range"], results["a_archive"], results["d_per_partition"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/bench.py). Every run is a real process against the emulators",
        "over loopback (`marketdata emulator` in its own process, Binance's real limits unless said",
        "otherwise); Dagster runs use a fresh default instance (SQLite) and a fresh DuckDB file.",
        "Peak RSS is the measured process's own (wait4), the emulator not included.",
        "",
        f"- date: {m['date']}; commit: {m['commit']}",
        f"- machine: {m['cpu']}, {m['memory']}; {m['os']}; Python {m['python']}",
        f"- {m['versions']}",
        "",
        "## Target: six years of 1m spot klines from the archive through Dagster",
        "",
        f"`dagster asset materialize -m marketdata_assets.definitions --select {BTC_1M} "
        f"--partition-range {SIX_YEARS[0]}...{SIX_YEARS[1]}` ({t['partitions']} monthly partitions), default",
        "embedded instance and warehouse, process start-up, Dagster bookkeeping and the asset's three",
        "checks, each evaluated and recorded on every partition, included. Run "
        f"{len(t['runs'])} times, each from scratch; the median run:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows written | {t['rows']:,} |",
        f"| wall time, whole command | **{t['seconds']:.1f} s** (runs: {', '.join(f'{x:.1f}' for x in t['runs'])} s) |",
        f"| of which the asset's data path (download, verify, parse, write) | {t['ingest_seconds']:.1f} s ({rate(t['rows'], t['ingest_seconds'])}) |",
        f"| of which Dagster start-up and bookkeeping | {t['seconds'] - t['ingest_seconds']:.1f} s |",
        f"| of which computing the checks, per partition ({t['metadata']['check_results']} results) | {t['metadata']['bookkeeping_seconds']['checking']:.2f} s |",
        f"| of which Dagster recording the {t['partitions']} partitions' materializations | {t['metadata']['bookkeeping_seconds']['recording_partitions']:.2f} s |",
        f"| of which Dagster recording the {t['metadata']['check_results']} check results, one per check and partition | {t['metadata']['bookkeeping_seconds']['recording_check_results']:.2f} s |",
        f"| of which drawing the asset's coverage picture | {t['metadata']['bookkeeping_seconds']['coverage_picture']:.2f} s |",
        f"| archive downloaded | {t['metadata']['archive_megabytes']:.0f} MB in {t['metadata']['archive_files']} files |",
        f"| peak RSS | {t['rss_mb']:.0f} MB |",
        "",
        "The data path alone, no Dagster (bench process calling `ingest_klines`, same six years):",
        "",
        "| stage | seconds | throughput | peak RSS |",
        "|---|---|---|---|",
        f"| download + verify + parse (frames dropped) | {fetch['seconds']:.2f} | {rate(fetch['rows'], fetch['seconds'])} | {fetch['rss_mb']:.0f} MB |",
        f"| download + verify + parse + write to DuckDB | {dp['seconds']:.2f} | {rate(dp['rows'], dp['seconds'])} | {dp['rss_mb']:.0f} MB |",
        "",
        "## (a) Pipeline throughput without a rate limit, one symbol-year of 1m spot (2023)",
        "",
        "End to end through `dagster asset materialize` (12 monthly partitions): fetch, parse, write,",
        "Dagster start-up and bookkeeping. REST runs against an emulator with no weight limit.",
        "",
        "| source | rows | wall | rows/s end to end | data path | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| archive | {a_arch['rows']:,} | {a_arch['seconds']:.1f} s | {a_arch['rows'] / a_arch['seconds']:,.0f} | {a_arch['ingest_seconds']:.1f} s | {a_arch['rss_mb']:.0f} MB |",
        f"| REST | {a_rest['rows']:,} | {a_rest['seconds']:.1f} s | {a_rest['rows'] / a_rest['seconds']:,.0f} | {a_rest['ingest_seconds']:.1f} s ({a_rest['metadata']['requests']} requests) | {a_rest['rss_mb']:.0f} MB |",
        "",
    ]
    if "b" in results:
        b = results["b"]
        shares = [row["share"] for row in b["minutes"]]
        lines += [
            "## (b) REST at Binance's spot limit (6,000 weight per minute)",
            "",
            f"Three symbols' whole 1m history over REST in one `dagster asset materialize` run: "
            f"{b['run']['rows']:,} rows, {b['total_weight']:,} weight, {b['run']['seconds']:.0f} s, peak RSS "
            f"{b['run']['rss_mb']:.0f} MB. Counted by the emulator per UTC minute; the first and last "
            "minute are partial and left out.",
            "",
            "| minute (UTC) | weight | share of budget | 429s | 418s |",
            "|---|---|---|---|---|",
            *[f"| {r['minute']} | {r['weight']:,} | {r['share']:.1%} | {r['http_429']} | {r['http_418']} |" for r in b["minutes"]],
            "",
            f"Full minutes: {len(shares)}; lowest share {min(shares):.1%}, mean {sum(shares) / len(shares):.1%}; "
            f"answers by status over the run: {b['answers']}.",
            "",
        ]
    lines += [
        "## (c) Against ccxt, one symbol-year of 1m spot over REST, real limits",
        "",
        "| client | rows | wall | ratio |",
        "|---|---|---|---|",
        f"| marketdata: `dagster asset materialize`, source rest, into DuckDB | {ours_limited['rows']:,} | {ours_limited['seconds']:.1f} s | 1 |",
        f"| ccxt {version('ccxt')} `fetch_ohlcv` since-loop, then a parquet file | {ccxt['rows']:,} | {ccxt['seconds']:.1f} s | {ccxt['seconds'] / ours_limited['seconds']:.1f}× our time |",
        "",
        f"Our time is {ours_limited['seconds'] / ccxt['seconds']:.2f} of ccxt's. ccxt paces itself at its",
        "`rateLimit` (50 ms, one request at a time); we send pages concurrently up to the weight budget.",
        "",
        "## (d) Dagster overhead: one range run against per-partition runs (archive, 2023)",
        "",
        "| runs | partitions | wall | per partition | peak RSS |",
        "|---|---|---|---|---|",
        f"| one range run, daily partitions | {d_daily['partitions']} | {d_daily['seconds']:.1f} s | {d_daily['seconds'] / 365 * 1000:.0f} ms | {d_daily['rss_mb']:.0f} MB |",
        f"| one range run, monthly partitions (ours) | {d_monthly['partitions']} | {d_monthly['seconds']:.1f} s | — | {d_monthly['rss_mb']:.0f} MB |",
        f"| a run per daily partition (mean of {len(d_per['samples'])}, × 365) | 365 | {d_per['mean'] * 365:.0f} s | {d_per['mean']:.2f} s | {d_per['rss_mb']:.0f} MB |",
        "",
        f"Per-partition runs: {', '.join(f'{s:.2f}' for s in d_per['samples'])} s.",
        "",
        "## (f) The warehouse alone: DuckDB upserts of a symbol-year of 1m bars",
        "",
        "In the ingest's write batches (200,000 rows), one transaction each, one writer.",
        "",
        "| write | rows | seconds | throughput | peak RSS |",
        "|---|---|---|---|---|",
        f"| into an empty table (plain insert) | {wh['rows']:,} | {wh['insert']:.2f} | {rate(wh['rows'], wh['insert'])} | {wh['rss_mb']:.0f} MB |",
        f"| over the same keys (ON CONFLICT update) | {wh['rows']:,} | {wh['upsert_existing']:.2f} | {rate(wh['rows'], wh['upsert_existing'])} | |",
        f"| for comparison: into a copy of the table without the primary key | {wh['rows']:,} | {wh['insert_without_key']:.2f} | {rate(wh['rows'], wh['insert_without_key'])} | |",
        "",
        "## The coverage report: 200 assets, five years of daily partitions",
        "",
        "`marketdata report`'s work (Dagster partition status and check results for every asset, and",
        f"the warehouse's rows, gaps and rejected rows) for {rp['assets']} assets of 1h bars with daily",
        f"partitions from {REPORT_START}: {rp['partitions']:,} partitions, {rp['rows']:,} stored bars, "
        f"{rp['unexplained']} unexplained gaps found. Timed three times in one process "
        "(the instance opened each time):",
        "",
        "| run | seconds |",
        "|---|---|",
        *[f"| {i + 1} | {s:.2f} |" for i, s in enumerate(rp["seconds"])],
        "",
        f"Peak RSS {rp['rss_mb']:.0f} MB. The state was built in {rp['setup_seconds']:.0f} s (see `build_report_state`:",
        f"a real materialization and a result of each check on each asset's first {REPORT_CHECKED} partitions,",
        "then the partition status cache Dagster writes).",
        "",
        "The `marketdata report --format json` process over the same warehouse and instance, start-up",
        "(~1.4 s of imports) included. Its assets have the code's monthly partitions, so the first run",
        "rebuilds their status from the events and caches it, as the UI would; the second reads the cache:",
        f"{rp['command_seconds'][0]:.1f} s, then {rp['command_seconds'][1]:.1f} s.",
        "",
        "## PostgreSQL warehouse: four backfills at once",
        "",
        f"Four `dagster asset materialize` processes started together, one symbol each "
        f"({', '.join(LOAD_SYMBOLS)}), 1m bars {LOAD_MONTHS[0]}…{LOAD_MONTHS[1]} (24 monthly partitions) from the",
        "archive, one default SQLite instance; wall time until the last ends. PostgreSQL 15 on the same",
        "machine (COPY into a staging table, then the upsert, one transaction per write batch).",
        "",
        "| warehouse | rows | distinct keys | wall | rows/s |",
        "|---|---|---|---|---|",
        *[f"| {label} | {r['rows']:,} | {r['distinct']:,} | {r['seconds']:.1f} s | {r['rows'] / r['seconds']:,.0f} |"
          for label, r in (("PostgreSQL", results["load_postgres"]), ("DuckDB (one writer at a time)", results["load_duckdb"]))],
        "",
        "## Derivatives: a year of funding, open interest and long/short",
        "",
        "One `dagster asset materialize` of `binance_perp/{funding,open_interest,long_short}/BTCUSDT` over",
        f"{results['derivatives']['window']} UTC (12 monthly partitions each): funding from the monthly archive",
        "files and REST for the month in progress; open interest and long/short from the daily metrics files",
        "before REST's 30 days and from `/futures/data/*` (paced to 1,000 requests per 5 minutes) after.",
        "Process start-up, Dagster bookkeeping and the six checks included.",
        "",
        "| asset | rows | from the archive | from REST | REST requests |",
        "|---|---|---|---|---|",
        *[f"| {dataset} | {m['rows_written']:,} | {m['rows_from_archive']:,} | {m['rows_from_rest']:,} | {m['requests']} |"
          for dataset, m in results["derivatives"]["datasets"].items()],
        "",
        f"Wall time {results['derivatives']['seconds']:.1f} s, peak RSS {results['derivatives']['rss_mb']:.0f} MB.",
        "",
        "## Bootstrap: `marketdata seed` of the default catalog",
        "",
        "`marketdata seed` on a fresh environment (default DuckDB warehouse and SQLite instance): every",
        "dataset of the packaged catalog over the last year (spot and perp klines 1m and 1h of BTCUSDT and",
        "ETHUSDT, funding on three venues, open interest and long/short), one range run per",
        "PartitionsDefinition in one process, OKX only inside its ~90 days. Then the same command again.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| partitions | {results['seed']['partitions']} in {results['seed']['runs']} runs |",
        *[f"| rows in {table} | {rows:,} |" for table, rows in results["seed"]["rows"].items()],
        f"| wall time, whole command | **{results['seed']['seconds']:.1f} s** |",
        f"| peak RSS | {results['seed']['rss_mb']:.0f} MB |",
        f"| the second run | {results['seed']['again_seconds']:.1f} s: \"{results['seed']['again_said']}\" |",
        "",
        "## Loading the code location: definitions for 10, 100 and 300 symbols",
        "",
        "Every run process and CLI call builds the definitions from the catalog: spot and perp, 1m and",
        "1h klines, and funding, open interest and long/short for the perps. The assets of one dataset,",
        "source and PartitionsDefinition share one definition (one Dagster op).",
        f"Imports (Dagster and ours) {results['load']['imports_seconds']:.2f} s, once; then:",
        "",
        "| symbols | assets | build and resolve |",
        "|---|---|---|",
        *[f"| {c['symbols']} | {c['assets']:,} | {c['seconds']:.2f} s |" for c in results["load"]["catalogs"]],
        "",
        "## (e) Peak RSS",
        "",
        "Given with each run above.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 4-minute run at the rate limit")
    parser.add_argument("--output", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="marketdata-bench-"))
    results: dict = {"machine": machine()}
    try:
        with emulator() as url:
            print(f"emulator {url}; building archive files …", flush=True)
            built = warm_archive(url, archive_paths("BTCUSDT", SIX_YEARS[0], SIX_YEARS[1], PER_PARTITION_SAMPLE))
            print(f"  built in {built:.0f} s", flush=True)
            steps = [
                ("target", lambda: repeated(3, lambda i: dagster_materialize(work, f"target_{i}", url, BTC_1M, *SIX_YEARS))),
                ("a_archive", lambda: dagster_materialize(work, "a_archive", url, BTC_1M, *YEAR)),
                ("d_daily_range", lambda: dagster_materialize(
                    work, "d_daily_range", url, BTC_1M, "2023-01-01", "2023-12-31", module="bench.daily_definitions")),
                ("d_per_partition", lambda: per_partition_runs(work, url)),
                ("fetch_only", lambda: run_child(work, "fetch_only", url)),
                ("data_path", lambda: run_child(work, "data_path", url)),
                ("warehouse", lambda: run_child(work, "warehouse", url)),
                ("c_ours", lambda: dagster_materialize(work, "c_ours", url, BTC_1M, *YEAR, MARKETDATA_KLINES_SOURCE="rest")),
                ("c_ccxt", lambda: run_child(work, "ccxt", url)),
                ("report", lambda: run_child(work, "report", url)),
                ("load", lambda: run_child(work, "load", url)),
                ("derivatives", lambda: derivatives_backfill(work, url)),
                ("seed", lambda: seed_year(work, url)),
                ("load_postgres", lambda: load_postgres(work, url)),
                ("load_duckdb", lambda: concurrent_backfills(
                    work, url, "load_duckdb", f"duckdb:///{work / 'load.duckdb'}")),
            ]
            for name, step in steps:
                print(f"{name} …", flush=True)
                began = time.perf_counter()
                results[name] = step()
                print(f"  {time.perf_counter() - began:.1f} s", flush=True)
        with emulator("--spot-weight-limit", str(10**9)) as unlimited:
            print("a_rest …", flush=True)
            results["a_rest"] = dagster_materialize(
                work, "a_rest", unlimited, BTC_1M, *YEAR,
                MARKETDATA_KLINES_SOURCE="rest", MARKETDATA_BINANCE_SPOT_WEIGHT_LIMIT=str(10**9),
                MARKETDATA_BINANCE_MAX_CONCURRENCY="16",
            )
        if not args.quick:
            print("b (about 4.5 minutes at the limit) …", flush=True)
            results["b"] = at_the_limit(work)
        text = report(results)
        Path(args.output).write_text(text)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def child_main(name: str, url: str) -> None:
    measurements = {
        "fetch_only": lambda: child_data_path(url, write=False),
        "data_path": lambda: child_data_path(url, write=True),
        "warehouse": lambda: child_warehouse(url),
        "ccxt": lambda: child_ccxt(url),
        "report": lambda: child_report(url),
        "load": lambda: child_load(url),
    }
    print(json.dumps(measurements[name]()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
