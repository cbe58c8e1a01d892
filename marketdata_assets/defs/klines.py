"""The klines asset factory: one time-partitioned asset per catalog instrument and timeframe."""


import datetime as dt
import warnings

import dagster as dg

from marketdata_assets.audit import BarSeries
from marketdata_assets.catalog import Instrument
from marketdata_assets.defs.checks import klines_check_results, klines_check_specs
from marketdata_assets.defs.partitions import monthly_partitions, partial_outcome, partition_bounds, venue_pool
from marketdata_assets.defs.resources import BinanceResource, WarehouseResource
from marketdata_assets.ingest import KlinesIngestReport, ingest_klines
from marketdata_assets.timeframes import Timeframe, timeframe

# Monthly windows for every timeframe (defs/partitions.py says why); a month is also the archive's file.
KLINES_CADENCE = "monthly"

# Fresh when materialized after the UTC day closed and by 01:00: the latest closed day is then
# stored (a run stores every bar closed when it starts), with an hour's grace.
KLINES_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 1 * * *", lower_bound_delta=dt.timedelta(hours=1))

# BackfillPolicy is "beta" in 1.13 but is what makes range runs possible; say it once, in README.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


def klines_partitions(start: dt.date, cadence: str = KLINES_CADENCE) -> dg.TimeWindowPartitionsDefinition:
    return monthly_partitions(start, cadence)


def klines_asset_key(instrument: Instrument, tf: Timeframe) -> dg.AssetKey:
    return dg.AssetKey([instrument.key_prefix, f"klines_{tf.name}", instrument.slug])


def _metadata(report: KlinesIngestReport, start: dt.datetime, end: dt.datetime) -> dict:
    def moment(value: dt.datetime | None) -> dg.MetadataValue:
        return dg.MetadataValue.text(value.isoformat() if value else "none")

    return {
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "first_open_time": moment(report.first_open_time),
        "last_open_time": moment(report.last_open_time),
        "window": dg.MetadataValue.text(f"[{start.isoformat()}, {end.isoformat()})"),
        **report.source,
        **report.stats.as_metadata(),
        "write_windows": dg.MetadataValue.int(report.write_windows),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
    }


def klines_series(instrument: Instrument, tf: Timeframe, partitions: dg.TimeWindowPartitionsDefinition) -> BarSeries:
    """The audit's view of one klines asset: its series and the partitions that bound it."""
    first_window_end, current_window_start = partition_bounds(partitions)
    return BarSeries(
        venue=instrument.venue,
        market=instrument.market,
        symbol=instrument.symbol,
        timeframe=tf.name,
        first_window_end=first_window_end,
        current_window_start=current_window_start,
    )


def build_klines_asset(
    instrument: Instrument, timeframe_name: str, warehouse_kind: str, cadence: str = KLINES_CADENCE
) -> dg.AssetsDefinition:
    """The asset `<venue>_<market>/klines_<tf>/<SYMBOL>` for one catalog instrument, with its
    checks. Subsettable, so its checks can also run alone over any partition range."""
    tf = timeframe(timeframe_name)
    assert instrument.start_date is not None  # the catalog fills it in
    key = klines_asset_key(instrument, tf)
    partitions = klines_partitions(instrument.start_date, cadence)
    spec = dg.AssetSpec(
        key,
        group_name=instrument.key_prefix,
        kinds={instrument.venue, warehouse_kind},
        description=(
            f"Closed {tf.name} candles of {instrument.describe()} from {instrument.start_date}, "
            f"in market_data.klines; {cadence} UTC partitions, the one in progress included."
        ),
        metadata={
            "dataset": "klines",
            "venue": instrument.venue,
            "market": instrument.market,
            "symbol": instrument.symbol,
            "timeframe": tf.name,
            "table": "market_data.klines",
        },
        freshness_policy=KLINES_FRESHNESS,
    )

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[spec],
        check_specs=klines_check_specs(key, partitions),
        can_subset=True,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=venue_pool(instrument.key_prefix, warehouse_kind),
    )
    def klines(context: dg.AssetExecutionContext, warehouse: WarehouseResource, binance: BinanceResource):
        window = context.partition_time_window
        store = warehouse.open()
        series = klines_series(instrument, tf, partitions)
        checks = {check.name for check in context.selected_asset_check_keys}
        if key not in context.selected_asset_keys:  # the checks alone
            yield from klines_check_results(store, key, series, window.start, window.end, checks)
            return
        report = ingest_klines(
            binance.klines_source_for(instrument.market, instrument.source),
            store,
            instrument.symbol,
            tf.name,
            window.start,
            window.end,
        )
        context.log.info(
            f"{instrument.describe()} {tf.name} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
            f"{report.rows_written} rows in {report.seconds:.1f} s, "
            f"{report.source.get('rows_from_archive', 0)} from the archive "
            f"({report.source.get('archive_files', 0)} files), {report.stats.requests} REST "
            f"requests of weight {report.stats.weight}, {report.rows_rejected} rows rejected"
        )
        results = klines_check_results(store, key, series, window.start, window.end, checks)
        if not report.failures:
            yield dg.MaterializeResult(
                asset_key=key, metadata=_metadata(report, window.start, window.end), check_results=results
            )
            return
        # Some windows could not be read: record the partitions that did land, then fail.
        yield from partial_outcome(
            context, key, partitions, report.failures, report.rows_written, f"{instrument.describe()} {tf.name}", results
        )

    return klines
