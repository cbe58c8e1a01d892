"""Daily operations with the real parts: `dagster-daemon` and the webserver over one instance,
the emulator, a PostgreSQL warehouse, and `marketdata backfill` as a user runs it.

One daemon session shows it all: the scheduled tick stores the newest closed window of an asset
never run and catches up the months another missed while "the daemon was down"; a backfill
launched from the CLI runs to the end under `--wait` and is listed by `backfill jobs`; another is
cancelled from the CLI while its run is going.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, with_settings, write_catalog
from marketdata_tests.test_assets import MATERIALIZED, webserver
from marketdata_tests.test_automation import month_key, months_back, record_materialization
from marketdata_tests.test_cli import marketdata

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BTC_1H = dg.AssetKey(["binance_spot", "klines_1h", "BTCUSDT"])
ETH_1M = dg.AssetKey(["binance_spot", "klines_1m", "ETHUSDT"])


@contextlib.contextmanager
def daemon(env: dict[str, str], log: Path):
    """`dagster-daemon run` over the code location, as a deployment runs it."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "marketdata_assets.definitions"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


def wait_for(what: str, condition, timeout_s: float, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} did not happen in {timeout_s:.0f} s; daemon log:\n{log.read_text()[-4000:]}")


def jobs(cwd: Path, env: dict[str, str]) -> dict[str, dict]:
    listed = marketdata("backfill", "jobs", "--format", "json", cwd=cwd, env=env)
    assert listed.returncode == 0, listed.stderr
    return {job["id"]: job for job in json.loads(listed.stdout)}


