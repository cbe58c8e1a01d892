"""OKX and Bybit funding rates: their envelopes, newest-first paging, OKX's three months, Bybit's
startTime rule and rate limits, on the emulators; and the assets in a real Dagster instance."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import dagster as dg
import httpx
import polars as pl
import pytest

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.server import EmulatorServer
from marketdata_assets.sources.bybit import BybitFundingSource, parse_bybit_funding
from marketdata_assets.sources.errors import MalformedResponse, UpstreamBanned, UpstreamRejected
from marketdata_assets.sources.okx import OkxFundingSource, parse_okx_funding
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import FIXTURES, utc, with_settings, write_catalog
from marketdata_tests.test_assets import FAILED, MATERIALIZED, run_range, statuses, step_failure

OKX_BTC = dg.AssetKey(["okx_perp", "funding", "BTC_USDT_SWAP"])
BYBIT_BTC = dg.AssetKey(["bybit_perp", "funding", "BTCUSDT"])
EIGHT_HOURS = dt.timedelta(hours=8)


def month_start(moment: dt.datetime, months_back: int = 0) -> dt.datetime:
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(months_back):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return first


def test_the_recorded_bybit_answer_parses_ascending_at_exact_marks():
    body = json.loads((FIXTURES / "bybit_funding_history.json").read_text())
    frame = parse_bybit_funding(body, "BTCUSDT")
    assert frame["funding_time"].to_list() == [utc(2024, 3, 8, 0), utc(2024, 3, 8, 8)]
    assert frame["funding_rate"].to_list() == [0.00015, 0.0001]
    assert set(frame["venue"]) == {"bybit"} and frame["mark_price"].null_count() == 2
    with pytest.raises(MalformedResponse, match="newest first"):
        parse_bybit_funding({**body, "result": {"list": body["result"]["list"][::-1]}}, "BTCUSDT")
    with pytest.raises(MalformedResponse, match="row 0 is not a funding row"):
        parse_bybit_funding(body, "ETHUSDT")


def test_okx_rows_parse_from_their_envelope_newest_first():
    body = {"code": "0", "msg": "", "data": [
        {"instId": "BTC-USDT-SWAP", "instType": "SWAP", "fundingRate": "0.0001", "realizedRate": "0.0001",
         "fundingTime": "1709884800000", "method": "current_period"},
        {"instId": "BTC-USDT-SWAP", "instType": "SWAP", "fundingRate": "-0.00002", "realizedRate": "-0.00002",
         "fundingTime": "1709856000000", "method": "current_period"}]}
    frame = parse_okx_funding(body, "BTC-USDT-SWAP")
    assert frame.select("funding_time", "funding_rate").rows() == [(utc(2024, 3, 8, 0), -0.00002), (utc(2024, 3, 8, 8), 0.0001)]
    with pytest.raises(MalformedResponse, match="expected"):
        parse_okx_funding([], "BTC-USDT-SWAP")


def test_the_okx_emulator_pages_backwards_keeps_three_months_and_answers_in_its_envelope():
    with EmulatorServer() as emu:
        def get(**params):
            return httpx.get(emu.url + "/api/v5/public/funding-rate-history", params={"instId": "BTC-USDT-SWAP", **params})

        newest = get(limit=3).json()["data"]
        times = [int(row["fundingTime"]) for row in newest]
        assert times == sorted(times, reverse=True) and all(t % 28_800_000 == 0 for t in times)
        older = get(after=times[-1], limit=2).json()["data"]
        assert [int(row["fundingTime"]) for row in older] == [times[-1] - 28_800_000, times[-1] - 57_600_000]
        ninety_five_days_ago = int((dt.datetime.now(dt.UTC) - dt.timedelta(days=95)).timestamp() * 1000)
        assert get(after=ninety_five_days_ago).json() == {"code": "0", "msg": "", "data": []}  # no longer kept
        unknown = httpx.get(emu.url + "/api/v5/public/funding-rate-history", params={"instId": "NOPE-USDT-SWAP"})
        assert unknown.status_code == 200 and unknown.json() == {"code": "51001", "msg": "Instrument ID does not exist.", "data": []}
        assert get(limit=401).status_code == 400 and get(limit=401).json()["code"] == "51000"
    with EmulatorServer(EmulatorConfig(okx_funding_requests_per_2s=2)) as emu:
        # Five requests span at most two 2-second windows, so at least one is over the limit.
        answers = [httpx.get(emu.url + "/api/v5/public/funding-rate-history", params={"instId": "BTC-USDT-SWAP"})
                   for _ in range(5)]
        throttled = [a for a in answers if a.status_code == 429]
        assert throttled and throttled[0].json() == {"code": "50011", "msg": "Too Many Requests", "data": []}


def test_the_bybit_emulator_refuses_start_time_alone_and_throttles_as_bybit_does():
    with EmulatorServer(EmulatorConfig(bybit_requests_per_s=3)) as emu:
        def get(**params):
            return httpx.get(emu.url + "/v5/market/funding/history", params={"category": "linear", "symbol": "BTCUSDT", **params})

        alone = get(startTime=1709856000000).json()
        assert alone["retCode"] == 10001 and "endTime" in alone["retMsg"]
        rows = get(startTime=1709856000000, endTime=1709884800000).json()["result"]["list"]
        assert [row["fundingRateTimestamp"] for row in rows] == ["1709884800000", "1709856000000"]
        assert get(symbol="NOPEUSDT").json()["retCode"] == 10001
        # With the three before, ten requests span at most two seconds: some are over 3 a second.
        throttled = [a for a in (get() for _ in range(7)) if a.json()["retCode"] == 10006]
        assert throttled and throttled[0].status_code == 200 and "X-Bapi-Limit-Reset-Timestamp" in throttled[0].headers


def test_bybit_pages_backwards_through_a_year_and_waits_out_10006(emulator):
    with EmulatorServer(EmulatorConfig(bybit_requests_per_s=2)) as emu:  # six pages: the third in a second waits
        async def fetch():
            async with BybitFundingSource(emu.url) as source:
                return await source.fetch("BTCUSDT", utc(2023, 1, 1), utc(2024, 1, 1)), source.stats

        frame, stats = asyncio.run(fetch())
    assert frame.height == 365 * 3 and frame["funding_time"][0] == utc(2023, 1, 1)
    assert (frame["funding_time"].diff().drop_nulls() == EIGHT_HOURS).all()
    # 200 a page: six pages, each asked once more per 10006 (told to slow down) and per retry of a
    # transient failure (a loaded machine can time one out)
    assert stats.requests - stats.throttled - stats.retries == 6 and stats.throttled >= 1


def test_bybit_refusals_and_bans_name_the_request():
    with EmulatorServer(EmulatorConfig(bybit_requests_per_5s=1)) as emu:
        async def fetch(symbol):
            async with BybitFundingSource(emu.url) as source:
                return await source.fetch(symbol, utc(2024, 1, 1), utc(2024, 1, 2))

        with pytest.raises(UpstreamRejected, match=r"GET /v5/market/funding/history\?category=linear&symbol=NOPEUSDT.*code 10001: params error: symbol invalid"):
            asyncio.run(fetch("NOPEUSDT"))
        with pytest.raises(UpstreamBanned, match="IP banned until"):
            asyncio.run(fetch("BTCUSDT"))  # the second request in five seconds: HTTP 403


def test_okx_says_what_it_no_longer_keeps_instead_of_reading_empty():
    now = dt.datetime.now(dt.UTC)
    with EmulatorServer() as emu:
        async def fetch(start, end):
            async with OkxFundingSource(emu.url) as source:
                return await source.fetch("BTC-USDT-SWAP", start, end), source.failures, source.stats.requests

        recent, failures, requests = asyncio.run(fetch(now - dt.timedelta(days=60), now))
        assert failures == [] and abs(recent.height - 180) <= 1 and requests == 2  # 100 a page
        _, failures, _ = asyncio.run(fetch(utc(2024, 1, 1), utc(2024, 2, 1)))
        (failure,) = failures
        assert (failure.start, failure.end) == (utc(2024, 1, 1), utc(2024, 2, 1))
        assert "OKX keeps only about three months of funding history" in str(failure.error)


def test_okx_and_bybit_funding_assets_store_what_the_venues_hold_and_say_what_they_do_not(tmp_path, settings):
    now = dt.datetime.now(dt.UTC)
    first = month_start(now, 5)
    catalog = write_catalog(tmp_path / "c.yaml", [
        {"venue": "okx", "market": "perp", "symbol": "BTC-USDT-SWAP"},
        {"venue": "bybit", "market": "perp", "symbol": "BTCUSDT"},
    ], start_date=first.date().isoformat())
    settings = with_settings(settings, catalog_path=catalog, okx_url=settings.binance_futures_url,
                             bybit_url=settings.binance_futures_url)
    keys = [f"{month_start(now, back):%Y-%m-%d}" for back in range(5, -1, -1)]
    with dg.instance_for_test() as instance:
        okx, result = run_range(settings, OKX_BTC, keys[0], keys[-1], instance)
        assert not result.success
        message = step_failure(result)
        assert "OKX keeps only about three months of funding history (its oldest settlement now is" in message
        okx_statuses = statuses(instance, okx, keys)
        assert [okx_statuses[k] for k in keys[-2:]] == [MATERIALIZED, MATERIALIZED]
        assert [okx_statuses[k] for k in keys[:2]] == [FAILED, FAILED]  # five and four months back

        bybit, result = run_range(settings, BYBIT_BTC, keys[0], keys[-1], instance)
        assert result.success and set(statuses(instance, bybit, keys).values()) == {MATERIALIZED}
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"funding_cadence": True, "funding_rate_plausible": True}
        query = "SELECT * FROM market_data.funding_rates WHERE venue = ? ORDER BY funding_time"
        stored = open_warehouse(settings.warehouse_url).query(query, ["bybit"])
        assert stored["funding_time"][0] == first and (stored["funding_time"].diff().drop_nulls() == EIGHT_HOURS).all()
        run_range(settings, BYBIT_BTC, keys[0], keys[-2], instance)  # the closed months again
        again = open_warehouse(settings.warehouse_url).query(query, ["bybit"])
        assert again.drop("ingested_at").equals(stored.drop("ingested_at"))
    okx_rows = open_warehouse(settings.warehouse_url).query(query, ["okx"])
    kept_from = now - dt.timedelta(days=92)
    assert okx_rows.height > 0 and okx_rows["funding_time"][0] - kept_from < EIGHT_HOURS
    assert okx_rows.filter(pl.col("funding_time") < kept_from).is_empty()
