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
