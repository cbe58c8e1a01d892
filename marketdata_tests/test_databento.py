"""CME futures from Databento: the emulator, as the real `databento` client reads it."""

from __future__ import annotations

import datetime as dt
import warnings

import databento as db
import databento_dbn
import pytest
from databento.common.error import BentoWarning

from marketdata_assets.emulator import EmulatorServer
from marketdata_tests.conftest import utc

KEY = "db-" + "Tq7Wk2Rm9Xa4Lp6Vn3Hs8Jd5Fc1"  # a well-formed key; no real account has it
GLBX = "GLBX.MDP3"


def client_of(url: str, key: str = KEY) -> db.Historical:
    """The vendor's client pointed at the emulator: it forces https on a gateway, so the
    endpoints' base URLs are set after construction (as the client's own tests do)."""
    client = db.Historical(key)
    for api in (client.timeseries, client.metadata):
        api._base_url = url + api._base_url.split(".com", 1)[1]
    return client


def bars(client: db.Historical, schema: str, symbols: list[str], start: str, end: str) -> db.DBNStore:
    return client.timeseries.get_range(dataset=GLBX, schema=schema, symbols=symbols, stype_in="continuous",
                                       start=start, end=end)


def utc_of(nanoseconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(nanoseconds / 1e9, dt.UTC)


def test_the_emulator_answers_the_databento_client_with_globex_sessions_rolls_and_its_errors():
    with EmulatorServer() as emu:
        client = client_of(emu.url)
        # ESH4 expires on Friday 15 March 2024 (the third Friday): ES.c.0 maps to ESM4 from that day,
        # ES.n.0 (open interest) eight days earlier.
        daily = bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-10", "2024-03-20")
        definitions = bars(client, "definition", ["ES.c.0"], "2024-03-10", "2024-03-20")
        raw = {record.instrument_id: record.raw_symbol for record in definitions}
        assert sorted(raw.values()) == ["ESH4", "ESM4"]
        intervals = [(i["start_date"], i["end_date"], raw[int(i["symbol"])])
                     for i in daily.metadata.mappings["ES.c.0"]]
        assert intervals == [(dt.date(2024, 3, 10), dt.date(2024, 3, 15), "ESH4"),
                             (dt.date(2024, 3, 15), dt.date(2024, 3, 20), "ESM4")]
        by_oi = bars(client, "ohlcv-1d", ["ES.n.0"], "2024-03-01", "2024-03-10").metadata.mappings["ES.n.0"]
        assert [i["start_date"] for i in by_oi] == [dt.date(2024, 3, 1), dt.date(2024, 3, 7)]
        # UTC days: Sunday's bar holds the hours after the 17:00 CT open; no Saturday
        rows = daily.to_ndarray()
        assert [utc_of(t).date() for t in rows["ts_event"]] == [
            dt.date(2024, 3, day) for day in (10, 11, 12, 13, 14, 15, 17, 18, 19)]
        assert set(rows["rtype"]) == {35}
        assert [raw[i] for i in rows["instrument_id"]] == ["ESH4"] * 5 + ["ESM4"] * 4
        # Good Friday (29 March 2024): no session, no bar
        easter = bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-27", "2024-04-03").to_ndarray()
        assert [utc_of(t).day for t in easter["ts_event"]] == [27, 28, 31, 1, 2]

        # Hours: Friday until the 16:00 CT close (20:00 UTC in daylight time), Sunday from 22:00;
        # Monday without the 21:00 UTC maintenance halt. The day's bar is made of its hours.
        hourly = bars(client, "ohlcv-1h", ["ES.c.0"], "2024-03-15", "2024-03-19").to_ndarray()
        hours = [utc_of(t) for t in hourly["ts_event"]]
        assert [h.hour for h in hours if h.day == 15] == list(range(21))
        assert [h.hour for h in hours if h.day == 17] == [22, 23]
        assert [h.hour for h in hours if h.day == 18] == [*range(21), 22, 23]
        monday = hourly[[h.day == 18 for h in hours]]
        day_bar = rows[[utc_of(t).day == 18 for t in rows["ts_event"]]][0]
        assert day_bar["high"] == monday["high"].max() and day_bar["low"] == monday["low"].min()
        assert day_bar["open"] == monday["open"][0] and day_bar["volume"] == monday["volume"].sum()

        # An undefined price is sent as 2^63 - 1; a thin root leaves hours without a bar
        emu.databento.undefined.add(("NQ", utc(2024, 3, 18)))
        nq = bars(client, "ohlcv-1d", ["NQ.c.0"], "2024-03-18", "2024-03-19").to_ndarray()
        assert nq["open"][0] == databento_dbn.UNDEF_PRICE == 2**63 - 1
        lumber = bars(client, "ohlcv-1h", ["LBR.c.0"], "2024-03-18", "2024-03-19").to_ndarray()
        assert 0 < len(lumber) < 23

        # The price before spending: the bytes the same request would send
        cost = client.metadata.get_cost(dataset=GLBX, schema="ohlcv-1d", symbols=["ES.c.0"],
                                        stype_in="continuous", start="2024-03-10", end="2024-03-20")
        assert cost == pytest.approx(9 * 56 / 1e9 * 600.0)
        available = client.metadata.get_dataset_range(GLBX)
        assert available["start"].startswith("2010-06-06") and available["end"].endswith(":00:00.000000000Z")

        # Errors as the client raises them
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            partly = bars(client, "ohlcv-1d", ["ES.c.0", "KC.c.0"], "2024-03-11", "2024-03-12")
        assert partly.metadata.not_found == ["KC.c.0"]
        assert [str(w.message) for w in caught if issubclass(w.category, BentoWarning)] == [
            "The following symbols could not be resolved: KC.c.0."]
        with pytest.raises(db.BentoClientError, match="start cannot be on or after end"):
            bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-12", "2024-03-11")
        with pytest.raises(db.BentoClientError, match="after the available end of dataset GLBX.MDP3"):
            bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-12", "2099-01-01")
        emu.databento.gateway_limit_records = 5
        with pytest.raises(db.BentoServerError, match="The remote gateway timed out"):
            bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-10", "2024-03-20")
        with pytest.raises(db.BentoClientError, match="401 Authentication failed"):
            bars(client_of(emu.url, "db-nope"), "ohlcv-1d", ["ES.c.0"], "2024-03-10", "2024-03-20")
        emu.databento.refuse_next = 1
        with pytest.raises(db.BentoClientError, match="429") as refused:
            bars(client, "ohlcv-1d", ["ES.c.0"], "2024-03-11", "2024-03-12")
        assert refused.value.headers["Retry-After"] == "1"
        assert emu.databento.requests[0]["stype_in"] == "continuous" and emu.databento.seen_keys == {KEY, "db-nope"}
