"""The one asset body: a time-partitioned asset per catalog series, for every dataset. The dataset
says what (its key, partitions, source, checks, metadata names); this says how a range run
fetches, writes, checks and records its partitions.

Every asset is subsettable, so its checks can also run alone over any partition range
(`marketdata gaps verify` does), and has `BackfillPolicy.single_run()`: a partition range is one run.
"""

import datetime as dt
import warnings
from typing import TYPE_CHECKING

import dagster as dg

from marketdata_assets.defs.ingest.bans import adopt, record
from marketdata_assets.defs.ingest.partitions import partial_outcome, partition_bounds, venue_pool
from marketdata_assets.ingest import ingest
from marketdata_assets.run_health import tag_run
from marketdata_assets.wording import counted

if TYPE_CHECKING:
    from marketdata_assets.catalog import Series
    from marketdata_assets.datasets import Dataset

# BackfillPolicy is "beta" in 1.13 but is what makes range runs possible; say it once, in README.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


def _moment(value) -> dg.MetadataValue:
    return dg.MetadataValue.text(value.isoformat() if value is not None else "none")


def build_dataset_asset(dataset: "Dataset", series: "Series", warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset of `series`: each run reads its partitions' window from the dataset's source,
    upserts it, evaluates the dataset's checks over it, and records the partitions that landed."""
    from marketdata_assets.datasets import Bounds

    key = dataset.asset_key(series)
    partitions = dataset.partitions(series)
    spec = dg.AssetSpec(
        key,
        group_name=series.source,
        kinds={series.venue, warehouse_kind},
        description=dataset.describe_series(series, partitions),
        metadata=dataset.asset_metadata(series),
        freshness_policy=dataset.freshness_policy,
    )
    first_name, last_name = dataset.moment_names

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[spec],
        check_specs=dataset.check_specs(key, partitions),
        can_subset=True,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=venue_pool(series.source, warehouse_kind),
        required_resource_keys={"warehouse", "upstreams"},
    )
    def materialize(context: dg.AssetExecutionContext):
        tag_run(context.instance, context.run.run_id)  # so a run whose process dies is noticed (run_health)
        window = context.partition_time_window
        store = context.resources.warehouse.open()
        bounds = Bounds(*partition_bounds(partitions))
        names = {check.name for check in context.selected_asset_check_keys}

        def checks() -> list[dg.AssetCheckResult]:
            results = dataset.check_results(store, key, series, window.start, window.end, bounds,
                                            dt.datetime.now(dt.UTC), names)
            return [result for result in results if result.check_name in names]

        if key not in context.selected_asset_keys:  # the checks alone
            yield from checks()
            return
        adopt(context.instance)  # bans other runs earned: nothing is sent to a host that banned our IP
        source = dataset.open_source(series, context.resources.upstreams, bounds)
        try:
            report = ingest(source, store, dataset.table, dataset.time_column, series, window.start, window.end,
                            rows_per_write=context.resources.warehouse.rows_per_write)
        finally:
            record(context.instance, series.venue, context.run.run_id)  # and those this run earned, for the others
        outcome = report.outcome
        context.log.info(
            f"{key.to_user_string()} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
            f"{report.rows_written} rows in {report.seconds:.1f} s, "
            + ", ".join(f"{rows} from {origin}" for origin, rows in sorted(outcome.rows_by_source.items()))
            + f"; {counted(outcome.requests, 'request')}, {counted(report.rows_rejected, 'row')} rejected, "
            + f"{counted(len(report.failures), 'window')} failed"
        )
        results = checks()
        if report.failures:
            # Some windows could not be read: record the partitions that did land, then fail.
            yield from partial_outcome(
                context, key, partitions, report.failures, report.rows_written, key.to_user_string(), results,
            )
            return
        yield dg.MaterializeResult(asset_key=key, check_results=results, metadata={
            "rows_written": dg.MetadataValue.int(report.rows_written),
            first_name: _moment(report.first),
            last_name: _moment(report.last),
            "window": dg.MetadataValue.text(f"[{window.start.isoformat()}, {window.end.isoformat()})"),
            **outcome.metadata,
            "requests": outcome.requests,
            "rows_rejected": report.rows_rejected,
            "write_windows": dg.MetadataValue.int(report.write_windows),
            "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        })

    return materialize
