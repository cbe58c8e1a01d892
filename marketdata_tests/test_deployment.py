"""Dagster's production setup, run here as separate processes: the code location served over gRPC
(`dagster code-server`), `dagster-webserver` and `dagster-daemon`, with the instance and the
warehouse on the local PostgreSQL and docker/dagster.yaml as the instance config. Backfills are
launched and cancelled through the webserver's GraphQL API, as the UI's backfill launcher does,
and the daemon runs them."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import yaml

from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import Faults
from marketdata_assets.settings import Settings
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import REPO, postgres_database, utc, write_catalog
from marketdata_tests.test_assets import run_range

DOCKER = REPO / "docker"
BTC = ["binance_spot", "klines_1m", "BTCUSDT"]
ETH = ["binance_spot", "klines_1m", "ETHUSDT"]


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
def deployment(tmp_path: Path, emulator_url: str, catalog: Path):
    """The three processes of docker/compose.yaml (user_code, webserver, daemon) on loopback."""
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
        env.update(
            DAGSTER_HOME=str(home),
            DAGSTER_POSTGRES_URL=dagster_url,
            MARKETDATA_WAREHOUSE_URL=warehouse_url,
            MARKETDATA_CATALOG=str(catalog),
            MARKETDATA_BINANCE_SPOT_URL=emulator_url,
            MARKETDATA_BINANCE_FUTURES_URL=emulator_url,
            MARKETDATA_BINANCE_ARCHIVE_URL=emulator_url,
        )
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
            yield Deployment(url, warehouse_url, dagster_url, home, processes)
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
STATUS = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetPartitionStatuses { ... on TimePartitionStatuses { ranges { startKey endKey status } } } } } }"""


def launch(deployed: Deployment, key: list[str], months: list[str]) -> str:
    """A backfill as the UI's launcher sends it: the asset and its partition keys."""
    result = deployed.graphql(LAUNCH, params={"partitionNames": months, "assetSelection": [{"path": key}]})
    launched = result["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def backfill(deployed: Deployment, backfill_id: str) -> dict:
    return deployed.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]


def stored(deployed: Deployment, symbol: str) -> pl.DataFrame:
    return open_warehouse(deployed.warehouse_url).query(
        "SELECT * FROM market_data.klines WHERE symbol = ? ORDER BY open_time", [symbol]
    )


def test_a_graphql_backfill_is_run_by_the_daemon_and_a_cancelled_one_leaves_no_partial_window(tmp_path):
    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1m"], "start_date": "2022-01-01"},
        # ETHUSDT over REST with every page 400 ms late: still running when its backfill is cancelled
        {"venue": "binance", "market": "spot", "symbol": "ETHUSDT", "timeframes": ["1m"], "start_date": "2022-01-01",
         "source": "rest"},
    ])
    with EmulatorServer(EmulatorConfig(faults=Faults(latency_ms=400))) as emulator, \
            deployment(tmp_path, emulator.url, catalog) as deployed:
        months = ["2024-01-01", "2024-02-01", "2024-03-01"]
        backfill_id = launch(deployed, BTC, months)
        done = _wait(lambda: backfill(deployed, backfill_id)["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED",
                                                                              "COMPLETED_FAILED") and backfill(deployed, backfill_id),
                     "the daemon to finish the backfill", 240, deployed.processes)
        assert done["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), done
        assert [run["status"] for run in done["runs"]] == ["SUCCESS"]  # one range run (single_run policy)
        rows = stored(deployed, "BTCUSDT")
        assert rows.height == (31 + 29 + 31) * 1440
        assert rows["open_time"].min() == utc(2024, 1, 1) and rows["open_time"].max() == utc(2024, 3, 31, 23, 59)
        # the same rows the embedded default (DuckDB, SQLite instance) lands for the same window
        default = Settings(warehouse_url=f"duckdb:///{tmp_path / 'default.duckdb'}", catalog_path=catalog,
                           binance_spot_url=emulator.url, binance_archive_url=emulator.url)
        with dg.instance_for_test() as instance:
            assert run_range(default, dg.AssetKey(BTC), months[0], months[-1], instance)[1].success
        embedded = open_warehouse(default.warehouse_url).query(
            "SELECT * FROM market_data.klines WHERE symbol = 'BTCUSDT' ORDER BY open_time")
        assert rows.drop("ingested_at").equals(embedded.drop("ingested_at"))
        ranges = deployed.graphql(STATUS, key={"path": BTC})["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
        assert ranges == [{"startKey": "2024-01-01", "endKey": "2024-03-01", "status": "MATERIALIZED"}]

        # A second backfill, cancelled while its run is writing: the daemon stops the run, and no
        # month is left half written (every write batch holds whole months, in one transaction).
        months = [f"{year}-{month:02d}-01" for year in (2020, 2021, 2022, 2023) for month in range(1, 13)]
        backfill_id = launch(deployed, ETH, months)
        _wait(lambda: stored(deployed, "ETHUSDT").height > 0, "the first rows of ETHUSDT", 240, deployed.processes)
        cancelled = deployed.graphql(CANCEL, id=backfill_id)["cancelPartitionBackfill"]
        assert cancelled["__typename"] == "CancelBackfillSuccess", cancelled
        done = _wait(lambda: backfill(deployed, backfill_id)["status"] == "CANCELED" and backfill(deployed, backfill_id),
                     "the daemon to cancel the backfill", 240, deployed.processes)
        assert [run["status"] for run in done["runs"]] == ["CANCELED"]
        rows = stored(deployed, "ETHUSDT")
        time.sleep(3)
        assert stored(deployed, "ETHUSDT").height == rows.height  # it has stopped
        per_month = rows.group_by(pl.col("open_time").dt.strftime("%Y-%m").alias("month")).len()
        for month, count in per_month.iter_rows():
            year, number = (int(part) for part in month.split("-"))
            days = (dt.date(year + number // 12, number % 12 + 1, 1) - dt.date(year, number, 1)).days
            assert count == days * 1440, f"{month} is half written: {count} bars"
        assert 0 < per_month.height < len(months)
        # the run never finished, so none of its partitions is marked materialized
        ranges = deployed.graphql(STATUS, key={"path": ETH})["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
        assert all(r["status"] != "MATERIALIZED" for r in ranges), ranges


def test_compose_names_the_processes_this_suite_runs_and_mounts_what_they_need():
    """Docker cannot run here: the compose file is checked against what the deployment test runs."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
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
    for name in ("webserver", "daemon"):
        mounts = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert {"/opt/dagster/home/dagster.yaml", "/opt/dagster/home/workspace.yaml"} <= mounts
        assert services[name]["image"] == services["user_code"]["image"]
    # every Dagster process reads the instance and the warehouse from PostgreSQL
    for name in ("user_code", "webserver", "daemon"):
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
