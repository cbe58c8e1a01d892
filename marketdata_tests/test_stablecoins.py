"""Stablecoin supply (DefiLlama), built as any dataset is: a series catalog entry, its source against
the emulator on loopback, the generic asset body and its checks."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import httpx
import pytest
import yaml

from marketdata_assets.emulator import EmulatorServer
from marketdata_assets.schemas import REJECTED_ROWS
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import utc, with_settings
from marketdata_tests.test_assets import MATERIALIZED, run_range

SUPPLY = dg.AssetKey(["defillama", "stablecoin_supply"])


def _stamp(day: dt.date) -> str:
    return str(int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()))


def test_the_parser_stores_the_pegs_each_day_lists_and_rejects_what_is_not_a_supply():
    from marketdata_assets.datasets.stablecoin_supply import STABLECOIN_SUPPLY
    from marketdata_assets.sources.defillama import parse_stablecoin_supply

    # UPSTREAMS.md's shape: string dates, oldest first; the old point rounded and with one peg
    body = [
        {"date": "1514764800", "totalCirculating": {"peggedUSD": 1368294064},
         "totalCirculatingUSD": {"peggedUSD": 1368294064}},
        {"date": "1609459200", "totalCirculating": {"peggedUSD": 2.8e10, "peggedEUR": 1.1e8},
         "totalCirculatingUSD": {"peggedUSD": 28090372318.35, "peggedEUR": 134518765.1, "peggedVAR": -3.0}},
        {"date": "1609545600", "totalCirculatingUSD": {"peggedUSD": "lots", "peggedEUR": 134600000.0}},
        {"date": "1609632000", "totalCirculatingUSD": {"peggedUSD": 28400000000.0}},  # "today": still moving
    ]
    rows, rejected = parse_stablecoin_supply(body, STABLECOIN_SUPPLY, "GET /stablecoincharts/all", dt.date(2021, 1, 3))
    assert rows.schema == STABLECOIN_SUPPLY.schema and rejected.schema == REJECTED_ROWS.schema
    assert rows.select("date", "peg", "circulating_usd").rows() == [
        (dt.date(2018, 1, 1), "peggedUSD", 1368294064.0),
        (dt.date(2021, 1, 1), "peggedEUR", 134518765.1),
        (dt.date(2021, 1, 1), "peggedUSD", 28090372318.35),
        (dt.date(2021, 1, 2), "peggedEUR", 134600000.0),
    ]
    assert rejected.select("open_time", "symbol", "reason").rows() == [
        (utc(2021, 1, 1), "peggedVAR", "peggedVAR is -3.0, not a supply"),
        (utc(2021, 1, 2), "peggedUSD", "peggedUSD is 'lots', not a number"),
    ]
    assert json.loads(rejected["payload"][0]) == {"peggedVAR": -3.0}
    with pytest.raises(MalformedResponse, match="point 1 .1514764800. is not newer than the point before"):
        parse_stablecoin_supply([body[0], body[0]], STABLECOIN_SUPPLY, "", dt.date(2021, 1, 3))
    with pytest.raises(MalformedResponse, match="point 0 is not a daily point"):
        parse_stablecoin_supply([{"totalCirculatingUSD": {}}], STABLECOIN_SUPPLY, "", dt.date(2021, 1, 3))
    with pytest.raises(MalformedResponse, match="expected a list of daily points"):
        parse_stablecoin_supply({"message": "Internal server error"}, STABLECOIN_SUPPLY, "", dt.date(2021, 1, 3))


def test_the_emulator_answers_as_defillama_does():
    with EmulatorServer() as emulator:
        points = httpx.get(f"{emulator.url}/stablecoincharts/all").json()
    stamps = [int(p["date"]) for p in points]
    assert all(isinstance(p["date"], str) for p in points) and stamps == sorted(stamps)
    assert dt.datetime.fromtimestamp(stamps[0], dt.UTC) == utc(2017, 11, 29)
    assert dt.datetime.fromtimestamp(stamps[-1], dt.UTC).date() == dt.datetime.now(dt.UTC).date()  # today, moving
    assert list(points[0]["totalCirculatingUSD"]) == ["peggedUSD"]  # the other pegs came later
    assert set(points[-1]["totalCirculatingUSD"]) == {"peggedUSD", "peggedEUR", "peggedVAR", "peggedCHF"}
    assert isinstance(points[0]["totalCirculatingUSD"]["peggedUSD"], int)  # old points are rounded


def test_stablecoin_supply_lands_with_its_checks(tmp_path, warehouse_url):
    with EmulatorServer() as emulator, dg.instance_for_test() as instance:
        served = {int(p["date"]): p for p in httpx.get(f"{emulator.url}/stablecoincharts/all").json()}
        usd_on_19th = served[int(_stamp(dt.date(2024, 1, 19)))]["totalCirculatingUSD"]["peggedUSD"]
        llama = emulator.defillama
        llama.missing_days = {dt.date(2024, 2, 10)}
        llama.overrides = {
            dt.date(2024, 1, 5): {"peggedEUR": -5},  # rejected
            dt.date(2024, 1, 20): {"peggedUSD": usd_on_19th * 1.5},  # +50%, then back: two jumps
            dt.date(2024, 2, 15): {"peggedUSD": None},  # the day lacks the USD peg: a gap
        }
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(yaml.safe_dump({"series": [{"source": "defillama", "dataset": "stablecoin_supply"}]}))
        from marketdata_assets.settings import Settings

        settings = with_settings(Settings(warehouse_url=warehouse_url, defillama_url=emulator.url), catalog_path=catalog)
        asset, result = run_range(settings, SUPPLY, "2024-01-01", "2024-02-01", instance)
        assert result.success
        warehouse = open_warehouse(warehouse_url)
        stored = warehouse.query("SELECT date, peg, circulating_usd FROM market_data.stablecoin_supply ORDER BY date, peg")
        assert stored.height == 31 * 4 - 1 + 28 * 4 - 1  # four pegs a day in 2024, less the rejected and the dropped
        assert stored.filter(stored["date"] == dt.date(2024, 1, 3)).rows() == [
            (dt.date(2024, 1, 3), peg, served[int(_stamp(dt.date(2024, 1, 3)))]["totalCirculatingUSD"][peg])
            for peg in sorted(["peggedCHF", "peggedEUR", "peggedUSD", "peggedVAR"])
        ]
        checks = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
        assert checks["stablecoin_supply_daily", "2024-01-01"].description == "0 of 31 days missing"
        february = checks["stablecoin_supply_daily", "2024-02-01"]
        assert february.description == "2 of 29 days missing"
        assert february.metadata["unexplained_windows"].value == [
            ["2024-02-10T00:00:00+00:00", "2024-02-11T00:00:00+00:00"],
            ["2024-02-15T00:00:00+00:00", "2024-02-16T00:00:00+00:00"]]
        valid = checks["stablecoin_supply_valid", "2024-01-01"]
        assert not valid.passed and valid.severity == dg.AssetCheckSeverity.WARN
        assert valid.description == "0 stored days without a positive USD-pegged supply; 1 row rejected at ingest"
        jumps = checks["stablecoin_supply_plausible", "2024-01-01"]
        assert not jumps.passed and jumps.severity == dg.AssetCheckSeverity.WARN
        assert jumps.description == "2 days of 30 moved more than 20% from the day before"
        assert checks["stablecoin_supply_plausible", "2024-02-01"].description == (
            "0 days of 25 moved more than 20% from the day before")  # the days after the two gaps have nothing to compare
        assert checks["stablecoin_supply_valid", "2024-02-01"].passed
        status = instance.get_status_by_partition(SUPPLY, ["2024-01-01", "2024-02-01"], asset.partitions_def)
        assert status == {"2024-01-01": MATERIALIZED, "2024-02-01": MATERIALIZED}

        # up to the month in progress: every day to yesterday, never the day still moving
        now = dt.datetime.now(dt.UTC)
        current = now.strftime("%Y-%m-01")
        previous = (now.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m-01")
        _, result = run_range(settings, SUPPLY, previous, current, instance)
        assert result.success
        newest = warehouse.query("SELECT max(date) AS d FROM market_data.stablecoin_supply")["d"][0]
        assert newest == now.date() - dt.timedelta(days=1)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations() if e.partition == current}
        assert checks["stablecoin_supply_fresh"].passed and checks["stablecoin_supply_daily"].passed, checks


MARKET_CAP = dg.AssetKey(["blockchain_com", "market_cap", "BTC"])
SSR = dg.AssetKey(["derived", "ssr", "BTC"])


def test_the_chart_parser_keeps_ended_days_and_rejects_what_is_not_a_market_cap():
    from marketdata_assets.sources.blockchain_com import parse_chart

    # UPSTREAMS.md's answer, and the days around it
    body = {"status": "ok", "name": "Market Capitalization (USD)", "unit": "USD", "period": "day", "values": [
        {"x": 1609372800, "y": 5.3e11}, {"x": 1609459200, "y": 5.4e11}, {"x": 1609545600, "y": None},
        {"x": 1609632100, "y": 5.9e11}, {"x": 1609718400, "y": 6.0e11}]}
    kept, rejected = parse_chart(body, "GET /charts/market-cap", dt.date(2021, 1, 4), "market cap")
    assert kept == {dt.date(2020, 12, 31): 5.3e11, dt.date(2021, 1, 1): 5.4e11}  # 2021-01-04 is "today"
    assert [(r["open_time"], r["reason"]) for r in rejected] == [
        (utc(2021, 1, 2), "market cap None is not a positive number"),
        (utc(2021, 1, 3), "x 1609632100 is not 00:00 UTC")]
    with pytest.raises(MalformedResponse, match="market cap: point 1 .1609372800. is not newer"):
        parse_chart({"values": [body["values"][0]] * 2}, "", dt.date(2021, 1, 4), "market cap")
    with pytest.raises(MalformedResponse, match=r"total bitcoins: expected \{\"values\""):
        parse_chart({"error": "Chart not found"}, "", dt.date(2021, 1, 4), "total bitcoins")


def test_the_charts_emulator_answers_as_blockchain_com_does():
    with EmulatorServer() as emulator:
        url = f"{emulator.url}/charts"
        daily = httpx.get(f"{url}/market-cap", params={"timespan": "31days", "start": "2024-01-01",
                                                       "sampled": "false", "format": "json"}).json()
        coins = httpx.get(f"{url}/total-bitcoins", params={"timespan": "31days", "start": "2024-01-01",
                                                           "sampled": "false"}).json()
        thinned = httpx.get(f"{url}/market-cap", params={"timespan": "all"}).json()
        missing = httpx.get(f"{url}/market-caps")
        bad_span = httpx.get(f"{url}/market-cap", params={"timespan": "forever"})
    assert (daily["status"], daily["unit"], daily["period"]) == ("ok", "USD", "day")
    assert [p["x"] for p in daily["values"]] == [int(utc(2024, 1, d).timestamp()) for d in range(1, 32)]
    # 144 blocks a day from 2009-01-03 to 2024-01-01 (5,476 days): 788,544 blocks, three whole eras
    # of 210,000 (50, 25, 12.5 BTC) and 158,544 blocks of the fourth at 6.25
    assert coins["values"][0]["y"] == 10_500_000 + 5_250_000 + 2_625_000 + 158_544 * 6.25
    assert 1_000 <= len(thinned["values"]) <= 1_500  # sampled by default
    assert missing.status_code == 404 and missing.json() == {"error": "Chart not found"}
    assert bad_span.status_code == 400


def _price_bars(days_and_closes: list[tuple[dt.date, float]]):
    """Binance BTCUSDT spot 1h bars ending at 00:00 UTC of each day, closing at each price."""
    import polars as pl

    from marketdata_assets.schemas import KLINES

    opens = [dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC) - dt.timedelta(hours=1) for d, _ in days_and_closes]
    closes = [c for _, c in days_and_closes]
    count = len(opens)
    return pl.DataFrame({
        "venue": ["binance"] * count, "market": ["spot"] * count, "symbol": ["BTCUSDT"] * count,
        "timeframe": ["1h"] * count, "open_time": opens, "open": closes, "high": closes, "low": closes,
        "close": closes, "volume": [1.0] * count, "quote_volume": closes, "trades": [1] * count,
        "taker_buy_volume": [0.5] * count, "taker_buy_quote_volume": [c / 2 for c in closes],
        "source": ["rest"] * count, "ingested_at": [dt.datetime.now(dt.UTC)] * count,
    }, schema=KLINES.schema)


def test_seed_stores_supply_market_cap_their_ratio_and_fred_then_finds_nothing_new(tmp_path, warehouse_url, dagster_home):
    from marketdata_assets.schemas import KLINES
    from marketdata_assets.settings import Settings
    from marketdata_tests.conftest import cli_env
    from marketdata_tests.test_cli import marketdata, marketdata_here

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"series": [
        {"source": "defillama", "dataset": "stablecoin_supply"},
        {"source": "blockchain_com", "dataset": "market_cap", "keys": ["BTC"], "start_date": "2024-01-01"},
        {"source": "derived", "dataset": "ssr", "keys": ["BTC"], "start_date": "2024-01-01"},
        {"source": "fred", "dataset": "macro", "keys": ["CPIAUCSL"], "start_date": "2024-01-01"},
    ]}))
    with EmulatorServer() as emulator:
        charts = emulator.blockchain_com
        charts.missing_days = {dt.date(2024, 1, 10): {"market-cap"}}
        emulator.defillama.missing_days = {dt.date(2024, 2, 3)}
        params = {"timespan": "60days", "start": "2024-01-01", "sampled": "false"}
        caps = {p["x"]: p["y"] for p in httpx.get(f"{emulator.url}/charts/market-cap", params=params).json()["values"]}
        coins = {p["x"]: p["y"] for p in httpx.get(f"{emulator.url}/charts/total-bitcoins", params=params).json()["values"]}
        supply = {int(p["date"]): sum(p["totalCirculatingUSD"].values())
                  for p in httpx.get(f"{emulator.url}/stablecoincharts/all").json()}
        # Binance's price at 00:00 UTC on three days: two agree with the market cap, one is 5% off
        stamps = [int(utc(2024, 1, d).timestamp()) for d in (2, 3, 4)]
        prices = [caps[s] / coins[s] * f for s, f in zip(stamps, (1.001, 0.995, 1.05))]
        open_warehouse(warehouse_url).upsert(KLINES, _price_bars(
            [(dt.date(2024, 1, d), p) for d, p in zip((2, 3, 4), prices)]))

        settings = Settings(warehouse_url=warehouse_url, catalog_path=catalog)
        env = {**cli_env(settings, dagster_home, catalog), "MARKETDATA_DEFILLAMA_URL": emulator.url,
               "MARKETDATA_BLOCKCHAIN_URL": emulator.url, "MARKETDATA_FRED_URL": f"{emulator.url}/fred",
               "FRED_API_KEY": "0123456789abcdef0123456789abcdef"}
        seeded = marketdata("seed", "--from", "2024-01-01", "--to", "2024-02-29", cwd=tmp_path, env=env)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        done = [line.split()[1] for line in seeded.stdout.splitlines() if line.startswith("done ")]
        assert done == ["defillama/stablecoin_supply", "blockchain_com/market_cap/BTC", "fred/macro/CPIAUCSL",
                        "derived/ssr/BTC"]  # the SSR after its inputs
        requests = (charts.requests, emulator.defillama.requests, emulator.fred.requests)
        again = marketdata_here("seed", "--from", "2024-01-01", "--to", "2024-02-29", cwd=tmp_path, env=env)
        assert again.returncode == 0 and "nothing to fetch" in again.stdout, again.stdout
        assert (charts.requests, emulator.defillama.requests, emulator.fred.requests) == requests  # nothing asked

    warehouse = open_warehouse(warehouse_url)
    stored = warehouse.query("SELECT date, ssr, market_cap_usd, stablecoin_supply_usd FROM market_data.ssr ORDER BY date")
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=n) for n in range(60)]
    expected = [d for d in days if d not in (dt.date(2024, 1, 10), dt.date(2024, 2, 3))]
    assert stored["date"].to_list() == expected  # no SSR where an input lacks the day
    for day, ratio, cap, total in stored.rows()[:3]:
        stamp = int(utc(day.year, day.month, day.day).timestamp())
        assert (cap, total) == (caps[stamp], pytest.approx(supply[stamp], rel=1e-12))
        assert ratio == pytest.approx(caps[stamp] / supply[stamp], rel=1e-12)

    assert warehouse.query("SELECT count(*) FROM market_data.macro_observations").item() == 12 * 2  # 2024, two vintages each

    report = marketdata_here("report", "--format", "json", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    rows = {row["asset"]: row for row in json.loads(report.stdout)}
    assert rows["derived/ssr/BTC"]["checks"] == {"ssr_positive": "passed", "ssr_daily": "passed", "ssr_fresh": "passed"}
    assert rows["blockchain_com/market_cap/BTC"]["missing_windows"] == [{"start": "2024-01-10 00:00", "end": "2024-01-11 00:00"}]
    assert rows["blockchain_com/market_cap/BTC"]["checks"]["market_cap_agrees_with_price"] == "WARN"
    agreement = check_descriptions(dagster_home, MARKET_CAP, "market_cap_agrees_with_price")
    assert agreement["2024-01-01"] == ("1 day of 3 compared more than 2% from price × coins; "
                                       "27 days without a stored price or supply to compare")
    assert check_descriptions(dagster_home, SSR, "ssr_daily") == {
        "2024-01-01": "0 of 30 days missing; 1 day without both inputs (no SSR)",
        "2024-02-01": "0 of 28 days missing; 1 day without both inputs (no SSR)",
    }


def check_descriptions(dagster_home, key: dg.AssetKey, name: str) -> dict[str, str]:
    """The newest result of check `name` of `key` per partition, as the UI's check page shows it."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(key, name), limit=100)
        found: dict[str, str] = {}
        for record in records:  # newest first
            evaluation = record.event.dagster_event.event_specific_data
            found.setdefault(evaluation.partition, evaluation.description)
        return found


