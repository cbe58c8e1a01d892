"""The generic asset body: one time-partitioned asset per catalog series, for every dataset that
declares a source (ingest.Source) and its checks. The dataset says what; this says how a range
run fetches, writes, checks and records its partitions."""

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg

from marketdata_assets.defs.partitions import partial_outcome, partition_bounds, venue_pool
from marketdata_assets.ingest import ingest

if TYPE_CHECKING:
    from marketdata_assets.catalog import Series
    from marketdata_assets.datasets import Dataset


def build_dataset_asset(dataset: "Dataset", series: "Series", warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset of `series`: each run reads its partitions' window from the dataset's source,
    upserts it, evaluates the dataset's checks over it, and records the partitions that landed."""
    from marketdata_assets.datasets import Bounds

    key = dataset.asset_key(series)
    partitions = dataset.partitions(series)
    metadata = {"dataset": dataset.name, "venue": series.venue, "table": dataset.table.qualified_name}
    if series.key:
        metadata["symbol"] = series.key

    @dg.asset(
        key=key,
        partitions_def=partitions,
        check_specs=dataset.check_specs(key),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=series.source,
        kinds={warehouse_kind},
        pool=venue_pool(series.source, warehouse_kind),
        required_resource_keys={"warehouse", "upstreams"},
        description=f"{dataset.describe_series(series)}; monthly UTC partitions from {partitions.start:%Y-%m-%d}, "
                    "the one in progress included.",
        metadata=metadata,
    )
    def materialize(context: dg.AssetExecutionContext):
        window = context.partition_time_window
        store = context.resources.warehouse.open()
        source = dataset.open_source(series, context.resources.upstreams)
        report = ingest(source, store, dataset.table, dataset.time_column, series, window.start, window.end)
        context.log.info(
            f"{series.describe()} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): {report.rows_written} rows in "
            f"{report.seconds:.1f} s from {report.outcome.requests} requests, {report.rows_rejected} rejected, "
            f"{len(report.failures)} windows failed"
        )
        bounds = Bounds(*partition_bounds(partitions))
        checks = dataset.check_results(store, key, series, window.start, window.end, bounds, dt.datetime.now(dt.UTC))
        if report.failures:
            yield from partial_outcome(
                context, key, partitions, report.failures, report.rows_written, series.describe(), checks
            )
            return
        yield dg.MaterializeResult(check_results=checks, metadata={
            **report.metadata(),
            "window": dg.MetadataValue.text(f"[{window.start.isoformat()}, {window.end.isoformat()})"),
        })

    return materialize
