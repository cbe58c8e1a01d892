"""OKX and Bybit kline answers read into the klines table's schema, on the recorded answers in
shared/fixtures: closed bars only, ascending, on the UTC grid (issue 21, the parsers)."""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.bybit_klines import bybit_interval, parse_bybit_klines
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.okx_klines import okx_bar, parse_okx_candles
from marketdata_tests.conftest import FIXTURES, utc

OKX = json.loads((FIXTURES / "okx_history_candles.json").read_text())
BYBIT = json.loads((FIXTURES / "bybit_kline_linear.json").read_text())


def test_okx_candles_are_read_oldest_first_with_a_swaps_volume_in_coins():
    bars, still_open = parse_okx_candles(OKX, "BTC-USDT-SWAP", "perp", "1m")
    assert still_open == 0 and bars.schema == KLINES.schema
    # the recorded rows, newest first: 23:54 and 23:53 UTC on 2025-05-12; a swap's `vol` counts contracts,
    # its `volCcy` coins
    assert bars.select("open_time", "open", "high", "low", "close", "volume", "quote_volume").rows() == [
        (utc(2025, 5, 12, 23, 53), 102806.0, 102820.5, 102783.1, 102806.1, 71.6404, 7364701.57952),
        (utc(2025, 5, 12, 23, 54), 102806.1, 102820.4, 102806.1, 102820.4, 10.4037, 1069603.34883),
    ]
    assert set(bars["venue"]) == {"okx"} and bars["trades"].null_count() == 2  # OKX does not count trades
    spot, _ = parse_okx_candles(OKX, "BTC-USDT", "spot", "1m")
    assert spot["volume"].to_list() == [7164.04, 1040.37]  # spot's `vol` is in coins
    forming = copy.deepcopy(OKX)
    forming["data"][0][8] = "0"
    bars, still_open = parse_okx_candles(forming, "BTC-USDT-SWAP", "perp", "1m")
    assert (bars.height, still_open) == (1, 1)  # the bar not yet confirmed is not stored


def test_a_utc_plus_8_daily_bar_is_never_asked_for_and_refused_if_it_comes():
    assert okx_bar("1d") == "1Dutc" and okx_bar("1h") == "1H"
    with pytest.raises(ValueError, match="OKX has no UTC-aligned bar for timeframe '1D'"):
        okx_bar("1D")
    # OKX's plain 1D opens at 16:00 UTC (midnight in UTC+8)
    answer = {"code": "0", "msg": "", "data": [["1747065600000", "1", "2", "0.5", "1.5", "10", "10", "15", "1"]]}
    assert utc(2025, 5, 12, 16).timestamp() * 1000 == 1747065600000
    with pytest.raises(MalformedResponse, match="off the UTC grid of 1d bars \\(a UTC\\+8-aligned bar\\): refused"):
        parse_okx_candles(answer, "BTC-USDT", "spot", "1d")


def test_bybit_drops_the_candle_still_open_and_refuses_pages_out_of_order():
    bars, still_open = parse_bybit_klines(BYBIT, "BTCUSDT", "perp", "1m")
    assert (bars.height, still_open) == (0, 1)  # the recorded answer's one candle began 50 ms before its time
    assert bybit_interval("1h") == "60" and bybit_interval("1d") == "D"
    page = {"retCode": 0, "retMsg": "OK", "time": 1709891700000, "result": {"category": "linear", "symbol": "BTCUSDT",
            "list": [["1709891700000", "3", "3", "3", "3", "1", "3"],      # opened at `time`: still open
                     ["1709891640000", "2", "2.5", "1.5", "2", "4", "8"],
                     ["1709891580000", "1", "1.5", "0.5", "1", "2", "2"]]}}
    bars, still_open = parse_bybit_klines(page, "BTCUSDT", "perp", "1m")
    assert still_open == 1
    assert bars.select("open_time", "close", "volume", "quote_volume").rows() == [
        (utc(2024, 3, 8, 9, 53), 1.0, 2.0, 2.0), (utc(2024, 3, 8, 9, 54), 2.0, 4.0, 8.0)]
    shuffled = copy.deepcopy(page)
    shuffled["result"]["list"].reverse()
    with pytest.raises(MalformedResponse, match="rows are not newest first"):
        parse_bybit_klines(shuffled, "BTCUSDT", "perp", "1m")
    other = copy.deepcopy(page)
    other["result"]["symbol"] = "ETHUSDT"
    with pytest.raises(MalformedResponse, match="answered for linear ETHUSDT"):
        parse_bybit_klines(other, "BTCUSDT", "perp", "1m")


