"""The benchmark's measurements that run in a process of their own (bench.py reads the JSON
line each prints, and the process's peak RSS): the data path without Dagster, the warehouse
alone, ccxt's loop, the report's work, and the code location's load time.

    python bench/children.py NAME EMULATOR_URL
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from workload import (
    CATALOG_SIZES, REPO, REPORT_ASSETS, REPORT_CHECKED, REPORT_START, SIX_YEARS, utc,
)


def child_data_path(url: str, write: bool) -> dict:
    """6 years of 1m spot through the ingest path alone, no Dagster: with or without writing."""
    from marketdata_assets.ingest import ingest_klines
    from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient
    from marketdata_assets.sources.binance_archive import BinanceArchiveClient
    from marketdata_assets.sources.binance_klines import BinanceKlinesSource
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    start, end = utc(SIX_YEARS[0]), utc("2025-01-01")
    source = BinanceKlinesSource(BinanceKlinesClient("spot", url), BinanceArchiveClient(url), "archive")
    began = time.perf_counter()
    if write:
        with tempfile.TemporaryDirectory() as scratch:
            report = ingest_klines(source, DuckDBWarehouse(Path(scratch) / "w.duckdb"), "BTCUSDT", "1m", start, end)
            rows = report.rows_written
    else:
        async def drain() -> int:
            async with source:
                return sum([f.height async for f in source.frames("BTCUSDT", "1m", start, end, 200_000)])

        rows = asyncio.run(drain())
    return {"rows": rows, "seconds": time.perf_counter() - began}


def child_warehouse(url: str) -> dict:
    """DuckDB alone: a year of 1m bars upserted in the ingest's write batches, into an empty
    table (plain insert) and again over the same keys (ON CONFLICT update)."""
    import polars as pl

    from marketdata_assets.schemas import KLINES
    from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient
    from marketdata_assets.sources.binance_archive import BinanceArchiveClient
    from marketdata_assets.sources.binance_klines import BinanceKlinesSource
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    source = BinanceKlinesSource(BinanceKlinesClient("spot", url), BinanceArchiveClient(url), "archive")

    async def collect() -> pl.DataFrame:
        async with source:
            frames = [f async for f in source.frames("BTCUSDT", "1m", utc("2023-01-01"), utc("2024-01-01"), 200_000)]
        return pl.concat(frames).sort("open_time")

    frame = asyncio.run(collect())
    from marketdata_assets.ingest import DEFAULT_ROWS_PER_WRITE as size

    batches = [frame.slice(i, size) for i in range(0, frame.height, size)]
    out = {"rows": frame.height, "batch_rows": size}
    with tempfile.TemporaryDirectory() as scratch:
        warehouse = DuckDBWarehouse(Path(scratch) / "w.duckdb")
        for label in ("insert", "upsert_existing"):
            began = time.perf_counter()
            for batch in batches:
                warehouse.upsert(KLINES, batch)
            out[label] = time.perf_counter() - began
        # What the primary key costs: the same batches into a copy of the table without it.
        with warehouse.connect() as con:
            con.execute("CREATE TABLE market_data.klines_no_key AS FROM market_data.klines LIMIT 0")
            began = time.perf_counter()
            for batch in batches:
                con.register("incoming", batch.to_arrow())
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO market_data.klines_no_key SELECT * FROM incoming")
                con.execute("COMMIT")
            out["insert_without_key"] = time.perf_counter() - began
    return out


def child_ccxt(url: str) -> dict:
    """A symbol-year of 1m klines the way a ccxt user writes it: a `since` loop, then a file."""
    import ccxt
    import polars as pl

    began = time.perf_counter()
    exchange = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = url + "/api/v3"
    since = exchange.parse8601("2023-01-01T00:00:00Z")
    end = exchange.parse8601("2024-01-01T00:00:00Z")
    rows: list[list] = []
    while since < end:
        batch = exchange.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=1000)
        if not batch:
            break
        rows += [row for row in batch if row[0] < end]
        since = batch[-1][0] + 60_000
    frame = pl.DataFrame(rows, schema=["timestamp", "open", "high", "low", "close", "volume"], orient="row")
    with tempfile.TemporaryDirectory() as scratch:
        frame.write_parquet(Path(scratch) / "BTC_USDT-1m.parquet")
    return {"rows": frame.height, "seconds": time.perf_counter() - began}




def build_report_state(work: Path) -> tuple[Path, dict[str, str]]:
    """A warehouse and a Dagster instance as five years of daily runs of 200 assets leave them:
    the bars (with a few holes), partition status as Dagster caches it (a few partitions missing
    or failed), and a result of each check on each of its first REPORT_CHECKED partitions. Recording 365,000 partition events one by one
    would take the SQLite instance most of an hour, so each asset gets one real materialization
    event and then the status cache Dagster itself writes after reading them all."""
    import dagster as dg
    from dagster._core.storage.partition_status_cache import AssetStatusCacheValue

    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.coverage import klines_assets
    from marketdata_assets.defs.quality.checks import KLINES_CHECKS
    from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

    catalog_path = work / "report_catalog.yaml"
    symbols = [f"S{i:03d}USDT" for i in range(REPORT_ASSETS // 2)]
    catalog_path.write_text(yaml.safe_dump({"start_date": REPORT_START, "instruments": [
        {"venue": "binance", "market": market, "symbol": symbol, "timeframes": ["1h"]}
        for symbol in symbols for market in ("spot", "perp")
    ]}))
    warehouse = DuckDBWarehouse(work / "report.duckdb")
    with warehouse.connect() as con:
        con.execute(
            "INSERT INTO market_data.klines SELECT 'binance', m.market, 'S' || lpad(s.i::VARCHAR, 3, '0') || 'USDT', "
            "'1h', ?::TIMESTAMPTZ + to_hours(h.i), 100, 101, 99, 100, 1, 100, 10, 0.5, 50, 'archive', now() "
            "FROM range(?) s(i), (VALUES ('spot'), ('perp')) m(market), range(?) h(i) "
            "WHERE h.i % 5000 != 17",  # a missing hour every ~7 months
            [REPORT_START, REPORT_ASSETS // 2, 5 * 365 * 24],
        )
    home = work / "report_dagster"
    home.mkdir()
    shutil.copy(REPO / "marketdata_assets" / "dagster_instance.yaml", home / "dagster.yaml")
    assets = klines_assets(load_catalog(catalog_path), cadence="daily")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        for asset in assets:
            keys = asset.partitions.get_partition_keys()
            for key in keys[:REPORT_CHECKED]:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset.key, partition=key))
            for key in keys[:REPORT_CHECKED]:
                for name in KLINES_CHECKS:
                    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                        asset_key=asset.key, check_name=name, passed=True, partition=key,
                        metadata={"window": f"[{key} 00:00, … ) UTC"}))
            (record,) = instance.fetch_materializations(asset.key, limit=1).records
            empty = asset.partitions.empty_subset()
            instance.update_asset_cached_status_data(asset.key, AssetStatusCacheValue(
                latest_storage_id=record.storage_id,
                partitions_def_id=asset.partitions.get_serializable_unique_identifier(),
                serialized_materialized_partition_subset=empty.with_partition_keys(
                    k for i, k in enumerate(keys) if i % 400 not in (5, 6)).serialize(),
                serialized_failed_partition_subset=empty.with_partition_keys(keys[5::400]).serialize(),
                serialized_in_progress_partition_subset=empty.serialize(),
            ))
    finally:
        instance.dispose()
    env = {"MARKETDATA_CATALOG": str(catalog_path), "MARKETDATA_WAREHOUSE_URL": f"duckdb:///{work / 'report.duckdb'}",
           "DAGSTER_HOME": str(home)}
    return catalog_path, env


def child_report(url: str) -> dict:
    """`marketdata report`'s work for 200 assets with five years of daily partitions: Dagster's
    partition status and check results, and the warehouse (8.7M hourly bars), three times."""
    import dagster as dg

    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.coverage import klines_assets, klines_coverage
    from marketdata_assets.report import render
    from marketdata_assets.warehouse import open_warehouse

    work = Path(tempfile.mkdtemp(prefix="marketdata-report-"))
    try:
        began = time.perf_counter()
        catalog_path, env = build_report_state(work)
        setup = time.perf_counter() - began
        assets = klines_assets(load_catalog(catalog_path), cadence="daily")
        warehouse = open_warehouse(env["MARKETDATA_WAREHOUSE_URL"])
        seconds = []
        for _ in range(3):
            began = time.perf_counter()
            instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
            items = klines_coverage(instance, warehouse, assets, cadence="daily")
            text = render(items, [], "table")
            instance.dispose()
            seconds.append(time.perf_counter() - began)
        rows = sum(item.stored.rows for item in items)
        partitions = sum(item.partitions_total for item in items)
        # The command itself, as a user runs it (its partitions are the monthly ones of the code).
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
        command = []
        for _ in range(2):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "marketdata_assets.cli", "report", "--format", "json"],
                           env={**cli_env, **env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
            command.append(time.perf_counter() - began)
        return {"assets": len(items), "partitions": partitions, "rows": rows, "seconds": seconds,
                "setup_seconds": setup, "lines": len(text.splitlines()), "command_seconds": command,
                "unexplained": sum(len(item.gaps.unexplained) for item in items)}
    finally:
        shutil.rmtree(work, ignore_errors=True)




def child_load(url: str) -> dict:
    """The code location's definitions for catalogs of 10, 100 and 300 symbols (spot and perp, 1m
    and 1h klines; funding, open interest and long/short for the perps), built and resolved as
    every run process and CLI call does, after the imports (timed apart)."""
    began = time.perf_counter()
    from marketdata_assets.defs.location import build_definitions  # Dagster with it
    from marketdata_assets.settings import Settings

    imports = time.perf_counter() - began
    found = {"imports_seconds": imports, "catalogs": []}
    for count in CATALOG_SIZES:
        with tempfile.TemporaryDirectory() as scratch:
            catalog = Path(scratch) / "catalog.yaml"
            catalog.write_text(yaml.safe_dump({"start_date": "2024-01-01", "instruments": [
                {"venue": "binance", "market": market, "symbol": f"S{i:03d}USDT", "timeframes": ["1m", "1h"]}
                for i in range(count) for market in ("spot", "perp")]}))
            began = time.perf_counter()
            definitions = build_definitions(Settings(catalog_path=catalog, warehouse_url=f"duckdb:///{scratch}/w.duckdb"))
            assets = len(list(definitions.resolve_all_asset_specs()))
            found["catalogs"].append({"symbols": count, "assets": assets, "seconds": time.perf_counter() - began})
    return found


def child_main(name: str, url: str) -> None:
    measurements = {
        "fetch_only": lambda: child_data_path(url, write=False),
        "data_path": lambda: child_data_path(url, write=True),
        "warehouse": lambda: child_warehouse(url),
        "ccxt": lambda: child_ccxt(url),
        "report": lambda: child_report(url),
        "load": lambda: child_load(url),
    }
    print(json.dumps(measurements[name]()))


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
