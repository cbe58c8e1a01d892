"""Dagster's production setup, run here as separate processes: the code location served over gRPC
(`dagster code-server`), `dagster-webserver` and `dagster-daemon`, with the instance and the
warehouse on the local PostgreSQL and docker/dagster.yaml as the instance config.

One deployment shows daily operations with every real part: backfills launched from the CLI
(`marketdata backfill … --wait`) and as the UI's launcher sends them (GraphQL), listed and cancelled
from the CLI while the daemon runs them; a scheduled tick that stores the newest closed window of
an asset never run and catches up the months another missed; and the UI in headless Chromium."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import dagster as dg
import httpx
import polars as pl
import yaml

from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import Faults
from marketdata_assets.emulator.scenario import FailingWindow, Scenario
from marketdata_assets.settings import Settings
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import REPO, postgres_database, utc, write_catalog
from marketdata_tests.test_assets import MATERIALIZED, run_range
from marketdata_tests.test_automation import month_key, months_back, record_materialization
from marketdata_tests.test_cli import marketdata
from marketdata_tests.ui import browser, page_text

DOCKER = REPO / "docker"
# Secrets the deployment runs with (trust auth: the server never checks the password); none may
# appear in any output, log, event, GraphQL answer or page.
SECRETS = {"warehouse password": "S3cretPW-w4rehouse", "FRED_API_KEY": "fred-S3cret-k3y",
           "DATABENTO_API_KEY": "db-S3cret-k3y"}
BTC_1H = dg.AssetKey(["binance_spot", "klines_1h", "BTCUSDT"])
ETH_1M = dg.AssetKey(["binance_spot", "klines_1m", "ETHUSDT"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    url: str  # the webserver
    warehouse_url: str
    dagster_url: str
    home: Path
    processes: dict[str, subprocess.Popen]
    env: dict[str, str]  # what a user of the CLI would export beside it

    def graphql(self, query: str, **variables) -> dict:
        response = httpx.post(self.url + "/graphql", json={"query": query, "variables": variables}, timeout=60)
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


def _wait(predicate, what: str, timeout: float, processes: dict[str, subprocess.Popen]):
    deadline = time.monotonic() + timeout
    while True:
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited: {process.stderr.read()[-3000:] if process.stderr else ''}"
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@contextlib.contextmanager
def deployment(tmp_path: Path, emulator_url: str, catalog: Path, before_start=None, **settings: str):
    """The three processes of docker/compose.yaml (user_code, webserver, daemon) on loopback;
    `before_start(instance)` prepares the instance first, `settings` are more variables for all."""
    with postgres_database("md_dagster") as dagster_url, postgres_database("md_warehouse") as warehouse_url:
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(DOCKER / "dagster.yaml", home / "dagster.yaml")
        grpc_port, web_port = free_port(), free_port()
        compose_workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
        server = compose_workspace["load_from"][0]["grpc_server"]
        server.update(host="127.0.0.1", port=grpc_port)  # the compose service name, here on loopback
        (home / "workspace.yaml").write_text(yaml.safe_dump(compose_workspace))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
        warehouse_url = warehouse_url.replace("postgres@", f"postgres:{SECRETS['warehouse password']}@", 1)
        env.update(
            DAGSTER_HOME=str(home),
            DAGSTER_POSTGRES_URL=dagster_url,
            MARKETDATA_WAREHOUSE_URL=warehouse_url,
            FRED_API_KEY=SECRETS["FRED_API_KEY"],
            DATABENTO_API_KEY=SECRETS["DATABENTO_API_KEY"],
            MARKETDATA_CATALOG=str(catalog),
            MARKETDATA_BINANCE_SPOT_URL=emulator_url,
            MARKETDATA_BINANCE_FUTURES_URL=emulator_url,
            MARKETDATA_BINANCE_ARCHIVE_URL=emulator_url,
            **settings,
        )
        if before_start is not None:
            with mock.patch.dict(os.environ, {"DAGSTER_POSTGRES_URL": dagster_url}), \
                    dg.DagsterInstance.from_config(str(home)) as instance:
                before_start(instance)
        commands = compose_commands(grpc_port, web_port, home / "workspace.yaml")
        processes: dict[str, subprocess.Popen] = {}
        logs = {}
        try:
            for name, args in commands.items():
                logs[name] = (tmp_path / f"{name}.log").open("w")
                processes[name] = subprocess.Popen(
                    [sys.executable, *args], env=env, cwd=tmp_path, stdout=logs[name], stderr=subprocess.STDOUT
                )
                if name == "user_code":
                    _wait(lambda: _accepts(grpc_port), "the code server", 120, processes)
            url = f"http://127.0.0.1:{web_port}"
            _wait(lambda: _location_loaded(url), "the webserver to load the code location", 120, processes)
            yield Deployment(url, warehouse_url, dagster_url, home, processes, {**env, "MARKETDATA_DAGSTER_URL": url})
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            for log in logs.values():
                log.close()


# The compose services' programs, run here with this interpreter.
_MODULES = {"dagster": "dagster", "dagster-webserver": "dagster_webserver", "dagster-daemon": "dagster._daemon"}


def compose_commands(grpc_port: int, web_port: int, workspace: Path) -> dict[str, list[str]]:
    """The commands docker/compose.yaml gives user_code, webserver and daemon, pointed at loopback
    ports and this workspace file instead of the containers' network and mounts."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    swap = {"0.0.0.0": "127.0.0.1", "4000": str(grpc_port), "3000": str(web_port),
            "/opt/dagster/home/workspace.yaml": str(workspace)}
    commands = {}
    for name in ("user_code", "webserver", "daemon"):
        program, *args = services[name]["command"]
        commands[name] = ["-m", _MODULES[program], *(swap.get(arg, arg) for arg in args)]
    return commands


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _location_loaded(url: str) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    try:
        entries = httpx.post(url + "/graphql", json={"query": query}, timeout=5).json()["data"]["workspaceOrError"]
    except (httpx.TransportError, ValueError, KeyError):
        return False
    return [(e["name"], e["loadStatus"]) for e in entries["locationEntries"]] == [("marketdata", "LOADED")]


