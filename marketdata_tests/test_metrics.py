"""`marketdata metrics` (issue 22): a scrape of /metrics after a backfill with injected retries
and a failed month, parsed with prometheus_client's own parser."""

from __future__ import annotations

import subprocess
import sys
import time

import dagster as dg
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import FailingWindow, Scenario
from marketdata_assets.emulator.server import EmulatorServer
from marketdata_assets.settings import Settings
from marketdata_tests.conftest import cli_env, utc, write_catalog
from marketdata_tests.test_deployment import DOCKER, free_port

KEY = "binance_spot/klines_1h/BTCUSDT"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_a_scrape_after_a_backfill_shows_its_retries_failures_and_last_timestamp(tmp_path, dagster_home):
    from marketdata_tests.test_venue_klines import run_together

    # January's 10th answers 503 twice (retried, then served); February's 10th never answers
    scenario = Scenario(failing_windows=(FailingWindow.parse("2024-01-10T00:00/2024-01-10T06:00x2"),
                                         FailingWindow.parse("2024-02-10T00:00/2024-02-10T06:00x1000")))
    catalog = write_catalog(tmp_path / "c.yaml", [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT",
                                                   "timeframes": ["1h"]}], start_date="2024-01-01")
    with EmulatorServer(EmulatorConfig(scenario=scenario)) as emu:
        settings = Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog,
                            binance_spot_url=emu.url, binance_futures_url=emu.url, binance_archive_url=emu.url,
                            klines_source="rest")
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        try:
            result = run_together(settings, [dg.AssetKey(KEY.split("/"))], "2024-01-01", "2024-03-01", instance)
        finally:
            instance.dispose()
        served_503 = httpx.get(f"{emu.url}/emulator/stats").json()
    assert not result.success  # February failed

    # the exporter as docker/compose.yaml runs it, on a loopback port
    port = free_port()
    program, *args = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["metrics"]["command"]
    assert program == "marketdata"
    args = [{"0.0.0.0": "127.0.0.1", "9108": str(port)}.get(arg, arg) for arg in args]
    env = cli_env(settings, dagster_home, catalog)
    server = subprocess.Popen([sys.executable, "-m", "marketdata_assets.cli", *args],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(300):
            try:
                samples = scrape(url)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()
                time.sleep(0.1)
        labels = (("interval", "3600"), ("node_id", KEY))
        # January's two 503s were retried; February's 10th was asked for until the client gave up
        retries = samples[("backfill_retry_total", labels)]
        # every 503 the emulator served was retried, but the last of February's, after which the client gave up
        assert retries == served_503["binance"]["spot"]["answers"]["503"] - 1 >= 2
        assert samples[("backfill_failure_total", labels)] == 1.0  # the February partition
        # the newest stored bar: March's last hour
        assert samples[("backfill_last_timestamp", labels)] == utc(2024, 3, 31, 23).timestamp()
        assert samples[("marketdata_rows", labels)] == (31 + 31) * 24
        assert samples[("marketdata_unexplained_missing_rows", labels)] == 0
        assert samples[("marketdata_check_passed", (("check", "gap_count"), ("node_id", KEY)))] == 1.0
        assert samples[("backfill_jobs_in_progress", ())] == 0
        assert "duckdb" not in httpx.get(url).text  # no warehouse URL (or any setting) in a label
        # a second scrape reads only what is new: the same totals
        assert scrape(url)[("backfill_retry_total", labels)] == retries
        # a port already taken is one line, exit 2
        taken = subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "metrics", "--port", str(port)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert (taken.returncode, taken.stdout) == (2, "")
        assert taken.stderr.startswith(f"marketdata metrics: --port {port}: cannot listen on 127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)
