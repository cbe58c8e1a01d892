"""`make bench`: every speed and memory claim, measured against the emulators over loopback.

Runs real `dagster asset materialize` processes (fresh SQLite instance and DuckDB file each),
the ingest path alone, the warehouse alone, and ccxt's `fetch_ohlcv` loop, then writes
bench/RESULTS.md with the machine, date and commit. Each measurement runs in its own process,
whose peak RSS is read with wait4. Nothing here is asserted: it is written down.

bench.py runs the Dagster processes and the rest; children.py the measurements that need a
process of their own; results.py writes RESULTS.md; workload.py holds what all of them measure.

    uv run python bench/bench.py            # everything (about 80 minutes, an hour of it the scaling curve)
    uv run python bench/bench.py --quick    # skip the 4-minute rate-limit run
"""

from __future__ import annotations

import argparse
import contextlib
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

from peers import freqtrade_download, freqtrade_python, freqtrade_rows
from results import report
from scale import UNIVERSES, archive_paths as universe_paths, catalog, listings, seed_universe, windows
from workload import (
    BTC_1M, DERIVATIVES, LATENCY_MS, LOAD_MONTHS, LOAD_SYMBOLS, PER_PARTITION_SAMPLE, REPO, SIX_YEARS, YEAR, utc,
)

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


# The budgets OKX's candles get in every step but `venues` (the emulator and our client alike, as
# `marketdata demo` sets them): at OKX's own, the seed's year of 1m would take 35 minutes of waiting.
RAISED_OKX = {"OKX_HISTORY_CANDLES_PER_2S": "2000", "OKX_CANDLES_PER_2S": "4000"}


@contextmanager
def emulator(*args: str, real_limits: bool = False):
    """`marketdata emulator` in its own process, as a user runs it; yields its URL. OKX's budgets
    are RAISED_OKX unless `real_limits`."""
    raised = {} if real_limits else {f"MARKETDATA_EMULATOR_{name}": value for name, value in RAISED_OKX.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "marketdata_assets.cli", "emulator", "--port", "0", *args],
        stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **raised},
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


def archive_built(url: str) -> int:
    """How many archive files the emulator has built so far."""
    return httpx.get(url + "/emulator/stats").json()["archive"]["answers"].get("built", 0)


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


def daily_paths(symbol: str, first: str, last: str) -> list[str]:
    """Every daily 1m file from `first` to `last` inclusive (freqtrade's route)."""
    from marketdata_assets.sources.binance_archive import ArchiveFile

    day, end = utc(first).date(), utc(last).date()
    paths = []
    while day <= end:
        paths.append(ArchiveFile.daily("spot", symbol, "1m", day).path)
        day += dt.timedelta(days=1)
    return paths


def run_env(run_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """A fresh user environment: default warehouse and SQLite instance under run_dir/.marketdata."""
    home = run_dir / ".marketdata" / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "marketdata_assets" / "dagster_instance.yaml", home / "dagster.yaml")
    from marketdata_assets.demo import DEMO_FRED_KEY
    from marketdata_assets.settings import emulated_endpoints

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(REPO),
        FRED_API_KEY=DEMO_FRED_KEY,
        **emulated_endpoints(url),  # every upstream
    )
    env.update({f"MARKETDATA_{name}": value for name, value in RAISED_OKX.items()})
    env.update(extra)
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


def freqtrade_run(work: Path, name: str, url: str, python: Path) -> dict:
    """freqtrade's `download-data` of the target's six years (its daily archive files, into a
    feather file), over the same emulator."""
    run_dir = work / name
    cmd = freqtrade_download(run_dir, url, SIX_YEARS[0].replace("-", ""), "20250101", python)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_", "VIRTUAL_ENV"))}
    measured = run_measured(cmd, env, run_dir, run_dir / "freqtrade.log")
    measured["rows"] = freqtrade_rows(run_dir)
    return measured


def target_against_freqtrade(work: Path, url: str, results: dict) -> dict:
    """The target three times, each followed by freqtrade's download of the same six years."""
    python = freqtrade_python()
    ours, results["freqtrade"] = interleaved(
        3, lambda i: dagster_materialize(work, f"target_{i}", url, BTC_1M, *SIX_YEARS),
        lambda i: freqtrade_run(work, f"freqtrade_{i}", url, python))
    return ours


def with_latency(work: Path) -> dict:
    """A symbol-year of 1m over REST from an emulator answering each klines request LATENCY_MS
    late: ccxt's loop, then ours (once each: ccxt's takes about a minute)."""
    with emulator("--fault-latency-ms", str(LATENCY_MS)) as slow:
        print(f"e_latency ({LATENCY_MS} ms a request; about 2 minutes) …", flush=True)
        return {
            "e_ccxt": run_child(work, "ccxt", slow),
            "e_ours": dagster_materialize(work, "e_ours", slow, BTC_1M, *YEAR, MARKETDATA_KLINES_SOURCE="rest"),
        }


