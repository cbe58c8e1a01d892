"""The application layer: what `marketdata` does, without the command line. cli.py parses options
and prints what these return; a request that cannot run as asked raises AppError (one line, exit 2).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.settings import Settings, SettingsError, redact


# The dagster.yaml of a home `marketdata` makes (and `make dev`'s).
INSTANCE_CONFIG = resources.files("marketdata_assets").joinpath("dagster_instance.yaml")


class AppError(Exception):
    """The request cannot run as asked (bad input, settings, catalog or warehouse URL): one line."""


def local_instance(env: Mapping[str, str] | None = None) -> dg.DagsterInstance:
    """The Dagster instance of DAGSTER_HOME, or of .marketdata/dagster (made if missing). A home
    without a dagster.yaml gets the packaged one (SQLite, telemetry off, run monitoring on)."""
    env = os.environ if env is None else env
    home = Path(env.get("DAGSTER_HOME") or ".marketdata/dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_CONFIG.read_text())
    return dg.DagsterInstance.from_config(str(home))


# --- coverage (report, gaps verify) ---------------------------------------------------------------


@dataclass
class Coverage:
    settings: Settings
    warehouse: Any
    instance: dg.DagsterInstance
    klines: list  # coverage.AssetCoverage
    others: list  # coverage.SeriesCoverage, every dataset but klines
    dead_runs: list  # run_health.DeadRun: runs whose process was gone, marked failed first


def coverage(symbols: Sequence[str], dataset: str | None = "klines") -> Coverage:
    """Coverage of the assets of `symbols` (all when empty) and `dataset` (None: every dataset),
    from the warehouse and the Dagster instance of DAGSTER_HOME."""
    from marketdata_assets.catalog import CatalogError, load_catalog
    from marketdata_assets.coverage import klines_assets, klines_coverage, series_assets, series_coverage
    from marketdata_assets.dagster_internals import DagsterHomeNotSetError
    from marketdata_assets.datasets import all_datasets
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    known = {each.name: each for each in all_datasets()}
    if dataset is not None and dataset not in known:
        raise AppError(f"unknown dataset {dataset!r} (known: {', '.join(known)})")
    # klines' bars are audited in detail (their own table); every other dataset by its `missing` rule
    detailed = dataset is None or known[dataset].detailed_audit
    try:
        settings = Settings.from_env()
        catalog = load_catalog(settings.catalog_path)
        warehouse = open_warehouse(settings.warehouse_url)
    except (CatalogError, WarehouseError, ValueError) as exc:
        raise AppError(str(exc)) from None
    assets = klines_assets(catalog, symbols) if detailed else []
    others = series_assets(catalog, symbols, [dataset] if dataset else []) if dataset is None or not detailed else []
    unknown = sorted(set(symbols) - {asset.instrument.symbol for asset in assets} - {a.series.symbol for a in others})
    if unknown:
        raise AppError(f"no {dataset + ' ' if dataset else ''}asset for symbol {', '.join(unknown)} in the catalog")
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        raise AppError("DAGSTER_HOME is not set: partition status and check results live in the Dagster "
                       "instance that `dagster asset materialize` and `dagster dev` use; point DAGSTER_HOME at it") from None
    from marketdata_assets.run_health import fail_dead_runs

    dead = fail_dead_runs(instance)
    try:
        return Coverage(settings, warehouse, instance, klines_coverage(instance, warehouse, assets),
                        series_coverage(instance, warehouse, others), dead)
    except WarehouseError as exc:
        instance.dispose()
        raise AppError(str(exc)) from None


# --- summary ----------------------------------------------------------------------------------------


def summary(symbol: str | None, narrowed: Any = None) -> tuple[str, pl.DataFrame]:
    """(warehouse URL fit to print, one row per stored series: series (its asset key), rows, first_time, last_time),
    of the catalog's series `narrowed` (plans.Filter) keeps when given."""
    from marketdata_assets.datasets import all_datasets
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    settings = Settings.from_env()
    selects = [each.summary_sql(symbol) for each in all_datasets()]
    try:
        frame = open_warehouse(settings.warehouse_url).query(
            " UNION ALL ".join(sql for sql, _ in selects) + " ORDER BY 1", [p for _, params in selects for p in params]
        )
    except WarehouseError as exc:
        raise AppError(str(exc)) from None
    if narrowed is not None:
        kept = {key for key, _ in _narrowed_series(settings, narrowed)}
        frame = frame.filter(pl.col("series").is_in(sorted(kept)))
    return redact(settings.warehouse_url), frame