LAUNCH = """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status numPartitions runs(limit: 10) { status } } } }"""
CANCEL = """mutation ($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename
  ... on CancelBackfillSuccess { backfillId } ... on PythonError { message } } }"""
RESOURCES = """{ allTopLevelResourceDetailsOrError(repositorySelector: {repositoryName: "__repository__",
  repositoryLocationName: "marketdata"}) { ... on ResourceDetailsList { results { name configuredValues { key value type } } } } }"""
STATUS = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetPartitionStatuses { ... on TimePartitionStatuses { ranges { startKey endKey status } } } } } }"""


def instance_tables(dagster_url: str) -> dict[str, str]:
    """Every table of the Dagster instance's database, as text."""
    import psycopg2

    con = psycopg2.connect(dagster_url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = [name for (name,) in cur.fetchall()]
            found = {}
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" AS t')
                found[f"instance table {table}"] = "\n".join(row for (row,) in cur.fetchall())
        return found
    finally:
        con.close()


def launch(deployed: Deployment, key: dg.AssetKey, months: list[str]) -> str:
    """A backfill as the UI's launcher sends it: the asset and its partition keys."""
    result = deployed.graphql(LAUNCH, params={"partitionNames": months, "assetSelection": [{"path": key.path}]})
    launched = result["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def backfill(deployed: Deployment, backfill_id: str) -> dict:
    return deployed.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]


def stored(deployed: Deployment, symbol: str, until: dt.datetime | None = None) -> pl.DataFrame:
    return open_warehouse(deployed.warehouse_url).query(
        "SELECT * FROM market_data.klines WHERE symbol = ? AND open_time < ? ORDER BY open_time",
        [symbol, until or utc(2100, 1, 1)],
    )


def cli(deployed: Deployment, cwd: Path, *args: str):
    return marketdata(*args, cwd=cwd, env=deployed.env)


def jobs(deployed: Deployment, cwd: Path) -> dict[str, dict]:
    listed = cli(deployed, cwd, "backfill", "jobs", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return {job["id"]: job for job in json.loads(listed.stdout)}


def runs_of(deployed: Deployment, **tags: str) -> list:
    with dg.DagsterInstance.from_config(str(deployed.home)) as instance:
        return sorted(instance.get_run_records(dg.RunsFilter(tags=tags)), key=lambda r: r.create_timestamp)


def scheduled_runs(deployed: Deployment, count: int) -> list:
    """The first `count` runs the schedule launched of BTC_1H and ETH_1M, once all of them succeeded."""
    records = [r for r in runs_of(deployed, **{"marketdata/trigger": "incremental"})
               if tuple(r.dagster_run.asset_selection or ()) in ((BTC_1H,), (ETH_1M,))][:count]
    if len(records) < count:
        return []
    failed = [r.dagster_run for r in records if r.dagster_run.is_finished
              and r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, f"scheduled run {failed[0].run_id} {failed[0].status}"
    return records if all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records) else []


def test_the_deployment_backfills_cancels_and_keeps_data_current_from_the_cli_graphql_and_schedules(
    tmp_path, monkeypatch,
):
    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1h"], "start_date": "2024-01-01"},
        # over REST, two pages at a time and every page 400 ms late, a write a month: its two-year
        # backfill takes minutes, so it is still writing when cancelled however busy the host
        {"venue": "binance", "market": "spot", "symbol": "ETHUSDT", "timeframes": ["1m"], "start_date": "2024-01-01",
         "source": "rest"},
        # June 2024 never answers (HTTP 503): its backfill fails, and --wait says why and what to run
        {"venue": "binance", "market": "perp", "symbol": "BNBUSDT", "timeframes": ["1h"], "start_date": "2024-06-01",
         "datasets": ["klines"]},
    ])
    june = FailingWindow(int(utc(2024, 6, 10).timestamp() * 1000), int(utc(2024, 6, 11).timestamp() * 1000), 10_000)
    now = dt.datetime.now(dt.UTC)
    stopped = months_back(now, 2)  # BTCUSDT 1h was last kept two months ago, mid-month
    with EmulatorServer(EmulatorConfig(faults=Faults(latency_ms=400), scenario=Scenario(failing_windows=(june,)))) \
            as emulator, deployment(
        tmp_path, emulator.url, catalog,
        before_start=lambda instance: record_materialization(instance, BTC_1H, month_key(stopped), stopped),
        MARKETDATA_SCHEDULE_CRON="* * * * *", MARKETDATA_BINANCE_MAX_CONCURRENCY="2",
        MARKETDATA_ROWS_PER_WRITE="50000",
    ) as deployed:
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", deployed.dagster_url)  # this process reads the instance too
        # From a plan file, followed to the end; from the CLI's options; and as the UI's launcher
        # sends one, two years long.
        plan = tmp_path / "btc.yaml"
        plan.write_text(yaml.safe_dump({"datasets": ["klines_1h"], "symbols": ["BTCUSDT"], "start": "2024-01-01",
                                        "end": "2024-02-15"}))
        waited = subprocess.Popen(
            [sys.executable, "-m", "marketdata_assets.cli", "backfill", "plan", str(plan), "--wait"],
            cwd=tmp_path, env=deployed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        failing = subprocess.Popen(
            [sys.executable, "-m", "marketdata_assets.cli", "backfill", "klines_1h", "--symbols", "BNBUSDT",
             "--from", "2024-06-01", "--to", "2024-07-31", "--wait"],
            cwd=tmp_path, env=deployed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        months = [f"{year}-{month:02d}-01" for year in (2024, 2025) for month in range(1, 13)]
        long_id = launch(deployed, ETH_1M, months)
        listed = _wait(lambda: len(jobs(deployed, tmp_path)) == 3 and jobs(deployed, tmp_path),
                       "both backfills to be listed", 60, deployed.processes)
        assert listed[long_id]["status"] == "REQUESTED"
        assert listed[long_id]["assets"] == [ETH_1M.to_user_string()]
        assert listed[long_id]["partitions"]["total"] == 24

        # Cancelled from the CLI while its run is writing: the daemon stops the run, and no month
        # is left half written (every write batch holds whole months, in one transaction).
        # (its own rows, inside its two years: the schedule's run stores only the month in progress)
        _wait(lambda: stored(deployed, "ETHUSDT", utc(2026, 1, 1)).height > 0, "the backfill's first rows of ETHUSDT",
              240, deployed.processes)
        cancel = cli(deployed, tmp_path, "backfill", "cancel", long_id)
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout.startswith(f"canceling {long_id}: no more of its runs start and the running ones are stopped")
        # (its run stopped; the backfill itself ends CANCELED an iteration of the daemon later, awaited below)
        done = _wait(lambda: (found := backfill(deployed, long_id))["runs"]
                     and all(run["status"] == "CANCELED" for run in found["runs"]) and found,
                     "the daemon to stop the backfill's run", 240, deployed.processes)
        assert [run["status"] for run in done["runs"]] == ["CANCELED"]
        rows = stored(deployed, "ETHUSDT", utc(2026, 1, 1))
        time.sleep(3)
        assert stored(deployed, "ETHUSDT", utc(2026, 1, 1)).height == rows.height  # it has stopped
        per_month = rows.group_by(pl.col("open_time").dt.strftime("%Y-%m").alias("month")).len()
        for month, count in per_month.iter_rows():
            year, number = (int(part) for part in month.split("-"))
            days = (dt.date(year + number // 12, number % 12 + 1, 1) - dt.date(year, number, 1)).days
            assert count == days * 1440, f"{month} is half written: {count} bars"
        assert 0 < per_month.height < len(months)

        # The plan's: its backfill's id, then its progress, exit 0; one range run (single_run policy).
        out, err = waited.communicate(timeout=300)
        assert waited.returncode == 0, err
        short_id = out.strip()
        assert err.strip().splitlines()[-1] == f"{short_id}: COMPLETED_SUCCESS: 2 of 2 partitions done, 0 failed"
        assert [run["status"] for run in backfill(deployed, short_id)["runs"]] == ["SUCCESS"]
        btc = stored(deployed, "BTCUSDT", utc(2024, 3, 1))
        assert btc.height == (31 + 29) * 24
        assert btc["open_time"].min() == utc(2024, 1, 1) and btc["open_time"].max() == utc(2024, 2, 29, 23)
        # the same rows the embedded default (DuckDB, SQLite instance) lands for the same window
        default = Settings(warehouse_url=f"duckdb:///{tmp_path / 'default.duckdb'}", catalog_path=catalog,
                           binance_spot_url=emulator.url, binance_archive_url=emulator.url)
        with dg.instance_for_test() as instance:
            assert run_range(default, BTC_1H, "2024-01-01", "2024-02-01", instance)[1].success
        embedded = open_warehouse(default.warehouse_url).query(
            "SELECT * FROM market_data.klines WHERE symbol = 'BTCUSDT' ORDER BY open_time")
        assert btc.drop("ingested_at").equals(embedded.drop("ingested_at"))

        # The failing one: exit 1, the reason its run gave (after Dagster's two retries), the
        # partition it left failed, and the command that runs it again.
        # (its June run fails three times, each after the client's own retries, and the daemon
        # re-executes it between: on a loaded host that once took more than five minutes)
        out, err = failing.communicate(timeout=480)
        failed_id = out.strip()
        assert failing.returncode == 1, err
        lines = err.strip().splitlines()
        explained = lines[lines.index(f"marketdata backfill: {failed_id} failed: 1 of 2 partitions failed"):]
        assert explained[1].startswith("run ") and explained[1].endswith(
            " (binance_perp/klines_1h/BNBUSDT 2024-06-01...2024-07-01) failed:"), explained
        assert explained[2] == ("  WindowsFailed: binance_perp/klines_1h/BNBUSDT: 1 window could not be read, so "
                                "2024-06-01 is not materialized (1 of 2 partitions); the others are:"), explained
        assert explained[3].startswith("  - [2024-06-01 00:00, 2024-07-01 00:00) UTC: binance archive: GET ") \
            and "HTTP 503" in explained[3], explained
        assert explained[-3:] == ["  failed partitions of binance_perp/klines_1h/BNBUSDT: 2024-06-01",
                                  "once the cause is fixed, run them again:",
                                  "  marketdata backfill klines_1h --symbols BNBUSDT --from 2024-06-01 --to 2024-06-30 --wait"]
        assert stored(deployed, "BNBUSDT", utc(2024, 8, 1)).height == 31 * 24  # July landed

        # The scheduled tick: ETHUSDT (never materialized) gets the window of the newest closed
        # day, BTCUSDT every month since it stopped, the one it stopped in included.
        ticked = _wait(lambda: scheduled_runs(deployed, 2), "the scheduled runs to succeed", 240, deployed.processes)
        newest = {row["symbol"]: row["newest"] for row in open_warehouse(deployed.warehouse_url).query(
            "SELECT symbol, max(open_time) AS newest FROM market_data.klines GROUP BY 1").rows(named=True)}
        tick = min(r.create_timestamp for r in ticked)
        # the newest closed bar at the tick is stored, for both
        assert newest["BTCUSDT"] >= tick.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
        assert newest["ETHUSDT"] >= tick.replace(second=0, microsecond=0) - dt.timedelta(minutes=2)

        _wait(lambda: backfill(deployed, long_id)["status"] == "CANCELED", "the cancelled backfill to end", 240,
              deployed.processes)
        listing = cli(deployed, tmp_path, "backfill", "jobs")
        lines = listing.stdout.splitlines()
        assert lines[0].split() == ["id", "status", "done", "failed", "total", "started", "(UTC)", "assets"]
        assert any(line.split()[:5] == [short_id, "COMPLETED_SUCCESS", "2", "0", "2"] for line in lines)
        assert any(line.split()[:2] == [long_id, "CANCELED"] for line in lines)
        assert jobs(deployed, tmp_path)[long_id]["partitions"]["done"] == 0
        again = cli(deployed, tmp_path, "backfill", "cancel", long_id)
        assert again.stdout.strip() == f"{long_id} has ended already: CANCELED"
        unknown = cli(deployed, tmp_path, "backfill", "cancel", "nosuchid")
        assert (unknown.returncode, unknown.stderr.strip()) == (
            2, f"marketdata backfill cancel: no backfill nosuchid on {deployed.url}")

        # The UI, in a real browser: the CLI's backfill on its page, the schedule and the sensor on.
        with browser() as driver:
            page = page_text(driver, f"{deployed.url}/runs/b/{short_id}?tab=overview",
                             ["2024-01-01...2024-02-01", "binance_spot / klines_1h / BTCUSDT\n100% completed\n2\n0\n2\n0"])
            assert f"Runs / {short_id}" in page
            page_text(driver, f"{deployed.url}/automation", ["klines_daily_since_2024_01", "klines_daily_since_2024_06",
                                                             "gap_repair"])
            switches = "return Array.from(document.querySelectorAll('input[type=checkbox]'))" \
                       ".filter(e => e.parentElement.className.includes('formatSwitch')).map(e => e.checked)"
            # The switches render once each one's state has loaded, which a busy webserver (the
            # daemon ticks every minute here) can take a while to answer: ask the page once more.
            for attempt in range(2):
                deadline = time.monotonic() + 45
                while len(driver.execute_script(switches)) < 3 and time.monotonic() < deadline:
                    time.sleep(0.5)
                if driver.execute_script(switches) or attempt:
                    break
                page_text(driver, f"{deployed.url}/automation", ["klines_daily", "gap_repair"])
            # this catalog's two schedules (spot klines since 2024-01, perp since 2024-06), and the sensor
            assert driver.execute_script(switches) == [True, True, True]
            # the warehouse resource's page names the variable its URL comes from
            resources_page = page_text(driver, f"{deployed.url}/locations/marketdata/resources/warehouse",
                                       ["MARKETDATA_WAREHOUSE_URL"])

        # The warehouse URL (it holds a password) is configured through its variable: the UI's
        # resources page and GraphQL show the variable's name, never the URL.
        resources = deployed.graphql(RESOURCES)["allTopLevelResourceDetailsOrError"]["results"]
        (warehouse,) = [r["configuredValues"] for r in resources if r["name"] == "warehouse"]
        assert {"key": "url", "value": "MARKETDATA_WAREHOUSE_URL", "type": "ENV_VAR"} in warehouse
        # Nothing anywhere holds a secret: outputs, the processes' logs, every table of the
        # instance (events and their metadata, runs, tags, tick logs), GraphQL, the page.
        seen = {"GraphQL resources": json.dumps(resources), "the resources page": resources_page,
                "the CLI's --wait backfill": out + err, "backfill jobs": listing.stdout + listing.stderr}
        seen |= {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
        seen |= {str(path): path.read_text(errors="replace")
                 for path in deployed.home.rglob("*") if path.is_file() and path.stat().st_size < 10_000_000}
        seen |= instance_tables(deployed.dagster_url)
        for what, secret in SECRETS.items():
            leaks = [where for where, text in seen.items() if secret in text]
            assert not leaks, f"the {what} shows in {leaks}"

        # Dagster's partition status, as the UI shows it
        ranges = deployed.graphql(STATUS, key={"path": ETH_1M.path})["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
        assert all(r["status"] != "MATERIALIZED" or r["startKey"] >= month_key(now - dt.timedelta(days=1))
                   for r in ranges), ranges  # the cancelled run marked none of its months
        with dg.DagsterInstance.from_config(str(deployed.home)) as instance:
            btc_months = [month_key(months_back(now, n)) for n in range(1, 3)] + ["2024-01-01", "2024-02-01"]
            partitions = dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)
            assert set(instance.get_status_by_partition(BTC_1H, btc_months, partitions).values()) == {MATERIALIZED}
            # the month in progress: materialized, and re-run by the per-minute schedule meanwhile
            (current,) = instance.get_status_by_partition(BTC_1H, [month_key(now)], partitions).values()
            assert current in (MATERIALIZED, dg.AssetPartitionStatus.IN_PROGRESS)
            assert instance.get_status_by_partition(BTC_1H, ["2024-03-01"], partitions) == {"2024-03-01": None}

    scheduled = {tuple(r.dagster_run.asset_selection): (r.dagster_run.tags["dagster/asset_partition_range_start"],
                                                        r.dagster_run.tags["dagster/asset_partition_range_end"])
                 for r in ticked}
    assert scheduled[(BTC_1H,)] == (month_key(stopped), month_key(now))
    assert scheduled[(ETH_1M,)] == (month_key(now - dt.timedelta(days=1)), month_key(now))


def test_compose_names_the_processes_this_suite_runs_and_mounts_what_they_need():
    """Docker cannot run here: the compose file is checked against what the deployment test runs."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    # (the metrics exporter's and the live tail's commands are run by test_metrics.py and test_stream.py)
    assert set(services) == {"postgres", "user_code", "webserver", "daemon", "metrics", "redis", "stream"}
    commands = compose_commands(4000, 3000, Path("/opt/dagster/home/workspace.yaml"))
    assert commands["user_code"][:5] == ["-m", "dagster", "code-server", "start", "-h"]
    assert ["-m", "marketdata_assets.definitions"] == commands["user_code"][8:10]
    assert commands["webserver"][:2] == ["-m", "dagster_webserver"] and commands["daemon"][:3] == ["-m", "dagster._daemon", "run"]
    # the webserver and the daemon load the location from the user_code service's gRPC port
    (entry,) = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]
    user_code = services["user_code"]["command"]
    assert entry["grpc_server"]["host"] == "user_code"
    assert str(entry["grpc_server"]["port"]) == user_code[user_code.index("-p") + 1]
    assert entry["grpc_server"]["location_name"] == user_code[user_code.index("--location-name") + 1]
    for name in ("webserver", "daemon", "metrics"):
        mounts = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert {"/opt/dagster/home/dagster.yaml", *(["/opt/dagster/home/workspace.yaml"] if name != "metrics" else [])} <= mounts
        assert services[name]["image"] == services["user_code"]["image"]
    # nothing is published beyond loopback: the UI has no login
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published == ["127.0.0.1:3000:3000", "127.0.0.1:9108:9108", "127.0.0.1:9109:9109"]
    # every Dagster process reads the instance and the warehouse from PostgreSQL
    for name in ("user_code", "webserver", "daemon", "metrics", "stream"):
        env = services[name]["environment"]
        assert env["DAGSTER_POSTGRES_URL"].startswith("postgresql://")
        assert env["MARKETDATA_WAREHOUSE_URL"].startswith("postgresql://")
    warehouse_db = services["daemon"]["environment"]["MARKETDATA_WAREHOUSE_URL"].rsplit("/", 1)[1]
    assert f"CREATE DATABASE {warehouse_db}" in (DOCKER / "initdb" / "01-warehouse.sql").read_text()
    # the instance config the deployment test runs with is the one compose mounts
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_retries"] == {"enabled": True, "max_retries": 2}
    # what the Dockerfile copies exists
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_the_instance_config_loads_on_postgresql_with_queue_pools_and_retries(postgres_url, monkeypatch):
    """docker/dagster.yaml as Dagster reads it."""
    from dagster._core.instance.ref import InstanceRef

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(DOCKER)))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        pools = instance.get_concurrency_config().pool_config
        assert (pools.default_pool_limit, pools.pool_granularity.value) == (1, "run")
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    finally:
        instance.dispose()
