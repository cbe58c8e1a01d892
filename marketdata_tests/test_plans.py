"""Backfill plans as files (issue 24): a plan backfills exactly what it names, `--dry-run` shows
the same plan with its requests and weight per venue, and every bad field is one line naming the
file, the field and the value, exit 2, nothing launched."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml

from marketdata_tests.conftest import REPO, cli_env, write_catalog
from marketdata_tests.test_cli import marketdata_here

INSTRUMENTS = [
    {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1m", "1h"]},
    {"venue": "binance", "market": "spot", "symbol": "ETHUSDT", "timeframes": ["1h"]},
    {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "datasets": ["funding"]},
]


def readme_plan() -> dict:
    """The README's example plan, as a user copies it."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("```yaml\n# config/backfill/btc-hourly.yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


PLAN = readme_plan()


@pytest.fixture
def env(tmp_path, settings, dagster_home):
    catalog = write_catalog(tmp_path / "c.yaml", INSTRUMENTS, start_date="2023-12-01")
    return cli_env(settings, dagster_home, catalog)


def write_plan(tmp_path, plan: dict, name: str = "plan.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(plan))
    return path


def test_a_plan_backfills_exactly_what_it_names_and_its_dry_run_says_so(tmp_path, env, dagster_home):
    path = write_plan(tmp_path, PLAN)
    dry = marketdata_here("backfill", "plan", str(path), "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    # two closed months from the archive: a monthly file and its .CHECKSUM each, no request weight
    assert dry.stdout.splitlines() == [
        f"plan {path}: 1 asset, 2 partitions in 1 backfill, 2024-01-01 00:00 .. 2024-03-01 00:00 UTC",
        "  binance_spot/klines_1h/BTCUSDT 2024-01-01...2024-02-01 (2 partitions)",
        "  binance_spot: 4 requests, weight 0",
        "nothing was launched (--dry-run)",
    ]
    rest = marketdata_here("backfill", "plan", str(path), "--dry-run", cwd=tmp_path,
                           env={**env, "MARKETDATA_KLINES_SOURCE": "rest"})
    # 60 days of hourly bars over REST: 1,440 bars, 2 pages of 1,000 at weight 2
    assert "  binance_spot: 2 requests, weight 4" in rest.stdout.splitlines()

    ran = marketdata_here("backfill", "plan", str(path), "--local", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        landed = {key.to_user_string(): sorted(instance.get_materialized_partitions(key))
                  for key in instance.get_asset_keys() if instance.get_materialized_partitions(key)}
        runs = instance.get_runs()
    finally:
        instance.dispose()
    assert landed == {"binance_spot/klines_1h/BTCUSDT": ["2024-01-01", "2024-02-01"]}
    assert [run.tags["marketdata/trigger"] for run in runs] == ["marketdata backfill plan plan.yaml"]


def test_every_bad_plan_field_is_one_line_naming_the_file_the_field_and_the_value(tmp_path, env):
    for change, said in (
        ({"datasets": ["klinez"]}, "datasets: unknown dataset 'klinez' (the catalog has "),
        ({"venue": ["kraken"]}, "venue: 'kraken' matches no asset of the plan's datasets (they have binance)"),
        ({"market": "futures"}, "market: 'futures' is not a market (spot, perp)"),
        ({"symbols": ["DOGEUSDT"]}, "symbols: 'DOGEUSDT' matches no asset of the plan's datasets (they have BTCUSDT, ETHUSDT)"),
        ({"timeframes": ["4h"]}, "timeframes: '4h' matches no asset of the plan's datasets (they have 1h, 1m)"),
        ({"start": "2024-02-30"}, "start '2024-02-30' is not a date"),
        ({"end": "2023-06-01"}, "end 2023-06-01 is before start 2024-01-01"),
        ({"concurrency": 0}, "concurrency: 0 is not a whole number of 1 or more"),
        ({"every": "day"}, "every: not a field of a plan"),
        ({"datasets": ["funding"], "timeframes": "all", "symbols": "all", "market": "spot"}, "market: 'spot' matches no asset of the plan's datasets (they have perp)"),
    ):
        path = write_plan(tmp_path, {**PLAN, **change}, "bad.yaml")
        refused = marketdata_here("backfill", "plan", str(path), "--local", cwd=tmp_path, env=env)
        assert (refused.returncode, refused.stdout) == (2, ""), (change, refused.stderr)
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith(f"marketdata backfill plan: plan {path}: ") and said in line, (change, line)
    missing = marketdata_here("backfill", "plan", str(tmp_path / "none.yaml"), cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "none.yaml: cannot be read" in missing.stderr


def test_the_instrument_filter_means_the_same_on_every_command(tmp_path, env, dagster_home, settings):
    """--venue, --market, --symbols and --keys on seed, backfill, report, summary and export."""
    from marketdata_assets.warehouse import open_warehouse

    seeded = marketdata_here("seed", "--from", "2024-01-01", "--to", "2024-01-01", "--market", "spot",
                             "--symbols", "ETHUSDT", cwd=tmp_path, env=env)
    assert seeded.returncode == 0, seeded.stderr
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        landed = sorted(key.to_user_string() for key in instance.get_asset_keys()
                        if instance.get_materialized_partitions(key))
    finally:
        instance.dispose()
    assert landed == ["binance_spot/klines_1h/ETHUSDT"]
    stored = open_warehouse(settings.warehouse_url).query("SELECT DISTINCT symbol, timeframe FROM market_data.klines")
    assert stored.rows() == [("ETHUSDT", "1h")]

    summary = marketdata_here("summary", "--venue", "binance", "--market", "spot", cwd=tmp_path, env=env)
    assert [line.split()[0] for line in summary.stdout.splitlines()[1:]] == ["binance_spot/klines_1h/ETHUSDT"]
    assert marketdata_here("summary", "--market", "perp", cwd=tmp_path, env=env).stdout.splitlines()[1:] == []

    report = marketdata_here("report", "--format", "json", "--dataset", "klines", "--market", "spot", cwd=tmp_path, env=env)
    assert sorted(r["asset"] for r in json.loads(report.stdout)) == [
        "binance_spot/klines_1h/BTCUSDT", "binance_spot/klines_1h/ETHUSDT", "binance_spot/klines_1m/BTCUSDT"]

    out = marketdata_here("export", "binance_*/*/*", "--from", "2024-01-01", "--to", "2024-01-01", "--symbols",
                          "ETHUSDT", "--path", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Binance-ETHUSDT-1h-2024-01-01_2024-01-01.csv"]

    for args, said in (
        (("backfill", "klines", "--venue", "okx", "--local"), "--venue 'okx' matches no klines asset (they have binance)"),
        (("seed", "--market", "futures"), "--market 'futures' matches no asset (they have perp, spot)"),
        (("report", "--keys", "DGS10"), "--keys 'DGS10' matches no asset"),
        (("export", "binance_*/*/*", "--market", "spot", "--symbols", "SOLUSDT"),
         "--symbols 'SOLUSDT' matches no series the selection names (they have BTCUSDT, ETHUSDT)"),
    ):
        refused = marketdata_here(*args, cwd=tmp_path, env=env)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
