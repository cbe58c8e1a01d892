"""The scaling curve: `marketdata seed` of universes of 10, 100 and 300 symbols (spot and perp), a
year of 1h and a month of 1m klines, and a month of funding, open interest and long/short for
the perps, all from the archive, into DuckDB and into PostgreSQL; then what every later command
pays for the size: `marketdata report`, `marketdata summary`, and the webserver's asset catalog.

Users keep 1m for the recent past: the year of 1h is one `marketdata backfill klines_1h`, the
month of everything one `marketdata seed`. The windows end two months back, so every file is in the archive and nothing falls inside REST's
30 days of open interest (which would make the run wait on its 1,000 requests per 5 minutes).
The emulator lists the universe's symbols (`--listing`) and is asked for every file first: its
build time is not ours.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import httpx
import yaml

UNIVERSES = (10, 100, 300)
LISTED = "2020-01-01"


def symbols(count: int) -> list[str]:
    return [f"U{i:03d}USDT" for i in range(count)]


def listings(count: int) -> list[str]:
    return [f"{market}:{symbol}@{LISTED}" for symbol in symbols(count) for market in ("spot", "perp")]


def months_back(day: dt.date, count: int) -> dt.date:
    """The first day of the month `count` months before `day`'s."""
    month = day.replace(day=1)
    for _ in range(count):
        month = (month - dt.timedelta(days=1)).replace(day=1)
    return month


def windows(today: dt.date) -> dict[str, dt.date]:
    """The month of 1m and derivatives (two months back) and the year of 1h ending with it."""
    month = months_back(today, 2)
    return {"month": month, "year_start": months_back(month, 11),
            "last": (month + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)}


def catalog(count: int, path: Path, w: dict[str, dt.date]) -> None:
    instruments = [
        {"venue": "binance", "market": market, "symbol": symbol, "timeframes": ["1m", "1h"],
         "start_date": w["year_start"].isoformat()}
        for symbol in symbols(count) for market in ("spot", "perp")
    ]
    path.write_text(yaml.safe_dump({"instruments": instruments}, sort_keys=False))


def archive_paths(count: int, w: dict[str, dt.date]) -> list[str]:
    months, cursor = [], w["year_start"]
    while cursor <= w["month"]:
        months.append(cursor)
        cursor = (cursor + dt.timedelta(days=32)).replace(day=1)
    days = [w["month"] + dt.timedelta(days=i) for i in range((w["last"] - w["month"]).days + 1)]
    segment = {"spot": "spot", "perp": "futures/um"}
    paths = []
    for symbol in symbols(count):
        for market in ("spot", "perp"):
            base = f"/data/{segment[market]}/monthly/klines/{symbol}"
            paths += [f"{base}/1h/{symbol}-1h-{m:%Y-%m}.zip" for m in months]
            paths.append(f"{base}/1m/{symbol}-1m-{w['month']:%Y-%m}.zip")
        paths.append(f"/data/futures/um/monthly/fundingRate/{symbol}/{symbol}-fundingRate-{w['month']:%Y-%m}.zip")
        paths += [f"/data/futures/um/daily/metrics/{symbol}/{symbol}-metrics-{d:%Y-%m-%d}.zip" for d in days]
    return paths


ASSET_CATALOG_QUERY = """
query AssetCatalog {
  assetsOrError {
    ... on AssetConnection {
      nodes {
        key { path }
        definition { groupName partitionDefinition { description } hasAssetChecks: assetChecksOrError { __typename } }
      }
    }
  }
}
"""


