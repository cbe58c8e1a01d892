"""Every revision kept (issue 24): a re-fetch after the exchange restated a candle leaves the old
values in market_data.revisions and the new ones in klines, in the upsert's transaction, on
DuckDB and PostgreSQL; an unchanged re-write adds nothing; the report counts them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import dagster as dg
import orjson
import polars as pl

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import InvalidBar, Scenario
from marketdata_assets.emulator.server import EmulatorServer
from marketdata_assets.settings import Settings
from marketdata_tests.conftest import cli_env, utc, write_catalog

KEY = dg.AssetKey(["binance_spot", "klines_1h", "BTCUSDT"])
RESTATED = utc(2024, 1, 10, 5)


def test_a_restated_candle_keeps_its_old_values_in_revisions_and_an_unchanged_rewrite_adds_none(
        tmp_path, dagster_home, any_warehouse_url):
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.test_cli import marketdata_here
    from marketdata_tests.test_venue_klines import run_together

    catalog = write_catalog(tmp_path / "c.yaml", [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT",
                                                   "timeframes": ["1h"]}], start_date="2024-01-01")
    restating = replace(EmulatorConfig(), scenario=Scenario(revised_bars=(InvalidBar.parse("BTCUSDT/1h/2024-01-10T05:00"),)))
    warehouse = open_warehouse(any_warehouse_url)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    runs, checks = [], []
    try:
        for config in (EmulatorConfig(), restating, restating):
            with EmulatorServer(config) as emu:
                settings = Settings(warehouse_url=any_warehouse_url, catalog_path=catalog, binance_spot_url=emu.url,
                                    binance_archive_url=emu.url, binance_futures_url=emu.url, klines_source="rest")
                result = run_together(settings, [KEY], "2024-01-01", "2024-01-01", instance)
                assert result.success
                runs.append(result.run_id)
                (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "bars_unrevised"]
                checks.append((check.passed, check.severity, check.description))
                if len(runs) == 1:
                    before = warehouse.query("SELECT * FROM market_data.klines ORDER BY open_time")
    finally:
        instance.dispose()

    after = warehouse.query("SELECT * FROM market_data.klines ORDER BY open_time")
    old = before.filter(pl.col("open_time") == RESTATED).row(0, named=True)
    new = after.filter(pl.col("open_time") == RESTATED).row(0, named=True)
    assert new["close"] == round(old["close"] * 1.01, 2) and after.height == before.height == 31 * 24
    # every other bar is as it was
    unchanged = ["open_time", "open", "high", "low", "close", "volume"]
    assert after.filter(pl.col("open_time") != RESTATED).select(unchanged).equals(
        before.filter(pl.col("open_time") != RESTATED).select(unchanged))

    # one revision, of the restating run: the old values, queryable beside the new
    revisions = warehouse.query("SELECT * FROM market_data.revisions")
    assert revisions.height == 1
    revision = revisions.row(0, named=True)
    assert (revision["table_name"], revision["series"], revision["row_time"], revision["run_id"]) == (
        "klines", "binance/spot/BTCUSDT/1h", RESTATED, runs[1])
    assert json.loads(revision["row_key"]) | {"open_time": None} == {
        "venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframe": "1h", "open_time": None}
    kept = orjson.loads(revision["old_values"])
    assert {name: kept[name] for name in ("open", "high", "low", "close", "volume")} == {
        name: old[name] for name in ("open", "high", "low", "close", "volume")}
    assert set(kept) == {"open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_volume",
                         "taker_buy_quote_volume"}
    assert before.height and isinstance(revision["replaced_at"], dt.datetime)

    # the check warns of the month from the restating run on, naming the bar
    said = "1 stored bar changed by a later fetch: 2024-01-10 05:00"
    assert checks == [(True, dg.AssetCheckSeverity.WARN, "0 stored bars changed by a later fetch"),
                      (False, dg.AssetCheckSeverity.WARN, said), (False, dg.AssetCheckSeverity.WARN, said)]

    # the report counts it on the asset
    env = cli_env(settings, dagster_home, catalog)
    report = json.loads(marketdata_here("report", "--format", "json", cwd=tmp_path, env=env).stdout)
    assert {r["asset"]: r["revisions"] for r in report} == {"binance_spot/klines_1h/BTCUSDT": 1}