def test_the_daemon_keeps_data_current_and_backfills_launch_list_and_cancel_from_the_cli(
    settings, postgres_url, dagster_home, tmp_path,
):
    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1h"], "start_date": "2024-01-01"},
        # paged from REST under a small weight budget, so its year-long backfill is still running when cancelled
        {"venue": "binance", "market": "spot", "symbol": "ETHUSDT", "timeframes": ["1m"], "start_date": "2024-01-01",
         "source": "rest"},
    ])
    env = cli_env(with_settings(settings, warehouse_url=postgres_url), dagster_home, catalog)
    env.update(MARKETDATA_SCHEDULE_CRON="* * * * *", MARKETDATA_BINANCE_SPOT_WEIGHT_LIMIT="300")
    now = dt.datetime.now(dt.UTC)
    stopped = months_back(now, 2)  # BTCUSDT was last kept two months ago, mid-month
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        record_materialization(instance, BTC_1H, month_key(stopped), stopped)

    log = tmp_path / "daemon.log"
    with webserver(env) as ui:
        env["MARKETDATA_DAGSTER_URL"] = ui
        # Launched before the daemon runs: both wait, listed as requested, with their partitions.
        waited = subprocess.Popen(
            [sys.executable, "-m", "marketdata_assets.cli", "backfill", "klines_1h", "--symbols", "BTCUSDT",
             "--from", "2024-01-01", "--to", "2024-02-15", "--wait"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        launched = marketdata("backfill", "klines", "--symbols", "ETHUSDT", "--from", "2024-01-01",
                              "--to", "2024-12-31 23:59:59", cwd=tmp_path, env=env)
        assert launched.returncode == 0, launched.stderr
        long_id = launched.stdout.strip()
        listed = wait_for("the --wait backfill to be listed", lambda: len(jobs(tmp_path, env)) == 2 and jobs(tmp_path, env), 30, log)
        assert listed[long_id]["status"] == "REQUESTED"
        assert listed[long_id]["assets"] == [ETH_1M.to_user_string()]
        assert listed[long_id]["partitions"]["total"] == 12

        with daemon(env, log):
            # The long one starts; cancel it from the CLI while its run is going.
            wait_for("the long backfill's run to start", lambda: instance_runs(dagster_home, long_id), 90, log)
            cancel = marketdata("backfill", "cancel", long_id, cwd=tmp_path, env=env)
            assert cancel.returncode == 0, cancel.stderr
            assert cancel.stdout.startswith(f"canceling {long_id}: no more of its runs start and the running ones are stopped")

            # The short one ends under --wait: its id first, then its progress, exit 0.
            out, err = waited.communicate(timeout=180)
            assert waited.returncode == 0, err
            short_id = out.strip()
            assert err.strip().splitlines()[-1] == "COMPLETED_SUCCESS: 2 of 2 partitions done, 0 failed, 0 in progress"

            done = wait_for("the cancel to finish", lambda: (j := jobs(tmp_path, env))[long_id]["status"] == "CANCELED" and j, 120, log)
            assert done[short_id]["status"] == "COMPLETED_SUCCESS"
            assert done[short_id]["partitions"] == {"done": 2, "failed": 0, "in_progress": 0, "total": 2}
            assert done[long_id]["partitions"]["done"] == 0
            (run,) = instance_runs(dagster_home, long_id)
            assert run.status == dg.DagsterRunStatus.CANCELED

            # The scheduled tick: ETHUSDT (never run) gets the window of the newest closed day,
            # BTCUSDT every month since it stopped, the one it stopped in included.
            ticked = wait_for("the scheduled runs to succeed", lambda: scheduled_runs(dagster_home, 2), 150, log)

        table = marketdata("backfill", "jobs", cwd=tmp_path, env=env)
        assert table.stdout.splitlines()[0].split() == ["id", "status", "done", "failed", "total", "started", "(UTC)", "assets"]
        assert any(line.split()[:5] == [short_id, "COMPLETED_SUCCESS", "2", "0", "2"] for line in table.stdout.splitlines())
        assert any(line.split()[:2] == [long_id, "CANCELED"] for line in table.stdout.splitlines())
        again = marketdata("backfill", "cancel", long_id, cwd=tmp_path, env=env)
        assert again.stdout.strip() == f"{long_id} has ended already: CANCELED"
        unknown = marketdata("backfill", "cancel", "nosuchid", cwd=tmp_path, env=env)
        assert (unknown.returncode, unknown.stderr.strip()) == (2, f"marketdata backfill cancel: no backfill nosuchid on {ui}")

        # The UI, in a real browser: the CLI's backfill on its page, every schedule and the sensor on.
        with browser() as driver:
            page = page_text(driver, f"{ui}/runs/b/{short_id}?tab=overview",
                             ["2024-01-01...2024-02-01", "binance_spot / klines_1h / BTCUSDT\n100% completed\n2\n0\n2\n0"])
            assert f"Runs / {short_id}" in page
            page_text(driver, f"{ui}/automation", ["klines_from_2024_01_incremental", "gap_repair"])
            switches = "return Array.from(document.querySelectorAll('input[type=checkbox]'))" \
                       ".filter(e => e.parentElement.className.includes('formatSwitch')).map(e => e.checked)"
            deadline = time.monotonic() + 30  # the switches render once each one's state has loaded
            while len(driver.execute_script(switches)) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert driver.execute_script(switches) == [True, True]  # this catalog's one schedule, and the sensor

    ranges = {tuple(r.dagster_run.asset_selection): (r.dagster_run.tags["dagster/asset_partition_range_start"],
                                                     r.dagster_run.tags["dagster/asset_partition_range_end"])
              for r in ticked}
    assert ranges[(BTC_1H,)] == (month_key(stopped), month_key(now))
    assert ranges[(ETH_1M,)] == (month_key(now - dt.timedelta(days=1)), month_key(now))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        btc = [month_key(months_back(now, n)) for n in range(3)] + ["2024-01-01", "2024-02-01"]
        assert set(instance.get_status_by_partition(BTC_1H, btc, dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)).values()) == {MATERIALIZED}
    newest = {row["symbol"]: row for row in open_warehouse(postgres_url).query(
        "SELECT symbol, timeframe, max(open_time) AS newest, count(*) AS bars FROM market_data.klines GROUP BY 1, 2"
    ).rows(named=True)}
    tick = min(r.create_timestamp for r in ticked)
    # the newest closed bar at the tick is stored, for both
    assert newest["BTCUSDT"]["newest"] >= tick.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    assert newest["ETHUSDT"]["newest"] >= tick.replace(second=0, microsecond=0) - dt.timedelta(minutes=2)


@contextlib.contextmanager
def browser():
    """Headless Chromium through Selenium (Debian's chromium and chromium-driver; CI installs them)."""
    if not Path(CHROMEDRIVER).exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{CHROMEDRIVER} is missing: .ci/run installs chromium and chromium-driver")
        pytest.skip("no chromium here: apt-get install chromium chromium-driver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver, url: str, wanted: list[str], timeout_s: float = 60) -> str:
    """The rendered text of `url` once it shows everything `wanted`."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while True:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(piece in text for piece in wanted):
            return text
        if time.monotonic() > deadline:
            missing = [piece for piece in wanted if piece not in text]
            raise AssertionError(f"{url} never showed {missing!r}; it shows:\n{text[:3000]}")
        time.sleep(0.5)


def instance_runs(dagster_home: Path, backfill_id: str) -> list:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return list(instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id})))


def scheduled_runs(dagster_home: Path, count: int) -> list:
    """The first `count` runs the schedule launched, once all of them succeeded."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = sorted(instance.get_run_records(dg.RunsFilter(tags={"marketdata/trigger": "incremental"})),
                         key=lambda record: record.create_timestamp)[:count]
    if len(records) < count:
        return []
    failed = [r.dagster_run for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
              and r.dagster_run.is_finished]
    assert not failed, f"scheduled run {failed[0].run_id} {failed[0].status}"
    return records if all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records) else []
