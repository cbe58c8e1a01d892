"""The audit against real parts: emulator scenarios on loopback (an outage, a wrong candle, a
window whose first fetches fail), rejected rows kept with their payload, gap rules, and the
klines checks as a Dagster instance records them."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import httpx
import orjson
import polars as pl
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from marketdata_assets.audit import Explanations, KnownGap, BarSeries, Stored, audit_gaps, stored_klines
from marketdata_assets.definitions import build_definitions
from marketdata_assets.emulator import EmulatorConfig, EmulatorServer, FailingWindow, InvalidBar, Outage, Scenario
from marketdata_assets.emulator.scenario import documented_outages
from marketdata_assets.ingest import ingest_klines
from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient, fetch_klines
from marketdata_assets.sources.binance_archive import ArchiveFile, BinanceArchiveClient, read_zipped_csv
from marketdata_assets.sources.binance_klines import BinanceKlinesSource
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import utc, with_settings
from marketdata_tests.test_assets import BTC_SPOT_1M, FAILED, MATERIALIZED, spot_catalog, statuses

OUTAGE = Outage.parse("2024-01-10T00:00/2024-01-10T02:00")
WRONG = InvalidBar.parse("BTCUSDT/1m/2024-01-15T10:00")
FLAKY = FailingWindow.parse("2024-02-10T00:00/2024-02-10T06:00x5")
SCENARIO = Scenario(outages=documented_outages() + (OUTAGE,), invalid_bars=(WRONG,), failing_windows=(FLAKY,))


def source(url: str, mode: str = "auto") -> BinanceKlinesSource:
    return BinanceKlinesSource(
        BinanceKlinesClient("spot", url, backoff_base_s=0.01), BinanceArchiveClient(url, backoff_base_s=0.01), mode
    )


def rows_of(url: str, table: str) -> pl.DataFrame:
    return open_warehouse(url).query(f"SELECT * FROM market_data.{table} ORDER BY ALL")


def test_an_outage_has_no_candles_over_rest_or_in_the_archive_and_paging_skips_it():
    with EmulatorServer(EmulatorConfig(scenario=SCENARIO)) as emu:
        # REST: 10 bars from 23:55 the day before cross the outage and go on at 02:00
        answer = httpx.get(emu.url + "/api/v3/klines", params={
            "symbol": "BTCUSDT", "interval": "1m", "startTime": int(utc(2024, 1, 9, 23, 55).timestamp() * 1000),
            "limit": 10}).json()
        times = [dt.datetime.fromtimestamp(row[0] / 1000, dt.UTC) for row in answer]
        assert times == [utc(2024, 1, 9, 23, 55 + i) for i in range(5)] + [utc(2024, 1, 10, 2, i) for i in range(5)]
        # newest-first selection (no startTime) skips it the same way
        answer = httpx.get(emu.url + "/api/v3/klines", params={
            "symbol": "BTCUSDT", "interval": "1m", "endTime": int(utc(2024, 1, 10, 2, 1).timestamp() * 1000),
            "limit": 4}).json()
        assert [row[0] for row in answer] == [int(utc(*t).timestamp() * 1000) for t in (
            (2024, 1, 9, 23, 58), (2024, 1, 9, 23, 59), (2024, 1, 10, 2, 0), (2024, 1, 10, 2, 1))]
        # the hourly bars wholly inside are missing too; the archive has the same history
        rest = fetch_klines("spot", emu.url, "BTCUSDT", "1h", utc(2024, 1, 9, 22), utc(2024, 1, 10, 4)).frame
        assert rest["open_time"].to_list() == [utc(2024, 1, 9, 22), utc(2024, 1, 9, 23), utc(2024, 1, 10, 2), utc(2024, 1, 10, 3)]
        day = ArchiveFile.daily("spot", "BTCUSDT", "1m", dt.date(2024, 1, 10))
        csv = read_zipped_csv(httpx.get(emu.url + day.path).content, day).decode().splitlines()
        assert len(csv) == 1440 - 120
        assert csv[0].startswith(str(int(utc(2024, 1, 10, 2).timestamp() * 1000)) + ",")


def test_a_failing_window_answers_503_until_its_failures_are_used_up_over_rest_and_archive():
    with EmulatorServer(EmulatorConfig(scenario=SCENARIO)) as emu:
        params = {"symbol": "BTCUSDT", "interval": "1m", "limit": 10,
                  "startTime": int(utc(2024, 2, 10, 3).timestamp() * 1000)}
        month = ArchiveFile.monthly("spot", "BTCUSDT", "1m", dt.date(2024, 2, 1))
        answers = [httpx.get(emu.url + "/api/v3/klines", params=params) for _ in range(3)]
        answers += [httpx.get(emu.url + month.path) for _ in range(3)]
        assert [a.status_code for a in answers] == [503, 503, 503, 503, 503, 200]
        assert answers[0].json() == {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
        assert "<Code>SlowDown</Code>" in answers[3].text
        # outside the window nothing fails, and inside it the failures are spent
        assert httpx.get(emu.url + "/api/v3/klines", params=params).status_code == 200


@pytest.mark.parametrize("mode", ["rest", "archive"])
def test_a_wrong_candle_is_rejected_with_its_reasons_and_payload_and_not_stored(tmp_path, mode):
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    with EmulatorServer(EmulatorConfig(scenario=SCENARIO)) as emu:
        report = ingest_klines(source(emu.url, mode), open_warehouse(url), "BTCUSDT", "1m", utc(2024, 1, 15), utc(2024, 1, 16))
        if mode == "rest":
            sent = httpx.get(emu.url + "/api/v3/klines", params={
                "symbol": "BTCUSDT", "interval": "1m", "startTime": int(WRONG.open_ms), "limit": 1}).json()[0]
            payload = orjson.dumps(sent).decode()
        else:
            day = ArchiveFile.daily("spot", "BTCUSDT", "1m", dt.date(2024, 1, 15))
            lines = read_zipped_csv(httpx.get(emu.url + day.path).content, day).decode().splitlines()
            payload = lines[10 * 60]
    assert report.rows_written == 1439 and report.rows_rejected == 1 and not report.failures
    klines = rows_of(url, "klines")
    assert utc(2024, 1, 15, 10) not in klines["open_time"].to_list()
    (rejected,) = rows_of(url, "rejected_rows").to_dicts()
    assert rejected["open_time"] == utc(2024, 1, 15, 10) and rejected["source"] == mode
    assert rejected["reason"] == "high below low; low above open or close; high below open or close"
    assert rejected["payload"] == payload  # the row exactly as the upstream sent it
    high, low = (float(v) for v in (payload.split(",")[2:4] if mode == "archive" else (sent[2], sent[3])))
    assert high < low
    if mode == "archive":
        assert rejected["origin"] == "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-15.zip"
    else:
        assert rejected["origin"].startswith("GET /api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=")


M1_SERIES = BarSeries("binance", "spot", "BTCUSDT", "1m", first_window_end=utc(2024, 2, 1),
                   current_window_start=utc(2024, 6, 1))


def _stored(times: list[dt.datetime]) -> Stored:
    holes = [(a + dt.timedelta(minutes=1), b) for a, b in zip(times, times[1:], strict=False) if b - a > dt.timedelta(minutes=1)]
    return Stored(len(times), times[0], times[-1], holes)


def minutes(start: dt.datetime, count: int) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=i) for i in range(count)]


def test_gap_rules_listing_live_edge_known_gaps_and_rejected_bars():
    now = utc(2024, 6, 10, 12, 0, 30)
    # the listing month: bars before the first stored one are before the listing, not gaps
    stored = _stored(minutes(utc(2024, 1, 31, 23, 50), 10))
    audit = audit_gaps(M1_SERIES, stored, Explanations(), [(utc(2024, 1, 1), utc(2024, 2, 1))], now)
    assert (audit.expected, audit.missing) == (10, [])
    # a closed month: holes inside and the tail after the last stored bar are gaps
    times = minutes(utc(2024, 3, 31, 23, 0), 30) + minutes(utc(2024, 3, 31, 23, 40), 10)
    audit = audit_gaps(M1_SERIES, _stored(times), Explanations(), [(utc(2024, 3, 31, 23), utc(2024, 4, 1))], now)
    assert audit.missing == [(utc(2024, 3, 31, 23, 30), utc(2024, 3, 31, 23, 40)), (utc(2024, 3, 31, 23, 50), utc(2024, 4, 1))]
    assert audit.missing_bars == audit.unexplained_bars == 20
    # the month in progress: nothing is expected after the newest stored bar
    stored = _stored(minutes(utc(2024, 6, 1), 60))
    audit = audit_gaps(M1_SERIES, stored, Explanations(), [(utc(2024, 6, 1), utc(2024, 7, 1))], now)
    assert (audit.expected, audit.missing_bars) == (60, 0)
    # known gaps explain the bars wholly inside them; rejected bars explain themselves
    times = minutes(utc(2024, 3, 1), 10) + minutes(utc(2024, 3, 1, 1), 60)
    why = Explanations(known=[KnownGap(utc(2024, 3, 1, 0, 10, 30), utc(2024, 3, 1, 0, 40), "maintenance", "maintenance")],
                       rejected={utc(2024, 3, 1, 0, 50)})
    audit = audit_gaps(M1_SERIES, _stored(times), why, [(utc(2024, 3, 1), utc(2024, 3, 1, 2))], now)
    assert audit.missing == [(utc(2024, 3, 1, 0, 10), utc(2024, 3, 1, 1))]
    assert (audit.known_bars, audit.rejected_bars) == (29, 1)  # 00:10 is only partly inside the outage
    assert audit.unexplained == [(utc(2024, 3, 1, 0, 10), utc(2024, 3, 1, 0, 11)),
                                 (utc(2024, 3, 1, 0, 40), utc(2024, 3, 1, 0, 50)),
                                 (utc(2024, 3, 1, 0, 51), utc(2024, 3, 1, 1))]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _range_run(settings, instance, first: str, last: str, selection=None):
    definitions = build_definitions(settings)
    asset = definitions.resolve_assets_def(BTC_SPOT_1M)
    result = dg.materialize(
        [asset], instance=instance, selection=selection, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )
    return asset, result


def _evaluations(result, partition: str | None = None) -> dict[str, dg.AssetCheckEvaluation]:
    """The run's evaluations of one partition (of the only one evaluated when None)."""
    evaluations = result.get_asset_check_evaluations()
    if partition is None:
        (partition,) = {e.partition for e in evaluations}
    return {e.check_name: e for e in evaluations if e.partition == partition}