class Clock:
    def __init__(self, at):
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def test_the_okx_emulator_pages_newest_first_100_rows_at_a_time_with_the_forming_bar_unconfirmed():
    import httpx

    from marketdata_assets.emulator import EmulatorConfig, EmulatorServer

    clock = Clock(utc(2025, 5, 13, 12, 30, 30))
    config = EmulatorConfig(okx_history_candles_per_2s=3)
    with EmulatorServer(config, clock=clock) as emu:
        def history(**params):
            return httpx.get(emu.url + "/api/v5/market/history-candles", params={"instId": "BTC-USDT-SWAP", **params})

        first = history(bar="1m", limit=300).json()["data"]
        assert len(first) == 100  # whatever `limit` says
        assert first[0][0] == str(int(utc(2025, 5, 13, 12, 30).timestamp() * 1000)) and first[0][8] == "0"
        assert all(row[8] == "1" for row in first[1:])
        older = history(bar="1m", after=first[-1][0]).json()["data"]
        assert int(older[0][0]) == int(first[-1][0]) - 60_000  # `after`: strictly older, no row twice
        bars, still_open = parse_okx_candles({"code": "0", "data": first}, "BTC-USDT-SWAP", "perp", "1m")
        assert (bars.height, still_open) == (99, 1) and bars["open_time"].is_sorted()
        assert history(bar="1m").status_code == 200  # the third in two seconds: the last allowed
        refused = history(bar="1m")
        assert refused.status_code == 429 and refused.json()["code"] == "50011"
        clock.now += 2
        daily = history(bar="1D", limit=2).json()["data"]  # OKX's plain 1D: midnight in UTC+8
        assert [int(row[0]) for row in daily] == [int(utc(2025, 5, 12, 16).timestamp() * 1000),
                                                  int(utc(2025, 5, 11, 16).timestamp() * 1000)]
        assert history(bar="1Dutc", limit=1).json()["data"][0][0] == str(int(utc(2025, 5, 13).timestamp() * 1000))
        clock.now += 2
        assert history(instId="NOPE-USDT").json()["code"] == "51001"
        recent = httpx.get(emu.url + "/api/v5/market/candles", params={
            "instId": "BTC-USDT", "bar": "1m", "after": str(int(utc(2025, 5, 12).timestamp() * 1000))}).json()["data"]
        assert recent == []  # candles keeps the newest 1,440 bars only


def test_the_bybit_emulator_sends_the_forming_bar_first_and_bans_past_its_ip_limit():
    import httpx

    from marketdata_assets.emulator import EmulatorConfig, EmulatorServer

    clock = Clock(utc(2024, 3, 8, 9, 55, 20))
    with EmulatorServer(EmulatorConfig(bybit_requests_per_5s=3), clock=clock) as emu:
        def kline(**params):
            return httpx.get(emu.url + "/v5/market/kline", params={"category": "linear", "symbol": "BTCUSDT",
                                                                    "interval": "1", **params})

        answer = kline(limit=1000, start=str(int(utc(2024, 3, 8, 9).timestamp() * 1000))).json()
        rows = answer["result"]["list"]
        assert len(rows) == 56 and rows[0][0] == str(int(utc(2024, 3, 8, 9, 55).timestamp() * 1000))
        bars, still_open = parse_bybit_klines(answer, "BTCUSDT", "perp", "1m")
        assert (bars.height, still_open) == (55, 1) and bars["open_time"].min() == utc(2024, 3, 8, 9)
        assert kline(interval="7").json()["retCode"] == 10001
        assert kline().status_code == 200  # the third in five seconds: the last allowed
        assert kline().status_code == 403  # the fourth: banned
        clock.now += 60
        assert kline().status_code == 403  # for ten minutes


def test_the_clients_page_a_day_back_to_its_start_closed_bars_once_and_refuse_a_server_that_repeats_itself():
    import asyncio

    import orjson
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from marketdata_assets.emulator import EmulatorServer
    from marketdata_assets.emulator.server import LoopbackServer
    from marketdata_assets.sources.bybit_klines import BybitKlinesClient
    from marketdata_assets.sources.okx_klines import OkxKlinesClient

    clock = Clock(utc(2025, 5, 13, 12, 30, 30))

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    async def day(client, symbol: str, market: str, start, end):
        async with client:
            return await client.fetch(symbol, market, "1m", start, end), client

    with EmulatorServer(clock=clock) as emu:
        okx, okx_client = asyncio.run(day(OkxKlinesClient(emu.url, clock=clock, sleep=sleep), "BTC-USDT-SWAP", "perp",
                                          utc(2025, 5, 12), utc(2025, 5, 13)))
        bybit, _ = asyncio.run(day(BybitKlinesClient(emu.url, clock=clock, sleep=sleep), "BTCUSDT", "perp",
                                   utc(2025, 5, 12), utc(2025, 5, 13)))
        today, today_client = asyncio.run(day(OkxKlinesClient(emu.url, clock=clock, sleep=sleep), "BTC-USDT", "spot",
                                              utc(2025, 5, 13, 12), utc(2025, 5, 13, 13)))
    for bars in (okx, bybit):
        assert bars.height == 1440 and bars["open_time"].n_unique() == 1440 and bars["open_time"].is_sorted()
        assert (bars["open_time"].min(), bars["open_time"].max()) == (utc(2025, 5, 12), utc(2025, 5, 12, 23, 59))
    assert okx_client.stats.requests == 15  # 100 bars a page
    # the hour in progress: the 30 closed bars, not the one forming at 12:30
    assert today.height == 30 and today["open_time"].max() == utc(2025, 5, 13, 12, 29) and today_client.still_open == 1
    # OKX and Bybit sit within a few basis points of each other on the same pair
    closes = okx.join(bybit, on="open_time").select((pl.col("close") / pl.col("close_right") - 1).abs().max()).item()
    assert closes < 0.001

    same = [["1747094040000", "1", "1", "1", "1", "1", "1", "1", "1"]]

    async def stuck(request):
        return Response(orjson.dumps({"code": "0", "msg": "", "data": same}), media_type="application/json")

    with LoopbackServer(Starlette(routes=[Route("/api/v5/market/history-candles", stuck)])) as liar:
        with pytest.raises(MalformedResponse, match="the page after 1747094040000 holds rows from 1747094040000"):
            asyncio.run(day(OkxKlinesClient(liar.url, clock=clock, sleep=sleep), "BTC-USDT", "spot",
                            utc(2025, 5, 12), utc(2025, 5, 13)))
