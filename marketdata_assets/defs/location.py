"""The definitions of a code location, built from settings; importing this builds nothing (the
commands build them inside their own error handling). `marketdata_assets.definitions` is the
code location itself."""

from __future__ import annotations

import dagster as dg

from marketdata_assets.catalog import load_catalog
from marketdata_assets.datasets import dataset
from marketdata_assets.defs.operations import automation
from marketdata_assets.defs.ingest.resources import resources_from
from marketdata_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """An asset for every series of the catalog (built by its dataset, grouped by source and
    partitions), resources from the settings (the environment by default)."""
    settings = settings or Settings.from_env()
    catalog = load_catalog(settings.catalog_path)
    warehouse_kind = "postgres" if settings.warehouse_url.startswith("postgres") else "duckdb"
    groups: dict[tuple, list] = {}
    for series in catalog.all_series():
        declared = dataset(series.dataset)
        groups.setdefault((declared.name, series.source, declared.partitions(series)), []).append(series)
    # one definition (one Dagster op) per dataset, source and PartitionsDefinition: 2,100 assets load
    # in a third of the time one op each took
    assets = [dataset(name).build_assets(group, warehouse_kind) for (name, _, _), group in groups.items()]
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

