"""Where the data goes next (issue 22): bars resampled from 1m against the venue's own, and the
read API: fetch, coverage and fill_missing through Dagster, as a QMTL HistoryProvider.

February 2020 of Binance BTCUSDT spot: a leap month with two documented maintenance windows (a
whole hour on the 9th, and 11:35:33 to 17:30 on the 19th), so bars beside an outage are built
from the minutes that traded, as the venue builds its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json

import dagster as dg
import polars as pl
import pytest

from marketdata_assets.settings import Settings
from marketdata_tests.conftest import utc, write_catalog

BTC_1M = "binance_spot/klines_1m/BTCUSDT"
HOLE = utc(2020, 2, 15, 10, 17)  # a minute deleted from the warehouse


def _keys(*names: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["binance_spot", name, "BTCUSDT"]) for name in names]


def _run(settings, keys, instance, first="2020-02-01", last="2020-02-01"):
    from marketdata_tests.test_venue_klines import run_together

    result = run_together(settings, keys, first, last, instance)
    assert result.success
    return result


def _by_hand(minutes: pl.DataFrame, hours: int) -> pl.DataFrame:
    """Bars of `hours` from 1m rows, written out here apart from the code under test."""
    return (minutes.sort("open_time")
            .group_by(pl.col("open_time").dt.truncate(f"{hours}h").alias("open_time"), maintain_order=True)
            .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
                 pl.col("volume").sum(), pl.len().alias("n")))


def test_resampled_bars_equal_the_venues_own_and_history_fills_a_hole_through_dagster(emulator, tmp_path,
                                                                                         dagster_home):
    from marketdata_assets.datasets import dataset
    from marketdata_assets.defs.location import build_definitions
    from marketdata_assets.defs.operations.schedules import inputs_changed
    from marketdata_assets.history import History, HistoryError, QmtlHistoryProvider
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.conftest import cli_env
    from marketdata_tests.test_cli import marketdata_here

    catalog = write_catalog(tmp_path / "c.yaml", [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT",
                                                   "timeframes": ["1m", "1h"], "derived": ["1h", "4h"]}],
                            start_date="2020-02-01")
    settings = Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog,
                        binance_spot_url=emulator.url, binance_futures_url=emulator.url,
                        binance_archive_url=emulator.url)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    warehouse = open_warehouse(settings.warehouse_url)
    try:
        _run(settings, _keys("klines_1m", "klines_1h"), instance)
        warehouse.query("DELETE FROM market_data.klines WHERE timeframe = '1m' AND open_time = ?", [HOLE])
        derived = _run(settings, _keys("resampled_1h", "resampled_4h"), instance)

        # the 1h bars equal Binance's own 1h bars: every hour but the one lacking a minute and the
        # one the exchange was shut for; the one half shut is built from the minutes that traded
        minutes = warehouse.query("SELECT * FROM market_data.klines WHERE timeframe = '1m' ORDER BY open_time")
        native = warehouse.query("SELECT * FROM market_data.klines WHERE timeframe = '1h' ORDER BY open_time")
        resampled = warehouse.query("SELECT * FROM market_data.resampled_klines ORDER BY timeframe, open_time")
        hours = resampled.filter(pl.col("timeframe") == "1h")
        shut_hours = 1 + 5  # the 9th's 02:00, the 19th's 12:00 to 16:00 (its 11:00 and 17:00 traded in part)
        assert native.height == 29 * 24 - shut_hours and hours.height == native.height - 1
        assert utc(2020, 2, 9, 2) not in native["open_time"] and utc(2020, 2, 15, 10) not in hours["open_time"]
        pairs = hours.join(native, on="open_time", suffix="_native")
        assert pairs.height == hours.height
        for column in ("open", "high", "low", "close"):
            assert (pairs[column] == pairs[f"{column}_native"]).all(), column
        assert ((pairs["volume"] - pairs["volume_native"]).abs() <= 1e-9 * pairs["volume_native"]).all()
        assert hours.filter(pl.col("open_time") == utc(2020, 2, 19, 11))["minutes"].item() == 36  # 11:00..11:35
        # the 4h bars, against the same minutes summed by hand (the 4h holding the hole has none)
        four = resampled.filter(pl.col("timeframe") == "4h")
        expected = _by_hand(minutes, 4).filter(pl.col("open_time") != utc(2020, 2, 15, 8))
        assert four["open_time"].to_list() == expected["open_time"].to_list()
        assert four.select("open", "high", "low", "close").equals(expected.select("open", "high", "low", "close"))
        assert four["minutes"].to_list() == expected["n"].to_list()

        # the checks say so, naming the window lacking a minute
        evaluations = {(e.asset_key.path[1], e.check_name): e for e in derived.get_asset_check_evaluations()}
        complete = evaluations[("resampled_1h", "resampled_complete")]
        assert complete.passed and complete.metadata["windows_lacking_a_minute"].value == 1
        assert "1 window lacking a minute (no bar): 2020-02-15 10:00" in complete.description
        matches = evaluations[("resampled_1h", "resampled_matches_native")]
        assert matches.passed and matches.metadata["bars_compared"].value == hours.height
        assert evaluations[("resampled_4h", "resampled_matches_native")].description.startswith("no native 4h bar")

        # a native bar gone wrong is named by the cross-check
        warehouse.query("UPDATE market_data.klines SET high = high + 5 WHERE timeframe = '1h' AND open_time = ?",
                        [utc(2020, 2, 20, 5)])
        again = _run(settings, _keys("resampled_1h"), instance)
        (wrong,) = [e for e in again.get_asset_check_evaluations() if e.check_name == "resampled_matches_native"]
        assert not wrong.passed and wrong.severity == dg.AssetCheckSeverity.ERROR
        assert wrong.description == (f"1 bar of {hours.height} bars differ from binance spot BTCUSDT 1h as the venue "
                                     "sent them: 2020-02-20 05:00 (high)")

        # the read API: coverage shows the hole; a QMTL provider fills it through a Dagster run
        history = History(settings=settings, dagster_home=dagster_home)
        provider = QmtlHistoryProvider(history, node_ids={"btc-1m": BTC_1M})
        first, last = int(utc(2020, 2, 1).timestamp()), int(utc(2020, 2, 29, 23, 59).timestamp())
        hole = int(HOLE.timestamp())
        before = asyncio.run(provider.coverage(node_id="btc-1m", interval=60))
        # the outages are known gaps, not holes: only the deleted minute splits the span
        assert before == [(first, hole - 60), (hole + 60, last)]
        runs_before = {r.run_id for r in instance.get_runs()}
        asyncio.run(provider.fill_missing(first, last, node_id="btc-1m", interval=60))
        filling = [r for r in instance.get_runs() if r.run_id not in runs_before]
        assert [(r.status, r.tags.get("marketdata/trigger")) for r in filling] == [
            (dg.DagsterRunStatus.SUCCESS, "History.fill_missing")]
        assert set(instance.get_run_by_id(filling[0].run_id).tags.values()) >= {"2020-02-01"}
        assert asyncio.run(provider.coverage(node_id="btc-1m", interval=60)) == [(first, last)]
        frame = asyncio.run(provider.fetch(first, last + 60, node_id="btc-1m", interval=60))
        assert list(frame.columns[:2]) == ["ts", "venue"] and frame["ts"].is_monotonic_increasing
        outage_minutes = 60 + (17 * 60 + 30 - (11 * 60 + 36))
        assert len(frame) == 29 * 1440 - outage_minutes and hole in set(frame["ts"])
        assert frame["ts"].diff().dropna().isin([60]).sum() == len(frame) - 3  # two outages, nothing else
        # the resampled month is due again (the daily schedule's rule: its input landed after it), and
        # the hour the minute was missing from is now computable, so a fill builds it
        hourly = dg.AssetKey(["binance_spot", "resampled_1h", "BTCUSDT"])
        partitions = build_definitions(settings).resolve_assets_def(hourly).partitions_def

        def due() -> list[str]:
            return inputs_changed(instance, hourly, dataset("resampled").input_keys(hourly), partitions,
                                  dt.datetime.now(dt.UTC))

        assert due() == ["2020-02-01"]
        assert history.missing("binance_spot/resampled_1h/BTCUSDT", "2020-02-01", "2020-03-01") == [
            (utc(2020, 2, 15, 10), utc(2020, 2, 15, 11))]
        history.fill_missing("binance_spot/resampled_1h/BTCUSDT", "2020-02-01", "2020-03-01")
        assert due() == []
        assert history.fetch("binance_spot/resampled_1h/BTCUSDT", "2020-02-15 10:00", "2020-02-15 11:00").height == 1
        assert history.fill_missing(BTC_1M, "2020-02-01", "2020-03-01").run_ids == []  # nothing left to fill

        # what a user gets wrong is one line
        for call, said in (
            (lambda: history.fetch("binance_spot/klines_1m/DOGEUSDT"), "unknown series 'binance_spot/klines_1m/DOGEUSDT'"),
            (lambda: history.fetch(BTC_1M, "2020-02-30"), "start '2020-02-30' is not a date"),
            (lambda: history.fetch(BTC_1M, as_of="2020-03-01"), "as_of: klines keeps no vintages"),
            (lambda: asyncio.run(provider.coverage("btc-1m", 3600)), "has a row every 60 s, not every 3600 s"),
        ):
            with pytest.raises(HistoryError, match=said.replace("(", r"\(")):
                call()

        # the report and summary list the resampled assets with the others
        env = {**cli_env(settings, dagster_home, catalog)}
        report = json.loads(marketdata_here("report", "--dataset", "resampled", "--format", "json", cwd=tmp_path,
                                            env=env).stdout)
        assert {r["asset"]: r["checks"]["resampled_complete"] for r in report} == {
            "binance_spot/resampled_1h/BTCUSDT": "passed", "binance_spot/resampled_4h/BTCUSDT": "passed"}
    finally:
        instance.dispose()


def test_the_qmtl_adapter_has_the_protocols_signatures():
    """QMTL's HistoryProvider (qmtl/sdk/data_io.py) as written: async, keyword node_id and interval."""
    from marketdata_assets.history import QmtlHistoryProvider

    for name, wanted in (("fetch", ["self", "start", "end", "node_id", "interval"]),
                         ("coverage", ["self", "node_id", "interval"]),
                         ("fill_missing", ["self", "start", "end", "node_id", "interval"])):
        method = getattr(QmtlHistoryProvider, name)
        assert inspect.iscoroutinefunction(method)
        assert list(inspect.signature(method).parameters) == wanted


def test_catalog_derived_timeframes_need_1m_bars_and_a_coarser_timeframe(tmp_path):
    from marketdata_assets.catalog import CatalogError, load_catalog

    for entry, said in (
        ({"timeframes": ["1h"], "derived": ["4h"]}, "derived: bars are resampled from the stored 1m bars: add 1m"),
        ({"timeframes": ["1m"], "derived": ["1m"]}, "derived: '1m' is not a timeframe coarser than 1m"),
        ({"timeframes": ["1m"], "derived": ["3d"]}, "derived: '3d' is not a timeframe coarser than 1m"),
        ({"timeframes": ["1m"], "datasets": ["resampled"]}, "derived: is required to keep resampled"),
    ):
        path = write_catalog(tmp_path / "c.yaml", [{"venue": "binance", "market": "spot", "symbol": "BTCUSDT", **entry}])
        with pytest.raises(CatalogError, match=said):
            load_catalog(path)
