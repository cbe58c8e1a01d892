"""Binance USD-M open interest and long/short ratios: REST's 30 days, the archive's daily metrics
files before them, the seam between the two, and the assets in a real Dagster instance."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import dagster as dg
import httpx
import polars as pl
import pytest

from marketdata_assets.emulator.config import ArchiveFaults, EmulatorConfig
from marketdata_assets.emulator.server import EmulatorServer
from marketdata_assets.sources.binance_futures_statistics import LONG_SHORT_RATIOS, OPEN_INTEREST
from marketdata_assets.sources.binance_archive import BinanceArchiveClient, MetricsFile, read_zipped_csv
from marketdata_assets.sources.binance_futures_statistics import (
    BinanceStatisticsSource,
    BinanceStatisticsClient,
    parse_metrics_archive,
    parse_open_interest_rows,
    parse_ratio_rows,
    rest_from,
)
from marketdata_assets.sources.errors import MalformedResponse, UpstreamRejected
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.test_cli import marketdata, marketdata_here
from marketdata_tests.conftest import cli_env, utc, with_settings, write_catalog
from marketdata_tests.test_assets import FAILED, MATERIALIZED, dagster_materialize, run_range, statuses, step_failure

BTC_OI = dg.AssetKey(["binance_perp", "open_interest", "BTCUSDT"])
BTC_LONG_SHORT = dg.AssetKey(["binance_perp", "long_short", "BTCUSDT"])
BTC_FUNDING = dg.AssetKey(["binance_perp", "funding", "BTCUSDT"])
FIVE_MINUTES = dt.timedelta(minutes=5)


def perp_catalog(tmp_path, start_date="2024-01-01"):
    return write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1h"],
         "datasets": ["funding", "open_interest", "long_short"]}], start_date=start_date)


def test_rest_rows_parse_with_number_or_string_timestamps_and_taker_rows_without_a_symbol():
    oi = parse_open_interest_rows([
        {"symbol": "BTCUSDT", "sumOpenInterest": "75520.4", "sumOpenInterestValue": "3242467618.796", "timestamp": 1642182300000},
        {"symbol": "BTCUSDT", "sumOpenInterest": "75530.1", "sumOpenInterestValue": "3242900000.5", "timestamp": "1642182600000"},
    ], "BTCUSDT")
    assert oi["snapshot_time"].to_list() == [utc(2022, 1, 14, 17, 45), utc(2022, 1, 14, 17, 50)]
    assert oi["open_interest"].to_list() == [75520.4, 75530.1] and set(oi["source"]) == {"rest"}
    taker = parse_ratio_rows([{"buySellRatio": "1.1966", "buyVol": "396.7", "sellVol": "331.5", "timestamp": 1642182300000}],
                             "BTCUSDT", "taker_volume")
    assert taker.select("metric", "ratio", "long_value", "short_value").row(0) == ("taker_volume", 1.1966, 396.7, 331.5)
    with pytest.raises(MalformedResponse, match=r"row 0 is not a global_account row"):
        parse_ratio_rows([{"symbol": "BTCUSDT", "longShortRatio": "x", "longAccount": "0.6", "shortAccount": "0.4",
                           "timestamp": 1}], "BTCUSDT", "global_account")
    with pytest.raises(MalformedResponse, match="strictly ascending"):
        parse_open_interest_rows([
            {"symbol": "BTCUSDT", "sumOpenInterest": "1", "sumOpenInterestValue": "1", "timestamp": t} for t in (2, 1)], "BTCUSDT")


def test_an_archive_metrics_file_gives_open_interest_and_four_ratios_per_row_and_a_lie_is_named(emulator):
    file = MetricsFile("BTCUSDT", dt.date(2024, 1, 10))
    csv = read_zipped_csv(httpx.get(emulator.url + file.path).content, file)
    open_interest, ratios = parse_metrics_archive(csv, file)
    assert open_interest.height == 288 and ratios.height == 4 * 288
    assert open_interest["snapshot_time"].to_list()[:2] == [utc(2024, 1, 10), utc(2024, 1, 10, 0, 5)]
    assert ratios["long_value"].null_count() == ratios.height  # the archive has the ratios alone
    assert sorted(set(ratios["metric"])) == ["global_account", "taker_volume", "top_trader_account", "top_trader_position"]
    lines = csv.decode().splitlines()
    shifted = "\n".join([lines[0], lines[1].replace("2024-01-10 00:00:00", "2024-01-11 00:00:00"), *lines[2:]]).encode()
    with pytest.raises(MalformedResponse, match=r"BTCUSDT-metrics-2024-01-10.zip: row 0 \(2024-01-11 00:00:00, BTCUSDT\) is not"):
        parse_metrics_archive(shifted, file)
    with pytest.raises(MalformedResponse, match="expected the header"):
        parse_metrics_archive(b"time,oi\n" + csv, file)


def test_the_emulator_keeps_30_days_pages_ascending_and_refuses_as_binance_does():
    limited = EmulatorConfig(stats_request_limit=5, stats_timestamp_as_string=True)
    with EmulatorServer(limited) as emu:
        def get(endpoint="openInterestHist", **params):
            return httpx.get(emu.url + "/futures/data/" + endpoint, params={"symbol": "BTCUSDT", "period": "5m", **params})

        now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        start = (now_ms - 29 * 86_400_000) // 300_000 * 300_000
        rows = get(startTime=start, limit=3).json()
        assert [int(r["timestamp"]) for r in rows] == [start, start + 300_000, start + 600_000]
        assert isinstance(rows[0]["timestamp"], str)  # as the docs print it
        assert len(get().json()) == 30  # the default limit: the newest 30
        old = get(startTime=now_ms - 31 * 86_400_000)
        assert old.status_code == 400 and old.json() == {"code": -1130, "msg": "parameter 'startTime' is invalid."}
        assert get(limit=501).json()["code"] == -1130
        assert get(symbol="NOPEUSDT").json() == {"code": -1121, "msg": "Invalid symbol."}
        throttled = get("takerlongshortRatio")
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        assert throttled.json()["code"] == -1003


def test_rest_and_the_archive_agree_on_the_days_both_hold(emulator):
    """A day inside REST's 30 days whose file is published: same snapshots, same values."""
    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=5)

    async def both():
        async with BinanceStatisticsClient(emulator.url) as rest, BinanceArchiveClient(emulator.url) as archive:
            over_rest = pl.concat([
                await rest.fetch(metric, "BTCUSDT", day, day + dt.timedelta(days=1))
                for metric in ("global_account", "top_trader_account", "top_trader_position", "taker_volume")
            ])
            oi = await rest.fetch("open_interest", "BTCUSDT", day, day + dt.timedelta(days=1))
            file = MetricsFile("BTCUSDT", day.date())
            return over_rest, oi, parse_metrics_archive(read_zipped_csv(await archive.verified(file), file), file), rest.stats

    over_rest, oi, (archived_oi, archived_ratios), stats = asyncio.run(both())
    assert stats.requests == 5 * 1  # a day is 288 rows: one request of up to 500 per statistic
    keys = ["metric", "snapshot_time", "ratio"]
    assert over_rest.height == 4 * 288 and over_rest.select(keys).sort(keys).equals(archived_ratios.select(keys).sort(keys))
    columns = ["snapshot_time", "open_interest", "open_interest_value"]
    assert oi.select(columns).equals(archived_oi.select(columns))


