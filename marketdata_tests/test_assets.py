"""Klines assets in a real Dagster instance, writing a real DuckDB file from the emulator."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import httpx

import dagster as dg
import polars as pl
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from marketdata_assets.definitions import build_definitions
from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import ArchiveFaults, Faults
from marketdata_assets.settings import Settings
from marketdata_assets.sources.binance_klines_rest import fetch_klines
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, utc, with_settings, write_catalog
from marketdata_tests.ui import webserver

MATERIALIZED = dg.AssetPartitionStatus.MATERIALIZED
FAILED = dg.AssetPartitionStatus.FAILED
BTC_SPOT_1M = dg.AssetKey(["binance_spot", "klines_1m", "BTCUSDT"])


def spot_catalog(tmp_path: Path, symbol: str = "BTCUSDT", timeframes=("1m",), start="2024-01-01") -> Path:
    return write_catalog(
        tmp_path / "catalog.yaml",
        [{"venue": "binance", "market": "spot", "symbol": symbol, "timeframes": list(timeframes), "start_date": start}],
    )


def run_range(settings: Settings, key: dg.AssetKey, first: str, last: str, instance: dg.DagsterInstance):
    asset = build_definitions(settings).resolve_assets_def(key)
    result = dg.materialize(
        [asset],
        selection=[key],  # (its definition holds every asset of its source and partitions)
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        raise_on_error=False,
    )
    return asset, result


def error_chain(error) -> str:
    """The error and its causes, as the run page shows them."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def step_failure(result) -> str:
    """The one failed step's error chain, as the run page shows it."""
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return error_chain(failure.step_failure_data.error)


def statuses(instance, asset, keys):
    return instance.get_status_by_partition(asset.key, keys, asset.partitions_def)


