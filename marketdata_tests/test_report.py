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
from marketdata_tests.test_assets import BTC_SPOT_1M, dagster_materialize, run_range, spot_catalog
from marketdata_tests.ui import browser, graphql, page_text, webserver
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


CHECKS = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status partition }
    partitionStatuses { ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } } }"""
GRID = {"SUCCEEDED": "passed", "FAILED": "failed", "EXECUTION_FAILED": "execution_failed", "SKIPPED": "skipped",
        "IN_PROGRESS": "in_progress"}


def months(first: str, last: str) -> list[str]:
    """Monthly partition keys first..last."""
    keys, year, month = [], int(first[:4]), int(first[5:7])
    while f"{year:04d}-{month:02d}-01" <= last:
        keys.append(f"{year:04d}-{month:02d}-01")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys


def the_ui_agrees_with_the_report(ui: str, record: dict, settings, picture, screenshots) -> None:
    """After the partly failed backfill: each check's partition grid, its latest evaluation and the
    gap counts read through GraphQL equal `marketdata report`; then the pages a person opens (the
    check list, a check's partition tab, a partition's detail, the asset's coverage picture, and
    `report --html`'s page) show the same, with screenshots."""
    checks = graphql(ui, CHECKS, key={"path": BTC_SPOT_1M.path})["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert sorted(check["name"] for check in checks) == sorted(record["check_partitions"])
    for check in checks:
        reported = record["check_partitions"][check["name"]]
        grid: dict[str, list[str]] = {name: [] for name in GRID.values()}
        for span in check["partitionStatuses"]["ranges"]:
            grid[GRID[span["status"]]] += months(span["startKey"], span["endKey"])
        assert len(grid.pop("passed")) == reported["passed"], check["name"]
        assert grid == {name: reported[name] for name in grid}, check["name"]
        latest = check["executionForLatestMaterialization"]
        assert ({"SUCCEEDED": "passed"}.get(latest["status"], latest["status"]), latest["partition"]) == (
            reported["latest"], reported["latest_partition"])
    # one count of gaps: the gap check's partitions add up to the report's figures (February failed:
    # it is a failed partition in both, not 41,760 missing bars)
    per_month = {month: check_history(ui, "gap_count", month) for month in ("2024-01-01", "2024-02-01", "2024-03-01")}
    assert per_month["2024-02-01"] == [{"status": "EXECUTION_FAILED", "partition": "2024-02-01", "evaluation": None}]
    evaluated = [metadata(history[0]) for history in per_month.values() if history[0]["evaluation"]]
    assert sum(m["unexplained_bars"] for m in evaluated) == record["unexplained_bars"] == 120
    assert sum(m["missing_bars"] for m in evaluated) == record["missing_bars"] == 121
    assert sum(m["rejected_bars"] for m in evaluated) == record["rejected_bars"] == 1

    screenshots.mkdir(parents=True, exist_ok=True)
    asset = f"{ui}/assets/{'/'.join(BTC_SPOT_1M.path)}"
    january_rows = open_warehouse(settings.warehouse_url).query(
        "SELECT count(*) AS n FROM market_data.klines WHERE open_time >= ? AND open_time < ?",
        [utc(2024, 1, 1), utc(2024, 2, 1)])["n"][0]
    with browser() as driver:
        from selenium.webdriver.common.by import By

        # the list of assets shows the key whole (its dataset part was cut when kinds took the width)
        page_text(driver, f"{ui}/assets", ["binance_spot / klines_1m / BTCUSDT"])
        driver.save_screenshot(str(screenshots / "assets.png"))
        # the list of checks: each one's status is the report's
        text = page_text(driver, f"{asset}?view=checks&checkDetail=gap_count", ["no_unclosed_bars", "Latest execution"])
        for name, reported in record["check_partitions"].items():
            assert f"{name}\n{reported['status']}" in text, (name, text[:1500])
        driver.save_screenshot(str(screenshots / "check-list.png"))
        # the gap check's partition tab counts what the report counts
        gap_count = record["check_partitions"]["gap_count"]
        driver.find_elements(By.XPATH, "//button[normalize-space()='Partitions'] | //*[@role='tab' and normalize-space()='Partitions']")[-1].click()
        wanted = [f"Execution Failed ({len(gap_count['execution_failed'])})", f"Failed ({len(gap_count['failed'])})",
                  f"Passed ({gap_count['passed']})", f"Missing ({gap_count['missing']})"]
        deadline = time.monotonic() + 60
        while not all(piece in driver.find_element(By.TAG_NAME, "body").text for piece in wanted):
            assert time.monotonic() < deadline, (wanted, driver.find_element(By.TAG_NAME, "body").text[:2000])
            time.sleep(0.5)
        driver.save_screenshot(str(screenshots / "check-partitions.png"))
        # a partition's detail: its own rows and figures, not the run's
        text = page_text(driver, f"{asset}?view=partitions&partition=2024-01-01", ["dagster/partition_row_count"])
        assert f"dagster/partition_row_count\n{january_rows}\n" in text and f"rows_written\n{january_rows}\n" in text
        assert f"dagster/row_count\n{record['rows']}\n" in text and "rows_rejected\n1\n" in text
        assert "window\n[2024-01-01T00:00:00+00:00, 2024-02-01T00:00:00+00:00)" in text
        driver.save_screenshot(str(screenshots / "partition-2024-01-01.png"))
        # the failed month: failed there as in the report, with no figures of its own
        assert record["failed_partitions"] == ["2024-02-01"]
        text = page_text(driver, f"{asset}?view=partitions&partition=2024-02-01", ["did not materialize this asset"])
        assert "failed, and did not materialize this asset" in text and "No metadata entries" in text
        driver.save_screenshot(str(screenshots / "partition-2024-02-01.png"))
        # the asset's coverage picture (its latest observation), by partition
        january = (f"2024-01-01: {january_rows} of {31 * 1440} bars stored, {record['unexplained_bars']} missing "
                   f"unexplained, {record['rejected_bars']} missing explained")
        text = page_text(driver, f"{asset}?view=events", ["coverage", january, "2024-02-01: failed"])
        assert "partitions_failed\n1\n" in text and "partitions_with_unexplained_gaps\n1\n" in text
        driver.save_screenshot(str(screenshots / "asset-coverage.png"))
        # and `marketdata report --html`: a cell per partition, as the report counts them
        driver.get(picture.as_uri())
        states = driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('td[data-partition]')]"
            ".map(td => [td.dataset.partition, [td.dataset.state, td.title]]))")
        assert states["2024-01-01"] == ["gaps", january]
        assert states["2024-02-01"] == ["failed", "2024-02-01: failed"]
        assert states["2024-03-01"] == ["complete", f"2024-03-01: {31 * 1440} of {31 * 1440} bars stored"]
        assert [key for key, (state, _) in states.items() if state == "failed"] == record["failed_partitions"]
        assert sum(state in ("complete", "explained", "gaps") for state, _ in states.values()) == \
            record["partitions_materialized"]
        assert len(states) == record["partitions_total"]
        counts = driver.execute_script("return Object.fromEntries([...document.querySelectorAll('b[data-count]')]"
                                       ".map(b => [b.dataset.count, Number(b.textContent)]))")
        assert counts == {"complete": 1, "explained": 0, "gaps": 1, "failed": 1,
                          "not_materialized": record["partitions_total"] - 3}
        driver.save_screenshot(str(screenshots / "coverage-html.png"))
    print(f"screenshots: {screenshots}")


