"""A code location for the benchmark's Dagster-overhead comparison only: the catalog's klines
assets with daily partitions instead of monthly ones. `dagster ... -m bench.daily_definitions`."""

import dataclasses

import dagster as dg

from marketdata_assets.catalog import load_catalog
from marketdata_assets.datasets import dataset
from marketdata_assets.defs.ingest.resources import resources_from
from marketdata_assets.settings import Settings

settings = Settings.from_env()
klines = dataset("klines")
groups: dict = {}
for series in klines.series_of(load_catalog(settings.catalog_path)):
    daily = dataclasses.replace(series, options={**series.options, "cadence": "daily"})
    groups.setdefault((daily.source, klines.partitions(daily)), []).append(daily)
defs = dg.Definitions(
    assets=[klines.build_assets(group, "duckdb") for group in groups.values()],
    resources=resources_from(settings),
    executor=dg.in_process_executor,
)