def stored_klines(settings: Settings) -> pl.DataFrame:
    return open_warehouse(settings.warehouse_url).query(
        "SELECT * FROM market_data.klines ORDER BY venue, market, symbol, timeframe, open_time"
    )


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_definitions_follow_the_design_keys_groups_and_partitions(settings):
    definitions = build_definitions(settings)
    specs = {spec.key.to_user_string(): spec for spec in definitions.resolve_all_asset_specs()}
    assert sorted(specs) == sorted(
        [f"binance_{market}/klines_{tf}/{symbol}"
         for market in ("perp", "spot") for tf in ("1h", "1m") for symbol in ("BTCUSDT", "ETHUSDT")]
        + [f"binance_perp/{dataset}/{symbol}" for dataset in ("funding", "open_interest", "long_short")
           for symbol in ("BTCUSDT", "ETHUSDT")]
        + ["okx_perp/funding/BTC_USDT_SWAP", "okx_perp/funding/ETH_USDT_SWAP",
           "bybit_perp/funding/BTCUSDT", "bybit_perp/funding/ETHUSDT"]
        + [f"{prefix}/klines_{tf}/{symbol}" for tf in ("1h", "1m") for prefix, symbol in (
            ("okx_spot", "BTC_USDT"), ("okx_spot", "ETH_USDT"), ("okx_perp", "BTC_USDT_SWAP"), ("okx_perp", "ETH_USDT_SWAP"),
            ("bybit_spot", "BTCUSDT"), ("bybit_spot", "ETHUSDT"), ("bybit_perp", "BTCUSDT"), ("bybit_perp", "ETHUSDT"))]
        + ["alternative_me/fear_greed", "defillama/stablecoin_supply", "blockchain_com/market_cap/BTC", "derived/ssr/BTC"]
        + [f"fred/macro/{series}" for series in ("DGS10", "DGS2", "DFF", "CPIAUCSL", "PCEPILFE", "UNRATE", "M2SL",
                                                 "VIXCLS", "DCOILWTICO", "DCOILBRENTEU", "NASDAQQGLDI", "DTWEXBGS")]
        + [f"databento_glbx/{dataset}/{root}" for dataset in ("ohlcv_1d", "ohlcv_1h")
           for root in ("ES", "NQ", "CL", "GC", "ZN", "6E")]
        + ["databento_glbx/options_ohlcv_1d/ES", "deribit/gex/BTC", "deribit/gex/ETH"]
    )
    daily_es = specs["databento_glbx/ohlcv_1d/ES"]
    assert (daily_es.group_name, daily_es.partitions_def.get_first_partition_key()) == ("databento_glbx", "2011-01-01")
    assert daily_es.metadata["dagster/table_name"] == "market_data.futures_bars"
    macro = specs["fred/macro/CPIAUCSL"]
    assert (macro.group_name, macro.partitions_def.get_first_partition_key()) == ("fred", "2000-01-01")  # yearly
    assert macro.partitions_def.get_next_partition_key("2000-01-01") == "2001-01-01"
    btc_perp_1m = specs["binance_perp/klines_1m/BTCUSDT"]
    assert btc_perp_1m.group_name == "binance_perp"
    # Dagster's own table keys, so the UI names the table and lists its columns (README, Warehouse)
    assert btc_perp_1m.metadata["dagster/table_name"] == "market_data.klines"
    columns = btc_perp_1m.metadata["dagster/column_schema"].columns
    assert [(c.name, c.type) for c in columns] == [
        ("venue", "text"), ("market", "text"), ("symbol", "text"), ("timeframe", "text"), ("open_time", "timestamptz"),
        ("open", "double"), ("high", "double"), ("low", "double"), ("close", "double"), ("volume", "double"),
        ("quote_volume", "double"), ("trades", "bigint"), ("taker_buy_volume", "double"),
        ("taker_buy_quote_volume", "double"), ("source", "text"), ("ingested_at", "timestamptz")]
    assert [c.name for c in columns if c.description == "primary key"] == ["venue", "market", "symbol", "timeframe",
                                                                          "open_time"]
    # runs take a slot of one DuckDB writer pool; with PostgreSQL, of their venue's pool
    assert definitions.resolve_assets_def(btc_perp_1m.key).op.pool == "duckdb_writer"
    on_postgres = build_definitions(with_settings(settings, warehouse_url="postgresql://u@h/db"))
    assert on_postgres.resolve_assets_def(btc_perp_1m.key).op.pool == "binance_perp"
    # monthly partitions from the first of the listing month, for every timeframe
    for tf in ("1m", "1h"):
        partitions = specs[f"binance_perp/klines_{tf}/BTCUSDT"].partitions_def
        assert partitions.get_first_partition_key() == "2019-09-01"
        window = partitions.time_window_for_partition_key("2019-09-01")
        assert (window.start, window.end) == (utc(2019, 9, 1), utc(2019, 10, 1))
        # the month in progress is the newest partition
        this_month = dt.datetime.now(dt.UTC).date().replace(day=1).isoformat()
        assert partitions.get_last_partition_key() == this_month
    assert specs["binance_spot/klines_1m/ETHUSDT"].partitions_def.get_first_partition_key() == "2017-08-01"
    # schedules (and their jobs) say what they keep current and how often; since when where a
    # dataset's assets begin in different months (Binance spot 2017-08, OKX spot 2018-01, Bybit spot 2021-07;
    # Binance perps 2019-09 and 2019-11, OKX 2019-12, Bybit 2020-03 and 2020-10)
    assert sorted(schedule.name for schedule in definitions.schedules) == [
        "fear_greed_daily", "funding_8h_since_2019_09", "funding_8h_since_2019_11", "funding_8h_since_2019_12",
        "funding_8h_since_2020_03", "funding_8h_since_2020_10", "gex_hourly", "klines_daily_since_2017_08",
        "klines_daily_since_2018_01", "klines_daily_since_2019_09", "klines_daily_since_2019_11",
        "klines_daily_since_2019_12", "klines_daily_since_2020_03", "klines_daily_since_2020_10",
        "klines_daily_since_2021_07", "long_short_daily", "macro_daily", "market_cap_daily",
        "ohlcv_1d_daily", "ohlcv_1h_hourly", "open_interest_daily", "options_ohlcv_1d_daily",
        "ssr_daily", "stablecoin_supply_daily"]
    assert all(definitions.resolve_job_def(s.name).name == s.job_name == s.name for s in definitions.schedules)
    # each asset's description speaks of its own dataset and of no other's
    own = {"klines": "candles", "funding": "funding settlements", "open_interest": "open interest",
           "long_short": "long/short", "fear_greed": "fear & greed", "stablecoin_supply": "per peg",
           "market_cap": "market capitalization", "ssr": "supply ratio", "macro": "fred series",
           "ohlcv_1d": "globex daily bars", "ohlcv_1h": "globex hourly bars", "options_ohlcv_1d": "options on futures",
           "gex": "gamma exposure"}
    for key, spec in specs.items():
        text = (spec.description or "").lower()
        assert own[spec.metadata["dataset"]] in text, (key, spec.description)
        assert not [word for name, word in own.items() if name != spec.metadata["dataset"] and word in text], \
            (key, spec.description)
    assert "ratio" not in specs["binance_perp/open_interest/BTCUSDT"].description