def test_statistics_straddling_rest_retention_come_from_both_with_no_gap_and_a_rerun_changes_nothing(
    tmp_path, settings, dagster_home,
):
    """The issue's Done-when, with the real CLI: funding, open interest and long/short for BTCUSDT
    over three months that straddle REST's 30 days."""
    now = dt.datetime.now(dt.UTC)
    seam = rest_from(now)
    first_month = (seam - dt.timedelta(days=35)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    catalog = perp_catalog(tmp_path, start_date=first_month.date().isoformat())
    env = cli_env(with_settings(settings, catalog_path=catalog), dagster_home, catalog)
    select = ",".join(key.to_user_string() for key in (BTC_FUNDING, BTC_OI, BTC_LONG_SHORT))
    partition_range = f"{first_month:%Y-%m-%d}...{this_month:%Y-%m-%d}"

    def stored():
        warehouse = open_warehouse(settings.warehouse_url)
        return (warehouse.query("SELECT * FROM market_data.open_interest ORDER BY snapshot_time"),
                warehouse.query("SELECT * FROM market_data.long_short_ratios ORDER BY metric, snapshot_time"),
                warehouse.query("SELECT * FROM market_data.funding_rates ORDER BY funding_time"))

    process = dagster_materialize(env, select, partition_range)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    open_interest, ratios, funding = stored()

    # Every 5-minute snapshot from the first month to the newest, archive before the seam, REST after.
    times = open_interest["snapshot_time"]
    assert times[0] == first_month and (times.diff().drop_nulls() == FIVE_MINUTES).all()
    assert now - times[-1] < dt.timedelta(minutes=10)
    by_source = open_interest.group_by("source").agg(pl.col("snapshot_time").min().alias("first"), pl.col("snapshot_time").max().alias("last"))
    bounds = {row["source"]: (row["first"], row["last"]) for row in by_source.to_dicts()}
    assert bounds["archive"] == (first_month, seam - FIVE_MINUTES) and bounds["rest"][0] == seam
    for metric, rows in ratios.group_by("metric"):
        assert rows.height == open_interest.height, metric
        assert (rows["snapshot_time"].diff().drop_nulls() == FIVE_MINUTES).all()
        rest_rows = rows.filter(pl.col("source") == "rest")
        assert rest_rows["long_value"].null_count() == 0 and rest_rows["snapshot_time"].min() == seam
    assert funding.height > 0 and funding["funding_time"][0] - first_month < dt.timedelta(seconds=1)

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        keys = {f"{first_month:%Y-%m-%d}", f"{this_month:%Y-%m-%d}"}
        for key in (BTC_FUNDING, BTC_OI, BTC_LONG_SHORT):
            assert keys <= instance.get_materialized_partitions(key)
        check_keys = [dg.AssetCheckKey(BTC_OI, name) for name in ("open_interest_cadence", "open_interest_non_negative")]
        check_keys += [dg.AssetCheckKey(BTC_LONG_SHORT, name) for name in ("long_short_cadence", "ratios_positive")]
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
        checks = {key.name: latest[key].evaluation.passed for key in check_keys}  # type: ignore[union-attr]
    finally:
        instance.dispose()
    assert checks == {"open_interest_cadence": True, "open_interest_non_negative": True,
                      "long_short_cadence": True, "ratios_positive": True}

    # The re-run of the closed months changes nothing.
    closed = f"{first_month:%Y-%m-%d}...{(this_month - dt.timedelta(days=1)).replace(day=1):%Y-%m-%d}"
    process = dagster_materialize(env, select, closed)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    again = stored()
    for before, after, time_column in zip((open_interest, ratios, funding), again, ("snapshot_time", "snapshot_time", "funding_time"), strict=True):
        assert after.drop("ingested_at").equals(before.drop("ingested_at")), time_column


def test_a_day_no_source_holds_fails_its_month_by_name_and_the_other_months_land(tmp_path, settings):
    faults = ArchiveFaults(missing=("BTCUSDT-metrics-2024-01-10.zip",))
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as emu:
        settings = with_settings(settings, catalog_path=perp_catalog(tmp_path, "2023-12-01"),
                                 binance_futures_url=emu.url, binance_archive_url=emu.url)
        with dg.instance_for_test() as instance:
            asset, result = run_range(settings, BTC_OI, "2023-12-01", "2024-02-01", instance)
            assert not result.success
            message = step_failure(result)
            assert "so 2024-01-01 is not materialized (1 of 3 partitions); the others are:" in message
            assert "no source holds 2024-01-10: the archive has no BTCUSDT-metrics-2024-01-10.zip and REST keeps only the last 30 days" in message
            assert statuses(instance, asset, ["2023-12-01", "2024-01-01", "2024-02-01"]) == {
                "2023-12-01": MATERIALIZED, "2024-01-01": FAILED, "2024-02-01": MATERIALIZED}
            # the months that landed are checked, each on its own; January failed, it is no gap
            cadence = {e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == "open_interest_cadence"}
            assert sorted(cadence) == ["2023-12-01", "2024-02-01"] and all(e.passed for e in cadence.values())
            assert cadence["2024-02-01"].metadata["expected_snapshots"].value == 29 * 288
    stored = open_warehouse(settings.warehouse_url).query("SELECT count(*) AS n FROM market_data.open_interest")["n"][0]
    assert stored == (31 + 31 + 29 - 1) * 288  # every other day of the three months is kept


def test_an_unknown_symbol_stops_its_run_and_stores_nothing(tmp_path, settings):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "NOPEUSDT", "timeframes": ["1h"], "datasets": ["long_short"]}],
        start_date=(dt.date.today() - dt.timedelta(days=10)).replace(day=1).isoformat())
    settings = with_settings(settings, catalog_path=catalog)
    key = dg.AssetKey(["binance_perp", "long_short", "NOPEUSDT"])
    first_key = build_first_key(settings, key)
    with dg.instance_for_test() as instance:
        _, result = run_range(settings, key, first_key, first_key, instance)
    assert not result.success
    message = step_failure(result)
    assert "GET /futures/data/globalLongShortAccountRatio?symbol=NOPEUSDT" in message and "code -1121: Invalid symbol." in message
    assert open_warehouse(settings.warehouse_url).query("SELECT count(*) AS n FROM market_data.long_short_ratios")["n"][0] == 0