def _values(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_a_backfill_over_the_scenario_checks_exactly_what_went_wrong(tmp_path, settings, instance, any_warehouse_url):
    with EmulatorServer(EmulatorConfig(scenario=SCENARIO)) as emu:
        settings = with_settings(settings, catalog_path=spot_catalog(tmp_path), binance_spot_url=emu.url,
                                 binance_archive_url=emu.url, warehouse_url=any_warehouse_url)
        asset, result = _range_run(settings, instance, "2024-01-01", "2024-03-01")
    assert not result.success
    assert statuses(instance, asset, ["2024-01-01", "2024-02-01", "2024-03-01"]) == {
        "2024-01-01": MATERIALIZED, "2024-02-01": FAILED, "2024-03-01": MATERIALIZED}
    # each check is evaluated on each month that landed, and on nothing else: February failed,
    # it is not a gap (the report counts it as failed too)
    assert {(e.check_name, e.partition) for e in result.get_asset_check_evaluations()} == {
        (name, month) for name in ("ohlc_valid", "gap_count", "no_unclosed_bars", "bars_unrevised") for month in ("2024-01-01", "2024-03-01")}
    checks = _evaluations(result, "2024-01-01")
    ohlc = _values(checks["ohlc_valid"])
    assert not checks["ohlc_valid"].passed and checks["ohlc_valid"].severity == dg.AssetCheckSeverity.WARN
    assert (ohlc["invalid_rows"], ohlc["rejected_rows"]) == (0, 1)
    assert "2024-01-15 10:00:00" in ohlc["rejected_samples"] and "high below low" in ohlc["rejected_samples"]
    gaps = _values(checks["gap_count"])
    assert checks["gap_count"].severity == dg.AssetCheckSeverity.ERROR
    assert gaps["window"] == "[2024-01-01 00:00, 2024-02-01 00:00) UTC"
    # the outage (120 bars) and the rejected bar (explained)
    assert (gaps["expected_bars"], gaps["missing_bars"]) == (31 * 1440, 120 + 1)
    assert (gaps["unexplained_bars"], gaps["rejected_bars"], gaps["unexplained_gaps"]) == (120, 1, 1)
    assert "[2024-01-10 00:00, 2024-01-10 02:00) UTC, 120 bars" in gaps["first_gaps"]
    assert gaps["longest_gap"] == "[2024-01-10 00:00, 2024-01-10 02:00) UTC, 120 bars"
    assert checks["no_unclosed_bars"].passed
    march = _evaluations(result, "2024-03-01")
    assert all(e.passed for e in march.values())
    assert _values(march["gap_count"])["expected_bars"] == 31 * 1440


def test_documented_maintenance_explains_its_gaps(tmp_path, settings, instance):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path, start="2021-04-01"))
    _, result = _range_run(settings, instance, "2021-04-01", "2021-04-01")
    assert result.success
    gap_count = _evaluations(result)["gap_count"]
    values = _values(gap_count)
    # 2021-04-20 02:00-04:30 and 2021-04-25 04:00:59-08:45: 150 + 284 minutes wholly inside
    assert (values["missing_bars"], values["known_gap_bars"], values["unexplained_bars"]) == (434, 434, 0)
    assert not gap_count.passed and gap_count.severity == dg.AssetCheckSeverity.WARN


