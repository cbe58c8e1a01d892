"""What a hostile world does to a backfill, and what the user is told: a run killed with `kill -9`
mid-write, a disk that fills, an IP ban in the middle of a run. Each case asserts nothing lost,
nothing written twice, and the lines the user reads."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from marketdata_assets.backfills import failure_cause
from marketdata_assets.defs.location import build_definitions
from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import Faults
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, postgres_database, with_settings
from marketdata_tests.test_assets import BTC_SPOT_1M, FAILED, MATERIALIZED, run_range, spot_catalog, statuses
from marketdata_tests.test_automation import repair_tick
from marketdata_tests.test_cli import marketdata_here

MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01"]
BARS = (31 + 29 + 31) * 1440  # every minute of 2024-01..03: the emulator has no maintenance then


def marketdata(env: dict[str, str], *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marketdata_assets.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def klines_counts(url: str) -> tuple[int, int]:
    """(rows, distinct bar times) stored."""
    frame = open_warehouse(url).query("SELECT count(*) AS n, count(DISTINCT open_time) AS d FROM market_data.klines")
    return frame["n"][0], frame["d"][0]


@pytest.fixture(scope="module")
def slow_emulator():
    """Binance answering after 300 ms: three months of 1m bars over REST take about four seconds,
    one write window after the other, so the run can be killed between its writes (a run keeps
    DuckDB's file open up to a second at a time: the test sees the rows at the next turn)."""
    with EmulatorServer(EmulatorConfig(faults=Faults(latency_ms=300))) as server:
        yield server


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_a_run_killed_mid_write_is_marked_failed_repaired_and_a_re_run_stores_every_bar_once(
    backend, tmp_path, settings, dagster_home, slow_emulator, capsys,
):
    with postgres_database() if backend == "postgresql" else contextlib.nullcontext(settings.warehouse_url) as url:
        catalog = spot_catalog(tmp_path)
        # over REST, 20,000 rows a transaction: each month of 1m bars is a write of its own
        local = with_settings(settings, warehouse_url=url, catalog_path=catalog, klines_source="rest",
                              rows_per_write=20_000, binance_spot_url=slow_emulator.url)
        env = cli_env(local, dagster_home, catalog) | {"MARKETDATA_ROWS_PER_WRITE": "20000"}
        backfill = ("backfill", "klines", "--from", "2024-01-01", "--to", "2024-03-31", "--local")

        run = marketdata(env, *backfill)
        deadline = time.monotonic() + 120
        while klines_counts(url)[0] == 0 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, run.communicate()  # killed while it writes, not after
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        written, distinct = klines_counts(url)
        assert 0 < written < BARS and written == distinct  # whole write windows only, each bar once

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            (killed,) = instance.get_runs()
            assert killed.status == dg.DagsterRunStatus.STARTED  # Dagster alone never learns of the kill

        # the next command notices: the run is marked failed, naming why, and its partitions failed
        report = marketdata_here("report", "--dataset", "klines", cwd=tmp_path, env=env)
        assert report.returncode == 0, report.stderr
        assert report.stderr.strip() == (
            f"marketdata report: run {killed.run_id[:8]} (__ASSET_JOB of 2024-01-01...2024-03-01) was STARTED but "
            f"its process {run.pid} on {socket.gethostname()} is gone (killed or crashed); marked failed"
        )
        assert "binance_spot/klines_1m/BTCUSDT: failed partitions 2024-01-01 2024-02-01 2024-03-01" in report.stdout
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            failed = instance.get_run_by_id(killed.run_id)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            (event,) = instance.get_records_for_run(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
            assert "is gone (killed or crashed); marked failed" in event.event_log_entry.dagster_event.message
            partitions = dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)
            assert instance.get_status_by_partition(BTC_SPOT_1M, MONTHS, partitions) == dict.fromkeys(MONTHS, FAILED)
            # the repair sensor no longer waits on it: it plans the three months' first re-run
            data, log = repair_tick(build_definitions(local), instance, None, capsys)
        assert not any("in progress" in line for line in log), log
        assert [line.split(" waits until ")[0] for line in log if " waits until " in line] == [
            f"binance_spot/klines_1m/BTCUSDT|{month}: its latest run failed; re-run 1 of 3" for month in MONTHS], log

        again = marketdata_here(*backfill, cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert klines_counts(url) == (BARS, BARS)
        report = marketdata_here("report", "--dataset", "klines", "--fail-on-gaps", cwd=tmp_path, env=env)
        assert (report.returncode, report.stderr) == (0, ""), report.stdout
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            assert set(instance.get_materialized_partitions(BTC_SPOT_1M)) == set(MONTHS)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_fills_fails_the_window_naming_the_file_and_loses_nothing(tmp_path, settings, dagster_home):
    catalog = spot_catalog(tmp_path)
    env = cli_env(with_settings(settings, catalog_path=catalog), dagster_home, catalog)
    first = marketdata(env, "backfill", "klines", "--from", "2024-01-01", "--to", "2024-01-31", "--local")
    assert first.wait(timeout=300) == 0, first.communicate()
    before = open_warehouse(settings.warehouse_url).query("SELECT * FROM market_data.klines ORDER BY open_time")
    size = Path(settings.warehouse_url.removeprefix("duckdb:///")).stat().st_size
    # room for the Dagster instance's SQLite files, not for another month of 1m bars in DuckDB
    full = marketdata(env, "backfill", "klines", "--from", "2024-02-01", "--to", "2024-03-31", "--local",
                      preexec_fn=_file_size_limit(size + 1_000_000))
    out, err = full.communicate(timeout=300)
    assert full.returncode == 1, out + err
    failed, cause, again = out.strip().splitlines()
    assert failed.startswith("FAILED binance_spot/klines_1m/BTCUSDT 2024-02-01...2024-03-01 (2 partitions), run ")
    assert cause.startswith(f"  WarehouseError: DuckDB file {settings.warehouse_url.removeprefix('duckdb:///')}: "
                            "writing "), cause
    assert "rows to market_data.klines failed, nothing of them written: " in cause and "File too large" in cause
    assert again == "  once fixed, run it again: marketdata backfill klines_1m --symbols BTCUSDT --from 2024-02-01 " \
                    "--to 2024-03-31 --local"
    after = open_warehouse(settings.warehouse_url).query("SELECT * FROM market_data.klines ORDER BY open_time")
    assert after.equals(before)  # the month stored before is whole
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_materialized_partitions(BTC_SPOT_1M) == {"2024-01-01"}


def test_a_ban_mid_run_stops_every_request_fails_naming_its_end_and_the_repair_sensor_waits(tmp_path, settings, capsys):
    from marketdata_assets.sources.http import Bans

    config = EmulatorConfig(faults=Faults(latency_ms=20))
    with EmulatorServer(config) as emu, dg.instance_for_test() as instance:
        catalog = spot_catalog(tmp_path)
        catalog.write_text(catalog.read_text().replace("start_date:", "source: rest\n  start_date:", 1))
        local = with_settings(settings, catalog_path=catalog, binance_spot_url=emu.url)
        ledger = emu.binance.ledgers["spot"]
        ban_s = 4.0

        def ban_after(requests: int) -> None:  # another client of our IP earns a ban meanwhile
            while sum(ledger.answers.values()) < requests:
                time.sleep(0.005)
            ledger.banned_until = time.time() + ban_s

        banner = threading.Thread(target=ban_after, args=(30,))
        banner.start()
        asset, result = run_range(local, BTC_SPOT_1M, "2024-01-01", "2024-04-01", instance)
        banner.join()
        assert not result.success
        answers = dict(ledger.answers)
        (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        cause = failure_cause(failure.step_failure_data.error)  # what `backfill --local` prints
        said = re.search(r"IP banned until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", cause)
        assert said, cause
        until = dt.datetime.strptime(said.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
        assert abs(until.timestamp() - ledger.banned_until) < 2, cause  # the ban's real end
        # the requests in flight when it came (at most the client's concurrency), not one per window
        assert answers.get(418, 0) <= local.binance_max_concurrency, answers
        written, distinct = klines_counts(local.warehouse_url)
        assert written == distinct < BARS
        month_status = statuses(instance, asset, MONTHS)
        assert FAILED in month_status.values()
        landed = [m for m, s in month_status.items() if s == MATERIALIZED]
        if landed:
            frame = open_warehouse(local.warehouse_url).query("SELECT open_time FROM market_data.klines")
            assert frame.filter(pl.col("open_time") < dt.datetime(2024, 2, 1, tzinfo=dt.UTC)).height == 31 * 1440

        # A later tick of the repair sensor, in another process (Bans of this one forgotten):
        # it reads the ban from the instance and waits for its end.
        Bans.clear()
        definitions = build_definitions(local)
        data, log = repair_tick(definitions, instance, None, capsys)
        assert not data.run_requests
        assert any(re.search(r"binance \(127\.0\.0\.1:\d+\) banned our IP until \S+ \S+ UTC, so waiting for the ban to end", line)
                   for line in log), log
        time.sleep(ban_s)
        data, log = repair_tick(definitions, instance, data.cursor, capsys)
        assert not any("banned" in line for line in log), log  # it ended: the usual wait for a re-run
        assert any(re.search(r"its latest run failed; re-run 1 of 3 waits until", line) for line in log), log


def test_a_retry_carrying_its_parents_process_is_not_taken_for_dead_until_its_own_process_is_gone():
    """Dagster copies a run's tags to its retry: the retry names its dead parent's process until
    its own process tags it, and must not be marked failed for that."""
    from marketdata_assets.run_health import HOST_TAG, PID_TAG, PROCESS_STARTED_TAG, TAGGED_RUN_TAG, fail_dead_runs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with dg.instance_for_test() as instance:
        parent_tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(gone.pid), PROCESS_STARTED_TAG: "1.00",
                       TAGGED_RUN_TAG: "parent-run"}
        retry = instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id="retry-run",
                                               status=dg.DagsterRunStatus.STARTING, tags=parent_tags))
        assert fail_dead_runs(instance) == []
        assert instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.STARTING
        # once its own process tagged it, and that process is gone too, it is marked failed
        instance.add_run_tags(retry.run_id, {TAGGED_RUN_TAG: retry.run_id})
        (dead,) = fail_dead_runs(instance)
        assert dead.describe() == (f"run retry-ru (__ASSET_JOB) was STARTING but its process {gone.pid} on "
                                   f"{socket.gethostname()} is gone (killed or crashed); marked failed")
        assert instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.FAILURE