def test_range_run_stores_the_archives_candles_and_records_every_partition(tmp_path, settings, emulator, instance):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path))
    asset, result = run_range(settings, BTC_SPOT_1M, "2024-01-01", "2024-02-01", instance)
    assert result.success
    rows = stored_klines(settings)
    expected = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 3, 1)).frame
    assert rows.drop("ingested_at", "source").equals(expected.drop("ingested_at", "source"))
    assert rows.height == (31 + 29) * 1440
    assert set(rows["source"]) == {"archive"}
    assert statuses(instance, asset, ["2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01"]) == {
        "2023-12-01": None, "2024-01-01": MATERIALIZED, "2024-02-01": MATERIALIZED, "2024-03-01": None,
    }
    # each partition carries its own figures, not the run's
    january, february = ({k: v.value for k, v in m.metadata.items()}
                         for m in result.asset_materializations_for_node(asset.node_def.name))
    for month, bars, last in ((january, 31 * 1440, "2024-01-31T23:59"), (february, 29 * 1440, "2024-02-29T23:59")):
        assert month["rows_written"] == month["dagster/partition_row_count"] == bars
        assert month["dagster/row_count"] == 60 * 1440  # the series' rows stored
        assert month["last_open_time"] == last + ":00+00:00"
        assert month["archive_files"] == 1 and month["rows_from_archive"] == bars
        assert month["rows_from_rest"] == 0 and month["requests"] == 0 and month["rows_rejected"] == 0
    assert january["first_open_time"] == "2024-01-01T00:00:00+00:00"
    assert february["first_open_time"] == "2024-02-01T00:00:00+00:00"
    assert january["window"] == "[2024-01-01T00:00:00+00:00, 2024-02-01T00:00:00+00:00)"
    # and each check is evaluated on each partition
    evaluations = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {(name, month) for name in ("ohlc_valid", "gap_count", "no_unclosed_bars", "bars_unrevised")
                                for month in ("2024-01-01", "2024-02-01")}
    assert all(e.passed for e in evaluations.values())
    assert evaluations["gap_count", "2024-02-01"].metadata["expected_bars"].value == 29 * 1440
    assert evaluations["ohlc_valid", "2024-01-01"].metadata["rows_checked"].value == 31 * 1440


def test_rest_source_from_the_catalog_fetches_the_same_bars_over_rest(tmp_path, settings, emulator, instance):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1m"],
         "start_date": "2024-01-01", "source": "rest"}
    ])
    settings = with_settings(settings, catalog_path=catalog)
    asset, result = run_range(settings, BTC_SPOT_1M, "2024-02-01", "2024-02-01", instance)
    assert result.success
    rows = stored_klines(settings)
    assert rows.height == 29 * 1440 and set(rows["source"]) == {"rest"}
    (materialization, *_) = result.asset_materializations_for_node(asset.node_def.name)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["requests"] == 42 and metadata["weight_used"] == 84  # 41,760 bars / 1,000 a page
    assert metadata["http_429"] == 0 and metadata["rows_from_rest"] == 29 * 1440


def test_the_same_range_twice_gives_identical_rows(tmp_path, settings, instance):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path))
    run_range(settings, BTC_SPOT_1M, "2024-02-01", "2024-02-01", instance)
    first = stored_klines(settings)
    _, result = run_range(settings, BTC_SPOT_1M, "2024-02-01", "2024-02-01", instance)
    assert result.success
    again = stored_klines(settings)
    assert again.height == first.height == 29 * 1440
    assert again.drop("ingested_at").equals(first.drop("ingested_at"))
    assert (again["ingested_at"] > first["ingested_at"]).all()