def interleaved(times: int, ours, peer) -> tuple[dict, dict]:
    """`times` runs of ours and of a peer, taking turns (ours, peer, ours, …), so both meet the
    same moments of this shared machine; the median of each by wall time, with every run's."""
    pairs = [(ours(i), peer(i)) for i in range(times)]
    return tuple(  # type: ignore[return-value]
        {**sorted(runs, key=lambda r: r["seconds"])[times // 2], "runs": [r["seconds"] for r in runs]}
        for runs in zip(*pairs, strict=True)
    )


def repeated(times: int, run) -> dict:
    """The median of `times` runs by wall time, with every run's wall time: this shared 2-core
    machine varies by about ±10% from one run to the next."""
    runs = sorted((run(i) for i in range(times)), key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "runs": [r["seconds"] for r in runs]}


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


def scaling_curve(work: Path) -> dict:
    """`marketdata seed` of universes of 10, 100 and 300 symbols into DuckDB and PostgreSQL
    (scale.py says what and why), from one emulator listing them all."""
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_assets.warehouse.postgres import temporary_database

    sizes = [int(n) for n in os.environ.get("MARKETDATA_BENCH_UNIVERSES", ",".join(map(str, UNIVERSES))).split(",")]
    w = windows(dt.datetime.now(dt.UTC).date())
    server = os.environ.get("MARKETDATA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    found: dict = {"windows": {k: v.isoformat() for k, v in w.items()}, "universes": []}
    # Every file of the largest universe stays built (about 4.5 MB a symbol): with the default
    # 1 GiB, 300 symbols did not fit, and the emulator rebuilt each file on the same two cores
    # while the runs read it, which made 300 symbols look worse than linear.
    cache_mb = max(1024, 8 * max(sizes))
    listed = [arg for listing in listings(max(sizes)) for arg in ("--listing", listing)]
    with emulator("--archive-cache-mb", str(cache_mb), *listed) as url:
        warmed: set[str] = set()
        for count in sizes:
            print(f"  {count} symbols: building archive files …", flush=True)
            paths = universe_paths(count, w)
            warm_archive(url, [p for p in paths if p not in warmed])
            warmed = set(paths)
            built = archive_built(url)
            entry = {"symbols": count}
            for backend in ("duckdb", "postgresql"):
                run_dir = work / f"scale_{count}_{backend}"
                run_dir.mkdir()
                catalog(count, run_dir / "catalog.yaml", w)
                with contextlib.ExitStack() as stack:
                    warehouse_url = (f"duckdb:///{run_dir / 'universe.duckdb'}" if backend == "duckdb"
                                     else stack.enter_context(temporary_database(server, "md_scale")))
                    env = run_env(run_dir, url, MARKETDATA_CATALOG=str(run_dir / "catalog.yaml"),
                                  MARKETDATA_WAREHOUSE_URL=warehouse_url)
                    print(f"  {count} symbols into {backend} …", flush=True)
                    entry[backend] = seed_universe(run_dir, env, w, run_measured, open_warehouse(warehouse_url))
                    print(f"    {entry[backend]['seconds']:.0f} s, {entry[backend]['total_rows']:,} rows", flush=True)
            # files the emulator built while the runs read them (0: its build time is not ours)
            entry["emulator_rebuilt"] = archive_built(url) - built
            found["universes"].append(entry)
    return found


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


def run_child(work: Path, name: str, url: str, *args: str) -> dict:
    log = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).with_name("children.py")), name, url, *args]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 4-minute run at the rate limit")
    parser.add_argument("--output", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--only", help="comma-separated steps to run; prints their figures, writes no RESULTS.md")
    parser.add_argument("--render", metavar="JSON", help="write RESULTS.md again from a run's saved figures")
    args = parser.parse_args()
    if args.render:
        Path(args.output).write_text(report(json.loads(Path(args.render).read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="marketdata-bench-"))
    results: dict = {"machine": machine()}
    try:
        with emulator() as url:
            print(f"emulator {url}; building archive files …", flush=True)
            built = warm_archive(url, archive_paths("BTCUSDT", SIX_YEARS[0], SIX_YEARS[1], PER_PARTITION_SAMPLE)
                                 + daily_paths("BTCUSDT", SIX_YEARS[0], "2025-01-01"))
            print(f"  built in {built:.0f} s", flush=True)
            steps = [
                ("target", lambda: target_against_freqtrade(work, url, results)),
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
                ("databento", lambda: databento_daily(work, url)),
                ("seed", lambda: seed_year(work, url)),
                ("venues", lambda: venue_years(work)),
                ("export", lambda: export_year(work, url)),
                ("load_postgres", lambda: load_postgres(work, url)),
                ("load_duckdb", lambda: concurrent_backfills(
                    work, url, "load_duckdb", f"duckdb:///{work / 'load.duckdb'}")),
            ]
            if args.only:
                steps = [(name, step) for name, step in steps if name in args.only.split(",")]
            for name, step in steps:
                print(f"{name} …", flush=True)
                began = time.perf_counter()
                results[name] = step()
                print(f"  {time.perf_counter() - began:.1f} s", flush=True)
        only = args.only.split(",") if args.only else None
        if not only or "a_rest" in only:
            with emulator("--spot-weight-limit", str(10**9)) as unlimited:
                print("a_rest …", flush=True)
                results["a_rest"] = dagster_materialize(
                    work, "a_rest", unlimited, BTC_1M, *YEAR,
                    MARKETDATA_KLINES_SOURCE="rest", MARKETDATA_BINANCE_SPOT_WEIGHT_LIMIT=str(10**9),
                    MARKETDATA_BINANCE_MAX_CONCURRENCY="16",
                )
        if not only or "e_latency" in only:
            results.update(with_latency(work))
        if not only or "scale" in only:
            print("scale (the scaling curve; about 25 minutes) …", flush=True)
            results["scale"] = scaling_curve(work)
        if only:
            print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1, default=str))
            return
        if not args.quick:
            print("b (about 4.5 minutes at the limit) …", flush=True)
            results["b"] = at_the_limit(work)
        # the figures themselves beside RESULTS.md: `--render` writes it again when its wording changes
        Path(args.output).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        text = report(results)
        Path(args.output).write_text(text)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