def build_first_key(settings, key) -> str:
    from marketdata_assets.definitions import build_definitions

    return build_definitions(settings).resolve_assets_def(key).partitions_def.get_first_partition_key()


def test_checks_name_a_gap_a_negative_open_interest_and_a_zero_ratio(any_warehouse_url, emulator):
    from marketdata_assets.datasets.futures_statistics import snapshot_check_results

    async def fetch():
        async with BinanceStatisticsSource(BinanceStatisticsClient(emulator.url), BinanceArchiveClient(emulator.url)) as source:
            return (await source.fetch("open_interest", "BTCUSDT", utc(2024, 1, 1), utc(2024, 1, 3)),
                    await source.fetch("long_short", "BTCUSDT", utc(2024, 1, 1), utc(2024, 1, 3)))

    oi, ratios = asyncio.run(fetch())
    warehouse = open_warehouse(any_warehouse_url)
    gap = pl.col("snapshot_time").is_between(utc(2024, 1, 2, 6), utc(2024, 1, 2, 7), closed="left")
    broken_oi = oi.frame.filter(~gap).with_columns(
        open_interest=pl.when(pl.col("snapshot_time") == utc(2024, 1, 1, 12)).then(-1.0).otherwise(pl.col("open_interest")))
    warehouse.upsert(OPEN_INTEREST, broken_oi)
    warehouse.upsert(LONG_SHORT_RATIOS, ratios.frame.with_columns(
        ratio=pl.when((pl.col("snapshot_time") == utc(2024, 1, 2)) & (pl.col("metric") == "taker_volume")).then(0.0)
        .otherwise(pl.col("ratio"))))
    bounds = {"first_window_end": utc(2021, 12, 1), "current_window_start": utc(2026, 11, 1), "now": utc(2026, 11, 21)}
    cadence, values = snapshot_check_results(warehouse, dg.AssetKey("oi"), "open_interest", "binance", "BTCUSDT",
                                             utc(2024, 1, 1), utc(2024, 1, 3), **bounds)
    assert not cadence.passed and cadence.metadata["missing_snapshots"].value == 12
    assert cadence.metadata["expected_snapshots"].value == 576
    assert not values.passed and values.metadata["invalid_rows"].value == 1
    assert "2024-01-01 12:00:00" in values.metadata["samples"].value
    cadence, values = snapshot_check_results(warehouse, dg.AssetKey("ls"), "long_short", "binance", "BTCUSDT",
                                             utc(2024, 1, 1), utc(2024, 1, 3), **bounds)
    assert cadence.passed and cadence.metadata["expected_snapshots"].value == 4 * 576
    assert not values.passed and values.metadata["invalid_rows"].value == 1 and "taker_volume" in values.metadata["samples"].value


