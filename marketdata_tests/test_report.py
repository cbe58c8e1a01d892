"""The coverage audit as a user meets it: `marketdata emulator` with a scenario, a backfill with
`dagster asset materialize`, then `marketdata report` and `marketdata gaps verify` as processes,
and the check results through the webserver's GraphQL API, as the UI's check pages read them."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

import dagster as dg
import httpx
import pytest

from marketdata_assets.catalog import load_catalog
from marketdata_assets.coverage import klines_assets, klines_coverage
from marketdata_assets.definitions import build_definitions
from marketdata_assets.settings import Settings
from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance_klines_rest import fetch_klines
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, utc, with_settings
from marketdata_tests.test_assets import BTC_SPOT_1M, dagster_materialize, run_range, spot_catalog, webserver
from marketdata_tests.test_automation import repair_tick
from marketdata_tests.test_cli import marketdata, marketdata_here


@contextlib.contextmanager
def emulator_process(*flags: str):
    """`marketdata emulator` as a user starts it, on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "marketdata_assets.cli", "emulator", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "emulator did not come up"
            try:
                httpx.get(url + "/api/v3/ping", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def materialize(env: dict[str, str], partition_range: str) -> tuple[int, str]:
    process = dagster_materialize(env, "binance_spot/klines_1m/BTCUSDT", partition_range)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def report_json(env: dict[str, str], cwd) -> dict:
    result = marketdata_here("report", "--format", "json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    return record


CHECK_HISTORY = """query ($key: AssetKeyInput!, $name: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $name, partition: $partition, limit: 10) {
    status partition evaluation { success severity description
      metadataEntries { label ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } } } } }"""


def check_history(url: str, name: str, partition: str) -> list[dict]:
    """Executions of one check, newest first: of one partition, or ("") of whole run windows."""
    response = httpx.post(url + "/graphql", json={"query": CHECK_HISTORY, "variables": {
        "key": {"path": BTC_SPOT_1M.path}, "name": name, "partition": partition}}, timeout=30)
    return response.json()["data"]["assetCheckExecutions"]


def metadata(execution: dict) -> dict:
    return {e["label"]: e.get("text", e.get("intValue")) for e in execution["evaluation"]["metadataEntries"]}


def test_after_an_outage_a_bad_candle_and_a_failed_fetch_the_audit_and_the_repair_sensor_converge(
    tmp_path, settings, dagster_home, capsys,
):
    scenario = ["--outage", "2024-01-10T00:00/2024-01-10T02:00", "--invalid-bar", "BTCUSDT/1m/2024-01-15T10:00",
                "--failing-window", "2024-02-10T00:00/2024-02-10T06:00"]
    with emulator_process(*scenario) as url:
        settings = with_settings(settings, binance_spot_url=url, binance_futures_url=url, binance_archive_url=url)
        env = cli_env(settings, dagster_home, spot_catalog(tmp_path))
        # 1. The backfill: February's file keeps failing, so its partition fails; the rest lands.
        code, output = materialize(env, "2024-01-01...2024-03-01")
        assert code != 0 and "1 partition (2024-02-01) not materialized; the other 2 are" in output

        # 2. The report shows exactly the outage, the failed partition and the rejected candle.
        record = report_json(env, tmp_path)
        assert record["failed_partitions"] == ["2024-02-01"]
        assert (record["partitions_materialized"], record["partitions_failed"]) == (2, 1)
        assert record["unexplained_gap_windows"] == [{"start": "2024-01-10 00:00", "end": "2024-01-10 02:00"}]
        assert (record["unexplained_bars"], record["known_gap_bars"], record["rejected_rows"]) == (120, 0, 1)
        assert record["checks"] == {"ohlc_valid": "WARN", "gap_count": "ERROR", "no_unclosed_bars": "passed"}
        assert record["disagreements"] == []
        table = marketdata("report", "--fail-on-gaps", cwd=tmp_path, env=env)
        assert table.returncode == 1
        assert "binance_spot/klines_1m/BTCUSDT: unexplained gap [2024-01-10 00:00, 2024-01-10 02:00) UTC, 120 bars" in table.stdout
        assert "binance_spot/klines_1m/BTCUSDT: failed partitions 2024-02-01" in table.stdout

        # The repair sensor finds January (its gap) and February (failed), and gives them 15 minutes
        # before the first re-run (test_automation runs the re-runs themselves).
        definitions = build_definitions(Settings.from_env(env))
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        repair, log = repair_tick(definitions, instance, None, capsys)
        assert not repair.run_requests
        waits = [line.split(" waits until ")[0] for line in log if " waits until " in line]
        assert waits == ["binance_spot/klines_1m/BTCUSDT|2024-01-01: gap_count found 1 unexplained gap; re-run 1 of 3",
                         "binance_spot/klines_1m/BTCUSDT|2024-02-01: its latest run failed; re-run 1 of 3"], log

        # 3. gaps verify fetches the outage again: still nothing, so it is recorded as verified
        #    empty, and January is checked again (explained gaps and the rejected row: WARN).
        verify = marketdata_here("gaps", "verify", cwd=tmp_path, env=env)
        assert verify.returncode == 0, verify.stderr
        assert verify.stdout.splitlines() == [
            "binance_spot/klines_1m/BTCUSDT [2024-01-10 00:00, 2024-01-10 02:00) UTC, 120 bars: "
            "120 bars verified empty, recorded as a known gap",
            "checked binance_spot/klines_1m/BTCUSDT again over 2024-01-01...2024-01-01: "
            "ohlc_valid=WARN gap_count=WARN no_unclosed_bars=passed",
            "1 gap fetched again: 0 bars stored, 120 bars verified empty, 0 rejected, 0 failed",
        ]
        # The sensor does not re-run windows verified empty; February waits out its backoff.
        repair, log = repair_tick(definitions, instance, repair.cursor, capsys)
        assert not repair.run_requests
        assert "binance_spot/klines_1m/BTCUSDT: the gaps gap_count found over 2024-01-01..2024-02-01 are all " \
               "verified empty or documented maintenance: not re-run" in log
        assert "binance_spot/klines_1m/BTCUSDT|2024-01-01: nothing left to repair (before any re-run)" in log
        assert any(line.startswith("binance_spot/klines_1m/BTCUSDT|2024-02-01: its latest run failed; re-run 1 of 3 "
                                   "waits until") for line in log)

        # 4. The failed partition again: the window's failures are spent now.
        code, output = materialize(env, "2024-02-01...2024-02-01")
        assert code == 0, output[-3000:]
        repair, log = repair_tick(definitions, instance, repair.cursor, capsys)
        assert not repair.run_requests
        assert log == ["binance_spot/klines_1m/BTCUSDT|2024-02-01: nothing left to repair (before any re-run)"]
        instance.dispose()

        # 5. The audit has converged: no unexplained gap, nothing failed, nothing invented.
        assert marketdata_here("report", "--fail-on-gaps", cwd=tmp_path, env=env).returncode == 0
        record = report_json(env, tmp_path)
        assert (record["partitions_materialized"], record["failed_partitions"]) == (3, [])
        assert (record["unexplained_bars"], record["known_gap_bars"], record["rejected_bars"]) == (0, 120, 1)
        assert record["rows"] == (31 + 29 + 31) * 1440 - 120 - 1
        assert marketdata_here("gaps", "verify", cwd=tmp_path, env=env).stdout.strip() == "no unexplained gaps"
        rows = open_warehouse(settings.warehouse_url).query("SELECT * FROM market_data.klines ORDER BY open_time")
        served = fetch_klines("spot", url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 4, 1)).frame
        assert rows.drop("source", "ingested_at").equals(served.drop("source", "ingested_at"))

    # 6. The UI's check pages read the same through GraphQL: one evaluation per partition and run,
    #    naming its window: January by the backfill and again after gaps verify, February by its
    #    re-run only (the backfill's February failed: no check result, not a gap), March by the backfill.
    with webserver(env) as ui:
        january = check_history(ui, "gap_count", "2024-01-01")
        assert [metadata(e)["window"] for e in january] == ["[2024-01-01 00:00, 2024-02-01 00:00) UTC"] * 2
        assert [(e["status"], e["evaluation"]["severity"]) for e in january] == [("FAILED", "WARN"), ("FAILED", "ERROR")]
        assert [(metadata(e)["unexplained_bars"], metadata(e)["known_gap_bars"]) for e in january] == [(0, 120), (120, 0)]
        for month, days in (("2024-02-01", 29), ("2024-03-01", 31)):
            (latest, *earlier) = check_history(ui, "gap_count", month)
            assert (latest["status"], metadata(latest)["expected_bars"], metadata(latest)["missing_bars"]) == (
                "SUCCEEDED", days * 1440, 0)
            # the backfill planned February's checks and failed before it: no result, no gap
            assert earlier == ([{"status": "EXECUTION_FAILED", "partition": month, "evaluation": None}]
                               if month == "2024-02-01" else [])
        ohlc = check_history(ui, "ohlc_valid", "2024-01-01")
        assert [(e["status"], metadata(e)["rejected_rows"]) for e in ohlc] == [("FAILED", 1), ("FAILED", 1)]
        freshness = httpx.post(ui + "/graphql", json={"query": FRESHNESS, "variables": {
            "key": {"path": BTC_SPOT_1M.path}}}, timeout=30).json()["data"]["assetNodeOrError"]
        assert freshness["internalFreshnessPolicy"] == {"deadlineCron": "0 1 * * *", "lowerBoundDeltaSeconds": 3600,
                                                        "timezone": "UTC"}


FRESHNESS = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  internalFreshnessPolicy { ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds timezone } } } } }"""


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_the_report_names_where_dagster_and_the_warehouse_disagree(tmp_path, settings, emulator, instance):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path))
    run_range(settings, BTC_SPOT_1M, "2024-01-01", "2024-01-01", instance)
    warehouse = open_warehouse(settings.warehouse_url)
    # rows of March stored by hand, never materialized; April marked materialized with no rows
    warehouse.upsert(KLINES, fetch_klines("spot", emulator.url, "BTCUSDT", "1m", utc(2024, 3, 1), utc(2024, 3, 2)).frame)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=BTC_SPOT_1M, partition="2024-04-01"))
    assets = klines_assets(load_catalog(settings.catalog_path))
    (item,) = klines_coverage(instance, warehouse, assets)
    assert item.materialized == 2  # January and April
    assert item.disagreements == [
        "materialized without rows: 2024-04-01",
        "rows in partitions never materialized: 2024-03-01",
    ]
    # gaps count inside materialized partitions only: April has none stored, all of it missing
    assert item.gaps.unexplained == [(utc(2024, 4, 1), utc(2024, 5, 1))]


def test_report_refuses_an_unknown_symbol_and_a_missing_dagster_home(tmp_path, settings, dagster_home):
    env = cli_env(settings, dagster_home, spot_catalog(tmp_path))
    result = marketdata_here("report", "--symbol", "DOGEUSDT", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "marketdata report: no asset for symbol DOGEUSDT in the catalog"
    env.pop("DAGSTER_HOME")
    result = marketdata_here("gaps", "verify", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("marketdata gaps verify: DAGSTER_HOME is not set")
