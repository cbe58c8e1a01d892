"""Klines: closed candles of exchange instruments, one asset per instrument and timeframe
(`<venue>_<market>/klines_<tf>/<SYMBOL>`), in market_data.klines: Binance's from its archive and
REST, OKX's and Bybit's from their REST (the venue's client pages it, sources/venue_klines.py reads
a window through it).

Monthly partitions for every timeframe (defs/ingest/partitions.py says why; a month is also the
archive's file), the one in progress included. Checks: `ohlc_valid`, `gap_count`, `no_unclosed_bars`,
and on OKX and Bybit `closes_match_binance`: each close against Binance's same pair and timeframe,
where both are stored (a wrong symbol mapping or a shifted day shows at once).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, BarSeries, audit_gaps, explanations, samples_table, stored_klines
from marketdata_assets.catalog import Instrument, Series
from marketdata_assets.datasets.base import Bounds, InstrumentDataset, Missing
from marketdata_assets.defs.quality.checks import (
    GAP_COUNT,
    KLINES_CHECKS,
    klines_check_results,
    klines_check_results_by_window,
    klines_check_specs,
    window_text,
)
from marketdata_assets.defs.ingest.partitions import monthly_partitions, partition_bounds
from marketdata_assets.schemas import KLINES
from marketdata_assets.settings import Settings
from marketdata_assets.sources.binance_archive import BINANCE_ARCHIVE, BinanceArchiveClient
from marketdata_assets.sources.binance_klines import BinanceKlinesSource
from marketdata_assets.sources.binance_ws import BinanceStreamApi
from marketdata_assets.sources.bybit_klines import BybitKlinesClient
from marketdata_assets.sources.bybit_ws import BybitStreamApi
from marketdata_assets.sources.okx_klines import OkxKlinesClient
from marketdata_assets.sources.okx_ws import OkxStreamApi
from marketdata_assets.sources.venue_klines import RestKlinesSource
from marketdata_assets.timeframes import Timeframe, timeframe
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

KLINES_CADENCE = "monthly"
# Fresh when materialized after the UTC day closed and by 01:00: the latest closed day is then
# stored (a run stores every bar closed when it starts), with an hour's grace.
KLINES_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 1 * * *", lower_bound_delta=dt.timedelta(hours=1))

# The venues whose klines only REST serves, by name: each one's paging client.
REST_CLIENTS = {client.venue.name: client for client in (OkxKlinesClient, BybitKlinesClient)}
# Each venue's kline streams, by name, for `marketdata stream` (stream.py).
STREAM_APIS = {api.venue: api for api in (BinanceStreamApi(), OkxStreamApi(), BybitStreamApi())}
CLOSES_MATCH = "closes_match_binance"
REFERENCE_VENUE = "binance"


def klines_partitions(start: dt.date, cadence: str = KLINES_CADENCE) -> dg.TimeWindowPartitionsDefinition:
    return monthly_partitions(start, cadence)


def klines_asset_key(instrument: Instrument, tf: Timeframe) -> dg.AssetKey:
    return dg.AssetKey([instrument.key_prefix, f"klines_{tf.name}", instrument.slug])


def klines_series(instrument: Instrument, tf: Timeframe, partitions: dg.TimeWindowPartitionsDefinition) -> BarSeries:
    """The audit's view of one klines asset: its series and the partitions that bound it."""
    first_window_end, current_window_start = partition_bounds(partitions)
    return BarSeries(instrument.venue, instrument.market, instrument.symbol, tf.name, first_window_end,
                     current_window_start)