def test_checks_run_alone_over_any_window_and_catch_bad_rows_already_stored(tmp_path, settings, instance, any_warehouse_url):
    settings = with_settings(settings, catalog_path=spot_catalog(tmp_path), warehouse_url=any_warehouse_url)
    _range_run(settings, instance, "2024-01-01", "2024-02-01")
    warehouse = open_warehouse(settings.warehouse_url)
    # rows written by something else: one with high < low, one stored before its minute closed
    bad = warehouse.query("SELECT * FROM market_data.klines WHERE open_time IN (?, ?) ORDER BY open_time",
                          [utc(2024, 1, 20, 5), utc(2024, 1, 20, 6)])
    bad = bad.with_columns(
        high=pl.when(pl.col("open_time") == utc(2024, 1, 20, 5)).then(pl.col("low") - 1).otherwise(pl.col("high")),
        ingested_at=pl.when(pl.col("open_time") == utc(2024, 1, 20, 6)).then(pl.col("open_time") + dt.timedelta(seconds=30))
        .otherwise(pl.col("ingested_at")),
    )
    warehouse.upsert(KLINES, bad)
    checks_only = dg.AssetSelection.checks(*(dg.AssetCheckKey(BTC_SPOT_1M, n) for n in ("ohlc_valid", "no_unclosed_bars", "gap_count")))
    asset, result = _range_run(settings, instance, "2024-01-01", "2024-01-01", selection=checks_only)
    assert result.success
    assert not result.asset_materializations_for_node(asset.node_def.name)  # nothing fetched or written
    checks = _evaluations(result)
    assert checks["ohlc_valid"].severity == dg.AssetCheckSeverity.ERROR
    ohlc = _values(checks["ohlc_valid"])
    assert (ohlc["window"], ohlc["rows_checked"], ohlc["invalid_rows"]) == ("[2024-01-01 00:00, 2024-02-01 00:00) UTC", 31 * 1440, 1)
    assert "2024-01-20 05:00:00" in ohlc["invalid_samples"] and "high below low" in ohlc["invalid_samples"]
    unclosed = _values(checks["no_unclosed_bars"])
    assert not checks["no_unclosed_bars"].passed and unclosed["unclosed_rows"] == 1
    assert "2024-01-20 06:00:00" in unclosed["unclosed_samples"]
    assert checks["gap_count"].passed and _values(checks["gap_count"])["expected_bars"] == 31 * 1440
    # over February alone the same checks pass
    _, result = _range_run(settings, instance, "2024-02-01", "2024-02-01", selection=checks_only)
    assert all(e.passed for e in _evaluations(result).values())