def test_a_corrupt_archive_file_fails_its_partition_naming_the_file_and_the_others_land(tmp_path, settings, instance):
    faults = ArchiveFaults(corrupt=("BTCUSDT-1m-2024-02.zip",))
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as corrupting:
        settings = with_settings(settings, catalog_path=spot_catalog(tmp_path), binance_archive_url=corrupting.url)
        asset, result = run_range(settings, BTC_SPOT_1M, "2024-01-01", "2024-03-01", instance)
        assert corrupting.archive.answers["corrupt"] == 2  # downloaded once more before giving up
    assert not result.success
    message = step_failure(result)
    assert "so 2024-02-01 is not materialized (1 of 3 partitions); the others are:" in message
    assert "[2024-02-01 00:00, 2024-03-01 00:00) UTC: binance archive: " in message
    assert "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip: sha256" in message
    assert "does not match its .CHECKSUM" in message
    # nothing of February is stored; January and March are, and only they are materialized
    months = stored_klines(settings).group_by(pl.col("open_time").dt.month()).len().sort("open_time")
    assert months.rows() == [(1, 31 * 1440), (3, 31 * 1440)]
    assert statuses(instance, asset, ["2024-01-01", "2024-02-01", "2024-03-01"]) == {
        "2024-01-01": MATERIALIZED, "2024-02-01": FAILED, "2024-03-01": MATERIALIZED,
    }
    # the months that landed keep their own figures, archive files included
    landed = {m.partition: {k: v.value for k, v in m.metadata.items()}
              for m in result.asset_materializations_for_node(asset.node_def.name)}
    assert sorted(landed) == ["2024-01-01", "2024-03-01"]
    assert all((month["rows_written"], month["archive_files"]) == (31 * 1440, 1) for month in landed.values())


def test_the_assets_of_one_source_share_a_definition_and_one_failing_does_not_stop_the_other(
    tmp_path, settings, instance,
):
    """One Dagster op per dataset, source and partitions (the code location loads in a third of
    the time with thousands of assets); a run of two of its assets stores the one whose window
    reads and fails naming the other's."""
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "spot", "symbol": symbol, "timeframes": ["1m"], "start_date": "2024-01-01"}
        for symbol in ("BTCUSDT", "ETHUSDT")
    ])
    eth = dg.AssetKey(["binance_spot", "klines_1m", "ETHUSDT"])
    faults = ArchiveFaults(corrupt=("ETHUSDT-1m-2024-01.zip",))
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as corrupting:
        settings = with_settings(settings, catalog_path=catalog, binance_archive_url=corrupting.url,
                                 binance_spot_url=corrupting.url)
        definitions = build_definitions(settings)
        both = definitions.resolve_assets_def(BTC_SPOT_1M)
        assert both is definitions.resolve_assets_def(eth) and both.keys == {BTC_SPOT_1M, eth}
        result = dg.materialize([both], instance=instance, raise_on_error=False, partition_key="2024-01-01")
    assert not result.success
    assert "ETHUSDT-1m-2024-01.zip: sha256" in step_failure(result)
    statuses_of = {key: instance.get_status_by_partition(key, ["2024-01-01"], both.partitions_def)["2024-01-01"]
                   for key in (BTC_SPOT_1M, eth)}
    assert statuses_of == {BTC_SPOT_1M: MATERIALIZED, eth: FAILED}
    assert set(stored_klines(settings)["symbol"]) == {"BTCUSDT"}
    assert stored_klines(settings).height == 31 * 1440


def test_monthly_partitions_cover_the_listing_month_for_hourly_bars(tmp_path, settings, instance):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1h"], "start_date": "2019-09-08"}
    ])
    settings = with_settings(settings, catalog_path=catalog)
    key = dg.AssetKey(["binance_perp", "klines_1h", "BTCUSDT"])
    asset, result = run_range(settings, key, "2019-09-01", "2019-10-01", instance)
    assert result.success
    rows = stored_klines(settings)
    assert rows["open_time"].min() == utc(2019, 9, 8, 17)  # the listing hour
    assert rows["open_time"].max() == utc(2019, 10, 31, 23)
    assert rows.height == (dt.datetime(2019, 11, 1) - dt.datetime(2019, 9, 8, 17)).total_seconds() // 3600
    assert statuses(instance, asset, ["2019-09-01", "2019-10-01"]) == {"2019-09-01": MATERIALIZED, "2019-10-01": MATERIALIZED}


