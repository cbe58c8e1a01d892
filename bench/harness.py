"""What every bench step shares: a measured child process, the emulator in its own process, a
fresh user environment, a run's totals from the Dagster instance, and one `dagster asset
materialize` measured."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from workload import REPO, utc

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
