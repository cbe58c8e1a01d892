"""The Fear & Greed index, built as any dataset is: a series catalog entry, its source against the
emulator on loopback, the generic asset body, its checks, the report, summary, backfill and seed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml

from marketdata_assets.emulator import EmulatorServer
from marketdata_assets.schemas import REJECTED_ROWS
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import cli_env, utc, with_settings
from marketdata_tests.test_assets import MATERIALIZED, run_range
from marketdata_tests.test_cli import marketdata, marketdata_here

KEY = dg.AssetKey(["alternative_me", "fear_greed"])
SERIES_ONLY = {"series": [{"source": "alternative_me", "dataset": "fear_greed"}]}


def series_catalog(tmp_path: Path, **entry) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"series": [{"source": "alternative_me", "dataset": "fear_greed", **entry}]}))
    return path


def test_the_parser_reads_alternative_mes_answer_and_rejects_what_it_could_not_have_sent():
    from marketdata_assets.datasets.fear_greed import FEAR_GREED
    from marketdata_assets.sources.alternative_me import parse_fear_greed

    # UPSTREAMS.md's answer, and the two days before it (newest first, strings)
    body = {"name": "Fear and Greed Index", "metadata": {"error": None}, "data": [
        {"value": "47", "value_classification": "Neutral", "timestamp": "1777248000", "time_until_update": "3600"},
        {"value": "150", "value_classification": "Extreme Greed", "timestamp": "1777161600"},
        {"value": "20", "value_classification": "Greed", "timestamp": "1777075200"},
        {"value": "24", "value_classification": "Extreme Fear", "timestamp": "1776988800"},
    ]}
    rows, rejected = parse_fear_greed(body, FEAR_GREED, "GET /fng/?limit=4")
    assert rows.select("date", "value", "classification").rows() == [
        (dt.date(2026, 4, 24), 24, "Extreme Fear"), (dt.date(2026, 4, 27), 47, "Neutral")]
    assert rows.schema == FEAR_GREED.schema
    assert rejected.schema == REJECTED_ROWS.schema
    assert rejected.select("open_time", "reason").rows() == [
        (utc(2026, 4, 26), "value 150 outside 0-100"),
        (utc(2026, 4, 25), "classification 'Greed' is not 'Extreme Fear'"),
    ]
    assert json.loads(rejected["payload"][0]) == body["data"][1]  # kept exactly as sent
    with pytest.raises(MalformedResponse, match="row 0 is not a Fear & Greed row"):
        parse_fear_greed({"data": [{"value": "high", "value_classification": "x", "timestamp": "1"}]}, FEAR_GREED, "")
    with pytest.raises(MalformedResponse, match="not older than the row before"):
        parse_fear_greed({"data": [body["data"][3], body["data"][0]]}, FEAR_GREED, "")


def test_the_emulator_answers_as_alternative_me_does():
    with EmulatorServer() as emulator:
        newest = httpx.get(f"{emulator.url}/fng/").json()
        assert newest["name"] == "Fear and Greed Index" and newest["metadata"] == {"error": None}
        (today,) = newest["data"]  # limit defaults to 1
        midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        assert today["timestamp"] == str(int(midnight.timestamp()))
        assert all(isinstance(v, str) for v in today.values()) and 0 < int(today["time_until_update"]) <= 86_400
        every = httpx.get(f"{emulator.url}/fng/", params={"limit": 0, "format": "json"}).json()["data"]
        stamps = [int(row["timestamp"]) for row in every]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        assert dt.datetime.fromtimestamp(stamps[-1], dt.UTC) == utc(2018, 2, 1)
        assert len(every) == (midnight.date() - dt.date(2018, 2, 1)).days + 1
        assert ["time_until_update" in row for row in every[:2]] == [True, False]
        assert {row["value_classification"] for row in every} == {"Extreme Fear", "Fear", "Neutral", "Greed", "Extreme Greed"}
        bad = httpx.get(f"{emulator.url}/fng/", params={"limit": "many"}).json()
        assert bad["data"] == [] and bad["metadata"]["error"]


def test_a_series_only_catalog_materializes_the_index_with_its_checks(tmp_path, warehouse_url):
    with EmulatorServer() as emulator, dg.instance_for_test() as instance:
        emulator.alternative_me.missing_days = {dt.date(2024, 2, 10), dt.date(2024, 2, 11)}
        emulator.alternative_me.overrides = {dt.date(2024, 1, 5): {"value": "150"}}
        settings = with_settings(
            _settings(emulator, warehouse_url), catalog_path=series_catalog(tmp_path))
        asset, result = run_range(settings, KEY, "2024-01-01", "2024-02-01", instance)
        assert result.success
        stored = open_warehouse(warehouse_url).query("SELECT date, value, classification FROM market_data.fear_greed ORDER BY date")
        assert stored.height == 31 + 29 - 2 - 1  # every day of the two months but the two missing and the rejected one
        assert stored["date"][0] == dt.date(2024, 1, 1) and stored["date"][-1] == dt.date(2024, 2, 29)
        rejected = open_warehouse(warehouse_url).query(
            "SELECT dataset, open_time, reason FROM market_data.rejected_rows WHERE dataset = 'fear_greed'").rows()
        assert rejected == [("fear_greed", utc(2024, 1, 5), "value 150 outside 0-100")]
        checks = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
        january, february = checks["fear_greed_daily", "2024-01-01"], checks["fear_greed_daily", "2024-02-01"]
        assert not january.passed and not february.passed
        assert january.description == "1 of 31 days missing"  # the rejected day
        assert february.description == "2 of 29 days missing"  # the two the upstream lacks
        assert january.metadata["unexplained_windows"].value == [["2024-01-05T00:00:00+00:00", "2024-01-06T00:00:00+00:00"]]
        assert february.metadata["unexplained_windows"].value == [["2024-02-10T00:00:00+00:00", "2024-02-12T00:00:00+00:00"]]
        assert not checks["fear_greed_valid", "2024-01-01"].passed and checks["fear_greed_valid", "2024-02-01"].passed
        assert checks["fear_greed_valid", "2024-01-01"].severity == dg.AssetCheckSeverity.WARN  # rejected, not stored
        assert checks["fear_greed_fresh", "2024-01-01"].passed and checks["fear_greed_fresh", "2024-02-01"].passed  # closed
        status = instance.get_status_by_partition(KEY, ["2024-01-01", "2024-02-01", "2024-03-01"], asset.partitions_def)
        assert status == {"2024-01-01": MATERIALIZED, "2024-02-01": MATERIALIZED, "2024-03-01": None}

        # the month in progress, up to today: fresh
        now = dt.datetime.now(dt.UTC)
        current = now.strftime("%Y-%m-01")
        _, result = run_range(settings, KEY, current, current, instance)
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert {e.partition for e in result.get_asset_check_evaluations()} == {current}
        assert checks["fear_greed_fresh"].passed and checks["fear_greed_daily"].passed, checks
        newest = open_warehouse(warehouse_url).query("SELECT max(date) AS d FROM market_data.fear_greed")["d"][0]
        assert newest == now.date()


def test_a_bad_parameter_answer_is_read_as_the_upstreams_refusal():
    from marketdata_assets.sources.alternative_me import fear_greed_envelope_error

    with EmulatorServer() as emulator:
        refused = httpx.get(f"{emulator.url}/fng/", params={"limit": "-3"}).json()
        fine = httpx.get(f"{emulator.url}/fng/", params={"limit": "2"}).json()
    error = fear_greed_envelope_error(refused)
    assert error is not None and error.message == refused["metadata"]["error"] and not error.throttled
    assert fear_greed_envelope_error(fine) is None


def test_the_cli_reports_summarizes_backfills_and_seeds_the_index(tmp_path, warehouse_url, dagster_home):
    with EmulatorServer() as emulator:
        emulator.alternative_me.missing_days = {dt.date(2024, 1, 20)}
        settings = with_settings(_settings(emulator, warehouse_url), catalog_path=series_catalog(tmp_path))
        env = {**cli_env(settings, dagster_home, settings.catalog_path), "MARKETDATA_FEAR_GREED_URL": emulator.url}
        backfill = marketdata("backfill", "sentiment", "--from", "2024-01-01", "--to", "2024-02-29", "--local",
                              cwd=tmp_path, env=env)
        assert backfill.returncode == 0, backfill.stderr
        assert backfill.stdout.startswith("done   alternative_me/fear_greed 2024-01-01...2024-02-01 (2 partitions) in ")
        report = marketdata_here("report", "--dataset", "fear_greed", "--format", "json", cwd=tmp_path, env=env)
        assert report.returncode == 0, report.stderr
        (row,) = json.loads(report.stdout)
        assert (row["asset"], row["venue"], row["symbol"], row["rows"]) == ("alternative_me/fear_greed", "alternative_me", None, 59)
        assert (row["expected_days"], row["missing_days"], row["partitions_materialized"]) == (60, 1, 2)
        assert row["missing_windows"] == [{"start": "2024-01-20 00:00", "end": "2024-01-21 00:00"}]
        assert row["checks"] == {"fear_greed_valid": "passed", "fear_greed_daily": "ERROR", "fear_greed_fresh": "passed"}
        table = marketdata("report", "--fail-on-gaps", cwd=tmp_path, env=env)
        assert table.returncode == 1
        assert "alternative_me/fear_greed: missing [2024-01-20 00:00, 2024-01-21 00:00) UTC" in table.stdout
        assert "1 of 60 days" in table.stdout
        summary = marketdata("summary", cwd=tmp_path, env=env)
        assert summary.stdout.splitlines()[1].split() == ["alternative_me/fear_greed", "59", "2024-01-01", "00:00",
                                                         "2024-02-29", "00:00"]
        skipped = marketdata_here("seed", cwd=tmp_path, env={**env, "SKIP_SENTIMENT": "1"})
        assert "skipping sentiment (SKIP_SENTIMENT=1)" in skipped.stdout
        assert "nothing to fetch" in skipped.stdout
        unknown = marketdata_here("report", "--dataset", "fear_and_greed", cwd=tmp_path, env=env)
        assert unknown.returncode == 2
        assert unknown.stderr.strip().startswith("marketdata report: unknown dataset 'fear_and_greed' (known: klines, ")


def test_the_packaged_catalog_keeps_the_index_with_a_daily_schedule():
    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings

    definitions = build_definitions(Settings())
    spec = next(s for s in definitions.resolve_all_asset_specs() if s.key == KEY)
    assert spec.partitions_def.get_first_partition_key() == "2018-02-01"
    assert spec.group_name == "alternative_me"
    schedule = definitions.resolve_schedule_def("fear_greed_daily")
    assert schedule.cron_schedule == "10 0 * * *"
    assert {c.name for c in definitions.resolve_assets_def(KEY).check_specs} == {
        "fear_greed_valid", "fear_greed_daily", "fear_greed_fresh"}


def _settings(emulator: EmulatorServer, warehouse_url: str):
    from marketdata_assets.settings import Settings

    return Settings(warehouse_url=warehouse_url, fear_greed_url=emulator.url)


@pytest.mark.parametrize("entry, message", [
    ({"source": "alternative_me", "dataset": "fear_and_greed"},
     "series[0] (alternative_me fear_and_greed): dataset: unknown dataset 'fear_and_greed' for a series entry"),
    ({"source": "alternative", "dataset": "fear_greed"},
     "series[0] (alternative fear_greed): source: fear_greed comes from alternative_me, not 'alternative'"),
    ({"source": "alternative_me", "dataset": "fear_greed", "keys": ["BTC"]},
     "series[0] (alternative_me fear_greed): keys: fear_greed has one series, so it takes no keys"),
    ({"source": "alternative_me", "dataset": "fear_greed", "smoothing": 7},
     "series[0] (alternative_me fear_greed): smoothing: not an option of fear_greed"),
    ({"source": "alternative_me", "dataset": "fear_greed", "start_date": "2099-01-01"},
     "series[0] (alternative_me fear_greed), field 'start_date': start_date 2099-01-01 is in the future"),
])
def test_a_bad_series_entry_fails_at_load_naming_the_entry_and_field(tmp_path, entry, message):
    from marketdata_assets.catalog import CatalogError, load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"series": [entry]}))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"catalog {path}: {message}")


def test_an_empty_catalog_says_so(tmp_path):
    from marketdata_assets.catalog import CatalogError, load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"start_date": "2020-01-01", "instruments": [], "series": []}))
    with pytest.raises(CatalogError, match="the catalog lists no instruments and no series: nothing to keep"):
        load_catalog(path)
