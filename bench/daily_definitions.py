"""A code location for the benchmark's Dagster-overhead comparison only: the catalog's klines
assets with daily partitions instead of monthly ones. `dagster ... -m bench.daily_definitions`."""

import dagster as dg

from marketdata_assets.catalog import load_catalog
from marketdata_assets.defs.klines import build_klines_asset
from marketdata_assets.defs.resources import resources_from
from marketdata_assets.settings import Settings

settings = Settings.from_env()
defs = dg.Definitions(
    assets=[
        build_klines_asset(instrument, tf, "duckdb", cadence="daily")
        for instrument in load_catalog(settings.catalog_path).instruments
        for tf in instrument.timeframes
    ],
    resources=resources_from(settings),
    executor=dg.in_process_executor,
)
