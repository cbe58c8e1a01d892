"""Deribit option chains: the emulator as Deribit documents its API, and the source's snapshot."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from marketdata_assets.emulator import EmulatorServer
from marketdata_tests.conftest import utc

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def read_name(name: str) -> tuple[str, dt.datetime, float, str]:
    """currency, expiry (08:00 UTC), strike and type as an instrument name spells them: BTC-27DEC24-88000-C."""
    currency, day, strike, kind = name.split("-")
    month = next(i for i, m in enumerate(MONTHS, 1) if m in day)
    date = dt.datetime.strptime(f"{day[:day.index(MONTHS[month - 1])]} {month} {day[-2:]}", "%d %m %y")
    return currency, date.replace(hour=8, tzinfo=dt.UTC), float(strike), {"C": "call", "P": "put"}[kind]


class Clock:
    def __init__(self, at: dt.datetime):
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def test_the_emulator_lists_weekly_monthly_and_quarterly_expiries_and_limits_get_instruments():
    clock = Clock(utc(2024, 12, 20, 10))
    with EmulatorServer(clock=clock) as emu:
        answer = httpx.get(emu.url + "/api/v2/public/get_instruments", params={"currency": "BTC", "kind": "option"}).json()
        assert answer["jsonrpc"] == "2.0" and answer["testnet"] is False
        instruments = answer["result"]
        for row in instruments:
            currency, expiry, strike, kind = read_name(row["instrument_name"])
            assert (currency, row["strike"], row["option_type"]) == ("BTC", strike, kind)
            assert row["expiration_timestamp"] == int(expiry.timestamp() * 1000) and expiry.weekday() == 4
            assert strike % 1000 == 0
        expiries = sorted({read_name(r["instrument_name"])[1] for r in instruments})
        # four weeklies from the next Friday, the next three month-ends, the quarters' last Fridays
        assert [e.date() for e in expiries] == [dt.date(2024, 12, 27), dt.date(2025, 1, 3), dt.date(2025, 1, 10),
                                                dt.date(2025, 1, 17), dt.date(2025, 1, 31), dt.date(2025, 2, 28),
                                                dt.date(2025, 3, 28), dt.date(2025, 6, 27), dt.date(2025, 9, 26)]
        summary = httpx.get(emu.url + "/api/v2/public/get_book_summary_by_currency",
                            params={"currency": "BTC", "kind": "option"}).json()["result"]
        assert {s["instrument_name"] for s in summary} == {r["instrument_name"] for r in instruments}
        assert all(s["open_interest"] >= 0 and s["mark_iv"] > 0 and "gamma" not in s for s in summary)
        bad = httpx.get(emu.url + "/api/v2/public/get_book_summary_by_currency", params={"currency": "XRP", "kind": "option"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == -32602
        statuses = [httpx.get(emu.url + "/api/v2/public/get_instruments", params={"currency": "ETH", "kind": "option"})
                    for _ in range(5)]
        assert [s.status_code for s in statuses] == [200, 200, 200, 200, 429]  # a burst of 5 (one spent above)
        assert statuses[-1].json()["error"] == {"code": 10028, "message": "too_many_requests"}
        clock.now += 10  # one more token every 10 s
        assert httpx.get(emu.url + "/api/v2/public/get_instruments", params={"currency": "ETH", "kind": "option"}).status_code == 200


def test_a_snapshot_joins_each_line_to_its_instrument_keeps_them_cached_and_waits_out_10028():
    from marketdata_assets.datasets.gex import OPTION_CHAIN_SNAPSHOTS
    from marketdata_assets.sources.deribit import DeribitChainSource
    from marketdata_assets.sources.errors import UpstreamRejected

    clock = Clock(utc(2024, 12, 20, 10))
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        clock.now += seconds

    async def snapshots(url: str):
        DeribitChainSource._instruments.clear()
        async with DeribitChainSource(url, OPTION_CHAIN_SNAPSHOTS, "gex", clock=clock, sleep=sleep) as source:
            first, rejected = await source.snapshot("BTC")
            again, _ = await source.snapshot("BTC")
            clock.now += 7 * 86_400  # a week on: a new weekly expiry is listed
            emu.deribit.refuse_next = 1
            later, _ = await source.snapshot("BTC")
            with pytest.raises(UpstreamRejected, match=r"code -32602: Invalid params \(wrong format\)"):
                await source.snapshot("XRP")
            return first, rejected, again, later, source.outcome()

    with EmulatorServer(clock=clock) as emu:
        first, rejected, again, later, outcome = asyncio.run(snapshots(emu.url))
        assert emu.deribit.requests["get_instruments"] == 2  # the first snapshot's, and the new listing's
    assert rejected.is_empty() and first.height == 450 and first.schema == OPTION_CHAIN_SNAPSHOTS.schema
    for row in first.iter_rows(named=True):
        assert (row["currency"], row["expiry"], row["strike"], row["option_type"]) == read_name(row["instrument_name"])
    (taken,) = set(first["snapshot_time"])  # one time, Deribit's own, for the whole chain
    assert utc(2024, 12, 20, 10) <= taken < utc(2024, 12, 20, 10, 0, 1)
    assert again.height == 450
    assert later["expiry"].min() > utc(2024, 12, 27, 8) and later.height > 0
    assert outcome.metadata["http_429"] == 1 and max(waited) >= 10  # the 10028 was waited out, not hammered
    assert outcome.metadata["instrument_lists_fetched"] == 2


def test_an_hourly_tick_captures_gex_a_past_hour_refuses_and_the_report_says_not_captured(
    tmp_path, warehouse_url, capsys,
):
    import dagster as dg
    import yaml

    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.test_assets import run_range, step_failure
    from marketdata_tests.test_automation import evaluate
    from marketdata_tests.test_cli import marketdata_here
    from marketdata_tests.test_gex import independent_gex

    import time

    now = dt.datetime.now(dt.UTC)
    if now.minute == 59 and now.second >= 30:  # the hour the tick asks for must still be the hour its run takes
        time.sleep(61 - now.second)
        now = dt.datetime.now(dt.UTC)
    yesterday = (now - dt.timedelta(days=1)).date()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"series": [
        {"source": "deribit", "dataset": "gex", "keys": ["BTC"], "start_date": yesterday.isoformat()}]}))
    key = dg.AssetKey(["deribit", "gex", "BTC"])
    with EmulatorServer() as emu, dg.instance_for_test() as instance:
        settings = Settings(warehouse_url=warehouse_url, catalog_path=catalog, deribit_url=emu.url)
        definitions = build_definitions(settings)
        # The hourly tick asks for the hour in progress only: the hours before it cannot be had
        data, log = evaluate(definitions, "gex_hourly", instance, capsys)
        hour = f"{now:%Y-%m-%d-%H}:00"
        (request,) = data.run_requests
        assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) \
            == (hour, hour), log
        result = definitions.resolve_job_def("gex_hourly").execute_in_process(
            instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False)
        assert result.success
        warehouse = open_warehouse(warehouse_url)
        chain = warehouse.query("SELECT * FROM market_data.option_chain_snapshots")
        totals = warehouse.query("SELECT * FROM market_data.gex_summary").row(0, named=True)
        per_strike = warehouse.query("SELECT * FROM market_data.gex_snapshots")
        assert chain.height == emu.deribit.stats()["requests"]["get_book_summary_by_currency"] * 450
        assert totals["lines"] == chain.height and totals["snapshot_time"] >= now.replace(minute=0, second=0, microsecond=0)
        # the stored GEX, recomputed from the stored chain by the test's own implementation
        taken = totals["snapshot_time"]
        lines = [(r["underlying_price"], r["strike"], r["mark_iv"], (r["expiry"] - taken).total_seconds() / (365 * 86_400),
                  r["open_interest"], r["option_type"] == "call", r["expiry"]) for r in chain.iter_rows(named=True)]
        assert totals["net_gex"] == pytest.approx(sum(independent_gex(*line[:6]) for line in lines), rel=1e-9)
        for row in per_strike.sample(20, seed=1).iter_rows(named=True):
            mine = [line for line in lines if line[1] == row["strike"] and line[6] == row["expiry"]]
            assert row["net_gex"] == pytest.approx(sum(independent_gex(*line[:6]) for line in mine), rel=1e-9, abs=1e-6)
        assert per_strike.height == chain.select("expiry", "strike").unique().height
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["gex_captured"].passed and checks["gex_valid"].passed

        # A past hour: its partition fails saying why, and nothing is stored for it
        past = f"{yesterday:%Y-%m-%d}-10:00"
        _, refused = run_range(settings, key, past, past, instance)
        assert not refused.success
        assert "Deribit serves only the current chain: past snapshots cannot be backfilled" in step_failure(refused)
        assert warehouse.query("SELECT count(*) AS n FROM market_data.gex_summary")["n"][0] == 1
        assert past not in instance.get_materialized_partitions(key)
        env = {"MARKETDATA_WAREHOUSE_URL": warehouse_url, "MARKETDATA_CATALOG": str(catalog),
               "MARKETDATA_DERIBIT_URL": emu.url, "DAGSTER_HOME": str(tmp_path / "home")}
        cli = marketdata_here("backfill", "gex", "--from", yesterday.isoformat(), "--local", cwd=tmp_path, env=env)
        assert (cli.returncode, cli.stderr.strip()) == (2, f"marketdata backfill: deribit/gex/BTC {yesterday:%Y-%m-%d}-00:00: "
                                                           "Deribit serves only the current chain: past snapshots cannot "
                                                           "be backfilled")
        # `seed` (a year back by default) takes the one snapshot there is, into a fresh warehouse
        seeded_url = f"duckdb:///{tmp_path / 'seeded.duckdb'}"
        seeded = marketdata_here("seed", cwd=tmp_path, env={**env, "MARKETDATA_WAREHOUSE_URL": seeded_url})
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        assert "deribit/gex/BTC: deribit serves only what stands now, so 1 of its " in seeded.stdout
        assert open_warehouse(seeded_url).query("SELECT count(*) AS n FROM market_data.gex_summary")["n"][0] == 1
        skipped = marketdata_here("seed", cwd=tmp_path, env={**env, "MARKETDATA_WAREHOUSE_URL": seeded_url,
                                                             "SKIP_GEX": "1"})
        assert "skipping gex (SKIP_GEX=1)" in skipped.stdout

    # The report: the hours since the entry began that have no snapshot are "not captured"
    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.coverage import series_assets, series_coverage

    with dg.instance_for_test() as fresh:
        (coverage,) = series_coverage(fresh, open_warehouse(warehouse_url), series_assets(load_catalog(catalog)))
    hours = int((now.replace(minute=0, second=0, microsecond=0)
                 - dt.datetime.combine(yesterday, dt.time(), dt.UTC)).total_seconds() // 3600)
    assert (coverage.expected, coverage.missing) == (hours, hours)  # the one captured is the hour in progress
    from marketdata_assets.report import render_table

    line = next(line for line in render_table([], [coverage]).splitlines() if line.startswith("deribit/gex/BTC"))
    assert f"{hours} of {hours} snapshots not captured" in line
