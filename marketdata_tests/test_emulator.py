"""The Binance emulator speaks Binance's documented kline API over real HTTP."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import httpx
import pytest

from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import Faults
from marketdata_tests.conftest import utc

LISTED = int(utc(2017, 8, 17, 4).timestamp() * 1000)
MINUTE = 60_000


class SettableClock:
    def __init__(self, at: dt.datetime):
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def klines(url: str, path: str = "/api/v3/klines", **params) -> httpx.Response:
    return httpx.get(url + path, params={"symbol": "BTCUSDT", "interval": "1m", **params})


def test_rows_have_binance_wire_format(emulator):
    response = klines(emulator.url, startTime=LISTED, limit=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["X-MBX-USED-WEIGHT-1M"].isdigit()
    rows = response.json()
    assert len(rows) == 5
    for index, row in enumerate(rows):
        assert len(row) == 12
        open_time, o, h, low, c, v, close_time, qv, trades, tbv, tbq, ignore = row
        assert open_time == LISTED + index * MINUTE
        assert close_time == open_time + MINUTE - 1
        assert all(isinstance(x, str) and "." in x for x in (o, h, low, c, v, qv, tbv, tbq))
        assert isinstance(trades, int) and ignore == "0"
        assert float(low) <= min(float(o), float(c)) <= max(float(o), float(c)) <= float(h)
        assert float(tbv) <= float(v)


def test_candles_are_deterministic(emulator):
    first = klines(emulator.url, startTime=LISTED + 10 * MINUTE, limit=3).json()
    again = klines(emulator.url, startTime=LISTED + 9 * MINUTE, limit=4).json()
    assert first == again[1:]


def test_start_end_limit_semantics(emulator):
    start = LISTED + 100 * MINUTE
    # startTime: the oldest rows from there, ascending; an unaligned start rounds up to the next bar
    rows = klines(emulator.url, startTime=start + 1, limit=3).json()
    assert [r[0] for r in rows] == [start + MINUTE, start + 2 * MINUTE, start + 3 * MINUTE]
    # both: open times within [startTime, endTime], capped by limit
    rows = klines(emulator.url, startTime=start, endTime=start + 4 * MINUTE, limit=1000).json()
    assert [r[0] for r in rows] == [start + i * MINUTE for i in range(5)]
    # endTime only: the `limit` rows ending there
    rows = klines(emulator.url, endTime=start, limit=2).json()
    assert [r[0] for r in rows] == [start - MINUTE, start]
    # default limit 500; before the listing nothing
    assert len(klines(emulator.url, startTime=start).json()) == 500
    assert klines(emulator.url, startTime=0, endTime=LISTED - 1).json() == []
    # from before the listing: the first candle is the listing's
    assert klines(emulator.url, startTime=0, limit=1).json()[0][0] == LISTED


def test_the_forming_candle_is_included_like_binance_does():
    clock = SettableClock(utc(2024, 5, 1, 12, 30, 20))
    with EmulatorServer(clock=clock) as emu:
        rows = klines(emu.url, limit=2).json()
    newest = rows[-1]
    assert newest[0] == int(utc(2024, 5, 1, 12, 30).timestamp() * 1000)
    assert newest[6] > clock.now * 1000  # closes in the future: still forming


@pytest.mark.parametrize(
    ("params", "status", "code", "msg"),
    [
        ({"symbol": "NOPEUSDT"}, 400, -1121, "Invalid symbol."),
        ({"interval": "7m"}, 400, -1120, "Invalid interval."),
        ({"startTime": "yesterday"}, 400, -1100, "Illegal characters found in parameter 'startTime'"),
        ({"symbol": ""}, 400, -1102, "Mandatory parameter 'symbol' was not sent"),
        ({"limit": 1001}, 400, -1130, "Data sent for parameter 'limit' is not valid."),
        ({"startTime": 2000, "endTime": 1000}, 400, -1023, "Start time is greater than end time."),
    ],
)
def test_error_bodies_are_binance_shaped(emulator, params, status, code, msg):
    response = klines(emulator.url, **params)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code and body["msg"].startswith(msg)
    assert "X-MBX-USED-WEIGHT-1M" in response.headers


def test_futures_weight_depends_on_limit_and_counts_per_minute():
    clock = SettableClock(utc(2024, 5, 1, 12, 0, 1))
    with EmulatorServer(clock=clock) as emu:
        used = []
        for limit in (99, 499, 1000, 1500):
            response = klines(emu.url, "/fapi/v1/klines", startTime=LISTED, limit=limit)
            assert response.status_code == 200
            used.append(int(response.headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [1, 3, 8, 18]  # weights 1, 2, 5, 10
        clock.now += 60
        response = klines(emu.url, "/fapi/v1/klines", startTime=LISTED, limit=499)
        assert response.headers["X-MBX-USED-WEIGHT-1M"] == "2"
        spot = klines(emu.url, startTime=LISTED, limit=1000)
        assert spot.headers["X-MBX-USED-WEIGHT-1M"] == "2"  # spot has its own budget


def test_429_over_budget_then_418_for_a_client_that_keeps_going():
    clock = SettableClock(utc(2024, 5, 1, 12, 0, 10))
    config = EmulatorConfig(spot_weight_limit=10, ban_after_violations=3, ban_grace_s=1.0, ban_seconds=300)
    with EmulatorServer(config, clock=clock) as emu:
        for _ in range(5):
            assert klines(emu.url, limit=10).status_code == 200
        over = klines(emu.url, limit=10)
        assert over.status_code == 429
        assert over.headers["Retry-After"] == "50"  # until the minute ends
        assert over.json()["code"] == -1003
        clock.now += 0.5  # in flight when the 429 went out: not held against the client
        assert klines(emu.url, limit=10).status_code == 429
        clock.now += 2
        statuses = [klines(emu.url, limit=10).status_code for _ in range(3)]
        assert statuses == [429, 429, 418]
        banned = klines(emu.url, limit=10)
        assert banned.status_code == 418
        assert 290 <= int(banned.headers["Retry-After"]) <= 300
        assert "IP banned until" in banned.json()["msg"]
        clock.now += 301
        assert klines(emu.url, limit=10).status_code == 200


def test_client_that_waits_out_retry_after_is_never_banned():
    clock = SettableClock(utc(2024, 5, 1, 12, 0, 10))
    config = EmulatorConfig(spot_weight_limit=10, ban_after_violations=1)
    with EmulatorServer(config, clock=clock) as emu:
        for _ in range(5):
            klines(emu.url, limit=10)
        over = klines(emu.url, limit=10)
        assert over.status_code == 429
        clock.now += int(over.headers["Retry-After"])
        assert klines(emu.url, limit=10).status_code == 200


def test_fault_injection_5xx_and_truncated_bodies():
    config = EmulatorConfig(faults=Faults(server_error_rate=0.5, truncate_rate=0.5, seed=7))
    with EmulatorServer(config) as emu:
        answers = [klines(emu.url, startTime=LISTED, limit=50) for _ in range(40)]
    statuses = [a.status_code for a in answers]
    assert 503 in statuses and 200 in statuses
    assert all(a.json()["code"] == -1001 for a in answers if a.status_code == 503)
    broken = 0
    for answer in (a for a in answers if a.status_code == 200):
        try:
            answer.json()
        except ValueError:
            broken += 1
    assert broken > 0


def test_emulator_cli_serves_on_the_given_port(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "marketdata_assets.cli", "emulator", "--port", str(port), "--fault-latency-ms", "1",
         "--listing", "spot:S001USDT@2021-03-01"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stderr.readline()
        assert f"emulator listening on http://127.0.0.1:{port}" in line
        deadline = time.monotonic() + 10
        while True:
            try:
                response = klines(f"http://127.0.0.1:{port}", "/fapi/v1/klines", startTime=LISTED, limit=2)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.status_code == 200
        perp_listing = int(utc(2019, 9, 8, 17, 57).timestamp() * 1000)
        assert [row[0] for row in response.json()] == [perp_listing, perp_listing + MINUTE]
        stats = httpx.get(f"http://127.0.0.1:{port}/emulator/stats").json()
        assert stats["binance"]["perp"]["answers"] == {"200": 1}
        # a symbol listed on the command line: its candles from that day, and in exchangeInfo
        extra = klines(f"http://127.0.0.1:{port}", symbol="S001USDT", startTime=0, limit=1).json()
        assert extra[0][0] == int(utc(2021, 3, 1).timestamp() * 1000)
        info = httpx.get(f"http://127.0.0.1:{port}/api/v3/exchangeInfo").json()
        assert "S001USDT" in [entry["symbol"] for entry in info["symbols"]]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_emulator_settings_come_from_the_environment():
    config = EmulatorConfig.from_env({
        "MARKETDATA_EMULATOR_SPOT_WEIGHT_LIMIT": "1200", "MARKETDATA_EMULATOR_5XX_RATE": "0.25",
        "MARKETDATA_EMULATOR_LATENCY_MS": "5", "MARKETDATA_EMULATOR_SEED": "3",
    })
    assert config.spot_weight_limit == 1200 and config.futures_weight_limit == 2400
    assert config.faults == Faults(server_error_rate=0.25, truncate_rate=0.0, latency_ms=5.0, seed=3)
    with pytest.raises(ValueError, match="MARKETDATA_EMULATOR_5XX_RATE='lots' is not a number"):
        EmulatorConfig.from_env({"MARKETDATA_EMULATOR_5XX_RATE": "lots"})
