"""The klines asset factory: one time-partitioned asset per catalog instrument and timeframe."""


import datetime as dt
import warnings
from functools import cache

import dagster as dg

from marketdata_assets.catalog import Instrument
from marketdata_assets.defs.resources import BinanceResource, WarehouseResource
from marketdata_assets.ingest import KlinesIngestReport, ingest_klines
from marketdata_assets.timeframes import Timeframe, timeframe

# BackfillPolicy is "beta" in 1.13 but is what makes range runs possible; say it once, in README.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


@cache
def klines_partitions(start: dt.date, cadence: str) -> dg.TimeWindowPartitionsDefinition:
    """UTC windows from `start`: daily, or monthly from the first of the start's month (so the
    listing month is covered, not skipped to the next whole month)."""
    if cadence == "daily":
        return dg.DailyPartitionsDefinition(start_date=start.isoformat())
    return dg.MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat())


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
        **report.stats.as_metadata(),
        "write_windows": dg.MetadataValue.int(report.write_windows),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
    }


def build_klines_asset(instrument: Instrument, timeframe_name: str, warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset `<venue>_<market>/klines_<tf>/<SYMBOL>` for one catalog instrument."""
    tf = timeframe(timeframe_name)
    assert instrument.start_date is not None  # the catalog fills it in
    key = klines_asset_key(instrument, tf)

    @dg.asset(
        key=key,
        partitions_def=klines_partitions(instrument.start_date, tf.cadence),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=instrument.key_prefix,
        kinds={instrument.venue, warehouse_kind},
        pool=instrument.key_prefix,
        description=(
            f"Closed {tf.name} candles of {instrument.describe()} from {instrument.start_date}, "
            f"in market_data.klines; {tf.cadence} UTC partitions."
        ),
        metadata={
            "venue": instrument.venue,
            "market": instrument.market,
            "symbol": instrument.symbol,
            "timeframe": tf.name,
            "table": "market_data.klines",
        },
    )
    def klines(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, binance: BinanceResource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        report = ingest_klines(
            binance.klines_client(instrument.market),
            warehouse.open(),
            instrument.symbol,
            tf.name,
            window.start,
            window.end,
        )
        context.log.info(
            f"{instrument.describe()} {tf.name} [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
            f"{report.rows_written} rows in {report.seconds:.1f} s, "
            f"{report.stats.requests} requests, weight {report.stats.weight}"
        )
        return dg.MaterializeResult(metadata=_metadata(report, window.start, window.end))

    return klines