def test_after_an_outage_a_bad_candle_and_a_failed_fetch_the_audit_and_the_repair_sensor_converge(
    tmp_path, settings, dagster_home, capsys,
):
    scenario = ["--outage", "2024-01-10T00:00/2024-01-10T02:00", "--invalid-bar", "BTCUSDT/1m/2024-01-15T10:00",
                "--failing-window", "2024-02-10T00:00/2024-02-10T06:00"]
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(emulator_process(*scenario))
        settings = with_settings(settings, binance_spot_url=url, binance_futures_url=url, binance_archive_url=url)
        env = cli_env(settings, dagster_home, spot_catalog(tmp_path))
        # 1. The backfill: February's file keeps failing, so its partition fails; the rest lands.
        code, output = materialize(env, "2024-01-01...2024-03-01")
        assert code != 0 and "so 2024-02-01 is not materialized (1 of 3 partitions); the others are:" in output

        # 2. The report shows exactly the outage, the failed partition and the rejected candle.
        record = report_json(env, tmp_path)
        assert record["failed_partitions"] == ["2024-02-01"]
        assert (record["partitions_materialized"], record["partitions_failed"]) == (2, 1)
        assert record["unexplained_gap_windows"] == [{"start": "2024-01-10 00:00", "end": "2024-01-10 02:00"}]
        assert (record["unexplained_bars"], record["known_gap_bars"], record["rejected_rows"]) == (120, 0, 1)
        assert record["checks"] == {"ohlc_valid": "WARN", "gap_count": "ERROR", "no_unclosed_bars": "passed",
                                    "bars_unrevised": "passed"}
        assert record["disagreements"] == []
        table = marketdata("report", "--fail-on-gaps", cwd=tmp_path, env=env)
        assert table.returncode == 1
        assert "binance_spot/klines_1m/BTCUSDT: unexplained gap [2024-01-10 00:00, 2024-01-10 02:00) UTC, 120 bars" in table.stdout
        assert "binance_spot/klines_1m/BTCUSDT: failed partitions 2024-02-01" in table.stdout

        # The UI says the same as the report, through GraphQL and in a real browser.
        ui = stack.enter_context(webserver(env))
        picture = tmp_path / "coverage.html"
        drawn = marketdata_here("report", "--html", str(picture), cwd=tmp_path, env=env)
        assert drawn.returncode == 0 and drawn.stderr.strip() == f"coverage picture of 1 asset written to {picture}"
        the_ui_agrees_with_the_report(ui, record, settings, picture, tmp_path / "screenshots")

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
            "ohlc_valid=WARN gap_count=WARN no_unclosed_bars=passed bars_unrevised=passed",
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
