"""Funding: every settlement of perpetual futures on Binance, OKX and Bybit at its exact reported
time (`<venue>_perp/funding/<SYMBOL>`), in market_data.funding_rates; monthly partitions like the
klines' (a month of 8-hour funding is 93 rows).

Checks: `funding_cadence` (a settlement at every 8-hour mark, within a minute, and none off the
grid) and `funding_rate_plausible` (|rate| within bounds, mark price above 0).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, InstrumentDataset, Missing
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.sources.funding import FUNDING_RATES
from marketdata_assets.sources import bybit, okx
from marketdata_assets.sources.binance import BINANCE_FUTURES
from marketdata_assets.sources.binance_archive import BINANCE_ARCHIVE, BinanceArchiveClient
from marketdata_assets.sources.binance_funding import BinanceFundingClient, BinanceFundingSource
from marketdata_assets.warehouse import Warehouse

# Where each venue's settlements come from, and how far back they reach (the asset says so).
SOURCES = {
    "binance": "the archive's monthly fundingRate files for past months (no mark price), REST for the rest; "
               "the whole history since the listing",
    "okx": "OKX's REST funding history (no mark price). OKX keeps only about three months: older windows "
           "fail, naming the oldest settlement OKX still serves, rather than pretend to be covered",
    "bybit": "Bybit's REST funding history (no mark price), the whole history since the listing",
}


FUNDING_INTERVAL = dt.timedelta(hours=8)
FUNDING_TOLERANCE = dt.timedelta(minutes=1)  # reported times jitter by ms; anything later is off the grid
FUNDING_RATE_BOUND = 0.03  # |rate| per interval above 3% is implausible (Binance caps USD-M well below)


@dataclass
class FundingAudit:
    """Settlements expected on the 8-hour grid of a window, which are missing or off the grid,
    and rates outside plausible bounds."""

    expected: int
    missing: list[dt.datetime]  # 8-hour marks with no settlement within the tolerance
    off_grid: list[dt.datetime]  # settlements not within the tolerance after a mark
    implausible: int  # rows with |rate| > bound or a mark price <= 0
    implausible_samples: list[dict[str, Any]]


def audit_funding(
    warehouse: Warehouse, venue: str, symbol: str, start: dt.datetime, end: dt.datetime,
    first_window_end: dt.datetime, current_window_start: dt.datetime, now: dt.datetime,
) -> FundingAudit:
    """The funding settlements of [start, end) against the 8-hour grid. As for bars: marks before
    the first stored settlement of the listing partition are not expected, nor, in the partition
    in progress, marks after the newest stored one."""
    rows = warehouse.query(
        "SELECT funding_time, funding_rate, mark_price FROM market_data.funding_rates "
        "WHERE venue = ? AND symbol = ? AND funding_time >= ? AND funding_time < ? ORDER BY funding_time",
        [venue, symbol, start, end],
    )
    times: list[dt.datetime] = rows["funding_time"].to_list()
    expected_from = min(times[0], first_window_end) if times else first_window_end
    until = min(end, now)
    if end > current_window_start:
        newest = times[-1] if times else current_window_start
        until = min(until, max(newest + FUNDING_TOLERANCE, current_window_start))
    step = int(FUNDING_INTERVAL.total_seconds())
    lower = int(max(start, expected_from - FUNDING_TOLERANCE).timestamp())
    marks = [dt.datetime.fromtimestamp(t, dt.UTC) for t in range(-(-lower // step) * step, int(until.timestamp()), step)]
    matched: set[dt.datetime] = set()
    off_grid = []
    for t in times:
        mark = dt.datetime.fromtimestamp(int(t.timestamp()) // step * step, dt.UTC)
        if t - mark < FUNDING_TOLERANCE:
            matched.add(mark)
        else:
            off_grid.append(t)
    bad = rows.filter((pl.col("funding_rate").abs() > FUNDING_RATE_BOUND) | (pl.col("mark_price") <= 0))
    return FundingAudit(
        len(marks), [m for m in marks if m not in matched], off_grid, bad.height, bad.head(SAMPLES).to_dicts()
    )



FUNDING_CADENCE = "funding_cadence"
FUNDING_RATE_PLAUSIBLE = "funding_rate_plausible"
FUNDING_CHECKS = (FUNDING_CADENCE, FUNDING_RATE_PLAUSIBLE)


def funding_check_specs(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            FUNDING_CADENCE, asset=key,
            description="A settlement at every 8-hour mark of the window (within a minute: real times "
                        "jitter by milliseconds), and none off the grid.",
        ),
        dg.AssetCheckSpec(
            FUNDING_RATE_PLAUSIBLE, asset=key,
            description=f"Every rate within ±{FUNDING_RATE_BOUND:.0%} per interval and every mark price above 0.",
        ),
    ]


def funding_check_results(
    warehouse: Warehouse, key: dg.AssetKey, venue: str, symbol: str, start: dt.datetime, end: dt.datetime,
    first_window_end: dt.datetime, current_window_start: dt.datetime, now: dt.datetime | None = None,
) -> list[dg.AssetCheckResult]:
    """Both funding checks over [start, end); the metadata names the window."""
    audit = audit_funding(warehouse, venue, symbol, start, end, first_window_end, current_window_start,
                          now or dt.datetime.now(dt.UTC))
    window = dg.MetadataValue.text(window_text(start, end))
    missing = ", ".join(f"{m:%Y-%m-%d %H:%M}" for m in audit.missing[:SAMPLES]) or "none"
    return [
        dg.AssetCheckResult(
            asset_key=key, check_name=FUNDING_CADENCE,
            passed=not audit.missing and not audit.off_grid, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{len(audit.missing)} of {audit.expected} settlements missing, {len(audit.off_grid)} off the grid",
            metadata={
                "window": window, "expected_settlements": audit.expected, "missing_settlements": len(audit.missing),
                "first_missing": dg.MetadataValue.text(missing), "off_grid": len(audit.off_grid),
                UNEXPLAINED_WINDOWS: windows_metadata([(m, m + FUNDING_INTERVAL) for m in audit.missing]),
            },
        ),
        dg.AssetCheckResult(
            asset_key=key, check_name=FUNDING_RATE_PLAUSIBLE,
            passed=audit.implausible == 0, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{audit.implausible} settlements outside the plausible bounds",
            metadata={
                "window": window, "implausible_rows": audit.implausible,
                "samples": dg.MetadataValue.md(samples_table(audit.implausible_samples)),
            },
        ),
    ]




class Funding(InstrumentDataset):
    name = "funding"
    table = FUNDING_RATES
    time_column = "funding_time"
    unit = "settlements"
    title = "Funding settlements"
    cron = "10 0,8,16 * * *"  # after each 8-hourly settlement
    cadence_name = "8h"
    position = 20
    checks = FUNDING_CHECKS
    gap_check = FUNDING_CADENCE
    instrument_venues = {"binance": ("perp",), "okx": ("perp",), "bybit": ("perp",)}
    moment_names = ("first_funding_time", "last_funding_time")

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"Funding settlements of {series.describe()} at their exact reported times, in "
                f"market_data.funding_rates: {SOURCES[series.venue]}.")

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> Any:
        if series.venue == okx.VENUE.name:
            return okx.OkxFundingSource(upstreams.url(okx.VENUE.url_setting))
        if series.venue == bybit.VENUE.name:
            return bybit.BybitFundingSource(upstreams.url(bybit.VENUE.url_setting))
        return BinanceFundingSource(
            BinanceFundingClient(upstreams.url(BINANCE_FUTURES.url_setting),
                                 weight_limit=upstreams.binance_futures_weight_limit),
            BinanceArchiveClient(upstreams.url(BINANCE_ARCHIVE.url_setting)),
        )

    def retention(self, venue: str) -> dt.timedelta | None:
        """How far back `venue` still serves funding (its venue descriptor says)."""
        return {okx.VENUE.name: okx.VENUE, bybit.VENUE.name: bybit.VENUE}.get(venue, BINANCE_FUTURES).retention.get(self.name)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return funding_check_specs(key)

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        return funding_check_results(warehouse, key, series.venue, str(series.symbol), start, end,
                                     bounds.first_window_end, bounds.current_window_start, now)

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        audit = audit_funding(warehouse, series.venue, str(series.symbol), start, end, bounds.first_window_end,
                              bounds.current_window_start, now)
        return Missing(audit.expected, len(audit.missing), [(m, m + FUNDING_INTERVAL) for m in audit.missing])


DATASET = Funding()
