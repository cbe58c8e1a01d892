"""Binance USD-M funding rates: the REST endpoint and the archive's monthly files on the emulator,
and the `binance_perp/funding/<SYMBOL>` asset in a real Dagster instance."""

from __future__ import annotations

import asyncio
import datetime as dt

import dagster as dg
import httpx
import polars as pl
import pytest

from marketdata_assets.definitions import build_definitions
from marketdata_assets.sources.binance_archive import BinanceArchiveClient
from marketdata_assets.sources.binance_funding import (
    BinanceFundingClient,
    BinanceFundingSource,
    parse_funding_rows,
)
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import utc, with_settings, write_catalog
from marketdata_tests.test_assets import MATERIALIZED, run_range, statuses, step_failure

BTC_FUNDING = dg.AssetKey(["binance_perp", "funding", "BTCUSDT"])


def test_rest_rows_parse_with_their_exact_times_and_a_missing_mark_price():
    rows = [
        {"symbol": "BTCUSDT", "fundingRate": "-0.00037500", "fundingTime": 1570608000017, "markPrice": "34287.54"},
        {"symbol": "BTCUSDT", "fundingRate": "0.00010000", "fundingTime": 1570636800003, "markPrice": ""},
    ]
    frame = parse_funding_rows(rows, "BTCUSDT")
    assert frame["funding_time"].to_list() == [
        dt.datetime(2019, 10, 9, 8, 0, 0, 17000, tzinfo=dt.UTC), dt.datetime(2019, 10, 9, 16, 0, 0, 3000, tzinfo=dt.UTC)]
    assert frame["funding_rate"].to_list() == [-0.000375, 0.0001]
    assert frame["mark_price"].to_list() == [34287.54, None]
    with pytest.raises(MalformedResponse, match=r"row 1 is not a funding row"):
        parse_funding_rows([rows[0], {"symbol": "BTCUSDT", "fundingRate": "x", "fundingTime": 1}], "BTCUSDT")
    with pytest.raises(MalformedResponse, match="strictly ascending"):
        parse_funding_rows(rows[::-1], "BTCUSDT")


def test_the_emulator_pages_funding_as_binance_does(emulator):
    def get(**params):
        return httpx.get(emulator.url + "/fapi/v1/fundingRate", params={"symbol": "BTCUSDT", **params})

    first = get(startTime=0, limit=3).json()
    times = [row["fundingTime"] for row in first]
    marks = [int(utc(2019, 9, 9, h).timestamp() * 1000) for h in (0, 8, 16)]  # after the listing, every 8 hours
    assert [t - m for t, m in zip(times, marks, strict=True)] == [t % 28_800_000 for t in times]
    assert all(0 < t % 28_800_000 <= 30 for t in times)  # a few ms late, as Binance reports them
    assert len(get().json()) == 100  # the default limit, newest last
    # startTime at a mark returns that settlement, reported a few ms after it
    assert get(startTime=marks[1], limit=1).json()[0]["fundingTime"] == times[1]
    assert get(limit=1001).json() == {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
    assert httpx.get(emulator.url + "/fapi/v1/fundingRate", params={"symbol": "NOPEUSDT"}).json()["code"] == -1121


def test_archive_and_rest_give_the_same_settlements_but_for_the_mark_price(emulator):
    start, end = utc(2019, 9, 1), utc(2024, 3, 1)

    async def both():
        async with BinanceFundingClient(emulator.url) as rest:
            over_rest = await rest.fetch("BTCUSDT", start, end)
            requests = rest.stats.requests
        async with BinanceFundingSource(BinanceFundingClient(emulator.url), BinanceArchiveClient(emulator.url)) as mixed:
            return over_rest, requests, await mixed.fetch("BTCUSDT", start, end), mixed.rows_by_source

    over_rest, requests, from_archive, by_source = asyncio.run(both())
    assert over_rest.height == from_archive.height == 4905 and requests == 5  # 1,000 a page
    assert by_source == {"archive": 4905, "rest": 0}
    columns = ["venue", "symbol", "funding_time", "funding_rate"]
    assert over_rest.select(columns).equals(from_archive.select(columns))
    assert from_archive["mark_price"].null_count() == from_archive.height
    assert over_rest["mark_price"].null_count() == 0


def test_the_funding_asset_stores_every_settlement_once_and_a_rerun_changes_nothing(tmp_path, settings):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1h"], "start_date": "2024-01-01"}])
    settings = with_settings(settings, catalog_path=catalog)
    with dg.instance_for_test() as instance:
        asset, result = run_range(settings, BTC_FUNDING, "2024-01-01", "2024-02-01", instance)
        assert result.success
        assert statuses(instance, asset, ["2024-01-01", "2024-02-01"]) == {"2024-01-01": MATERIALIZED, "2024-02-01": MATERIALIZED}
        query = "SELECT * FROM market_data.funding_rates ORDER BY funding_time"
        first = open_warehouse(settings.warehouse_url).query(query)
        assert first.height == (31 + 29) * 3 and set(first["source"]) == {"archive"}
        assert 0 < (first["funding_time"][0] - utc(2024, 1, 1)).total_seconds() < 0.031  # exact, not rounded
        checks = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
        assert all(e.passed for e in checks.values()) and len(checks) == 4  # two checks, two months
        for month, days, window in (("2024-01-01", 31, "[2024-01-01 00:00, 2024-02-01 00:00) UTC"),
                                    ("2024-02-01", 29, "[2024-02-01 00:00, 2024-03-01 00:00) UTC")):
            assert checks["funding_cadence", month].metadata["expected_settlements"].value == days * 3
            assert checks["funding_cadence", month].metadata["window"].value == window
        run_range(settings, BTC_FUNDING, "2024-01-01", "2024-02-01", instance)
        again = open_warehouse(settings.warehouse_url).query(query)
        assert again.drop("ingested_at").equals(first.drop("ingested_at"))


def test_an_unknown_perp_symbol_fails_its_funding_run_naming_it(tmp_path, settings):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "NOPEUSDT", "timeframes": ["1h"], "start_date": "2024-01-01"}])
    settings = with_settings(settings, catalog_path=catalog)
    with dg.instance_for_test() as instance:
        key = dg.AssetKey(["binance_perp", "funding", "NOPEUSDT"])
        _, result = run_range(settings, key, "2024-01-01", "2024-01-01", instance)
    assert not result.success
    message = step_failure(result)  # the archive has no such file; REST refuses the symbol
    assert "GET /fapi/v1/fundingRate?symbol=NOPEUSDT" in message and "code -1121: Invalid symbol." in message
    assert open_warehouse(settings.warehouse_url).query("SELECT count(*) AS n FROM market_data.funding_rates")["n"][0] == 0