def _narrowed_series(settings: Settings, narrowed: Any) -> list[tuple[str, Any]]:
    """(asset key as text, series) of the catalog's series `narrowed` keeps; AppError for a value
    no series has."""
    from marketdata_assets.catalog import CatalogError, load_catalog
    from marketdata_assets.datasets import dataset
    from marketdata_assets.plans import about_series

    try:
        every = [(dataset(s.dataset).asset_key(s).to_user_string(), s)
                 for s in load_catalog(settings.catalog_path).all_series()]
        return narrowed.narrow(every, lambda pair: about_series(pair[1]), "series of the catalog")
    except (CatalogError, ValueError) as exc:
        raise AppError(str(exc)) from None


# --- export -----------------------------------------------------------------------------------------


def export(selection: str, from_raw: str | None, to_raw: str | None, fmt: str, path: Path | None,
           partitioned: bool, narrowed: Any = None) -> list:
    """The stored rows of the series `selection` names, over the window, into files
    (export.py); every bad input is an AppError before a file is opened."""
    from marketdata_assets import backfills
    from marketdata_assets.catalog import CatalogError, load_catalog
    from marketdata_assets.export import ExportError, choose, export as write_files
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    try:
        settings = Settings.from_env()
        start, end = backfills.window(from_raw, to_raw, dt.datetime.now(dt.UTC))
        chosen = choose(load_catalog(settings.catalog_path), selection)
        if narrowed is not None:
            from marketdata_assets.plans import about_series

            chosen = narrowed.narrow(chosen, lambda each: about_series(each.series), "series the selection names")
        return write_files(open_warehouse(settings.warehouse_url), chosen, start, end, fmt, path, partitioned)
    except (CatalogError, WarehouseError, ExportError, backfills.BackfillError, ValueError) as exc:
        raise AppError(str(exc)) from None


# --- metrics ----------------------------------------------------------------------------------------


def metrics_server(host: str, port: int, refresh_seconds: float) -> Any:
    """An HTTP server (not yet serving) answering /metrics from metrics.py's collector, over the
    warehouse and catalog of the environment and the Dagster instance of DAGSTER_HOME; AppError
    when one cannot be opened or the port is taken."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    from marketdata_assets.catalog import CatalogError
    from marketdata_assets.dagster_internals import DagsterHomeNotSetError
    from marketdata_assets.metrics import registry_for

    try:
        settings = Settings.from_env()
        check_warehouse(settings)
        instance = dg.DagsterInstance.get()
        registry = registry_for(settings, instance, refresh_seconds)
    except DagsterHomeNotSetError:
        raise AppError("DAGSTER_HOME is not set: the metrics read the Dagster instance the backfills run in; "
                       "point DAGSTER_HOME at it") from None
    except (CatalogError, SettingsError) as exc:
        raise AppError(str(exc)) from None

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # a line per scrape is noise
            return None

    try:
        return make_server(host, port, make_wsgi_app(registry), WSGIServer, handler_class=Quiet)
    except OSError as exc:
        raise AppError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


# --- seed -------------------------------------------------------------------------------------------


@dataclass
class SeedPlan:
    settings: Settings
    definitions: dg.Definitions
    instance: dg.DagsterInstance
    start: dt.datetime
    end: dt.datetime
    chosen: list  # backfills.Selection
    notes: list[str]  # what the plan left out and why


def plan_seed(env: Mapping[str, str], from_raw: str | None, to_raw: str | None, narrowed: Any = None) -> SeedPlan:
    """Every partition of every dataset not skipped (SKIP_<NAME>) overlapping FROM_DATE..TO_DATE
    that is not materialized yet, with the settings of `env`."""
    from marketdata_assets import backfills
    from marketdata_assets.catalog import CatalogError
    from marketdata_assets.defs.location import build_definitions

    now = dt.datetime.now(dt.UTC)
    try:
        start, end = backfills.seed_window(from_raw, to_raw, now)
        settings = Settings.from_env(env)
        definitions = build_definitions(settings)
    except (backfills.BackfillError, CatalogError, SettingsError) as exc:
        raise AppError(str(exc)) from None
    check_warehouse(settings)
    instance = local_instance(env)
    from marketdata_assets.datasets import all_datasets

    unmet = {d.name: why for d in all_datasets() if (why := d.unmet_requirement(settings))}
    def keep(specs: list) -> list:  # --venue, --market, --symbols, --keys
        try:
            return narrowed.narrow(specs, lambda spec: spec.metadata)
        except ValueError as exc:
            raise AppError(str(exc)) from None

    chosen, notes = backfills.plan_seed(definitions, instance, start, end, now, backfills.skipped_datasets(env), unmet,
                                        keep if narrowed is not None else None)
    return SeedPlan(settings, definitions, instance, start, end, chosen, notes)


@dataclass
class Cost:
    """What an upstream that bills by volume asks for one dataset's part of a launch."""

    dataset: str
    usd: float
    series: int
    start: dt.datetime
    end: dt.datetime

    def describe(self) -> str:
        return (f"{self.dataset}: the upstream asks ${self.usd:,.4f} for {self.series} series over "
                f"{self.start:%Y-%m-%d} .. {self.end:%Y-%m-%d}")


