"""The `marketdata` command line as a user runs it: real processes, real exit codes and output."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from marketdata_tests.conftest import REPO


_OURS = ("MARKETDATA_", "DAGSTER_", "FROM_", "TO_")


def marketdata(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    """`marketdata …` as a user runs it: a new process, in `cwd`, with only `env` of our variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    return subprocess.run(
        [sys.executable, "-m", "marketdata_assets.cli", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def marketdata_here(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The same command, environment and working directory as `marketdata`, run by the same
    entry point in this process: for requests refused before anything runs, whose whole answer
    is an exit code and one line, without 3 s of interpreter and Dagster start-up each."""
    from click.testing import CliRunner

    from marketdata_assets.cli import main

    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith(_OURS)}
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(main, list(args), env={**cleared, **(env or {})}, catch_exceptions=False)
    return subprocess.CompletedProcess(["marketdata", *args], result.exit_code, result.stdout, result.stderr)


def test_demo_backfills_the_default_catalog_from_the_emulator_and_prints_what_is_stored(tmp_path):
    result = marketdata("demo", cwd=tmp_path, env={"FROM_DATE": "2024-01-30", "TO_DATE": "2024-02-02"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    # one range run per PartitionsDefinition, over the months holding those days
    # (BTC's market cap begins with spot, at the catalog's start: it shares their run)
    assert "done   binance_spot/klines_1h/BTCUSDT, binance_spot/klines_1h/ETHUSDT, binance_spot/klines_1m/BTCUSDT, " \
           "binance_spot/klines_1m/ETHUSDT, blockchain_com/market_cap/BTC 2024-01-01...2024-02-01 (10 partitions)" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("binance_")}
    for market in ("spot", "perp"):
        for symbol in ("BTCUSDT", "ETHUSDT"):
            rows, *first_last = lines[f"binance_{market}/klines_1m/{symbol}"]
            assert rows == str((31 + 29) * 1440)
            assert first_last == ["2024-01-01", "00:00", "2024-02-29", "23:59"]
            rows, *first_last = lines[f"binance_{market}/klines_1h/{symbol}"]
            assert rows == str((31 + 29) * 24)
            assert first_last == ["2024-01-01", "00:00", "2024-02-29", "23:00"]
    # OKX and Bybit klines, spot and perp, the same bars in the same table
    flat = " ".join(out.split())
    for prefix, symbols in (("okx_spot", ("BTC_USDT", "ETH_USDT")), ("okx_perp", ("BTC_USDT_SWAP", "ETH_USDT_SWAP")),
                            ("bybit_spot", ("BTCUSDT", "ETHUSDT")), ("bybit_perp", ("BTCUSDT", "ETHUSDT"))):
        for symbol in symbols:
            assert f"{prefix}/klines_1m/{symbol} {(31 + 29) * 1440} 2024-01-01 00:00 2024-02-29 23:59" in flat
            assert f"{prefix}/klines_1h/{symbol} {(31 + 29) * 24} 2024-01-01 00:00 2024-02-29 23:00" in flat
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert lines[f"binance_perp/funding/{symbol}"][0] == str((31 + 29) * 3)
        assert lines[f"binance_perp/open_interest/{symbol}"][0] == str((31 + 29) * 288)
        assert lines[f"binance_perp/long_short/{symbol}"][0] == str((31 + 29) * 288 * 4)
        assert f"bybit_perp/funding/{symbol} {(31 + 29) * 3} 2024-01-01 00:00 2024-02-29 16:00" in " ".join(out.split())
    assert "okx_perp/funding/BTC_USDT_SWAP: okx keeps about 90 days, so 0 of its 2 partitions are asked for" in out
    # the packaged catalog's series: a Fear & Greed value, four stablecoin pegs, a market cap and an
    # SSR for every day of the two months; every vintage of 2024's CPI (two each), after the SSR's inputs
    for line in ("alternative_me/fear_greed 60 2024-01-01 00:00 2024-02-29 00:00",
                 "defillama/stablecoin_supply 240 2024-01-01 00:00 2024-02-29 00:00",
                 "blockchain_com/market_cap/BTC 60 2024-01-01 00:00 2024-02-29 00:00",
                 "derived/ssr/BTC 60 2024-01-01 00:00 2024-02-29 00:00",
                 "fred/macro/CPIAUCSL 24 2024-01-01 00:00 2024-12-01 00:00",
                 # CME daily bars of 2024 (a yearly partition): 366 days, less 52 Saturdays and Good Friday
                 "databento_glbx/ohlcv_1d/ES 313 2024-01-01 00:00 2024-12-31 00:00"):
        assert line in flat, line
    priced = [line for line in out.splitlines() if line.startswith("ohlcv_1d: the upstream asks $")]
    assert len(priced) == 1 and priced[0].endswith(" for 6 series over 2024-01-01 .. 2025-01-01"), priced
    done = [line.split()[1] for line in out.splitlines() if line.startswith("done ")]
    assert done[-1] == "derived/ssr/BTC"
    assert (tmp_path / ".marketdata" / "warehouse.duckdb").exists()
    instance_config = (REPO / "marketdata_assets" / "dagster_instance.yaml").read_text()
    assert (tmp_path / ".marketdata" / "dagster" / "dagster.yaml").read_text() == instance_config

    # A second run fetches nothing, and says so; a skipped dataset is named. (The seed the demo
    # ran, in this process: it asks no upstream, so needs no emulator.)
    again = marketdata_here("seed", cwd=tmp_path, env={"FROM_DATE": "2024-01-30", "TO_DATE": "2024-02-02",
                                                       "SKIP_FUNDING": "1", "SKIP_SENTIMENT": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[0:8] == [
        "seeding 2024-01-30 00:00 .. 2024-02-03 00:00 UTC into duckdb:///.marketdata/warehouse.duckdb",
        "skipping funding (SKIP_FUNDING=1)",
        "skipping sentiment (SKIP_SENTIMENT=1)",
        "skipping ohlcv_1d: DATABENTO_API_KEY is not set (Databento's API key)",  # (the demo set a key of its own)
        "skipping ohlcv_1h: DATABENTO_API_KEY is not set (Databento's API key)",
        "skipping options_ohlcv_1d: DATABENTO_API_KEY is not set (Databento's API key)",
        # klines 48 (Binance 16, OKX and Bybit 32), open interest and long/short 8, FRED 12
        "all 68 partitions are materialized already",
        "nothing to fetch: every partition is materialized already",
    ]


def test_demo_rejects_a_bad_date(tmp_path):
    result = marketdata_here("demo", "--from", "2024-02-31", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "marketdata demo: FROM_DATE '2024-02-31' is not a date: use YYYY-MM-DD, " \
                                    "'YYYY-MM-DD HH:MM:SS' (UTC) or now"
    result = marketdata_here("seed", cwd=tmp_path, env={"FROM_DATE": "2099-01-01"})
    assert (result.returncode, result.stderr.strip()) == (2, "marketdata seed: FROM_DATE 2099-01-01 is in the future")


def test_summary_of_an_empty_warehouse(tmp_path):
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    result = marketdata_here("summary", cwd=tmp_path, env={"MARKETDATA_WAREHOUSE_URL": url})
    assert result.returncode == 0
    assert result.stdout.strip() == f"nothing stored in {url}"


def test_summary_names_a_bad_warehouse_url(tmp_path):
    result = marketdata_here("summary", cwd=tmp_path, env={"MARKETDATA_WAREHOUSE_URL": "mysql://x"})
    assert result.returncode == 2
    assert "MARKETDATA_WAREHOUSE_URL='mysql://x' is not a warehouse URL" in result.stderr


def test_backfill_requests_that_cannot_be_read_get_one_line_and_exit_2(tmp_path):
    for args, message in [
        (("klines", "--from", "2024-13-01"),
         "--from '2024-13-01' is not a date: use YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' (UTC) or now"),
        (("klines", "--from", "2024-03-01", "--to", "2024-02-01 12:00:00"),
         "--to 2024-02-01 12:00:00 is before --from 2024-03-01"),
        (("candles",),
         "unknown dataset 'candles': the catalog has fear_greed, funding, futures, gex, klines, klines_1h, klines_1m, "
         "long_short, macro, market_cap, ohlcv_1d, ohlcv_1h, open_interest, options_ohlcv_1d, sentiment, ssr, "
         "stablecoin_supply"),
        (("funding", "--symbols", "BTCUSDT,DOGEUSDT"), "no funding asset for symbol DOGEUSDT in the catalog"),
    ]:
        result = marketdata_here("backfill", *args, cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (2, f"marketdata backfill: {message}"), args


def test_backfill_without_a_webserver_says_where_it_looked(tmp_path):
    result = marketdata_here("backfill", "jobs", cwd=tmp_path, env={"MARKETDATA_DAGSTER_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.startswith("marketdata backfill jobs: no Dagster webserver at http://127.0.0.1:9 (ConnectError): "
                                    "start one (`make dev`), point MARKETDATA_DAGSTER_URL at yours, or run here with --local")


def test_backfill_local_runs_here_with_progress_and_records_the_partitions(tmp_path, settings, dagster_home):
    import dagster as dg

    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.conftest import cli_env
    from marketdata_tests.test_assets import BTC_SPOT_1M, MATERIALIZED, spot_catalog

    env = cli_env(settings, dagster_home, spot_catalog(tmp_path))
    result = marketdata("backfill", "klines", "--symbols", "BTCUSDT", "--from", "2024-01-15", "--to", "2024-02-10",
                        "--local", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("done   binance_spot/klines_1m/BTCUSDT 2024-01-01...2024-02-01 (2 partitions) in ")
    assert "2 partitions" in result.stderr  # the progress bar's label
    bars = open_warehouse(settings.warehouse_url).query("SELECT count(*) AS n FROM market_data.klines")["n"][0]
    assert bars == (31 + 29) * 1440
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        statuses = instance.get_status_by_partition(
            BTC_SPOT_1M, ["2024-01-01", "2024-02-01", "2024-03-01"], dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)
        )
    assert statuses == {"2024-01-01": MATERIALIZED, "2024-02-01": MATERIALIZED, "2024-03-01": None}


def test_a_failed_local_backfill_names_its_cause_and_a_fresh_home_keeps_telemetry_off(tmp_path, settings):
    from marketdata_tests.conftest import cli_env, write_catalog

    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "NOPEUSDT", "timeframes": ["1h"], "source": "rest"}],
        start_date="2024-01-01")
    home = tmp_path / "fresh_home"  # no dagster.yaml
    result = marketdata("backfill", "klines", "--from", "2024-01-01", "--to", "2024-01-10", "--local",
                        cwd=tmp_path, env=cli_env(settings, home, catalog))
    assert result.returncode == 1
    failed, cause, again = result.stdout.strip().splitlines()
    assert failed.startswith("FAILED binance_spot/klines_1h/NOPEUSDT 2024-01-01...2024-01-01 (1 partition), run ")
    assert cause.startswith("  UpstreamRejected: binance spot: GET /api/v3/klines?symbol=NOPEUSDT")
    assert cause.endswith("rejected with HTTP 400: code -1121: Invalid symbol.")
    assert again == "  once fixed, run it again: marketdata backfill klines_1h --symbols NOPEUSDT --from 2024-01-01 " \
                    "--to 2024-01-31 --local"
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert (config["telemetry"], config["run_monitoring"]) == ({"enabled": False}, {"enabled": True})


def test_bad_emulator_options_get_one_line_and_exit_2(tmp_path, emulator):
    port = emulator.url.rsplit(":", 1)[1]  # taken
    for args, message in [
        (("--port", "99999"), "--port 99999 is not a port (0 to 65535; 0 picks a free one)"),
        (("--port", port), f"cannot listen on 127.0.0.1:{port}: Address already in use"),
        (("--fault-5xx-rate", "2"), "--fault-5xx-rate 2.0 is not a share of requests (0 to 1)"),
        (("--fault-latency-ms", "-5"), "--fault-latency-ms -5.0 is negative"),
        (("--archive-cache-mb", "0"), "--archive-cache-mb 0 is not a size (1 or more)"),
        (("--listing", "spot:BTC-USDT@2021"),
         "listing 'spot:BTC-USDT@2021' is not MARKET:SYMBOL@YYYY-MM-DD (market spot or perp)"),
    ]:
        result = marketdata_here("emulator", *args, cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (2, f"marketdata emulator: {message}"), args


def test_a_warehouse_password_is_never_printed(tmp_path):
    from marketdata_tests.conftest import POSTGRES, postgres_database

    secret = "S3cretPW"
    with postgres_database() as url:  # trust auth: the server never asks for the password
        with_password = url.replace("postgres@", f"postgres:{secret}@", 1)
        assert with_password != url
        env = {"MARKETDATA_WAREHOUSE_URL": with_password, "DAGSTER_HOME": str(tmp_path / "home")}
        summary = marketdata("summary", cwd=tmp_path, env=env)
        assert summary.returncode == 0, summary.stderr
        assert summary.stdout.strip() == f"nothing stored in {with_password.replace(secret, '***')}"
        seed = marketdata("seed", cwd=tmp_path, env={**env, "MARKETDATA_CATALOG": str(_klines_only(tmp_path)),
                                                     "SKIP_KLINES": "1"})  # plans, fetches nothing
        assert seed.returncode == 0, seed.stderr
        assert f"UTC into {with_password.replace(secret, '***')}" in seed.stdout
        assert secret not in seed.stdout + seed.stderr
    for bad in (f"mysql://root:{secret}@127.0.0.1/db", f"{POSTGRES}:1/nodb?password={secret}"):
        result = marketdata("summary", cwd=tmp_path, env={"MARKETDATA_WAREHOUSE_URL": bad})
        assert result.returncode == 2, result.stderr
        assert secret not in result.stdout + result.stderr and "***" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _klines_only(tmp_path):
    from marketdata_tests.conftest import write_catalog

    return write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1d"], "start_date": "2024-01-01"}])


def test_a_bad_warehouse_url_is_one_line_and_exit_2_before_anything_runs(tmp_path):
    from marketdata_tests.conftest import POSTGRES

    home = tmp_path / "home"
    catalog = str(_klines_only(tmp_path))
    for command, url, message in [
        (("backfill", "klines", "--from", "2024-01-01", "--to", "2024-01-02", "--local"),
         f"{POSTGRES.replace('postgres@', 'postgres:S3cret@')}/no_such_database",
         "marketdata backfill: PostgreSQL warehouse 127.0.0.1:5432/no_such_database: connection to server at "
         "\"127.0.0.1\", port 5432 failed: FATAL:  database \"no_such_database\" does not exist"),
        (("seed",), "sqlite:///warehouse.db",
         "marketdata seed: MARKETDATA_WAREHOUSE_URL='sqlite:///warehouse.db' is not a warehouse URL "
         "(duckdb:///path.duckdb or postgresql://user@host/db)"),
    ]:
        result = marketdata_here(*command, cwd=tmp_path, env={
            "MARKETDATA_WAREHOUSE_URL": url, "MARKETDATA_CATALOG": catalog, "DAGSTER_HOME": str(home)})
        assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, ""), command
        assert not home.exists()  # no run was started, not even an instance made


def test_make_dev_is_dg_dev_on_the_dg_project_and_starts_without_a_warning(tmp_path):
    import json
    import signal
    import socket
    import time

    import httpx

    # `dg` finds the code location from pyproject.toml's [tool.dg], as `uv run` (VIRTUAL_ENV) runs it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
    env |= {"VIRTUAL_ENV": sys.prefix, "MARKETDATA_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}"}
    dg = str(Path(sys.executable).parent / "dg")
    listed = subprocess.run([dg, "list", "defs", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr
    # Dagster's notice on telemetry, printed once a machine (the first dg or dagster command with
    # no ~/.dagster/.telemetry): not a warning, and whether this test comes first depends on order
    notice = re.compile(r"^\s*Telemetry:.*?Slack\s*\(https://bit\.ly/\w+\)\.", re.DOTALL)
    assert notice.sub("", listed.stderr).strip() == ""
    defs = json.loads(listed.stdout)
    assets = {asset["asset_key"] for asset in defs["assets"]}
    assert {"binance_spot/klines_1m/BTCUSDT", "binance_perp/funding/ETHUSDT", "alternative_me/fear_greed"} <= assets
    assert "gap_repair" in {sensor["name"] for sensor in defs["sensors"]}

    # `make dev`: a home holding the packaged dagster.yaml, then `dg dev`, from the repository
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "marketdata_assets" / "dagster_instance.yaml").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "dev.log").open("w+")
    dev = subprocess.Popen([dg, "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env={**env, "DAGSTER_HOME": str(home)},
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert dev.poll() is None and time.monotonic() < deadline, (tmp_path / "dev.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # the daemon's first ticks
        output = (tmp_path / "dev.log").read_text()  # what it printed while up, not its shutdown
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)  # a code server Dagster restarted while shutting down
        log.close()
    assert "Serving dagster-webserver on" in output
    # no warning: not that `dagster dev` is superseded by `dg dev`, nor that a dagster.yaml beside
    # DAGSTER_HOME "will not be used", nor any other
    warned = [line for line in output.splitlines()
              if "warn" in line.lower() or "deprecat" in line.lower() or "superseded" in line]
    assert not warned, warned
