"""`make bench`: every speed and memory claim, measured against the emulators over loopback.

Runs real `dagster asset materialize` processes (fresh SQLite instance and DuckDB file each),
the ingest path alone, the warehouse alone, and ccxt's `fetch_ohlcv` loop, then writes
bench/RESULTS.md with the machine, date and commit. Each measurement runs in its own process,
whose peak RSS is read with wait4. Nothing here is asserted: it is written down.

bench.py runs the Dagster processes and the rest; steps.py the end-to-end steps of one dataset
family each; harness.py what every step shares (a measured process, the emulator, a fresh
environment); children.py the measurements that need a process of their own; results.py writes
RESULTS.md; workload.py holds what all of them measure.

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
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml

from harness import (
    archive_built, archive_paths, daily_paths, dagster_materialize, emulator, run_env, run_measured, warm_archive,
)
from peers import freqtrade_download, freqtrade_python, freqtrade_rows
from results import report
from steps import (databento_daily, derivatives_backfill, export_year, revisions_cost, seed_year, stream_latency,
                   venue_years)
from scale import UNIVERSES, archive_paths as universe_paths, catalog, listings, seed_universe, windows
from workload import (
    BTC_1M, LATENCY_MS, LOAD_MONTHS, LOAD_SYMBOLS, PER_PARTITION_SAMPLE, REPO, SIX_YEARS, YEAR,
)

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
            # (the steps outside this emulator need none of its archive files)
            if not args.only or set(args.only.split(",")) - {"a_rest", "stream", "revisions", "e_latency", "scale"}:
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
        if not only or "revisions" in only:
            print("revisions (an unchanged month re-written, with the revision check and without) …", flush=True)
            results["revisions"] = revisions_cost(work)
        if not only or "stream" in only:
            print("stream (50 kline streams for a minute) …", flush=True)
            results["stream"] = stream_latency(work)
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