def asset_catalog_seconds(env: dict[str, str], times: int = 3) -> dict:
    """The webserver on the seeded home (the tests' own launcher): seconds to come up, and its
    asset catalog query (the asset list the UI opens with), the median of `times`."""
    from marketdata_tests.ui import webserver

    began = time.perf_counter()
    with webserver(env) as url:
        up = time.perf_counter() - began
        runs, nodes = [], 0
        for _ in range(times):
            began = time.perf_counter()
            answer = httpx.post(url + "/graphql", json={"query": ASSET_CATALOG_QUERY}, timeout=600).json()
            runs.append(time.perf_counter() - began)
            nodes = len(answer["data"]["assetsOrError"]["nodes"])
    return {"startup_seconds": up, "query_seconds": sorted(runs)[times // 2], "assets": nodes}


def seed_universe(run_dir: Path, env: dict[str, str], w: dict[str, dt.date], run_measured, warehouse) -> dict:
    """The year of 1h (`marketdata backfill klines_1h --local`), then `marketdata seed` of the
    month (1m, funding, open interest, long/short; its 1h month is there already); then report,
    summary and the webserver over what they left."""
    cli = [sys.executable, "-m", "marketdata_assets.cli"]
    hourly = run_measured([*cli, "backfill", "klines_1h", "--from", w["year_start"].isoformat(),
                           "--to", w["last"].isoformat(), "--local"], env, run_dir, run_dir / "backfill.log")
    seed = run_measured([*cli, "seed", "--from", w["month"].isoformat(), "--to", w["last"].isoformat()],
                        env, run_dir, run_dir / "seed.log")
    log = (run_dir / "backfill.log").read_text() + (run_dir / "seed.log").read_text()
    rows = {table: int(warehouse.query(f"SELECT count(*) AS n FROM market_data.{table}")["n"][0])
            for table in ("klines", "funding_rates", "open_interest", "long_short_ratios")}
    report = run_measured([*cli, "report", "--format", "json"], env, run_dir, run_dir / "report.json")
    summary = run_measured([*cli, "summary"], env, run_dir, run_dir / "summary.log")
    return {
        "seconds": hourly["seconds"] + seed["seconds"], "hourly_seconds": hourly["seconds"],
        "rss_mb": max(hourly["rss_mb"], seed["rss_mb"]), "rows": rows, "total_rows": sum(rows.values()),
        "runs": log.count("\ndone   "), "bookkeeping": bookkeeping(env), "drift": drift(env),
        "report_seconds": report["seconds"], "report_rss_mb": report["rss_mb"],
        "summary_seconds": summary["seconds"],
        "webserver": asset_catalog_seconds(env),
    }


def bookkeeping(env: dict[str, str]) -> dict:
    """Seconds of the seed's runs spent in the data path and in Dagster's recording, summed over
    every asset's latest run observation."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        data = recording = 0.0
        for key in instance.get_asset_keys():
            records = instance.fetch_observations(key, limit=1).records
            if not records or records[0].asset_observation is None or "run" not in records[0].asset_observation.metadata:
                continue
            run = records[0].asset_observation.metadata["run"].value
            data += run["seconds"]
            recording += sum(run.get("bookkeeping_seconds", {}).values())
        return {"data_path_seconds": data, "recording_seconds": recording}
    finally:
        instance.dispose()


def drift(env: dict[str, str]) -> dict[str, list[float]]:
    """Whether an asset costs more the later it comes in a long run: per dataset, the seconds
    between one asset's last materialization and the next's in its run (every run of the home),
    averaged over the first tenth of that dataset's assets and over the last tenth."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        found: dict[str, list[float]] = {}
        for run in instance.get_runs():
            last: dict[dg.AssetKey, float] = {}
            for record in instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10_000_000).records:
                last[record.event_log_entry.dagster_event.asset_key] = record.event_log_entry.timestamp
            by_dataset: dict[str, list[float]] = {}
            for key, moment in sorted(last.items(), key=lambda item: item[1]):
                by_dataset.setdefault(key.path[1], []).append(moment)
            for dataset, moments in by_dataset.items():
                gaps = [b - a for a, b in zip(moments, moments[1:])]
                if len(gaps) >= 10:
                    tenth = len(gaps) // 10
                    found[dataset] = [sum(gaps[:tenth]) / tenth, sum(gaps[-tenth:]) / tenth]
        return found
    finally:
        instance.dispose()
