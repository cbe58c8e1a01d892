"""The open-interest and long/short asset factory: per USD-M perpetual, `binance_perp/open_interest/SYM`
and `binance_perp/long_short/SYM`, 5-minute rows from REST (its last 30 days) and the archive's
daily metrics files (the days before, from December 2021)."""

import datetime as dt

import dagster as dg

from marketdata_assets.catalog import Instrument
from marketdata_assets.defs.checks import snapshot_check_results, snapshot_check_specs
from marketdata_assets.defs.klines import klines_partitions
from marketdata_assets.defs.partitions import partial_outcome, partition_bounds, venue_pool
from marketdata_assets.defs.resources import BinanceResource, WarehouseResource
from marketdata_assets.ingest import ingest_metrics

# The archive's metrics files begin in December 2021 and REST keeps 30 days: nothing older
# exists anywhere, so the partitions begin there.
METRICS_FROM = dt.date(2021, 12, 1)
_WHAT = {
    "open_interest": ("Open interest (contracts and value)", "market_data.open_interest"),
    "long_short": (
        "Long/short ratios (all accounts, top-trader accounts and positions, taker buy/sell volume)",
        "market_data.long_short_ratios",
    ),
}


def statistics_asset_key(instrument: Instrument, dataset: str) -> dg.AssetKey:
    return dg.AssetKey([instrument.key_prefix, dataset, instrument.slug])


def statistics_partitions(instrument: Instrument) -> dg.TimeWindowPartitionsDefinition:
    assert instrument.start_date is not None  # the catalog fills it in
    return klines_partitions(max(instrument.start_date, METRICS_FROM))


def build_statistics_asset(instrument: Instrument, dataset: str, warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset `<venue>_perp/<dataset>/<SYMBOL>` (dataset: open_interest | long_short), monthly
    partitions like the klines', with its cadence and value checks."""
    key = statistics_asset_key(instrument, dataset)
    partitions = statistics_partitions(instrument)
    what, table = _WHAT[dataset]

    @dg.asset(
        key=key,
        partitions_def=partitions,
        check_specs=snapshot_check_specs(key, dataset),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=instrument.key_prefix,
        kinds={instrument.venue, warehouse_kind},
        pool=venue_pool(instrument.key_prefix, warehouse_kind),
        description=(
            f"{what} of {instrument.describe()} every 5 minutes, in {table}: REST for its last 30 days "
            "(with each ratio's long and short parts), the archive's daily metrics files before "
            f"(ratios only), from {METRICS_FROM:%B %Y}. A day neither holds fails its partition."
        ),
        metadata={"dataset": dataset, "venue": instrument.venue, "symbol": instrument.symbol, "table": table},
    )
    def statistics(context: dg.AssetExecutionContext, warehouse: WarehouseResource, binance: BinanceResource):
        window = context.partition_time_window
        store = warehouse.open()
        first_window_end, current_window_start = partition_bounds(partitions)
        report = ingest_metrics(
            binance.metrics_source(), store, dataset, instrument.symbol, window.start, window.end, first_window_end  # type: ignore[arg-type]
        )
        context.log.info(
            f"{instrument.describe()} {dataset} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
            f"{report.rows_written} rows, {report.rows_by_source['archive']} from {report.archive_files} archive files, "
            f"{report.rows_by_source['rest']} from {report.requests} REST requests; {len(report.failures)} windows failed"
        )
        checks = snapshot_check_results(
            store, key, dataset, instrument.venue, instrument.symbol, window.start, window.end,
            first_window_end, current_window_start,
        )
        if report.failures:
            yield from partial_outcome(
                context, key, partitions, report.failures, report.rows_written, f"{instrument.describe()} {dataset}", checks
            )
            return

        def moment(value) -> dg.MetadataValue:
            return dg.MetadataValue.text(value.isoformat() if value else "none")

        yield dg.MaterializeResult(check_results=checks, metadata={
            "rows_written": report.rows_written,
            "first_snapshot": moment(report.first),
            "last_snapshot": moment(report.last),
            "rows_from_archive": report.rows_by_source["archive"],
            "archive_files": report.archive_files,
            "rows_from_rest": report.rows_by_source["rest"],
            "requests": report.requests,
            "days_before_listing": len(report.before_listing),
            "window": dg.MetadataValue.text(f"[{window.start.isoformat()}, {window.end.isoformat()})"),
        })

    return statistics