def test_unknown_symbol_fails_the_run_writes_nothing_and_marks_partitions_failed(tmp_path, settings, instance):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path, symbol="NOPEUSDT"))
    key = dg.AssetKey(["binance_spot", "klines_1m", "NOPEUSDT"])
    asset, result = run_range(settings, key, "2024-01-01", "2024-02-01", instance)
    assert not result.success
    message = step_failure(result)
    assert "binance spot: GET /api/v3/klines?symbol=NOPEUSDT" in message
    assert "code -1121: Invalid symbol." in message
    assert stored_klines(settings).is_empty()
    assert set(statuses(instance, asset, ["2024-01-01", "2024-02-01"]).values()) == {FAILED}


def test_a_broken_upstream_marks_nothing_materialized(tmp_path, settings, instance, monkeypatch):
    from marketdata_assets.sources.http import PacedHttp

    monkeypatch.setattr(PacedHttp, "_backoff_delay", lambda self, attempt: 0.01)
    with EmulatorServer(EmulatorConfig(faults=Faults(truncate_rate=1.0))) as broken:
        settings = with_settings(settings, catalog_path=spot_catalog(tmp_path), binance_spot_url=broken.url,
                                 klines_source="rest")
        asset, result = run_range(settings, BTC_SPOT_1M, "2024-01-01", "2024-01-01", instance)
    assert not result.success
    assert stored_klines(settings).is_empty()
    assert MATERIALIZED not in statuses(instance, asset, ["2024-01-01"]).values()


def dagster_materialize(env: dict[str, str], select: str, partition_range: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "marketdata_assets.definitions",
         "--select", select, "--partition-range", partition_range],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_dagster_cli_partition_range_stores_each_closed_candle_once(settings, dagster_home, emulator):
    env = cli_env(settings, dagster_home)
    process = dagster_materialize(env, "binance_spot/klines_1m/BTCUSDT", "2024-03-01...2024-05-01")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "RUN_SUCCESS" in output
    rows = stored_klines(settings)
    expected = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", utc(2024, 3, 1), utc(2024, 6, 1)).frame
    assert rows.drop("ingested_at", "source").equals(expected.drop("ingested_at", "source"))
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        assert instance.get_materialized_partitions(BTC_SPOT_1M) == {"2024-03-01", "2024-04-01", "2024-05-01"}
    finally:
        instance.dispose()
    # The UI's asset page reads partition status through the webserver's GraphQL API.
    with webserver(env) as url:
        ranges = partition_ranges_in_ui(url, BTC_SPOT_1M)
    assert ranges == [{"startKey": "2024-03-01", "endKey": "2024-05-01", "status": "MATERIALIZED"}]


def partition_ranges_in_ui(url: str, key: dg.AssetKey) -> list[dict]:
    query = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
        ... on AssetNode { assetPartitionStatuses { ... on TimePartitionStatuses {
            ranges { startKey endKey status } } } } } }"""
    response = httpx.post(url + "/graphql", json={"query": query, "variables": {"key": {"path": key.path}}}, timeout=30)
    return response.json()["data"]["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]


def test_two_cli_runs_over_overlapping_windows_at_once_end_with_each_row_once(settings, dagster_home):
    env = cli_env(settings, dagster_home)
    runs = [
        dagster_materialize(env, "binance_spot/klines_1m/BTCUSDT", "2024-01-01...2024-03-01"),
        dagster_materialize(env, "binance_spot/klines_1m/BTCUSDT", "2024-02-01...2024-04-01"),
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
        assert "lock" not in output.lower() or "RUN_SUCCESS" in output
    rows = stored_klines(settings)
    assert rows.height == (31 + 29 + 31 + 30) * 1440
    assert rows["open_time"].is_unique().all()
    assert rows["open_time"].min() == utc(2024, 1, 1) and rows["open_time"].max() == utc(2024, 4, 30, 23, 59)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        assert len(instance.get_materialized_partitions(BTC_SPOT_1M)) == 4
    finally:
        instance.dispose()
