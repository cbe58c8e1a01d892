"""The Dagster code location: `dagster ... -m marketdata_assets.definitions`."""

from __future__ import annotations

import dagster as dg

from marketdata_assets.catalog import load_catalog
from marketdata_assets.defs.automation import automation
from marketdata_assets.defs.funding import build_funding_asset
from marketdata_assets.defs.futures_statistics import STATISTICS_DATASETS, build_statistics_asset
from marketdata_assets.defs.klines import build_klines_asset
from marketdata_assets.defs.resources import resources_from
from marketdata_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Assets for every catalog entry, resources from the settings (the environment by default)."""
    settings = settings or Settings.from_env()
    catalog = load_catalog(settings.catalog_path)
    warehouse_kind = "postgres" if settings.warehouse_url.startswith("postgres") else "duckdb"
    assets = [
        build_klines_asset(instrument, timeframe_name, warehouse_kind)
        for instrument in catalog.instruments
        if instrument.has_dataset("klines")
        for timeframe_name in instrument.timeframes
    ] + [
        build_funding_asset(instrument, warehouse_kind)
        for instrument in catalog.instruments
        if instrument.market == "perp" and instrument.has_dataset("funding")
    ] + [
        build_statistics_asset(instrument, dataset, warehouse_kind)
        for instrument in catalog.instruments
        if instrument.market == "perp" and instrument.venue == "binance"
        for dataset in STATISTICS_DATASETS
        if instrument.has_dataset(dataset)
    ]
    jobs, schedules, sensors = automation(assets, settings.schedule_cron)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources_from(settings),
        # Steps of one run share a venue's rate budget, so a process per step buys no speed and
        # costs ~1.3 s each (DESIGN.md, measured costs).
        executor=dg.in_process_executor,
    )


defs = build_definitions()
