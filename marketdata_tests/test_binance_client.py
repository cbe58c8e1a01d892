"""The Binance klines client against the emulator over real HTTP: pagination, limits, faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import orjson
import polars as pl
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator import EmulatorConfig, EmulatorServer, LoopbackServer
from marketdata_assets.emulator.config import Faults
from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient, fetch_klines, parse_klines
from marketdata_assets.sources.errors import (
    MalformedResponse,
    UpstreamBanned,
    UpstreamRejected,
    UpstreamUnavailable,
)
from marketdata_assets.timeframes import timeframe
from marketdata_tests.conftest import TimeWarp, bars_in_maintenance, utc


def emulator_rows(url: str, path: str, symbol: str, interval: str, start: dt.datetime, count: int) -> pl.DataFrame:
    """What the server holds, asked for directly, page by page: the truth to compare with."""
    rows, cursor = [], int(start.timestamp() * 1000)
    while len(rows) < count:
        page = httpx.get(url + path, params={"symbol": symbol, "interval": interval, "startTime": cursor,
                                             "limit": min(1000, count - len(rows))}).json()
        if not page:
            break
        rows += page
        cursor = page[-1][0] + 1
    market = "spot" if path.startswith("/api") else "perp"
    return parse_klines(rows, market=market, symbol=symbol, tf=timeframe(interval))


def test_window_gives_exactly_the_servers_closed_candles(emulator):
    start, end = utc(2024, 1, 1), utc(2024, 1, 3, 12)
    got = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", start, end)
    expected = emulator_rows(emulator.url, "/api/v3/klines", "BTCUSDT", "1m", start, 3600)
    assert got.frame.drop("ingested_at").equals(expected.drop("ingested_at"))
    assert got.frame["open_time"].max() == utc(2024, 1, 3, 11, 59)
    assert got.stats.requests == 4  # 3600 bars: pages of 1000, 1000, 1000 and a last partial 600
    assert got.stats.weight == 8


def test_perp_pages_hold_499_rows_at_weight_2(emulator):
    got = fetch_klines("perp", emulator.url, "ETHUSDT", "1m", utc(2024, 2, 1), utc(2024, 2, 2))
    assert got.frame.height == 1440
    assert got.stats.requests == 3 and got.stats.weight == 6
    assert got.frame["market"].unique().to_list() == ["perp"]


def test_listing_inside_the_window():
    listed = utc(2024, 3, 10, 13, 37)
    config = EmulatorConfig().with_listing("spot", "NEWUSDT", listed)
    with EmulatorServer(config) as emu:
        got = fetch_klines("spot", emu.url, "NEWUSDT", "1m", utc(2024, 3, 10), utc(2024, 3, 11))
    assert got.frame.height == 24 * 60 - (13 * 60 + 37)
    assert got.frame["open_time"].min() == listed
    assert got.frame["open_time"].max() == utc(2024, 3, 10, 23, 59)


def test_empty_windows(emulator):
    before_listing = fetch_klines("perp", emulator.url, "BTCUSDT", "1h", utc(2019, 1, 1), utc(2019, 2, 1))
    assert before_listing.frame.is_empty() and before_listing.stats.requests == 2  # 744 bars: 2 pages of 499
    nothing = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 1))
    assert nothing.frame.is_empty() and nothing.stats.requests == 0


def test_window_reaching_the_open_candle_stops_at_the_last_closed_one(emulator):
    now = dt.datetime.now(dt.UTC)
    got = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", now - dt.timedelta(minutes=30), now + dt.timedelta(hours=1))
    newest = got.frame["open_time"].max()
    after = dt.datetime.now(dt.UTC)
    assert newest + dt.timedelta(minutes=1) <= after  # closed when we stored it
    assert newest >= now.replace(second=0, microsecond=0) - dt.timedelta(minutes=2)  # and it is the latest
    assert got.frame.height in (29, 30)


def test_a_window_entirely_in_the_future_is_empty(emulator):
    now = dt.datetime.now(dt.UTC)
    got = fetch_klines("spot", emulator.url, "BTCUSDT", "1h", now + dt.timedelta(hours=2), now + dt.timedelta(days=2))
    assert got.frame.is_empty() and got.stats.requests == 0


async def _fetch_with(client: BinanceKlinesClient, *args) -> tuple[pl.DataFrame, object]:
    async with client:
        frame = await client.fetch(*args)
        return frame, client.stats


def test_full_concurrency_spends_each_minute_budget_without_a_429():
    # 10x, not 30x: a warped minute must hold 30 requests even while the other worker loads the machine
    warp = TimeWarp(speed=10)
    limit = 60  # 30 spot requests a minute; ~2 minutes of weight below
    with EmulatorServer(EmulatorConfig(spot_weight_limit=limit), clock=warp) as emu:
        warp.wait_for_next_minute()
        client = BinanceKlinesClient("spot", emu.url, weight_limit=limit, max_concurrency=10, clock=warp, sleep=warp.sleep)
        frame, stats = asyncio.run(_fetch_with(client, "BTCUSDT", "1h", utc(2017, 8, 17), utc(2024, 8, 17)))
        ledger = emu.binance.ledgers["spot"]
    assert bars_in_maintenance("spot", 3600, utc(2017, 8, 17), utc(2024, 8, 17)) == 73  # hours with no candles
    assert frame.height == ledger_rows(utc(2017, 8, 17, 4), utc(2024, 8, 17), 3600)
    # 62 pages, and one more where a page ends inside an outage: the client asks on to be sure
    assert stats.requests == 63 and stats.throttled == 0
    assert ledger.answers == {200: 63}
    minutes = sorted(ledger.weight_by_minute.items())
    assert all(weight <= limit for _, weight in minutes)
    assert [weight for _, weight in minutes[:2]] == [limit, limit]  # every full minute used to the last unit


def ledger_rows(first: dt.datetime, end: dt.datetime, seconds: int) -> int:
    """Spot bars from the listing bar `first` up to `end`, but for documented maintenance."""
    return int((end - first).total_seconds()) // seconds - bars_in_maintenance("spot", seconds, first, end)


def test_recovers_from_429_caused_by_another_client_and_is_never_banned():
    # 10x, not 30x: the other client's 25 requests must land inside one minute even on a busy machine
    warp = TimeWarp(speed=10)
    limit = 60
    config = EmulatorConfig(spot_weight_limit=limit, ban_after_violations=3, ban_grace_s=20)
    with EmulatorServer(config, clock=warp) as emu:
        # Someone else on this IP spends most of the minute's budget first, with time left in that
        # minute for our client to meet it (on a loaded host the 25 requests may miss the minute: again)
        for _ in range(3):
            warp.wait_for_next_minute()
            minute = warp() // 60
            for _ in range(25):
                httpx.get(emu.url + "/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "1d", "limit": 1})
            if warp() // 60 == minute and warp() % 60 < 45:
                break
        client = BinanceKlinesClient("spot", emu.url, weight_limit=limit, max_concurrency=10, clock=warp, sleep=warp.sleep)
        frame, stats = asyncio.run(_fetch_with(client, "BTCUSDT", "1h", utc(2018, 1, 1), utc(2020, 1, 1)))
        answers = dict(emu.binance.ledgers["spot"].answers)
    assert frame.height == ledger_rows(utc(2018, 1, 1), utc(2020, 1, 1), 3600)
    assert frame["open_time"].is_unique().all()
    assert stats.throttled >= 1
    assert answers.get(418, 0) == 0


def test_transient_faults_are_retried_until_every_row_is_there(emulator):
    start, end = utc(2023, 6, 1), utc(2023, 6, 4)
    clean = fetch_klines("spot", emulator.url, "BTCUSDT", "1m", start, end).frame
    config = EmulatorConfig(faults=Faults(server_error_rate=0.3, truncate_rate=0.2, latency_ms=2, seed=11))
    with EmulatorServer(config) as flaky:
        got = fetch_klines("spot", flaky.url, "BTCUSDT", "1m", start, end, backoff_base_s=0.01, max_attempts=10)
    assert got.stats.retries > 0
    assert got.frame.drop("ingested_at").equals(clean.drop("ingested_at"))


def test_a_server_that_keeps_failing_gives_up_with_the_cause():
    with EmulatorServer(EmulatorConfig(faults=Faults(server_error_rate=1.0))) as down:
        with pytest.raises(UpstreamUnavailable) as caught:
            fetch_klines("spot", down.url, "BTCUSDT", "1m", utc(2023, 6, 1), utc(2023, 6, 2),
                         backoff_base_s=0.01, max_attempts=3)
    message = str(caught.value)
    assert message.startswith("binance spot: GET /api/v3/klines?symbol=BTCUSDT&interval=1m")
    assert "failed 3 times; last: HTTP 503" in message


def test_unknown_symbol_is_a_clear_error(emulator):
    with pytest.raises(UpstreamRejected) as caught:
        fetch_klines("spot", emulator.url, "NOPEUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 2))
    assert caught.value.code == -1121
    assert "binance spot: GET /api/v3/klines?symbol=NOPEUSDT" in str(caught.value)
    assert "rejected with HTTP 400: code -1121: Invalid symbol." in str(caught.value)


def test_an_ip_ban_stops_the_fetch_and_says_when_it_ends():
    config = EmulatorConfig(spot_weight_limit=4, ban_after_violations=1, ban_grace_s=0, ban_seconds=600)
    with EmulatorServer(config) as emu:
        for _ in range(4):  # someone on this IP ignores the 429 and earns the ban
            httpx.get(emu.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d", "limit": 1})
        with pytest.raises(UpstreamBanned) as caught:
            fetch_klines("spot", emu.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 2))
    ban_end = caught.value.until
    assert dt.timedelta(seconds=590) < ban_end - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=600)
    assert f"IP banned until {ban_end:%Y-%m-%d %H:%M:%S} UTC" in str(caught.value)


def test_after_a_ban_no_client_of_the_process_asks_that_host_again_until_it_ends():
    from marketdata_assets.sources.binance_funding import BinanceFundingClient

    config = EmulatorConfig(spot_weight_limit=4, futures_weight_limit=4, ban_after_violations=1, ban_grace_s=0,
                            ban_seconds=600)
    with EmulatorServer(config) as emu:
        for _ in range(4):  # someone on this IP ignores the 429 and earns the ban
            httpx.get(emu.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d", "limit": 1})
        with pytest.raises(UpstreamBanned) as first:
            fetch_klines("spot", emu.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 2))
        def answered() -> int:
            return sum(emu.binance.ledgers["spot"].answers.values()) + sum(emu.binance.ledgers["perp"].answers.values())

        # requests already in flight when the 418 came are still answered: count once they are
        sent = answered()
        while time.sleep(0.3) or answered() != sent:
            sent = answered()

        async def funding():
            async with BinanceFundingClient(emu.url) as client:
                return await client.fetch("BTCUSDT", utc(2024, 1, 1), utc(2024, 1, 2))

        for again in (lambda: fetch_klines("perp", emu.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 2)),
                      lambda: asyncio.run(funding())):
            with pytest.raises(UpstreamBanned) as caught:
                again()
            assert abs(caught.value.until - first.value.until) < dt.timedelta(seconds=1)  # the same ban
            assert "earned earlier by this process" in str(caught.value)
        time.sleep(0.3)
        after = answered()
    assert after == sent  # not one request more to the banned host


def _server(handler) -> LoopbackServer:
    async def endpoint(request: Request) -> Response:
        status, body, headers = handler(dict(request.query_params))
        return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")

    return LoopbackServer(Starlette(routes=[Route("/api/v3/klines", endpoint)]))


def _row(open_ms: int, unit: int = 1) -> list:
    return [open_ms * unit, "1.0", "2.0", "0.5", "1.5", "10.0", (open_ms + 60_000) * unit - 1, "15.0", 3, "4.0", "6.0", "0"]


def test_a_server_answering_outside_the_asked_window_is_caught():
    def liar(params):
        start = int(params["startTime"])
        return 200, [_row(start - 60_000), _row(start)], {}

    with _server(liar) as server, pytest.raises(MalformedResponse, match=r"asked for open times in \["):
        fetch_klines("spot", server.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 1, 1))


def test_a_server_answering_out_of_order_is_caught():
    def shuffler(params):
        start = int(params["startTime"])
        return 200, [_row(start + 60_000), _row(start)], {}

    with _server(shuffler) as server, pytest.raises(MalformedResponse, match="strictly ascending"):
        fetch_klines("spot", server.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 1, 1))


def test_a_server_that_pages_smaller_than_asked_is_followed_and_microseconds_are_read():
    def small_pages(params):
        start, end = int(params["startTime"]), int(params["endTime"])
        first = -(-start // 60_000) * 60_000
        rows = [_row(t, 1000) for t in range(first, min(end + 1, first + 10 * 60_000), 60_000)]
        return 200, rows, {"X-MBX-TIME-UNIT": "MICROSECOND"}

    with _server(small_pages) as server:
        got = fetch_klines("spot", server.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 1, 1))
    assert got.frame["open_time"].to_list() == [utc(2024, 1, 1, 0, m) for m in range(60)]


def test_timeouts_are_retried_then_reported():
    with EmulatorServer(EmulatorConfig(faults=Faults(latency_ms=400))) as slow:
        with pytest.raises(UpstreamUnavailable, match="failed 2 times; last: ReadTimeout"):
            fetch_klines("spot", slow.url, "BTCUSDT", "1h", utc(2023, 6, 1), utc(2023, 6, 2),
                         timeout_s=0.1, backoff_base_s=0.01, max_attempts=2)


def test_clients_in_one_process_share_the_hosts_budget(emulator):
    """Binance counts weight per IP: a second asset step must not start from a blank budget."""
    first = BinanceKlinesClient("spot", emulator.url)
    second = BinanceKlinesClient("spot", emulator.url)
    other_market = BinanceKlinesClient("perp", emulator.url)
    assert first._http.budget is second._http.budget
    assert first._http.budget is not other_market._http.budget
