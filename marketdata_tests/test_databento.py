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


def _env(settings_url: str, warehouse_url: str, dagster_home, catalog, key: str | None = KEY) -> dict[str, str]:
    env = {"MARKETDATA_WAREHOUSE_URL": warehouse_url, "DAGSTER_HOME": str(dagster_home),
           "MARKETDATA_CATALOG": str(catalog), "MARKETDATA_DATABENTO_URL": settings_url}
    if key:
        env["DATABENTO_API_KEY"] = key
    return env


ROOTS_1D = ["ES", "NQ", "CL", "GC", "ZN", "6E", "ZC", "HG", "LE", "ZZZ"]  # ZZZ: no such root at Databento
ROOTS_1H = ["ES", "NQ", "CL", "6E", "LBR"]


def test_fifteen_years_of_daily_and_a_month_of_hourly_bars_land_once_priced_first_and_the_key_nowhere(
    tmp_path, warehouse_url, dagster_home, monkeypatch,
):
    import json

    import polars as pl

    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.test_cli import marketdata, marketdata_here

    monkeypatch.delenv("DATABENTO_API_KEY", raising=False)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml_text([
        {"source": "databento_glbx", "dataset": "ohlcv_1d", "keys": ROOTS_1D, "start_date": "2011-01-01"},
        {"source": "databento_glbx", "dataset": "ohlcv_1h", "keys": ROOTS_1H, "start_date": "2024-01-01"},
        {"source": "databento_glbx", "dataset": "options_ohlcv_1d", "keys": ["ES"], "start_date": "2024-03-01"},
    ]))
    with EmulatorServer() as emu:
        env = _env(emu.url, warehouse_url, dagster_home, catalog)
        # Refused before anything is fetched: an ICE root, no key, a price above the limit
        ice = tmp_path / "ice.yaml"
        ice.write_text(yaml_text([{"source": "databento_glbx", "dataset": "ohlcv_1d", "keys": ["ES", "KC"]}]))
        refused = marketdata_here("backfill", "ohlcv_1d", "--local", cwd=tmp_path, env={**env, "MARKETDATA_CATALOG": str(ice)})
        assert refused.returncode == 2 and "keys: KC trades on ICE, not CME Globex: it needs Databento's IFUS.IMPACT " \
                                          "dataset" in refused.stderr, refused.stderr
        keyless = marketdata_here("backfill", "ohlcv_1d", "--local", cwd=tmp_path,
                                  env=_env(emu.url, warehouse_url, dagster_home, catalog, key=None))
        assert (keyless.returncode, keyless.stderr.strip()) == (2, "marketdata backfill: ohlcv_1d: DATABENTO_API_KEY is "
                                                                   "not set (Databento's API key); nothing was launched")
        seeded = marketdata_here("seed", "--from", "2024-01-01", "--to", "2024-01-31", cwd=tmp_path,
                                 env=_env(emu.url, warehouse_url, dagster_home, catalog, key=None))
        assert seeded.returncode == 0 and seeded.stdout.splitlines()[1:] == [
            "skipping ohlcv_1d: DATABENTO_API_KEY is not set (Databento's API key)",
            "skipping ohlcv_1h: DATABENTO_API_KEY is not set (Databento's API key)",
            "skipping options_ohlcv_1d: DATABENTO_API_KEY is not set (Databento's API key)", "nothing to fetch"], seeded.stdout
        costly = marketdata_here("backfill", "ohlcv_1d", "--from", "2011-01-01", "--to", "2025-12-31",
                                 "--max-cost", "1", "--local", cwd=tmp_path, env=env)
        lines = costly.stderr.strip().splitlines()
        asked = float(lines[0].split("$")[1].split()[0])
        assert costly.returncode == 2 and lines == [
            f"ohlcv_1d: the upstream asks ${asked:.4f} for 10 series over 2011-01-01 .. 2026-01-01",
            f"marketdata backfill: the estimated cost ${asked:.4f} is above the limit of $1.00 (--max-cost, "
            "MARKETDATA_DATABENTO_MAX_COST): nothing was fetched"], costly.stderr
        assert {r["endpoint"] for r in emu.databento.requests} == {"metadata.get_cost"}  # no data asked

        # Fifteen years of ten roots (one unknown), the gateway timing out on a year of bars: each
        # 504 halves the piece. One day of NQ comes with an undefined price.
        emu.databento.gateway_limit_records = 200
        emu.databento.undefined.add(("NQ", utc(2024, 3, 18)))
        daily = marketdata("backfill", "ohlcv_1d", "--from", "2011-01-01", "--to", "2025-12-31", "--local",
                           cwd=tmp_path, env=env)
        assert daily.returncode == 1, daily.stderr[-3000:]  # ZZZ's asset fails; the others land
        assert "Databento: timeseries.get_range ohlcv-1d ZZZ.c.0 2011-01-01 00:00..2012-01-02 00:00 rejected with " \
               "HTTP 200: GLBX.MDP3 has no symbol ZZZ.c.0 (not found in its symbology)" in daily.stdout, daily.stdout
        # three roots a request, split in two on a 504, then one root's year halved
        widths = [len(r["symbols"].split(",")) for r in emu.databento.requests
                  if r["endpoint"] == "timeseries.get_range" and r["schema"] == "ohlcv-1d"]
        assert widths[:4] == [3, 2, 1, 1] and set(widths) == {1, 2, 3}
        assert emu.databento.answers["504"] >= 9
        warehouse = open_warehouse(warehouse_url)
        bars = warehouse.query("SELECT * FROM market_data.futures_bars WHERE timeframe = '1d' ORDER BY symbol, ts_event")
        per_year = bars.filter(pl.col("ts_event").dt.year() == 2024).group_by("symbol").len()
        # 2024 by hand: 366 UTC days, less 52 Saturdays, less Good Friday (no session at all that
        # day); New Year's Day and Christmas keep the evening session's hours of the next trade date
        assert dict(per_year.iter_rows()) == {f"{r}.c.0": 313 for r in ROOTS_1D if r not in ("NQ", "ZZZ")} | {"NQ.c.0": 312}
        es = bars.filter(pl.col("symbol") == "ES.c.0")
        assert es["ts_event"].min() == utc(2011, 1, 2) and es["ts_event"].max() == utc(2025, 12, 31)
        roll = es.filter(pl.col("ts_event").is_between(utc(2024, 3, 14), utc(2024, 3, 15)))
        assert roll["raw_symbol"].to_list() == ["ESH4", "ESM4"]  # ESH4 expires on 15 March 2024
        assert es.filter(pl.col("raw_symbol").is_null()).is_empty()
        # the prices as the vendor's own decoding reads them, ×1e-9
        with warnings.catch_warnings(action="ignore"):  # pandas' deprecation notes inside the vendor's to_df
            vendor = bars_of(emu.url, "ohlcv-1d", "ES.c.0", "2024-03-18", "2024-03-19").to_df(price_type="float")
        mine = es.filter(pl.col("ts_event") == utc(2024, 3, 18)).row(0, named=True)
        assert [mine[c] for c in ("open", "high", "low", "close", "volume")] == [
            vendor[c].iloc[0] for c in ("open", "high", "low", "close", "volume")]
        # the price asked first is that of the bars then sent (56 bytes a bar at the emulator's rate)
        assert asked == pytest.approx((bars.height + 1) * 56 / 1e9 * emu.databento.usd_per_gb["ohlcv-1d"], abs=1e-4)
        rejected = warehouse.query("SELECT symbol, timeframe, open_time, reason FROM market_data.rejected_rows")
        assert rejected.rows() == [("NQ.c.0", "1d", utc(2024, 3, 18), "undefined price (2^63-1)")]

        # Once each: the same backfill again stores nothing twice
        again = marketdata("backfill", "ohlcv_1d", "--symbols", "ES,NQ", "--from", "2024-01-01", "--to", "2024-12-31",
                           "--local", cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert warehouse.query("SELECT count(*) AS n FROM market_data.futures_bars WHERE timeframe = '1d'")["n"][0] == bars.height

        # A month of hourly bars for five roots, seven days a request (a monthly partition each)
        hourly = marketdata("backfill", "ohlcv_1h", "--from", "2024-03-01", "--to", "2024-03-31", "--local",
                            cwd=tmp_path, env=env)
        assert hourly.returncode == 0, hourly.stderr[-3000:]
        week = warehouse.query(
            "SELECT symbol, count(*) AS n FROM market_data.futures_bars WHERE timeframe = '1h' AND ts_event >= ? "
            "AND ts_event < ? GROUP BY symbol", [utc(2024, 3, 17), utc(2024, 3, 23)])
        counts = dict(week.iter_rows())
        # Sunday from 22:00 UTC, Monday to Thursday 23 hours (the 21:00 UTC halt), Friday to 20:00
        full = 2 + 4 * 23 + 21
        # (NQ's undefined price on 18 March is in that day's first hour too: that bar is rejected)
        assert {s: n for s, n in counts.items() if s != "LBR.c.0"} == {
            "ES.c.0": full, "NQ.c.0": full - 1, "CL.c.0": full, "6E.c.0": full}
        assert 0 < counts["LBR.c.0"] < 2 + 4 * 23 + 21  # a thin root: hours without trades have no bar

        # Options on ES futures in March 2024, each bar with its contract: what its raw symbol says.
        # Their price is asked for the parent symbol, as their data is.
        priced = marketdata_here("backfill", "options_ohlcv_1d", "--from", "2024-03-01", "--to", "2024-03-31",
                                 "--max-cost", "0", "--local", cwd=tmp_path, env=env)
        assert priced.returncode == 2 and "options_ohlcv_1d: the upstream asks $0.0" in priced.stderr, priced.stderr
        asked = [r for r in emu.databento.requests if r["endpoint"] == "metadata.get_cost"][-1]
        assert (asked["symbols"], asked["stype_in"], asked["schema"]) == ("ES.OPT", "parent", "ohlcv-1d")
        options = marketdata("backfill", "options_ohlcv_1d", "--from", "2024-03-01", "--to", "2024-03-31", "--local",
                             cwd=tmp_path, env=env)
        assert options.returncode == 0, options.stderr[-3000:]
        chain = warehouse.query("SELECT * FROM market_data.options_bars ORDER BY ts_event, raw_symbol")
        assert chain.height and set(chain["parent"]) == {"ES.OPT"}
        for row in chain.iter_rows(named=True):
            underlying, contract = row["raw_symbol"].split(" ")  # "ESM4 C5200"
            assert (row["underlying"], row["option_type"], row["strike"]) == (underlying, contract[0], float(contract[1:]))
            assert 0 < row["low"] <= min(row["open"], row["close"]) <= max(row["open"], row["close"]) <= row["high"]
        expiries = dict(chain.select("underlying", "expiration").unique().iter_rows())
        assert expiries["ESH4"] == dt.datetime(2024, 3, 15, 13, 30, tzinfo=dt.UTC)  # the third Friday
        assert set(expiries) == {"ESH4", "ESM4", "ESU4"}  # the two nearest futures, before and after March's
        assert chain.filter(pl.col("underlying") == "ESH4")["ts_event"].max() < utc(2024, 3, 15)
        days = chain["ts_event"].dt.date().unique().sort().to_list()
        assert days == [dt.date(2024, 3, d) for d in (1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21,
                                                      22, 24, 25, 26, 27, 28, 31)]  # every Globex day but Good Friday

        # The report: per root, rows, first and last, what is missing; ZZZ has nothing
        report = marketdata("report", "--dataset", "ohlcv_1d", "--format", "json", cwd=tmp_path, env=env)
        assert report.returncode in (0, 1), report.stderr
        rows = {row["asset"]: row for row in json.loads(report.stdout)}
        table = marketdata_here("report", "--dataset", "ohlcv_1d", cwd=tmp_path, env=env)
        assert "ohlcv_1d: 9 of 10 series stored; nothing stored of ZZZ" in table.stdout.splitlines(), table.stdout
        assert rows["databento_glbx/ohlcv_1d/ZZZ"]["rows"] == 0
        assert rows["databento_glbx/ohlcv_1d/ES"]["rows"] == es.height
        # nothing printed, logged or recorded holds the key
        import dagster as dg

        printed = "".join(r.stdout + r.stderr for r in (refused, costly, daily, again, hourly, options, report))
        assert KEY not in printed
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        # a run launched without the key (a schedule's, say) fails naming the variable
        from marketdata_assets.definitions import build_definitions
        from marketdata_assets.settings import Settings
        from marketdata_tests.test_assets import run_range, step_failure

        keyless_settings = Settings(warehouse_url=warehouse_url, catalog_path=catalog, databento_url=emu.url)
        _, keyless_run = run_range(keyless_settings, dg.AssetKey(["databento_glbx", "ohlcv_1d", "ES"]),
                                   "2025-01-01", "2025-01-01", instance)
        assert not keyless_run.success
        assert "Databento: set DATABENTO_API_KEY to a Databento API key" in step_failure(keyless_run)
        assert build_definitions(keyless_settings).resolve_assets_def(dg.AssetKey(["databento_glbx", "ohlcv_1h", "ES"]))
        logged = [dg.serialize_value(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        assert logged and not [line for line in logged if KEY in line]
        assert instance.get_runs()[-1].tags["marketdata/estimated_cost_usd"]  # the first run: the daily backfill's
        instance.dispose()
        assert emu.databento.seen_keys == {KEY}


def yaml_text(series: list[dict]) -> str:
    import yaml

    return yaml.safe_dump({"series": series})


def bars_of(url: str, schema: str, symbol: str, start: str, end: str) -> db.DBNStore:
    return bars(client_of(url), schema, [symbol], start, end)


def test_futures_and_options_bars_land_on_postgresql_with_their_checks(tmp_path, postgres_url, monkeypatch):
    import dagster as dg
    import polars as pl

    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.settings import Settings
    from marketdata_assets.warehouse import open_warehouse
    from marketdata_tests.test_assets import run_range

    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml_text([
        {"source": "databento_glbx", "dataset": "ohlcv_1d", "keys": ["ES", "CL"], "start_date": "2024-01-01",
         "roll": "n"},
        {"source": "databento_glbx", "dataset": "options_ohlcv_1d", "keys": ["ES"], "start_date": "2024-03-01"},
    ]))
    with EmulatorServer() as emu, dg.instance_for_test() as instance:
        emu.databento.quiet.update((("CL", utc(2024, 3, 12, h)) for h in range(24)))  # a day CL did not trade
        settings = Settings(warehouse_url=postgres_url, catalog_path=catalog, databento_url=emu.url)
        roots = [dg.AssetKey(["databento_glbx", "ohlcv_1d", root]) for root in ("ES", "CL")]
        daily = dg.materialize(
            [build_definitions(settings).resolve_assets_def(roots[0])], selection=roots, instance=instance,
            raise_on_error=False, tags={"dagster/asset_partition_range_start": "2024-01-01",
                                        "dagster/asset_partition_range_end": "2024-01-01"})
        _, options = run_range(settings, dg.AssetKey(["databento_glbx", "options_ohlcv_1d", "ES"]), "2024-03-01",
                               "2024-03-01", instance)
        assert daily.success and options.success
        warehouse = open_warehouse(postgres_url)
        bars = warehouse.query("SELECT symbol, ts_event, raw_symbol FROM market_data.futures_bars ORDER BY symbol, ts_event")
        assert dict(bars.group_by("symbol").len().iter_rows()) == {"ES.n.0": 313, "CL.n.0": 312}
        # the open-interest roll leaves ESH4 eight days before its expiry on 15 March
        es = bars.filter(pl.col("symbol") == "ES.n.0")
        assert es.filter(pl.col("ts_event") == utc(2024, 3, 6))["raw_symbol"].item() == "ESH4"
        assert es.filter(pl.col("ts_event") == utc(2024, 3, 7))["raw_symbol"].item() == "ESM4"
        checks = {(e.asset_key.path[-1], e.check_name): e for e in daily.get_asset_check_evaluations()}
        assert checks["ES", "ohlcv_1d_sessions"].passed
        cl = checks["CL", "ohlcv_1d_sessions"]
        assert not cl.passed and cl.description == "1 of 313 session bars missing"
        assert cl.metadata["unexplained_windows"].value == [["2024-03-12T00:00:00+00:00", "2024-03-13T00:00:00+00:00"]]
        option_checks = {e.check_name: e for e in options.get_asset_check_evaluations()}
        assert option_checks["options_ohlcv_1d_sessions"].passed and option_checks["options_ohlcv_1d_valid"].passed
        assert warehouse.query("SELECT count(DISTINCT underlying) AS n FROM market_data.options_bars")["n"][0] == 3
