"""The PostgreSQL warehouse through Dagster: the same backfill lands the same rows as DuckDB's, and
four backfills writing at once store every row once."""

from __future__ import annotations

import dagster as dg
import polars as pl

from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, utc, with_settings, write_catalog
from marketdata_tests.test_assets import BTC_SPOT_1M, MATERIALIZED, dagster_materialize, run_range, statuses


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
            assert checks == {"ohlc_valid": True, "gap_count": True, "no_unclosed_bars": True, "bars_unrevised": True}
        landed[name] = every_row(url)
    assert landed["postgresql"].height == (31 + 29) * 1440
    assert landed["postgresql"].equals(landed["duckdb"])  # every column of every row


def test_four_backfills_at_once_into_postgresql_store_every_row_once(tmp_path, settings, dagster_home, postgres_url):
    symbols = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "spot", "symbol": symbol, "timeframes": ["1m"], "start_date": "2023-01-01"}
        for symbol in symbols
    ])
    env = cli_env(with_settings(settings, warehouse_url=postgres_url), dagster_home, catalog)
    runs = [dagster_materialize(env, f"binance_spot/klines_1m/{symbol}", "2023-01-01...2023-03-01") for symbol in symbols]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0 and "RUN_SUCCESS" in output, output[-3000:]
    counts = open_warehouse(postgres_url).query(
        "SELECT symbol, count(*) AS n, count(DISTINCT open_time) AS distinct_times, min(open_time) AS first, "
        "max(open_time) AS last FROM market_data.klines GROUP BY symbol ORDER BY symbol"
    )
    quarter = (31 + 28 + 31) * 1440
    assert counts.rows() == [
        (symbol, quarter, quarter, utc(2023, 1, 1), utc(2023, 3, 31, 23, 59)) for symbol in sorted(symbols)
    ]
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        for symbol in symbols:
            key = dg.AssetKey(["binance_spot", "klines_1m", symbol])
            assert instance.get_materialized_partitions(key) == {"2023-01-01", "2023-02-01", "2023-03-01"}
    finally:
        instance.dispose()
