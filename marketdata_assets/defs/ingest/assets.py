"""The one asset body: a time-partitioned asset per catalog series, for every dataset. The dataset
says what (its key, partitions, source, checks, metadata names); this says how a range run
fetches, writes, checks and records its partitions.

Every asset is subsettable, so its checks can also run alone over any partition range
(`marketdata gaps verify` does), and has `BackfillPolicy.single_run()`: a partition range is one run.
"""

import datetime as dt
from collections.abc import Iterator
import time
import warnings
from typing import TYPE_CHECKING, Any

import dagster as dg

from marketdata_assets.defs.ingest.bans import adopt, record
from marketdata_assets.defs.ingest.partitions import (
    WindowsFailed,
    checked_per_partition,
    checks_summary,
    failed_partitions,
    partition_bounds,
    venue_pool,
    windows_failed,
    windows_of,
)
from marketdata_assets.ingest import ingest
from marketdata_assets.picture import asset_row, markdown
from marketdata_assets.run_health import tag_run
from marketdata_assets.tally import PartitionTally
from marketdata_assets.warehouse.base import set_run
from marketdata_assets.wording import counted

if TYPE_CHECKING:
    from marketdata_assets.catalog import Series
    from marketdata_assets.datasets import Dataset

# BackfillPolicy is "beta" in 1.13 but is what makes range runs possible; say it once, in README.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


def _moment(value) -> dg.MetadataValue:
    return dg.MetadataValue.text(value.isoformat() if value is not None else "none")


def partition_metadata(
    tally: PartitionTally, start: dt.datetime, end: dt.datetime, moment_names: tuple[str, str], series_rows: int,
) -> dict[str, dg.MetadataValue]:
    """A partition's own figures: its rows and times, and its share of what the run spent (tally.py).
    Each is comparable from one partition to the next, so Dagster's plots of them mean something."""
    first_name, last_name = moment_names
    return {
        # Dagster's own keys (TableMetadataSet): the UI's row-count column and plot
        "dagster/partition_row_count": dg.MetadataValue.int(tally.rows),
        "dagster/row_count": dg.MetadataValue.int(series_rows),
        "rows_written": dg.MetadataValue.int(tally.rows),
        first_name: _moment(tally.first),
        last_name: _moment(tally.last),
        "window": dg.MetadataValue.text(f"[{start.isoformat()}, {end.isoformat()})"),
        "rows_rejected": dg.MetadataValue.int(tally.rejected),
        **{name: dg.MetadataValue.int(value) for name, value in sorted(tally.spent.items())},
    }


def build_dataset_assets(dataset: "Dataset", group: list["Series"], warehouse_kind: str) -> dg.AssetsDefinition:
    """The assets of `group`, series of one dataset and source sharing a PartitionsDefinition,
    as one subsettable definition (Dagster builds an op per definition: one per group keeps the
    code location quick to load with thousands of assets). Each run materializes the assets it
    selects one after the other: reads its partitions' window from the dataset's source, upserts
    it, evaluates the checks over each partition and records the partitions that landed."""
    partitions = dataset.partitions(group[0])
    by_key = {dataset.asset_key(series): series for series in group}
    specs = [
        dg.AssetSpec(
            key,
            group_name=series.source,
            # no kinds: in the UI's list of assets each kind's tag takes the width the key needs, and
            # the key's middle (its dataset) was cut; the group names the venue, the table the store
            kinds=set(),
            description=dataset.describe_series(series, partitions),
            metadata=dataset.asset_metadata(series),
            freshness_policy=dataset.freshness_policy,
            deps=[dg.AssetDep(upstream, partition_mapping=dg.TimeWindowPartitionMapping())
                  for upstream in dataset.input_keys(key)],
        )
        for key, series in by_key.items()
    ]
    source = group[0].source

    @dg.multi_asset(
        name=f"{source}__{dataset.name}__since_{partitions.start:%Y_%m_%d}",
        specs=specs,
        check_specs=[check for key in by_key for check in dataset.check_specs(key, partitions)],
        can_subset=True,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=venue_pool(source, warehouse_kind),
        required_resource_keys={"warehouse", "upstreams"},
    )
    def materialize(context: dg.AssetExecutionContext):
        tag_run(context.instance, context.run.run_id)  # so a run whose process dies is noticed (run_health)
        set_run(context.run.run_id)  # a value this run replaces is kept in market_data.revisions, naming it
        chosen = sorted(set(context.selected_asset_keys) | {c.asset_key for c in context.selected_asset_check_keys},
                        key=lambda key: key.path)
        failures: list[Exception] = []
        scope = dataset.run_scope([by_key[key] for key in chosen if key in context.selected_asset_keys])
        for key in chosen:
            names = {c.name for c in context.selected_asset_check_keys if c.asset_key == key}
            try:
                with context.resources.warehouse.open().kept_open():
                    yield from _materialize_one(context, dataset, by_key[key], key, partitions, names, scope)
            except Exception as exc:  # the others of the run still go; it fails at the end, naming this
                if len(chosen) == 1:
                    raise
                context.log.error(f"{key.to_user_string()}: {exc.__class__.__name__}: {exc}")
                failures.append(exc)
        if failures:
            raise failures[0] if len(failures) == 1 else WindowsFailed(
                "\n".join(f"{exc.__class__.__name__}: {exc}" for exc in failures))

    return materialize