def _brute_force_holes(times: list[dt.datetime], step: dt.timedelta) -> list[tuple[dt.datetime, dt.datetime]]:
    return [(a + step, b) for a, b in zip(times, times[1:], strict=False) if b - a > step]


def test_stored_holes_match_a_brute_force_walk_across_days_and_series(any_warehouse_url, emulator):
    """Holes inside a day, across midnight, whole missing days, single bars, for two series at
    once and for one series inside a span: the same as walking the bars one by one."""
    import random

    warehouse = open_warehouse(any_warehouse_url)
    minutes_frame = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", utc(2024, 3, 1), utc(2024, 3, 6)).frame
    hours_frame = fetch_klines("spot", emulator.url, "ETHUSDT", "1h", utc(2024, 3, 1), utc(2024, 3, 11)).frame
    rng = random.Random(7)
    drop = {utc(2024, 3, 2, 23, 50) + dt.timedelta(minutes=i) for i in range(25)}  # across midnight
    drop |= {utc(2024, 3, 4) + dt.timedelta(minutes=i) for i in range(1440)}  # a whole day
    drop |= {utc(2024, 3, 1) + dt.timedelta(minutes=rng.randrange(5 * 1440)) for _ in range(40)}  # single bars
    drop |= {utc(2024, 3, 5, 23), utc(2024, 3, 6, 0), utc(2024, 3, 8, 12)}
    warehouse.upsert(KLINES, minutes_frame.filter(~pl.col("open_time").is_in(list(drop))))
    warehouse.upsert(KLINES, hours_frame.filter(~pl.col("open_time").is_in(list(drop))))
    m1 = BarSeries("binance", "spot", "BTCUSDT", "1m", utc(2024, 4, 1), utc(2024, 4, 1))
    h1 = BarSeries("binance", "spot", "ETHUSDT", "1h", utc(2024, 4, 1), utc(2024, 4, 1))
    stored = stored_klines(warehouse, [m1, h1])
    for series, step in ((m1, dt.timedelta(minutes=1)), (h1, dt.timedelta(hours=1))):
        times = warehouse.query(
            "SELECT open_time FROM market_data.klines WHERE symbol = ? ORDER BY open_time", [series.symbol]
        )["open_time"].to_list()
        assert stored[series.key].holes == _brute_force_holes(times, step)
        assert stored[series.key].rows == len(times)
        assert (stored[series.key].first, stored[series.key].last) == (times[0], times[-1])
        assert sum(stored[series.key].rows_by_day.values()) == len(times)
    assert len(stored[m1.key].holes) > 30
    # one series inside a span
    (only,) = stored_klines(warehouse, [m1], utc(2024, 3, 2, 12), utc(2024, 3, 5)).values()
    times = [t for t in minutes_frame["open_time"].to_list() if t not in drop and utc(2024, 3, 2, 12) <= t < utc(2024, 3, 5)]
    assert only.holes == _brute_force_holes(times, dt.timedelta(minutes=1)) and only.rows == len(times)
