"""`marketdata demo`: `marketdata seed` against a local emulator of every upstream.

Starts the emulator, points the settings at it, seeds the catalog (every dataset over the last
year unless FROM_DATE/TO_DATE say otherwise), then prints what is stored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import click

from marketdata_assets.settings import emulated_endpoints

# The emulator takes any well-formed FRED key; a real FRED_API_KEY in the environment is kept
# (it is never sent anywhere but the emulator here).
DEMO_FRED_KEY = "0123456789abcdef0123456789abcdef"
# Likewise a Databento-shaped key ("db-" and 27 letters or digits): no account has it.
DEMO_DATABENTO_KEY = "db-DemoKeyForTheLocalEmulator0"


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


def run_demo(from_raw: str | None, to_raw: str | None, run_seed: Callable[[dict, str | None, str | None], bool]) -> bool:
    """Start the emulator, point every upstream's URL at it, and `run_seed(env, from, to)`."""
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", os.path.abspath(".marketdata/dagster"))
    env.setdefault("MARKETDATA_WAREHOUSE_URL", "duckdb:///.marketdata/warehouse.duckdb")
    # OKX sends 100 bars a request, 10 requests a second: a year of 1m is 9 minutes a pair. The
    # demo's emulator and client agree on a budget 100 times larger (a real run keeps OKX's).
    for endpoint, per_2s in (("OKX_HISTORY_CANDLES_PER_2S", "2000"), ("OKX_CANDLES_PER_2S", "4000")):
        env.setdefault(f"MARKETDATA_EMULATOR_{endpoint}", per_2s)
        env.setdefault(f"MARKETDATA_{endpoint}", env[f"MARKETDATA_EMULATOR_{endpoint}"])
    emulator, url = start_emulator(env)
    try:
        env.update(emulated_endpoints(url))  # every upstream, emulated on one port
        env.setdefault("FRED_API_KEY", DEMO_FRED_KEY)
        env.setdefault("DATABENTO_API_KEY", DEMO_DATABENTO_KEY)
        # the seed runs in this process, whose runs read the keys from its own environment
        for variable in ("FRED_API_KEY", "DATABENTO_API_KEY"):
            os.environ.setdefault(variable, env[variable])
        click.echo(f"emulator at {url}")
        began = time.perf_counter()
        ok = run_seed(env, from_raw, to_raw)
        click.echo(f"seeded in {time.perf_counter() - began:.1f} s")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    click.echo("")
    subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "summary"], env=env, check=True)
    return ok
