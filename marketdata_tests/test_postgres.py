"""The PostgreSQL warehouse through Dagster: the same backfill lands the same rows as DuckDB's."""

from __future__ import annotations

import dagster as dg
import polars as pl

from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import with_settings, write_catalog
from marketdata_tests.test_assets import BTC_SPOT_1M, MATERIALIZED, run_range, statuses


def every_row(url: str) -> pl.DataFrame:
    return open_warehouse(url).query(
        "SELECT * FROM market_data.klines ORDER BY venue, market, symbol, timeframe, open_time"
    ).drop("ingested_at")


def test_a_backfill_lands_the_same_rows_in_postgresql_as_in_duckdb(tmp_path, settings, postgres_url):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1m"], "start_date": "2024-01-01"},
    ])
    landed = {}
    for name, url in (("duckdb", settings.warehouse_url), ("postgresql", postgres_url)):
        with dg.instance_for_test() as instance:
            asset, result = run_range(with_settings(settings, catalog_path=catalog, warehouse_url=url),
                                      BTC_SPOT_1M, "2024-01-01", "2024-02-01", instance)
            assert result.success
            assert set(statuses(instance, asset, ["2024-01-01", "2024-02-01"]).values()) == {MATERIALIZED}
            checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
            assert checks == {"ohlc_valid": True, "gap_count": True, "no_unclosed_bars": True}
        landed[name] = every_row(url)
    assert landed["postgresql"].height == (31 + 29) * 1440
    assert landed["postgresql"].equals(landed["duckdb"])  # every column of every row
