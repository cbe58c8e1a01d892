"""The funding asset factory: one time-partitioned asset per perpetual instrument, on any venue."""

import dagster as dg

from marketdata_assets.catalog import Instrument
from marketdata_assets.defs.checks import funding_check_results, funding_check_specs
from marketdata_assets.defs.klines import klines_partitions
from marketdata_assets.defs.partitions import partial_outcome, partition_bounds, venue_pool
from marketdata_assets.ingest import ingest_funding

# Where each venue's settlements come from, and how far back they reach (the asset says so).
_SOURCES = {
    "binance": "the archive's monthly fundingRate files for past months (no mark price), REST for the rest; "
               "the whole history since the listing",
    "okx": "OKX's REST funding history (no mark price). OKX keeps only about three months: older windows "
           "fail, naming the oldest settlement OKX still serves, rather than pretend to be covered",
    "bybit": "Bybit's REST funding history (no mark price), the whole history since the listing",
}


def funding_asset_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key_prefix, "funding", instrument.slug])


def build_funding_asset(instrument: Instrument, warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset `<venue>_perp/funding/<SYMBOL>`: every funding settlement, in
    market_data.funding_rates; the klines' monthly partitions (a month of 8-hour funding is 93 rows)."""
    assert instrument.start_date is not None  # the catalog fills it in
    key = funding_asset_key(instrument)
    partitions = klines_partitions(instrument.start_date)

    @dg.asset(
        key=key,
        partitions_def=partitions,
        check_specs=funding_check_specs(key),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=instrument.key_prefix,
        kinds={instrument.venue, warehouse_kind},
        pool=venue_pool(instrument.key_prefix, warehouse_kind),
        required_resource_keys={"warehouse", instrument.venue},
        description=(
            f"Funding settlements of {instrument.describe()} at their exact reported times, in "
            f"market_data.funding_rates: {_SOURCES[instrument.venue]}."
        ),
        metadata={"dataset": "funding", "venue": instrument.venue, "symbol": instrument.symbol, "table": "market_data.funding_rates"},
    )
    def funding(context: dg.AssetExecutionContext):
        window = context.partition_time_window
        store = context.resources.warehouse.open()
        source = getattr(context.resources, instrument.venue).funding_source()
        report = ingest_funding(source, store, instrument.symbol, window.start, window.end)
        context.log.info(
            f"{instrument.describe()} funding [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}): "
            f"{report.rows_written} settlements, {report.rows_by_source['archive']} from the archive, "
            f"{report.requests} REST requests"
        )

        def moment(value) -> dg.MetadataValue:
            return dg.MetadataValue.text(value.isoformat() if value else "none")

        checks = funding_check_results(
            store, key, instrument.venue, instrument.symbol, window.start, window.end, *partition_bounds(partitions)
        )
        if report.failures:
            yield from partial_outcome(
                context, key, partitions, report.failures, report.rows_written, f"{instrument.describe()} funding", checks
            )
            return
        yield dg.MaterializeResult(check_results=checks, metadata={
            "rows_written": report.rows_written,
            "first_funding_time": moment(report.first),
            "last_funding_time": moment(report.last),
            "rows_from_archive": report.rows_by_source["archive"],
            "rows_from_rest": report.rows_by_source["rest"],
            "requests": report.requests,
            "window": dg.MetadataValue.text(f"[{window.start.isoformat()}, {window.end.isoformat()})"),
        })

    return funding
