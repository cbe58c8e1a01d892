"""FRED macro series with every vintage: the emulator as fredapi reads it, the source's pacing and
secrecy, the point-in-time query on both warehouses, and the assets with their checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import dagster as dg
import pytest
import yaml

from marketdata_assets.emulator import EmulatorServer
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env
from marketdata_tests.test_assets import MATERIALIZED
from marketdata_tests.test_cli import marketdata

KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"  # well formed, and easy to find if it leaks
CPI = "CPIAUCSL"
# CPI for January 2024 as ALFRED shows its history: first released, revised a month later, and
# revised again by the next year's seasonal factors.
JANUARY_VINTAGES = [(dt.date(2024, 2, 13), "308.417"), (dt.date(2024, 3, 12), "308.501"),
                    (dt.date(2025, 2, 12), "309.685")]


def test_fredapi_reads_the_emulator_as_it_reads_fred():
    from fredapi import Fred

    with EmulatorServer() as emulator:
        emulator.fred.revisions[CPI, dt.date(2024, 1, 1)] = JANUARY_VINTAGES
        fred = Fred(api_key=KEY)
        fred.root_url = f"{emulator.url}/fred"
        latest = fred.get_series(CPI, observation_start="2023-11-01", observation_end="2024-02-01")
        releases = fred.get_series_all_releases(CPI)
        info = fred.get_series_info("DGS10")
        holiday = fred.get_series("DGS10", observation_start="2024-07-04", observation_end="2024-07-04")
        with pytest.raises(ValueError, match=r"^Bad Request\.  The series does not exist\.$"):
            fred.get_series("NOPE99")
        fred.api_key = "short"
        with pytest.raises(ValueError, match="not a 32 character alpha-numeric lower-case string"):
            fred.get_series(CPI)
    assert [str(d.date()) for d in latest.index] == ["2023-11-01", "2023-12-01", "2024-01-01", "2024-02-01"]
    assert latest["2024-01-01"] == 309.685  # the newest vintage
    january = releases[[d.date() == dt.date(2024, 1, 1) for d in releases["date"]]]
    assert [(str(r.date()), v) for r, v in zip(january["realtime_start"], january["value"])] == [
        ("2024-02-13", 308.417), ("2024-03-12", 308.501), ("2025-02-12", 309.685)]
    assert (info["frequency_short"], info["id"]) == ("D", "DGS10")
    assert holiday.isna().all() and len(holiday) == 1  # FRED's "." on a market holiday


def test_the_parser_keeps_every_vintage_with_its_realtime_bounds():
    import xml.etree.ElementTree as ET

    from marketdata_assets.datasets.macro import MACRO_OBSERVATIONS
    from marketdata_assets.sources.fred import parse_vintages

    # the shape of FRED's documentation example (series/observations, XML)
    root = ET.fromstring(
        '<?xml version="1.0" encoding="utf-8" ?><observations realtime_start="1776-07-04" realtime_end="9999-12-31" '
        'observation_start="2024-07-03" observation_end="2024-07-05" units="lin" output_type="1" file_type="xml" '
        'order_by="observation_date" sort_order="asc" count="4" offset="0" limit="100000">'
        '<observation realtime_start="2024-07-04" realtime_end="9999-12-31" date="2024-07-03" value="4.36"/>'
        '<observation realtime_start="2024-07-05" realtime_end="9999-12-31" date="2024-07-04" value="."/>'
        '<observation realtime_start="2024-07-08" realtime_end="9999-12-31" date="2024-07-05" value="n/a"/>'
        '<observation realtime_start="2024-07-09" realtime_end="2024-07-08" date="2024-07-08" value="4.27"/>'
        '</observations>')
    rows, rejected, count = parse_vintages(root, "DGS10", MACRO_OBSERVATIONS, "GET …")
    assert count == 4 and rows.schema == MACRO_OBSERVATIONS.schema
    assert rows.select("date", "value", "realtime_start", "realtime_end").rows() == [
        (dt.date(2024, 7, 3), 4.36, dt.date(2024, 7, 4), dt.date(9999, 12, 31)),
        (dt.date(2024, 7, 4), None, dt.date(2024, 7, 5), dt.date(9999, 12, 31)),
    ]
    assert rejected.select("symbol", "reason").rows() == [
        ("DGS10", "value 'n/a' is not a number"), ("DGS10", "realtime_end 2024-07-08 before realtime_start 2024-07-09")]


def test_the_source_pages_waits_out_429_and_never_shows_the_key(tmp_path):
    from marketdata_assets.catalog import Series
    from marketdata_assets.datasets.macro import MACRO_OBSERVATIONS
    from marketdata_assets.sources import fred as fred_source
    from marketdata_assets.sources.errors import UpstreamRejected

    class Clock:  # time that passes as the source sleeps: a 429's wait costs the test nothing
        now = 1_700_000_000.0

        def time(self) -> float:
            return self.now

        async def sleep(self, seconds: float) -> None:
            self.now += seconds

    def read(url: str, key: str | None, series_id: str) -> tuple[list, fred_source.FredVintagesSource]:
        clock = Clock()
        source = fred_source.FredVintagesSource(url, key, MACRO_OBSERVATIONS, clock=clock.time, sleep=clock.sleep)

        async def go():
            async with source:
                return [f async for f in source.read(Series("macro", "fred", series_id, dt.date(2020, 1, 1)),
                                                     dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                                     dt.datetime(2024, 1, 1, tzinfo=dt.UTC))]
        return asyncio.run(go()), source

    with EmulatorServer() as emulator, pytest.MonkeyPatch.context() as patch:
        patch.setattr(fred_source, "PAGE", 400)  # four years of a daily series: three pages
        frames, source = read(f"{emulator.url}/fred", KEY, "DGS10")
        assert [f.height for f in frames] == [400, 400, 243]  # the weekdays of 2020-2023
        assert source.outcome().requests == 3
        emulator.fred.refuse_next = 2  # two 429s, then answers
        frames, source = read(f"{emulator.url}/fred", KEY, CPI)
        assert sum(f.height for f in frames) == 48 * 2 and source.outcome().requests == 3
        with pytest.raises(UpstreamRejected) as refused:
            read(f"{emulator.url}/fred", KEY, "NOPE99")
        assert str(refused.value) == ("FRED: NOPE99 observations 2020-01-01..2023-12-31 from 0 rejected with HTTP 400: "
                                      "Bad Request.  The series does not exist.")
        assert refused.value.__cause__ is None and refused.value.__suppress_context__  # fredapi's exception left behind
        with pytest.raises(fred_source.MissingKey, match="set FRED_API_KEY to a FRED API key"):
            read(f"{emulator.url}/fred", None, CPI)
    with pytest.raises(Exception) as unreachable:  # nothing listens there: the error names no URL
        read("http://127.0.0.1:9/fred", KEY, CPI)
    assert KEY not in str(unreachable.value) and "127.0.0.1" not in str(unreachable.value)


@pytest.mark.parametrize("warehouse", ["duckdb", "postgresql"])
def test_the_as_of_query_returns_what_was_known_on_each_day(warehouse, tmp_path):
    from marketdata_assets.catalog import Series
    from marketdata_assets.datasets.macro import MACRO_OBSERVATIONS, as_of
    from marketdata_assets.sources.fred import FredVintagesSource
    from marketdata_tests.conftest import postgres_database

    def stored(url: str) -> None:
        source = FredVintagesSource(f"{emulator.url}/fred", KEY, MACRO_OBSERVATIONS)

        async def go():
            async with source:
                async for frame in source.read(Series("macro", "fred", CPI, dt.date(2023, 1, 1)),
                                               dt.datetime(2023, 10, 1, tzinfo=dt.UTC), dt.datetime(2024, 3, 1, tzinfo=dt.UTC)):
                    open_warehouse(url).upsert(MACRO_OBSERVATIONS, frame)
        asyncio.run(go())

    def check(url: str) -> None:
        store = open_warehouse(url)
        january = dt.date(2024, 1, 1)

        def known(day: dt.date) -> float | None:
            found = dict(as_of(store, CPI, day).select("date", "value").rows())
            sql = dict(store.query("SELECT date, value FROM market_data.macro_as_of(?, ?)", [CPI, day]).rows())
            assert sql == found  # the SQL function and the Python call agree
            return found.get(january)

        assert known(dt.date(2024, 2, 12)) is None  # not released yet
        assert known(dt.date(2024, 2, 13)) == 308.417  # the first release, on its day
        assert known(dt.date(2024, 3, 11)) == 308.417
        assert known(dt.date(2024, 3, 12)) == 308.501  # the revision, from its day
        assert known(dt.date(2025, 6, 1)) == 309.685
        assert store.query("SELECT realtime_start, realtime_end FROM market_data.macro_observations "
                           "WHERE series_id = ? AND date = ? ORDER BY realtime_start", [CPI, january]).rows() == [
            (dt.date(2024, 2, 13), dt.date(2024, 3, 11)), (dt.date(2024, 3, 12), dt.date(2025, 2, 11)),
            (dt.date(2025, 2, 12), dt.date(9999, 12, 31))]
        latest = store.query("SELECT date, value FROM market_data.macro_latest WHERE series_id = ? ORDER BY date", [CPI])
        assert latest.height == 5 and dict(latest.rows())[january] == 309.685  # Oct 2023 .. Feb 2024
        # the read API gives the same point in time (issue 22)
        from marketdata_assets.history import History
        from marketdata_assets.settings import Settings

        catalog = tmp_path / "fred.yaml"
        catalog.write_text(yaml.safe_dump({"series": [{"source": "fred", "dataset": "macro", "keys": [CPI],
                                                       "start_date": "2023-01-01"}]}))
        history = History(url, settings=Settings(catalog_path=catalog))
        for day, value in (("2024-02-12", None), ("2024-03-11", 308.417), ("2024-03-12", 308.501), (None, 309.685)):
            read = history.fetch(f"fred/macro/{CPI}", "2024-01-01", "2024-02-01", as_of=day)
            assert read["value"].to_list() == ([value] if value else []), day
        assert read.columns == ["ts", "series_id", "date", "value", "realtime_start"]
        assert read["ts"].to_list() == [int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp())]

    with EmulatorServer() as emulator:
        emulator.fred.revisions[CPI, dt.date(2024, 1, 1)] = JANUARY_VINTAGES
        if warehouse == "duckdb":
            url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
            stored(url)
            check(url)
        else:
            with postgres_database() as url:
                stored(url)
                check(url)


def test_macro_assets_land_with_their_checks_one_failing_series_aside_and_the_key_nowhere(
    tmp_path, warehouse_url, dagster_home, monkeypatch,
):
    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings
    from marketdata_tests.test_assets import step_failure

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"series": [
        {"source": "fred", "dataset": "macro", "keys": [CPI, "DGS10", "NOPE99"], "start_date": "2023-01-01"}]}))
    keys = [dg.AssetKey(["fred", "macro", s]) for s in (CPI, "DGS10", "NOPE99")]
    this_year = f"{dt.datetime.now(dt.UTC):%Y}-01-01"
    with EmulatorServer() as emulator:
        emulator.fred.revisions[CPI, dt.date(2023, 6, 1)] = []  # never published: a gap
        settings = Settings(warehouse_url=warehouse_url, catalog_path=catalog, fred_url=f"{emulator.url}/fred")
        definitions = build_definitions(settings)
        asset = definitions.resolve_assets_def(keys[0])
        instance = dg.DagsterInstance.from_config(str(dagster_home))

        def run(tags_first: str, tags_last: str):
            return dg.materialize([asset], selection=keys, instance=instance, raise_on_error=False, tags={
                "dagster/asset_partition_range_start": tags_first, "dagster/asset_partition_range_end": tags_last})

        monkeypatch.delenv("FRED_API_KEY", raising=False)
        keyless = run("2023-01-01", "2023-01-01")
        assert not keyless.success and "set FRED_API_KEY to a FRED API key" in step_failure(keyless)

        monkeypatch.setenv("FRED_API_KEY", KEY)
        result = run("2023-01-01", this_year)
        assert not result.success  # NOPE99 fails; the others land
        assert f"NOPE99 observations 2023-01-01..{this_year[:4]}-12-31 from 0 rejected with HTTP 400: " \
               "Bad Request.  The series does not exist." in step_failure(result)  # the range run's one request
        assert emulator.fred.seen_keys == {KEY}
        partitions = asset.partitions_def
        every = partitions.get_partition_keys()
        assert instance.get_status_by_partition(keys[0], every, partitions) == {k: MATERIALIZED for k in every}
        assert not instance.get_materialized_partitions(keys[2])
        checks = {(e.asset_key.path[-1], e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
        gap = checks[CPI, "macro_cadence", "2023-01-01"]
        assert not gap.passed and gap.description == "1 of 12 monthly observations missing"
        assert gap.metadata["unexplained_windows"].value == [["2023-06-01T00:00:00+00:00", "2023-07-01T00:00:00+00:00"]]
        assert checks[CPI, "macro_cadence", "2024-01-01"].description == "0 of 12 monthly observations missing"
        assert checks["DGS10", "macro_cadence", "2023-01-01"].description == "0 of 260 daily observations missing"
        assert checks[CPI, "macro_vintages_disjoint", "2024-01-01"].passed
        assert checks[CPI, "macro_fresh", this_year].passed and checks["DGS10", "macro_fresh", this_year].passed
        assert checks[CPI, "macro_fresh", "2023-01-01"].description.startswith("the window has closed")

        # the whole event log of both runs, and what the CLI prints, never hold the key
        for run_result in (keyless, result):
            logged = [dg.serialize_value(entry) for entry in instance.all_logs(run_result.run_id)]
            assert logged and not [line for line in logged if KEY in line]
        env = {**cli_env(settings, dagster_home, catalog), "MARKETDATA_FRED_URL": f"{emulator.url}/fred",
               "FRED_API_KEY": KEY}
        report = marketdata("report", "--dataset", "macro", "--format", "json", cwd=tmp_path, env=env)
        assert report.returncode == 0 and KEY not in report.stdout + report.stderr, report.stderr
        rows = {row["asset"]: row for row in json.loads(report.stdout)}
        assert rows["fred/macro/CPIAUCSL"]["missing_windows"] == [{"start": "2023-06-01 00:00", "end": "2023-07-01 00:00"}]
        assert rows["fred/macro/NOPE99"]["rows"] == 0
        instance.dispose()