def test_rest_detail_outlives_a_later_read_from_the_archive(any_warehouse_url):
    """A day read over REST (ratios with their long/short parts) and, once out of REST's 30 days,
    again from the archive (ratios alone) keeps the parts: nothing stored is lost."""
    warehouse = open_warehouse(any_warehouse_url)
    rest = parse_ratio_rows([{"symbol": "BTCUSDT", "longShortRatio": "1.5", "longAccount": "0.6", "shortAccount": "0.4",
                              "timestamp": 1704067200000}], "BTCUSDT", "global_account")
    warehouse.upsert(LONG_SHORT_RATIOS, rest)
    warehouse.upsert(LONG_SHORT_RATIOS, rest.with_columns(long_value=pl.lit(None, pl.Float64), short_value=pl.lit(None, pl.Float64),
                                                          source=pl.lit("archive")))
    row = warehouse.query("SELECT ratio, long_value, short_value, source FROM market_data.long_short_ratios").row(0)
    assert row == (1.5, 0.6, 0.4, "archive")


def test_the_rest_client_refuses_to_read_before_rest_retention(emulator):
    async def old():
        async with BinanceStatisticsClient(emulator.url) as rest:
            await rest.fetch("open_interest", "BTCUSDT", utc(2024, 1, 1), utc(2024, 1, 2))

    with pytest.raises(UpstreamRejected, match=r"code -1130: parameter 'startTime' is invalid"):
        asyncio.run(old())


