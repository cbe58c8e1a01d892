"""The `marketdata` command line as a user runs it: real processes, real exit codes and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from marketdata_tests.conftest import REPO


def marketdata(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_", "FROM_", "TO_"))}
    return subprocess.run(
        [sys.executable, "-m", "marketdata_assets.cli", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def test_demo_backfills_the_default_catalog_from_the_emulator_and_prints_what_is_stored(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = marketdata("demo", cwd=tmp_path, env={"FROM_DATE": "2024-01-30", "TO_DATE": "2024-02-02"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "--partition-range 2024-01-01...2024-02-01" in out  # the months holding those days
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("binance_")}
    for market in ("spot", "perp"):
        for symbol in ("BTCUSDT", "ETHUSDT"):
            rows, *first_last = lines[f"binance_{market}/klines_1m/{symbol}"]
            assert rows == str((31 + 29) * 1440)
            assert first_last == ["2024-01-01", "00:00", "2024-02-29", "23:59"]
            rows, *first_last = lines[f"binance_{market}/klines_1h/{symbol}"]
            assert rows == str((31 + 29) * 24)
            assert first_last == ["2024-01-01", "00:00", "2024-02-29", "23:00"]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert lines[f"binance_perp/funding/{symbol}"][0] == str((31 + 29) * 3)
        assert lines[f"binance_perp/open_interest/{symbol}"][0] == str((31 + 29) * 288)
        assert lines[f"binance_perp/long_short/{symbol}"][0] == str((31 + 29) * 288 * 4)
        assert f"bybit_perp/funding/{symbol} {(31 + 29) * 3} 2024-01-01 00:00 2024-02-29 16:00" in " ".join(out.split())
    assert "skipping okx_perp/funding/BTC_USDT_SWAP, okx_perp/funding/ETH_USDT_SWAP: OKX keeps only about three months" in out
    assert (tmp_path / ".marketdata" / "warehouse.duckdb").exists()
    assert (tmp_path / ".marketdata" / "dagster" / "dagster.yaml").exists()


def test_demo_rejects_a_bad_date(tmp_path):
    result = marketdata("demo", "--from", "2024-02-31", cwd=tmp_path)
    assert result.returncode == 2
    assert "FROM_DATE='2024-02-31' is not a date (YYYY-MM-DD)" in result.stderr


def test_summary_of_an_empty_warehouse(tmp_path):
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    result = marketdata("summary", cwd=tmp_path, env={"MARKETDATA_WAREHOUSE_URL": url})
    assert result.returncode == 0
    assert result.stdout.strip() == f"nothing stored in {url}"


def test_summary_names_a_bad_warehouse_url(tmp_path):
    result = marketdata("summary", cwd=tmp_path, env={"MARKETDATA_WAREHOUSE_URL": "mysql://x"})
    assert result.returncode == 2
    assert "MARKETDATA_WAREHOUSE_URL='mysql://x' is not a warehouse URL" in result.stderr