def test_datasets_narrow_a_perp_to_its_klines(tmp_path, settings):
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1h"], "datasets": ["klines"]},
        {"venue": "binance", "market": "perp", "symbol": "ETHUSDT", "timeframes": ["1h"]},
    ], start_date="2024-01-01")
    keys = {spec.key.to_user_string() for spec in build_definitions(with_settings(settings, catalog_path=catalog)).resolve_all_asset_specs()}
    assert keys == {"binance_perp/klines_1h/BTCUSDT", "binance_perp/klines_1h/ETHUSDT", "binance_perp/funding/ETHUSDT",
                    "binance_perp/open_interest/ETHUSDT", "binance_perp/long_short/ETHUSDT"}


def test_funding_checks_name_a_missing_settlement_one_off_the_grid_and_an_implausible_rate(tmp_path, any_warehouse_url, emulator):
    from marketdata_assets.datasets.funding import funding_check_results
    from marketdata_assets.sources.funding import FUNDING_RATES

    async def fetch():
        async with BinanceFundingClient(emulator.url) as rest:
            return await rest.fetch("BTCUSDT", utc(2024, 1, 1), utc(2024, 2, 1))

    frame = asyncio.run(fetch())
    warehouse = open_warehouse(any_warehouse_url)
    odd = frame.head(1).with_columns(
        funding_time=pl.lit(utc(2024, 1, 20, 3, 30)), funding_rate=pl.lit(0.2))  # off the grid, and 20%
    warehouse.upsert(FUNDING_RATES, pl.concat([frame.filter(pl.col("funding_time").dt.day() != 10), odd]))
    cadence, plausible = funding_check_results(
        warehouse, BTC_FUNDING, "binance", "BTCUSDT", utc(2024, 1, 1), utc(2024, 2, 1),
        first_window_end=utc(2019, 10, 1), current_window_start=utc(2026, 11, 1), now=utc(2026, 11, 21))
    values = {k: v.value for k, v in cadence.metadata.items()}
    assert not cadence.passed and (values["expected_settlements"], values["missing_settlements"], values["off_grid"]) == (93, 3, 1)
    assert values["first_missing"] == "2024-01-10 00:00, 2024-01-10 08:00, 2024-01-10 16:00"
    assert not plausible.passed and plausible.metadata["implausible_rows"].value == 1
    assert "2024-01-20 03:30:00" in plausible.metadata["samples"].value