def launch_costs(settings: Settings, chosen: list) -> list[Cost]:
    """The cost of each dataset of `chosen` (backfills.Selection) whose upstream bills by volume,
    asked of it before anything is launched; AppError naming the dataset when it cannot run (a
    missing key) or the upstream refuses to say."""
    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.datasets import dataset as dataset_named
    from marketdata_assets.sources.errors import UpstreamError

    now = dt.datetime.now(dt.UTC)
    by_key = {dataset_named(s.dataset).asset_key(s): s for s in load_catalog(settings.catalog_path).all_series()}
    costs: dict[str, Cost] = {}
    for selection in chosen:
        series = [by_key[key] for key in selection.keys if key in by_key]
        declared = dataset_named(series[0].dataset) if series else None
        if declared is None or not declared.bills_by_volume:
            continue
        start = selection.partitions.time_window_for_partition_key(selection.first).start
        end = min(selection.partitions.time_window_for_partition_key(selection.last).end, now)
        why = declared.unmet_requirement(settings)
        if why:
            raise AppError(f"{declared.name}: {why}; nothing was launched")
        try:
            usd = declared.cost_usd(series, start, end, settings) or 0.0
        except UpstreamError as exc:
            raise AppError(f"{declared.name}: the cost could not be asked: {exc}; nothing was launched") from None
        found = costs.setdefault(declared.name, Cost(declared.name, 0.0, 0, start, end))
        found.usd += usd
        found.series += len(series)
        found.start, found.end = min(found.start, start), max(found.end, end)
    return list(costs.values())


def check_warehouse(settings: Settings) -> None:
    """Open the warehouse before anything is launched: a bad URL, an unknown host or database,
    or a refused login is one line, not a failed run."""
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    try:
        open_warehouse(settings.warehouse_url).query("SELECT 1 AS ok")
    except WarehouseError as exc:
        raise AppError(str(exc)) from None


# --- backfill -----------------------------------------------------------------------------------------


def backfill_selection(
    dataset: str, symbols: Sequence[str], from_raw: str | None, to_raw: str | None, narrowed: Any = None,
) -> tuple[Settings, dg.Definitions, list]:
    """(settings, definitions, backfills.Selection list) of `marketdata backfill DATASET`: the
    partitions of its assets (of `symbols`, comma-separated or repeated) overlapping from..to."""
    from marketdata_assets import backfills
    from marketdata_assets.catalog import CatalogError
    from marketdata_assets.defs.location import build_definitions
    from marketdata_assets.defs.ingest.partitions import partitions_between

    now = dt.datetime.now(dt.UTC)
    wanted = [s.strip() for raw in symbols for s in raw.split(",") if s.strip()]
    try:
        start, end = backfills.window(from_raw, to_raw, now)
        settings = Settings.from_env()
        definitions = build_definitions(settings)
        specs = backfills.dataset_assets(definitions, dataset, wanted)
        if narrowed is not None:
            specs = narrowed.narrow(specs, lambda spec: spec.metadata, f"{dataset} asset")
    except (backfills.BackfillError, CatalogError, SettingsError, ValueError) as exc:
        raise AppError(str(exc)) from None
    chosen = backfills.selections(specs, lambda spec: partitions_between(spec.partitions_def, start, end, now))  # type: ignore[arg-type]
    if not chosen:
        raise AppError(f"no partitions of {dataset} overlap {from_raw or 'the listing'} .. {to_raw or 'now'}")
    from marketdata_assets.datasets import dataset as dataset_named
    from marketdata_assets.defs.operations import dataset_of

    by_key = {spec.key: spec for spec in specs}
    for selection in chosen:  # each range's first partition: the oldest any upstream is asked for
        window = selection.partitions.time_window_for_partition_key(selection.first)
        for key in selection.keys:
            why = dataset_named(dataset_of(by_key[key])).unservable(window.start, window.end, now)
            if why:
                raise AppError(f"{key.to_user_string()} {selection.first}: {why}")
    return settings, definitions, chosen