class Klines(InstrumentDataset):
    name = "klines"
    table = KLINES
    time_column = "open_time"
    unit = "bars"
    title = "Closed candles"
    position = 10
    checks = KLINES_CHECKS
    gap_check = GAP_COUNT
    instrument_venues = {"binance": ("spot", "perp"), **{venue: ("spot", "perp") for venue in REST_CLIENTS}}
    instrument_field = "timeframes"
    moment_names = ("first_open_time", "last_open_time")
    freshness_policy = KLINES_FRESHNESS
    # The report audits bars in detail (known gaps, rejected rows, Dagster against the warehouse).
    detailed_audit = True

    def asset_key(self, series: Series) -> dg.AssetKey:
        assert series.instrument is not None
        return klines_asset_key(series.instrument, timeframe(series.options["timeframe"]))

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        """Monthly, or daily when the series says `cadence: daily` (for comparisons)."""
        return klines_partitions(series.start_date, series.options.get("cadence", KLINES_CADENCE))

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (
            f"Closed {series.options['timeframe']} candles of {series.describe()} from {series.start_date}, in "
            f"market_data.klines; {series.options.get('cadence', KLINES_CADENCE)} UTC partitions, the one in "
            "progress included."
        )

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> Any:
        assert series.instrument is not None
        mode = series.instrument.source or upstreams.klines_source
        if mode == "rest" or series.venue in REST_CLIENTS:
            source = self.rest_source(series, upstreams)
        else:
            archive = BinanceArchiveClient(upstreams.url(BINANCE_ARCHIVE.url_setting))
            source = BinanceKlinesSource(upstreams.klines_client(series.instrument.market), archive, mode)
        if series.options["timeframe"] in series.instrument.streamed:
            return GapsOnly(source, self, warehouse, bounds)  # `marketdata stream` keeps it: verify, fill holes
        return source

    def rest_source(self, series: Series, upstreams: Any) -> Any:
        """The source of `series` reading REST only (`marketdata gaps verify` fetches a gap again)."""
        rest_only = REST_CLIENTS.get(series.venue)
        if rest_only is not None:
            return RestKlinesSource(rest_only.from_upstreams(upstreams))
        return BinanceKlinesSource(upstreams.klines_client(series.market), None, "rest")

    def estimate(self, series: Series, start: dt.datetime, end: dt.datetime, settings: Any) -> tuple[str, int, int]:
        """Pages of REST over the window (Binance: the archive's monthly files instead for months that
        have closed, its daily files for the days before today; REST for today), and their weight."""
        from marketdata_assets.sources.binance_klines_rest import PERP, SPOT
        from marketdata_assets.sources.bybit_klines import PAGE as BYBIT_PAGE
        from marketdata_assets.sources.okx_klines import HISTORY_PAGE

        assert series.instrument is not None
        step = dt.timedelta(milliseconds=timeframe(series.options["timeframe"]).millis)
        start = max(start, dt.datetime.combine(series.start_date, dt.time(), dt.UTC))
        bars = max(0, int((end - start) / step))
        if series.venue in REST_CLIENTS:
            pages = -(-bars // (HISTORY_PAGE if series.venue == "okx" else BYBIT_PAGE))
            return series.venue, pages, pages
        endpoint = SPOT if series.market == "spot" else PERP
        venue = "binance_spot" if series.market == "spot" else "binance_futures"
        mode = series.instrument.source or settings.klines_source
        if mode == "rest":
            pages = -(-bars // endpoint.page_limit)
            return venue, pages, pages * endpoint.request_weight(endpoint.page_limit)
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        this_month = today.replace(day=1)
        months = len({(d.year, d.month) for d in _days(start, min(end, this_month))})
        days = len(_days(max(start, this_month), min(end, today)))
        rest_pages = -(-max(0, int((end - max(start, today)) / step)) // endpoint.page_limit)
        # a file and its .CHECKSUM each: the archive asks for no weight, REST for today's bars does
        return venue, 2 * (months + days) + rest_pages, rest_pages * endpoint.request_weight(endpoint.page_limit)

    def checks_for(self, venue: str) -> tuple[str, ...]:
        return self.checks + ((CLOSES_MATCH,) if venue in REST_CLIENTS else ())

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        specs = klines_check_specs(key, partitions)
        if CLOSES_MATCH in self.checks_for(key.path[0].rsplit("_", 1)[0]):
            specs.append(dg.AssetCheckSpec(
                CLOSES_MATCH, asset=key, partitions_def=partitions,
                description="Each stored close against Binance's close of the same pair, timeframe and bar, where "
                            "both are stored: WARN naming the bars that differ by more than "
                            "MARKETDATA_CROSS_VENUE_MAX_DIFFERENCE (1% unless set)."))
        return specs

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        found = klines_check_results(warehouse, key, self._bars(series, bounds), start, end, names, now)
        if CLOSES_MATCH in names and CLOSES_MATCH in self.checks_for(series.venue):
            found += closes_match_results(warehouse, key, series, [("", start, end)]).values()
        return found

    @staticmethod
    def _bars(series: Series, bounds: Bounds) -> BarSeries:
        assert series.instrument is not None
        return BarSeries(series.venue, str(series.market), str(series.symbol), series.options["timeframe"],
                         bounds.first_window_end, bounds.current_window_start)

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return ("venue = ? AND market = ? AND symbol = ? AND timeframe = ?",
                [series.venue, series.market, series.symbol, series.options["timeframe"]])

    def check_results_by_window(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, windows: list[tuple[str, dt.datetime, dt.datetime]],
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> dict[str, list[dg.AssetCheckResult]]:
        found = klines_check_results_by_window(warehouse, key, self._bars(series, bounds), windows, names, now)
        if CLOSES_MATCH in names and CLOSES_MATCH in self.checks_for(series.venue):
            for partition, result in closes_match_results(warehouse, key, series, windows).items():
                found[partition].append(result)
        return found

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Bars expected in [start, end) and those missing without an explanation (a known gap or a
        bar the venue sent invalid is not missing: fetching it again gives nothing)."""
        bars = self._bars(series, bounds)
        with warehouse.session():
            stored = stored_klines(warehouse, [bars], start, end)[bars.key]
            why = explanations(warehouse, [bars], start, end)[bars.key]
        audit = audit_gaps(bars, stored, why, [(start, end)], now)
        return Missing(audit.expected, audit.unexplained_bars, audit.unexplained)

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT venue || '_' || market || '/klines_' || timeframe || '/' || replace(symbol, '-', '_') AS series, "
            "count(*) AS rows, min(open_time) AS first_time, max(open_time) AS last_time FROM market_data.klines "
            "WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )


class GapsOnly:
    """A streamed series' source for its scheduled runs: the windows already holding bars are
    only verified (their unexplained holes, and the bars after the newest stored one, are
    fetched; nothing stored is fetched again); a window holding none is read whole."""

    def __init__(self, source: Any, klines: Klines, warehouse: Warehouse, bounds: Bounds):
        self._source, self._klines, self._warehouse, self._bounds = source, klines, warehouse, bounds
        self._fetched: list[tuple[dt.datetime, dt.datetime]] = []

    async def __aenter__(self) -> GapsOnly:
        await self._source.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._source.__aexit__(*exc_info)

    def outcome(self) -> Any:
        found = self._source.outcome()
        found.metadata = {**found.metadata, "streamed": "yes: holes only",
                          "windows_fetched": len(self._fetched)}
        return found

    async def read(self, series: Series, start: dt.datetime, end: dt.datetime) -> Any:
        from marketdata_assets.timeframes import timeframe

        now = dt.datetime.now(dt.UTC)
        step = dt.timedelta(milliseconds=timeframe(series.options["timeframe"]).millis)
        where, params = self._klines.row_filter(series)
        newest = self._warehouse.query(f"SELECT max(open_time) AS t FROM market_data.klines WHERE {where} "
                                       "AND open_time >= ? AND open_time < ?", [*params, start, end]).item()
        if newest is None:
            wanted = [(start, end)]
        else:
            wanted = self._klines.missing(self._warehouse, series, start, end, self._bounds, now).windows
            if newest + step < min(end, now):
                wanted.append((newest + step, end))
        for lower, upper in wanted:
            self._fetched.append((lower, upper))
            async for frame in self._source.read(series, lower, upper):
                yield frame


def _days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """The UTC days [start, end) touches."""
    days, day = [], start.date()
    while dt.datetime.combine(day, dt.time(), dt.UTC) < end:
        days.append(day)
        day += dt.timedelta(days=1)
    return days


def closes_match_results(
    warehouse: Warehouse, key: dg.AssetKey, series: Series, windows: list[tuple[str, dt.datetime, dt.datetime]],
) -> dict[str, dg.AssetCheckResult]:
    """`closes_match_binance` of each window: the series' closes against Binance's same pair,
    timeframe and bar (one query over all the windows)."""
    most = Settings.from_env().cross_venue_max_difference
    reference = REST_CLIENTS[series.venue].binance_symbol(str(series.symbol))
    tf_name = series.options["timeframe"]
    named = f"{REFERENCE_VENUE} {series.market} {reference} {tf_name}"
    pairs = warehouse.query(
        "SELECT a.open_time, a.close, b.close AS binance_close FROM market_data.klines a "
        "JOIN market_data.klines b ON b.venue = ? AND b.market = a.market AND b.symbol = ? "
        "AND b.timeframe = a.timeframe AND b.open_time = a.open_time "
        "WHERE a.venue = ? AND a.market = ? AND a.symbol = ? AND a.timeframe = ? "
        "AND a.open_time >= ? AND a.open_time < ? ORDER BY a.open_time",
        [REFERENCE_VENUE, reference, series.venue, series.market, series.symbol, tf_name,
         windows[0][1], windows[-1][2]],
    ).with_columns(difference=(pl.col("close") / pl.col("binance_close") - 1).abs())
    found = {}
    for partition, lo, hi in windows:
        inside = pairs.filter((pl.col("open_time") >= lo) & (pl.col("open_time") < hi))
        off = inside.filter(pl.col("difference") > most)
        if inside.is_empty():
            said = f"no bar of {named} is stored in the window to compare with"
        else:
            said = (f"{counted(off.height, 'close')} of {counted(inside.height, 'bar')} differ from {named} by more "
                    f"than {most * 100:g}%")
            if off.height:
                said += ": " + ", ".join(f"{moment:%Y-%m-%d %H:%M}" for moment in off["open_time"].head(SAMPLES))
                said += " …" if off.height > SAMPLES else ""
        found[partition] = dg.AssetCheckResult(
            asset_key=key, check_name=CLOSES_MATCH, passed=off.is_empty(), severity=dg.AssetCheckSeverity.WARN,
            description=said,
            metadata={
                "window": dg.MetadataValue.text(window_text(lo, hi)),
                "compared_with": named,
                "bars_compared": inside.height,
                "bars_differing": off.height,
                "largest_difference": dg.MetadataValue.float(round(float(inside["difference"].max() or 0.0), 6)),
                "most_allowed": dg.MetadataValue.float(most),
                "differing_samples": dg.MetadataValue.md(samples_table([
                    {"open_time": row["open_time"], "close": row["close"], "binance_close": row["binance_close"],
                     "difference": f"{row['difference']:.3%}"}
                    for row in off.head(SAMPLES).iter_rows(named=True)])),
            },
        )
    return found


DATASET = Klines()