def test_the_report_shows_derivative_coverage_failed_months_and_missing_snapshots(tmp_path, settings, dagster_home):
    faults = ArchiveFaults(missing=("BTCUSDT-metrics-2024-01-10.zip",))
    catalog = perp_catalog(tmp_path, "2023-12-01")
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as emu:
        settings = with_settings(settings, catalog_path=catalog, binance_futures_url=emu.url, binance_archive_url=emu.url)
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        try:
            run_range(settings, BTC_OI, "2023-12-01", "2024-02-01", instance)
            run_range(settings, BTC_FUNDING, "2023-12-01", "2024-02-01", instance)
        finally:
            instance.dispose()
    warehouse = open_warehouse(settings.warehouse_url)
    with warehouse.connect() as con:  # a hole the archive never had: an hour lost from a stored month
        con.execute("DELETE FROM market_data.open_interest WHERE snapshot_time >= ? AND snapshot_time < ?",
                    [utc(2024, 2, 5, 6), utc(2024, 2, 5, 7)])
    env = cli_env(settings, dagster_home, catalog)
    result = marketdata("report", "--dataset", "open_interest", "--format", "json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["asset"] == "binance_perp/open_interest/BTCUSDT" and record["failed_partitions"] == ["2024-01-01"]
    assert (record["partitions_materialized"], record["expected_snapshots"], record["missing_snapshots"]) == (2, (31 + 29) * 288, 12)
    assert record["missing_windows"] == [{"start": "2024-02-05 06:00", "end": "2024-02-05 07:00"}]
    # the hour deleted after the run is missing, but no check has run since: the checks say what
    # they found, per partition, as Dagster's partition grid of each check does
    assert record["checks"] == {"open_interest_cadence": "passed", "open_interest_non_negative": "passed"}
    assert record["check_partitions"]["open_interest_cadence"] == {
        "status": "Failed", "passed": 2, "failed": [], "execution_failed": ["2024-01-01"], "skipped": [],
        "in_progress": [], "missing": record["partitions_total"] - 3,
        "latest": "passed", "latest_partition": "2024-02-01"}
    # and the table says why the check is Failed in Dagster's list while it found nothing wrong
    table = marketdata_here("report", "--dataset", "open_interest", cwd=tmp_path, env=env)
    assert ("binance_perp/open_interest/BTCUSDT: open_interest_cadence, open_interest_non_negative not evaluated on "
            "2024-01-01: the run that planned them failed there (Dagster shows Execution failed)") in table.stdout
    table = marketdata("report", "--symbol", "BTCUSDT", "--fail-on-gaps", cwd=tmp_path, env=env)
    assert table.returncode == 1, table.stderr
    assert "binance_perp/open_interest/BTCUSDT: missing [2024-02-05 06:00, 2024-02-05 07:00) UTC" in table.stdout
    assert "binance_perp/open_interest/BTCUSDT: failed partitions 2024-01-01" in table.stdout
    funding_line = next(line for line in table.stdout.splitlines() if line.startswith("binance_perp/funding/BTCUSDT "))
    assert "3/" in funding_line and "0 of 273 settlements" in funding_line and "funding_cadence=passed" in funding_line
    bad = marketdata("report", "--dataset", "long_short", "--symbol", "NOPEUSDT", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "no long_short asset for symbol NOPEUSDT in the catalog" in bad.stderr