def _materialize_one(
    context: dg.AssetExecutionContext, dataset: "Dataset", series: "Series", key: dg.AssetKey,
    partitions: dg.TimeWindowPartitionsDefinition, names: set[str], scope: Any = None,
):
    """One asset of a run: its rows, its partitions' materializations, its check results per
    partition and its observation; raises naming the windows that could not be read."""
    from marketdata_assets.datasets import Bounds

    window = context.partition_time_window
    store = context.resources.warehouse.open()
    bounds = Bounds(*partition_bounds(partitions))
    windows = windows_of(partitions, context.partition_keys)
    what = key.to_user_string()

    def checks(chosen: list) -> dict[str, list[dg.AssetCheckResult]]:
        found = dataset.check_results_by_window(store, key, series, chosen, bounds, dt.datetime.now(dt.UTC), names)
        return {partition: [r for r in results if r.check_name in names] for partition, results in found.items()}

    if key not in context.selected_asset_keys:  # the checks alone, over the partitions that landed
        landed = context.instance.get_materialized_partitions(key)
        checked = [w for w in windows if w[0] in landed]
        if len(checked) < len(windows):
            context.log.info(f"{what}: not checked, never materialized: "
                             + ", ".join(k for k, _, _ in windows if k not in landed))
        evaluations = list(checked_per_partition(context.instance, key, checked, checks))
        context.log.info(f"{what} checks: {checks_summary(evaluations)}")
        yield from evaluations
        yield from _checks_done(context, key, names)
        return
    adopt(context.instance)  # bans other runs earned: nothing is sent to a host that banned our IP
    source = dataset.open_source(series, context.resources.upstreams, bounds, store)
    if scope is not None:
        scope.attach(source)
    try:
        report = ingest(source, store, dataset.table_of(series), dataset.time_column_of(series), series,
                        window.start, window.end, rows_per_write=context.resources.warehouse.rows_per_write,
                        partitions=windows)
    finally:
        record(context.instance, series.venue, context.run.run_id)  # and those this run earned, for the others
    outcome = report.outcome
    failed = failed_partitions(windows, report.failures)
    context.log.info(
        f"{what} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
        f"{report.rows_written} rows in {report.seconds:.1f} s, "
        + ", ".join(f"{rows} from {origin}" for origin, rows in sorted(outcome.rows_by_source.items()))
        + f"; {counted(outcome.requests, 'request')}, {counted(report.rows_rejected, 'row')} rejected, "
        + f"{counted(len(report.failures), 'window')} failed; run totals: "
        + ", ".join(f"{name} {value}" for name, value in outcome.metadata.items() if value != "")
    )
    landed = [w for w in windows if w[0] not in failed]
    series_rows = dataset.rows_stored(store, series)
    clock = time.perf_counter
    began = clock()
    for partition_key, start, end in landed:
        yield dg.AssetMaterialization(
            asset_key=key, partition=partition_key,
            metadata=partition_metadata(report.by_partition[partition_key], start, end, dataset.moment_names,
                                        series_rows),
        )
    spent = {"recording_partitions": clock() - began}
    # The checks' questions share one connection, and the writes they make use it too (the
    # picture below reads the warehouse in a thread of its own, with its own).
    began = clock()
    with store.session():
        evaluations = list(checked_per_partition(context.instance, key, landed, checks))
    spent["checking"] = clock() - began
    context.log.info(f"{what} checks: {checks_summary(evaluations)}")
    began = clock()
    yield from evaluations
    spent["recording_check_results"] = clock() - began
    began = clock()
    row = asset_row(context.instance, store, dataset, series, key, partitions, failed)
    spent["coverage_picture"] = clock() - began
    context.log.info(
        f"{what}: {counted(len(landed), 'partition')} recorded in {spent['recording_partitions']:.2f} s, "
        f"{counted(len(evaluations), 'check result')} computed in {spent['checking']:.2f} s and recorded in "
        f"{spent['recording_check_results']:.2f} s, the coverage picture drawn in {spent['coverage_picture']:.2f} s")
    # The asset's coverage (as `marketdata report --html` draws it, picture.py) and this run's
    # totals: figures of the asset, not of a partition. The totals are JSON, not plotted: runs
    # of different windows are not comparable.
    yield dg.AssetObservation(asset_key=key, metadata={
        "coverage": dg.MetadataValue.md(markdown(row)),
        "partitions_landed": dg.MetadataValue.int(len(row.cells) - row.count("failed") - row.count("not_materialized")),
        "partitions_failed": dg.MetadataValue.int(row.count("failed")),
        "partitions_with_unexplained_gaps": dg.MetadataValue.int(row.count("gaps")),
        "run": dg.MetadataValue.json({
            "window": f"[{window.start.isoformat()}, {window.end.isoformat()})",
            "partitions": len(windows), "partitions_failed": sorted(failed),
            "rows_written": report.rows_written, "rows_rejected": report.rows_rejected,
            "requests": outcome.requests, "windows_failed": len(report.failures),
            "write_windows": report.write_windows, "seconds": round(report.seconds, 3),
            **{name: value for name, value in outcome.metadata.items() if value != ""},
            "check_results": len(evaluations),
            "bookkeeping_seconds": {name: round(value, 3) for name, value in spent.items()},
        }),
    })
    if failed:
        # The partitions that landed are recorded above; the run fails naming the others.
        raise windows_failed(what, windows, failed, report.failures)
    yield from _checks_done(context, key, names)


def _checks_done(context: dg.AssetExecutionContext, key: dg.AssetKey, names: set[str]) -> Iterator[dg.Output]:
    """The (empty) output of each check of `key` the run selected, as Dagster itself yields for an
    AssetCheckResult: the results were recorded per partition above, and without these Dagster
    logs that the step "did not yield or return expected outputs"."""
    for name in sorted(names):
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(dg.AssetCheckKey(key, name)))
