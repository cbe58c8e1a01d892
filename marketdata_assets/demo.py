"""`marketdata demo`: backfill the catalog from a local emulator with `dagster asset materialize`.

Starts the emulator, points the settings at it, launches one partition-range run per group of
assets that share a PartitionsDefinition (the CLI requires that), then prints what is stored.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import click

DEMO_DAYS = 90


def parse_date(name: str, raw: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise click.UsageError(f"{name}={raw!r} is not a date (YYYY-MM-DD)") from None


def start_emulator(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`marketdata emulator --port 0` in a child process; (process, its URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "marketdata_assets.cli", "emulator", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
    process.kill()
    raise click.ClickException("the emulator did not start")


# OKX keeps about three months of funding: the demo asks it only for partitions inside them.
OKX_KEPT = dt.timedelta(days=90)


def partition_ranges(from_date: dt.date, to_date: dt.date, env: dict[str, str]) -> list[tuple[list[str], str, str]]:
    """(asset keys, first partition key, last partition key) per shared PartitionsDefinition and venue."""
    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings

    definitions = build_definitions(Settings.from_env(env))
    groups: dict[tuple[object, str], list[str]] = defaultdict(list)
    for asset in definitions.resolve_all_asset_specs():
        groups[(asset.partitions_def, str(asset.metadata.get("venue")))].append(asset.key.to_user_string())
    lower = dt.datetime.combine(from_date, dt.time(), dt.UTC)
    upper = dt.datetime.combine(to_date + dt.timedelta(days=1), dt.time(), dt.UTC)
    ranges = []
    for (partitions_def, venue), keys in groups.items():
        group_lower = max(lower, dt.datetime.now(dt.UTC) - OKX_KEPT) if venue == "okx" else lower
        chosen = [
            key
            for key in partitions_def.get_partition_keys()  # type: ignore[attr-defined]
            if _overlaps(partitions_def.time_window_for_partition_key(key), group_lower, upper)  # type: ignore[attr-defined]
            and (venue != "okx" or partitions_def.time_window_for_partition_key(key).start >= group_lower)  # type: ignore[attr-defined]
        ]
        if chosen:
            ranges.append((sorted(keys), chosen[0], chosen[-1]))
        elif venue == "okx":
            click.echo(f"skipping {', '.join(sorted(keys))}: OKX keeps only about three months of funding")
    return ranges


def _overlaps(window, lower: dt.datetime, upper: dt.datetime) -> bool:
    return window.start < upper and window.end > lower


def run_demo(from_date: dt.date | None, to_date: dt.date | None) -> None:
    today = dt.datetime.now(dt.UTC).date()
    to_date = to_date or today - dt.timedelta(days=1)
    from_date = from_date or to_date - dt.timedelta(days=DEMO_DAYS - 1)
    if to_date < from_date:
        raise click.UsageError(f"TO_DATE {to_date} is before FROM_DATE {from_date}")
    env = dict(os.environ)
    home = Path(env.setdefault("DAGSTER_HOME", str(Path(".marketdata/dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists() and Path("dagster.yaml").exists():
        instance_yaml.write_text(Path("dagster.yaml").read_text())
    env.setdefault("MARKETDATA_WAREHOUSE_URL", "duckdb:///.marketdata/warehouse.duckdb")
    emulator, url = start_emulator(env)
    try:
        for name in ("BINANCE_SPOT", "BINANCE_FUTURES", "BINANCE_ARCHIVE", "OKX", "BYBIT"):
            env[f"MARKETDATA_{name}_URL"] = url
        click.echo(f"emulator at {url}; backfilling {from_date} .. {to_date}")
        for keys, first, last in partition_ranges(from_date, to_date, env):
            click.echo(f"\n$ dagster asset materialize --select {','.join(keys)} --partition-range {first}...{last}")
            began = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "dagster", "asset", "materialize",
                 "-m", "marketdata_assets.definitions",
                 "--select", ",".join(keys), "--partition-range", f"{first}...{last}"],
                env=env, capture_output=True, text=True,
            )
            if result.returncode != 0:
                sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
                raise click.ClickException(f"the run for {', '.join(keys)} failed")
            click.echo(f"  done in {time.perf_counter() - began:.1f} s")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    click.echo("")
    subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "summary"], env=env, check=True)