@pytest.mark.parametrize("entries, message", [
    ([{"source": "derived", "dataset": "ssr", "keys": ["BTC"]}],
     "series[0] (derived ssr): ssr reads blockchain_com/market_cap/BTC, which the catalog does not keep"),
    ([{"source": "derived", "dataset": "ssr", "keys": ["ETH"]}],
     "series[0] (derived ssr): keys: ssr keeps BTC only, not 'ETH'"),
    ([{"source": "blockchain_com", "dataset": "market_cap", "keys": ["BTC"]},
      {"source": "derived", "dataset": "ssr", "keys": ["BTC"]}],
     "series[1] (derived ssr): ssr reads defillama/stablecoin_supply, which the catalog does not keep"),
])
def test_a_derived_series_without_its_inputs_fails_at_load(tmp_path, entries, message):
    from marketdata_assets.catalog import CatalogError, load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"start_date": "2024-01-01", "series": entries}))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == f"catalog {path}: {message}"


def test_the_ssr_schedule_reruns_a_month_an_input_changed_after_it(tmp_path, capsys):
    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings
    from marketdata_tests.test_automation import evaluate, month_key, record_materialization

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"series": [
        {"source": "defillama", "dataset": "stablecoin_supply", "start_date": "2024-01-01"},
        {"source": "blockchain_com", "dataset": "market_cap", "keys": ["BTC"], "start_date": "2024-01-01"},
        {"source": "derived", "dataset": "ssr", "keys": ["BTC"], "start_date": "2024-01-01"},
    ]}))
    definitions = build_definitions(Settings(warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}", catalog_path=catalog))
    schedule = definitions.resolve_schedule_def("ssr_daily")
    assert schedule.cron_schedule == "40 0 * * *"  # after its inputs' 00:10
    spec = next(s for s in definitions.resolve_all_asset_specs() if s.key == SSR)
    assert {dep.asset_key for dep in spec.deps} == {MARKET_CAP, SUPPLY}  # the lineage the UI draws
    now = dt.datetime.now(dt.UTC)
    with dg.instance_for_test() as instance:
        # every month of the SSR materialized an hour ago, after its inputs; then March's market
        # cap was materialized again (a repair)
        hour_ago = now - dt.timedelta(hours=1)
        months = spec.partitions_def.get_partition_keys(current_time=now)
        for month in months:
            record_materialization(instance, MARKET_CAP, month, hour_ago - dt.timedelta(minutes=5))
            record_materialization(instance, SSR, month, hour_ago)
        record_materialization(instance, MARKET_CAP, "2024-03-01", now - dt.timedelta(minutes=1))

        data, log = evaluate(definitions, "ssr_daily", instance, capsys)
        (request,) = data.run_requests
        assert request.asset_selection == [SSR]
        assert (request.tags["dagster/asset_partition_range_start"],
                request.tags["dagster/asset_partition_range_end"]) == ("2024-03-01", month_key(now))
        assert any(line.startswith(f"{SSR.to_user_string()}: last materialized ") and
                   line.endswith(f"; an input was materialized after it in 2024-03-01; runs 2024-03-01...{month_key(now)} "
                                 f"({len(months) - 2} partitions)") for line in log), log
