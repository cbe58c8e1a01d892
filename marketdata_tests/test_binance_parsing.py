"""Binance kline rows to the canonical frame, on the real recorded answer in shared/fixtures."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.binance_klines_rest import parse_klines
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.timeframes import timeframe
from marketdata_tests.conftest import FIXTURES

ONE_MINUTE = timeframe("1m")


@pytest.fixture
def recorded_rows() -> list[list]:
    return json.loads((FIXTURES / "binance_spot_klines_BTCUSDT_1m.json").read_text())


def test_recorded_answer_parses_to_the_canonical_schema(recorded_rows):
    frame = parse_klines(recorded_rows, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE)
    assert frame.schema == KLINES.schema
    assert frame.height == 10
    first = frame.row(0, named=True)
    assert first["open_time"] == dt.datetime(2021, 10, 22, 23, 3, tzinfo=dt.UTC)
    assert (first["open"], first["high"], first["low"], first["close"]) == (60685.22, 60729.84, 60670.90, 60719.27)
    assert first["volume"] == 21.63272
    assert first["quote_volume"] == 1313200.0134041
    assert first["trades"] == 617
    assert first["taker_buy_volume"] == 12.28492
    assert first["taker_buy_quote_volume"] == 745719.4102284
    assert (first["venue"], first["market"], first["symbol"], first["timeframe"], first["source"]) == (
        "binance", "spot", "BTCUSDT", "1m", "rest",
    )
    last = frame.row(-1, named=True)
    assert last["open_time"] == dt.datetime(2021, 10, 22, 23, 12, tzinfo=dt.UTC)
    assert last["trades"] == 7
    assert frame["open_time"].is_sorted()


def test_microsecond_answers_give_the_same_times(recorded_rows):
    in_us = [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in recorded_rows]
    ms = parse_klines(recorded_rows, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE)
    us = parse_klines(in_us, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE, time_unit="us")
    assert us.drop("ingested_at").equals(ms.drop("ingested_at"))


def test_empty_answer_is_an_empty_frame():
    frame = parse_klines([], market="perp", symbol="BTCUSDT", tf=ONE_MINUTE)
    assert frame.is_empty() and frame.schema == KLINES.schema


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rows: rows.__setitem__(3, rows[3][:5]), "row 3 is not a 12-field kline array"),
        (lambda rows: rows[2].__setitem__(2, "12,5"), "row 2: field high = '12,5' is not a number"),
        (lambda rows: rows[4].__setitem__(8, "many"), "row 4: field trades = 'many' is not a number"),
        (lambda rows: rows[1].__setitem__(6, rows[1][0] + 3_599_999), "row 1: close_time"),
        (lambda rows: rows[0].__setitem__(0, "yesterday"), "open/close times are not integers"),
    ],
)
def test_malformed_rows_name_the_row_and_field(recorded_rows, mutate, expected):
    mutate(recorded_rows)
    with pytest.raises(MalformedResponse, match="binance spot BTCUSDT 1m") as caught:
        parse_klines(recorded_rows, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE)
    assert expected in str(caught.value)


def test_non_array_body_is_rejected():
    with pytest.raises(MalformedResponse, match="expected a JSON array of klines, got dict"):
        parse_klines({"code": 0}, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE)


def test_numbers_sent_as_numbers_are_accepted(recorded_rows):
    loose = [[r[0], float(r[1]), *r[2:]] for r in recorded_rows]
    frame = parse_klines(loose, market="spot", symbol="BTCUSDT", tf=ONE_MINUTE)
    assert frame["open"].to_list()[:1] == [60685.22]
    assert isinstance(frame, pl.DataFrame)
