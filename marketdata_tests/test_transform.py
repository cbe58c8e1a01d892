"""The transformer hook (issue 22): a catalog entry names `module:function`, a polars frame in and
out, and gets a table and an asset of its own downstream of its input; a function that raises or
answers with the wrong schema fails its asset naming the function and the column, storing nothing."""

from __future__ import annotations

import math
import textwrap

import dagster as dg
import pytest
import yaml

from marketdata_assets.settings import Settings
from marketdata_tests.conftest import utc

FEATURES = '''
import polars as pl


def log_returns(bars):
    return bars.select("open_time", (pl.col("close") / pl.col("close").shift(1)).log().alias("log_return"), "close")


def broken(bars):
    raise ValueError("no bars like these")


def wrong_type(bars):
    return bars.select("open_time", pl.col("close").cast(pl.String).alias("log_return"))


def no_time(bars):
    return bars.select(pl.col("close").alias("log_return"))
'''
COLUMNS = {"open_time": "datetime", "log_return": "float"}
INPUT = "binance_spot/klines_1h/BTCUSDT"


def _catalog(path, transforms: dict[str, dict]) -> str:
    path.write_text(yaml.safe_dump({
        "start_date": "2020-02-01",
        "instruments": [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1h"]}],
        "series": [{"source": "user", "dataset": "transform", "keys": [name], "input": INPUT, "columns": COLUMNS,
                    **entry} for name, entry in transforms.items()],
    }, sort_keys=False))
    return str(path)


@pytest.fixture
def features(tmp_path, monkeypatch):
    (tmp_path / "my_features.py").write_text(textwrap.dedent(FEATURES))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_users_function_makes_a_table_downstream_of_its_input_and_bad_answers_store_nothing(
        features, emulator, tmp_path, dagster_home):
    from marketdata_assets.defs.location import build_definitions
    from marketdata_assets.history import History
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.test_assets import step_failure
    from marketdata_tests.test_venue_klines import run_together

    catalog = _catalog(tmp_path / "c.yaml", {
        "btc_1h_returns": {"function": "my_features:log_returns"},
        "raises": {"function": "my_features:broken"},
        "wrong_type": {"function": "my_features:wrong_type"},
        "no_time": {"function": "my_features:no_time"},
    })
    settings = Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog,
                        binance_spot_url=emulator.url, binance_futures_url=emulator.url,
                        binance_archive_url=emulator.url)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    warehouse = open_warehouse(settings.warehouse_url)
    try:
        assert run_together(settings, [dg.AssetKey(INPUT.split("/"))], "2020-02-01", "2020-02-01", instance).success
        key = dg.AssetKey(["user", "transform", "btc_1h_returns"])
        spec = next(s for s in build_definitions(settings).resolve_all_asset_specs() if s.key == key)
        assert [dep.asset_key for dep in spec.deps] == [dg.AssetKey(INPUT.split("/"))]  # lineage in the UI
        assert spec.metadata["dagster/table_name"] == "market_data.transform_btc_1h_returns"
        result = run_together(settings, [key], "2020-02-01", "2020-02-01", instance)
        assert result.success

        # the declared columns of the function's answer, against the input's closes
        closes = warehouse.query("SELECT open_time, close FROM market_data.klines WHERE timeframe = '1h' "
                                 "ORDER BY open_time")
        stored = warehouse.query("SELECT * FROM market_data.transform_btc_1h_returns ORDER BY open_time")
        assert stored.columns == ["open_time", "log_return", "source", "ingested_at"]  # `close` left out
        assert stored["open_time"].to_list() == closes["open_time"].to_list()
        assert stored["log_return"][0] is None  # the month's first hour has no hour before it in the window
        by_hand = [math.log(b / a) for a, b in zip(closes["close"], closes["close"][1:], strict=False)]
        assert stored["log_return"][1:].to_list() == pytest.approx(by_hand, rel=1e-12)
        (check,) = result.get_asset_check_evaluations()
        assert (check.check_name, check.passed, check.severity) == ("transform_columns", False, dg.AssetCheckSeverity.WARN)
        assert check.description == f"{closes.height} rows; log_return: 1 NULL or NaN"
        # the read API reads it as any series
        read = History(settings=settings).fetch("user/transform/btc_1h_returns", "2020-02-10", "2020-02-11")
        assert read.height == 24 and read["ts"][0] == int(utc(2020, 2, 10).timestamp())

        # a function that raises, or answers with the wrong schema: the asset fails naming it, nothing stored
        for name, said in (
            ("raises", "transform my_features:broken raised ValueError: no bars like these"),
            ("wrong_type", "transform my_features:wrong_type: column 'log_return' is String, declared Float64"),
            ("no_time", "transform my_features:no_time returned no column 'open_time' (declared Datetime"),
        ):
            failed = run_together(settings, [dg.AssetKey(["user", "transform", name])], "2020-02-01", "2020-02-01",
                                  instance)
            assert not failed.success and said in step_failure(failed), name
            assert warehouse.query(f"SELECT count(*) AS n FROM market_data.transform_{name}")["n"].item() == 0
            assert instance.get_materialized_partitions(dg.AssetKey(["user", "transform", name])) == set()
    finally:
        instance.dispose()


def test_a_bad_transform_entry_is_refused_at_load_naming_the_field(features, tmp_path):
    from marketdata_assets.catalog import CatalogError, load_catalog

    for entry, said in (
        ({"function": "nowhere:f"}, "function: cannot import module 'nowhere'"),
        ({"function": "my_features:absent"}, "function: module 'my_features' has no 'absent'"),
        ({"function": "log_returns"}, "function: 'log_returns' is not module:function"),
        ({"function": "my_features:log_returns", "input": "binance_spot/klines_1h/DOGEUSDT"},
         "transform reads binance_spot/klines_1h/DOGEUSDT, which the catalog does not keep"),
        ({"function": "my_features:log_returns", "columns": {"open_time": "datetime", "x": "decimal"}},
         "columns: x: type 'decimal' is not one of float, int, text, bool, date, datetime"),
        ({"function": "my_features:log_returns", "columns": {"open_time": "datetime", "source": "text"}},
         "columns: 'source' is not a column name"),
        ({"function": "my_features:log_returns", "columns": {"a": "datetime", "b": "datetime"}},
         "time_column: name the column of the row's time"),
        ({"function": "my_features:log_returns", "primary_key": ["nope"]}, "primary_key: 'nope' is not a declared column"),
        ({"function": "my_features:log_returns", "every": "1h"}, "every: not an option of transform"),
    ):
        with pytest.raises(CatalogError, match=said.replace("(", r"\(")):
            load_catalog(_catalog(tmp_path / "bad.yaml", {"t": entry}))
