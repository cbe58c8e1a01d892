"""The catalog loads into typed objects; a bad entry fails at load naming the entry and field."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from marketdata_assets.catalog import CatalogError, load_catalog
from marketdata_tests.conftest import write_catalog
from marketdata_tests.test_cli import marketdata_here


def test_packaged_catalog_has_btc_and_eth_spot_and_perps_on_three_venues_at_their_listing_dates():
    catalog = load_catalog()
    got = {(i.venue, i.market, i.symbol): (i.start_date, i.timeframes) for i in catalog.instruments}
    assert got == {
        ("binance", "spot", "BTCUSDT"): (dt.date(2017, 8, 17), ("1m", "1h")),
        ("binance", "spot", "ETHUSDT"): (dt.date(2017, 8, 17), ("1m", "1h")),
        ("binance", "perp", "BTCUSDT"): (dt.date(2019, 9, 8), ("1m", "1h")),
        ("binance", "perp", "ETHUSDT"): (dt.date(2019, 11, 27), ("1m", "1h")),
        ("okx", "spot", "BTC-USDT"): (dt.date(2018, 1, 11), ("1m", "1h")),
        ("okx", "spot", "ETH-USDT"): (dt.date(2018, 1, 11), ("1m", "1h")),
        ("okx", "perp", "BTC-USDT-SWAP"): (dt.date(2019, 12, 10), ("1m", "1h")),
        ("okx", "perp", "ETH-USDT-SWAP"): (dt.date(2019, 12, 10), ("1m", "1h")),
        ("bybit", "spot", "BTCUSDT"): (dt.date(2021, 7, 5), ("1m", "1h")),
        ("bybit", "spot", "ETHUSDT"): (dt.date(2021, 7, 5), ("1m", "1h")),
        ("bybit", "perp", "BTCUSDT"): (dt.date(2020, 3, 25), ("1m", "1h")),
        ("bybit", "perp", "ETHUSDT"): (dt.date(2020, 10, 22), ("1m", "1h")),
    }
    assert all(i.has_dataset("klines") for i in catalog.instruments)
    perps = [i for i in catalog.instruments if i.market == "perp"]
    assert all(i.has_dataset("funding") for i in perps)
    assert [i.venue for i in perps if i.has_dataset("open_interest") and i.has_dataset("long_short")] == ["binance"] * 2


def test_an_instrument_naming_no_timeframes_keeps_its_other_datasets_and_no_klines(tmp_path: Path):
    path = write_catalog(tmp_path / "c.yaml", [
        {"venue": "okx", "market": "perp", "symbol": "BTC-USDT-SWAP"},
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT"},
    ])
    okx, binance = load_catalog(path).instruments
    assert (okx.has_dataset("funding"), okx.has_dataset("klines")) == (True, False)
    assert [binance.has_dataset(name) for name in ("klines", "funding", "open_interest")] == [False, True, True]


def test_instrument_without_start_date_takes_the_catalog_start(tmp_path: Path):
    path = write_catalog(
        tmp_path / "c.yaml",
        [{"venue": "binance", "market": "spot", "symbol": "BTC-USDT", "timeframes": ["5m"]}],
        start_date="2021-03-04",
    )
    (instrument,) = load_catalog(path).instruments
    assert instrument.start_date == dt.date(2021, 3, 4)
    assert instrument.slug == "BTC_USDT"
    assert instrument.key_prefix == "binance_spot"


GOOD = {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "timeframes": ["1m"]}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**GOOD, "timeframes": ["1m", "7m"]},
         "instruments[0] (binance perp BTCUSDT), field 'timeframes': unsupported timeframe '7m'"),
        ({**GOOD, "venue": "kraken"},
         "instruments[0] (kraken perp BTCUSDT), field 'venue': unsupported venue 'kraken'"),
        ({**GOOD, "market": "futures"},
         "instruments[0] (binance futures BTCUSDT), field 'market': Input should be 'spot' or 'perp'"),
        ({**GOOD, "symbol": "btc/usdt"},
         "field 'symbol': 'btc/usdt' is not a venue-native symbol"),
        ({k: v for k, v in {**GOOD, "datasets": ["klines", "funding"]}.items() if k != "timeframes"},
         "instruments[0] (binance perp BTCUSDT): timeframes: is required to keep klines"),
        ({"venue": "okx", "market": "spot", "symbol": "BTC-USDT", "timeframes": ["1m"], "source": "archive"},
         "instruments[0] (okx spot BTC-USDT): source: okx klines come from its REST API only (no archive), not "
         "'archive'"),
        ({"venue": "okx", "market": "perp", "symbol": "BTC-USDT"},
         "symbol: 'BTC-USDT' is not an OKX perp instrument id (like BTC-USDT-SWAP)"),
        ({"venue": "okx", "market": "spot", "symbol": "BTC-USDT-SWAP", "timeframes": ["1h"]},
         "symbol: 'BTC-USDT-SWAP' is not an OKX spot instrument id (like BTC-USDT)"),
        ({"venue": "bybit", "market": "spot", "symbol": "BTCUSDT", "datasets": ["funding"]},
         "instruments[0] (bybit spot BTCUSDT): datasets: 'funding' is not a dataset of a bybit spot instrument "
         "(allowed: klines, resampled)"),
        ({"venue": "bybit", "market": "perp", "symbol": "BTCUSDT", "datasets": ["open_interest"]},
         "datasets: 'open_interest' is not a dataset of a bybit perp instrument (allowed: klines, resampled, funding)"),
        ({**GOOD, "start_date": "2020-02-30"},
         "field 'start_date': Input should be a valid date"),
        ({**GOOD, "start_date": "2999-01-01"},
         "field 'start_date': start_date 2999-01-01 is in the future"),
        ({**GOOD, "timefrmes": ["1h"]},
         "instruments[0] (binance perp BTCUSDT), field 'timefrmes': unknown field"),
        ({**GOOD, "datasets": ["funding", "orderbook"]},
         "'orderbook' is not a dataset of a binance perp instrument"),
        ({**GOOD, "timeframes": ["1m", "1m"]}, "timeframes are listed twice"),
        ({**GOOD, "source": "s3"},
         "instruments[0] (binance perp BTCUSDT), field 'source': Input should be 'auto', 'archive' or 'rest'"),
        ({**GOOD, "symbol": "BTCUSDT\n"}, "field 'symbol': 'BTCUSDT\\n' is not a venue-native symbol"),
        ({**GOOD, "symbol": "BTC USDT"}, "field 'symbol': 'BTC USDT' is not a venue-native symbol"),
    ],
)
def test_bad_entry_fails_naming_entry_and_field(tmp_path: Path, entry: dict, expected: str):
    path = write_catalog(tmp_path / "bad.yaml", [entry])
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"catalog {path}: ")
    assert expected in message


def test_second_entry_for_same_instrument_is_rejected(tmp_path: Path):
    path = write_catalog(tmp_path / "dup.yaml", [GOOD, {**GOOD, "timeframes": ["1h"]}])
    with pytest.raises(CatalogError, match=r"instruments\[1\] \(binance perp BTCUSDT\) repeats instruments\[0\]"):
        load_catalog(path)


def test_unreadable_and_unparseable_files_say_so(tmp_path: Path):
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("instruments: [\n  - venue: binance\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(CatalogError, match="expected a mapping"):
        load_catalog(empty)


def test_dagster_refuses_to_load_a_bad_catalog_and_names_the_entry(tmp_path: Path):
    path = write_catalog(tmp_path / "bad.yaml", [GOOD, {**GOOD, "symbol": "ETHUSDT", "timeframes": ["2m"]}])
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "list", "-m", "marketdata_assets.definitions"],
        env={"MARKETDATA_CATALOG": str(path), "PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "instruments[1] (binance perp ETHUSDT), field 'timeframes': unsupported timeframe '2m'" in result.stderr


def test_a_future_top_level_start_date_is_named(tmp_path: Path):
    path = write_catalog(tmp_path / "catalog.yaml", [GOOD], start_date="2999-01-01")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == f"catalog {path}: field 'start_date': start_date 2999-01-01 is in the future"


def test_a_bad_catalog_is_one_line_and_exit_2_for_backfill_and_seed_too(tmp_path: Path):
    path = write_catalog(tmp_path / "catalog.yaml", [{**GOOD, "timeframes": ["2m"]}])
    env = {"MARKETDATA_CATALOG": str(path), "DAGSTER_HOME": str(tmp_path / "home")}
    expected = f"catalog {path}: instruments[0] (binance perp BTCUSDT), field 'timeframes': unsupported timeframe '2m'"
    for args in (("backfill", "klines", "--local"), ("seed",), ("report",)):
        result = marketdata_here(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"marketdata {args[0]}: {expected}"), (args, line)
