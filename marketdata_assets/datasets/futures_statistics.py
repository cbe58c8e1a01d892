"""What open interest and long/short ratios share: Binance USD-M perpetuals' 5-minute futures
statistics, from REST (its last 30 days, with each ratio's long and short parts) and the archive's
daily metrics files (the days before, ratios only, from December 2021; nothing older exists
anywhere, so partitions begin there). A day neither holds fails its partition.

Each is a dataset of its own module declaring what differs (its table, the series in it, the
rule a stored row keeps, its checks); this one declares none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

import dagster as dg
import numpy as np
import polars as pl

from marketdata_assets.audit import SAMPLES, Interval, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, InstrumentDataset, Missing
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.sources.binance import BINANCE_FUTURES
from marketdata_assets.sources.binance_archive import BINANCE_ARCHIVE, BinanceArchiveClient
from marketdata_assets.sources.binance_futures_statistics import BinanceStatisticsSource, BinanceStatisticsClient
from marketdata_assets.warehouse import Warehouse

METRICS_FROM = dt.date(2021, 12, 1)
SNAPSHOT_INTERVAL = dt.timedelta(minutes=5)


@dataclass
class SnapshotAudit:
    """One 5-minute series of a window (open interest, or one long/short metric): the snapshots
    expected, the gaps among them, and the stored rows that break the table's rule."""

    series: str  # 'open_interest' or the long/short metric
    expected: int
    stored: int
    gaps: list[Interval]
    invalid: int
    invalid_samples: list[dict[str, Any]]

    @property
    def missing(self) -> int:
        return sum(int((b - a) / SNAPSHOT_INTERVAL) for a, b in self.gaps)


class FuturesStatistic(InstrumentDataset):
    time_column = "snapshot_time"
    unit = "snapshots"
    earliest = METRICS_FROM
    instrument_venues = {"binance": ("perp",)}
    moment_names = ("first_snapshot", "last_snapshot")
    # What differs: the series the table holds (and the SQL naming a row's series), the rule
    # every stored row keeps (SQL for a row that breaks it, and in words), and the check names.
    series_names: ClassVar[tuple[str, ...]]
    series_sql: ClassVar[str]
    broken_sql: ClassVar[str]
    rule: ClassVar[str]
    what: ClassVar[str]  # the series, in words
    # What each source holds beyond the series, for the description ("" where both hold it all).
    rest_holds: ClassVar[str] = ""
    archive_holds: ClassVar[str] = ""

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (
            f"{self.title} of {series.describe()} every 5 minutes, in {self.table.qualified_name}: REST for its last "
            f"30 days{self.rest_holds}, the archive's daily metrics files before{self.archive_holds}, "
            f"from {METRICS_FROM:%B %Y}. A day neither holds fails its partition."
        )

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> BinanceStatisticsSource:
        return BinanceStatisticsSource(
            BinanceStatisticsClient(upstreams.url(BINANCE_FUTURES.url_setting)),
            BinanceArchiveClient(upstreams.url(BINANCE_ARCHIVE.url_setting)),
            dataset=self.name, listing_window_end=bounds.first_window_end,  # type: ignore[arg-type]
        )

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        cadence, values = self.checks
        return [
            dg.AssetCheckSpec(cadence, asset=key, description=f"A snapshot of {self.what} every 5 minutes of the window, no gaps."),
            dg.AssetCheckSpec(values, asset=key, description=f"No stored row breaks the rule: {self.rule}."),
        ]

    def audit(
        self, warehouse: Warehouse, venue: str, symbol: str, start: dt.datetime, end: dt.datetime,
        first_window_end: dt.datetime, current_window_start: dt.datetime, now: dt.datetime,
    ) -> list[SnapshotAudit]:
        """Each series of the table over [start, end) against the 5-minute grid. As for bars:
        snapshots before the first stored one of the listing partition are not expected, nor, in
        the partition in progress, those after the newest stored."""
        table = self.table.qualified_name
        rows = warehouse.query(
            f"SELECT {self.series_sql} AS series, snapshot_time, ({self.broken_sql}) AS broken FROM {table} "
            "WHERE venue = ? AND symbol = ? AND snapshot_time >= ? AND snapshot_time < ? ORDER BY 1, 2",
            [venue, symbol, start, end],
        )
        audits = []
        step = int(SNAPSHOT_INTERVAL.total_seconds())
        for name in self.series_names:
            series = rows.filter(pl.col("series") == name)["snapshot_time"]
            expected_from = min(series[0], first_window_end) if series.len() else first_window_end
            until = min(end, now - SNAPSHOT_INTERVAL)  # the newest snapshot may not be published yet
            if end > current_window_start:
                newest = series[-1] + SNAPSHOT_INTERVAL if series.len() else current_window_start
                until = min(until, max(newest, current_window_start))
            lower = max(start, expected_from)
            first_mark = -(-int(lower.timestamp()) // step) * step
            marks = max(0, -(-(int(until.timestamp()) - first_mark) // step))
            # the distinct grid marks stored in [lower, until), in whole seconds (a day's 288 a
            # partition, thousands a window: in polars, not a Python loop over datetimes)
            inside = series.filter((series >= lower) & (series < until)).dt.epoch("s")
            stamps = inside.filter(inside % step == 0).unique().sort().to_numpy()
            # a gap runs from each mark's successor (the window's first mark for the first) to the
            # next mark stored (the window's end after the last), where they differ
            starts = np.concatenate(([first_mark], stamps + step))
            stops = np.concatenate((stamps, [first_mark + marks * step]))
            gaps = [(dt.datetime.fromtimestamp(int(a), dt.UTC), dt.datetime.fromtimestamp(int(b), dt.UTC))
                    for a, b in zip(starts, stops, strict=True) if b > a]
            broken = rows.filter((pl.col("series") == name) & pl.col("broken"))
            samples = warehouse.query(
                f"SELECT * FROM {table} WHERE venue = ? AND symbol = ? AND snapshot_time >= ? AND snapshot_time < ? "
                f"AND {self.series_sql} = ? AND ({self.broken_sql}) ORDER BY snapshot_time LIMIT {SAMPLES}",
                [venue, symbol, start, end, name],
            ).drop("ingested_at").to_dicts() if broken.height else []
            audits.append(SnapshotAudit(name, marks, len(stamps), gaps, broken.height, samples))
        return audits

    def snapshot_checks(
        self, warehouse: Warehouse, key: dg.AssetKey, venue: str, symbol: str, start: dt.datetime, end: dt.datetime,
        first_window_end: dt.datetime, current_window_start: dt.datetime, now: dt.datetime | None = None,
    ) -> list[dg.AssetCheckResult]:
        """Both checks over [start, end); the metadata names the window."""
        cadence, values = self.checks
        audits = self.audit(warehouse, venue, symbol, start, end, first_window_end, current_window_start,
                            now or dt.datetime.now(dt.UTC))
        window = dg.MetadataValue.text(window_text(start, end))
        missing, expected = sum(a.missing for a in audits), sum(a.expected for a in audits)
        gaps = [(a.series, gap) for a in audits for gap in a.gaps]
        lines = [
            f"- {series}: [{a:%Y-%m-%d %H:%M}, {b:%Y-%m-%d %H:%M}) UTC, {(b - a) // SNAPSHOT_INTERVAL} snapshots"
            for series, (a, b) in gaps[:SAMPLES]
        ]
        invalid = sum(a.invalid for a in audits)
        samples = [row for a in audits for row in a.invalid_samples][:SAMPLES]
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=cadence, passed=missing == 0, severity=dg.AssetCheckSeverity.ERROR,
                description=f"{missing} of {expected} 5-minute snapshots missing, in {len(gaps)} gaps",
                metadata={
                    "window": window, "expected_snapshots": expected, "missing_snapshots": missing, "gaps": len(gaps),
                    "first_gaps": dg.MetadataValue.md("\n".join(lines) or "none"),
                    UNEXPLAINED_WINDOWS: windows_metadata([gap for _, gap in gaps]),
                    **{f"stored_{a.series}": a.stored for a in audits},
                },
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=values, passed=invalid == 0, severity=dg.AssetCheckSeverity.ERROR,
                description=f"{invalid} stored rows break the rule",
                metadata={"window": window, "invalid_rows": invalid, "samples": dg.MetadataValue.md(samples_table(samples))},
            ),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        return self.snapshot_checks(warehouse, key, series.venue, str(series.symbol), start, end,
                                    bounds.first_window_end, bounds.current_window_start, now)

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        found = Missing()
        for audit in self.audit(warehouse, series.venue, str(series.symbol), start, end, bounds.first_window_end,
                                bounds.current_window_start, now):
            found.add(Missing(audit.expected, audit.missing, list(audit.gaps)))
        return found


def snapshot_check_results(
    warehouse: Warehouse, key: dg.AssetKey, dataset_name: str, venue: str, symbol: str, start: dt.datetime,
    end: dt.datetime, first_window_end: dt.datetime, current_window_start: dt.datetime, now: dt.datetime | None = None,
) -> list[dg.AssetCheckResult]:
    """Both checks of an asset of the statistic `dataset_name` over [start, end)."""
    from marketdata_assets.datasets import dataset

    statistic = dataset(dataset_name)
    assert isinstance(statistic, FuturesStatistic)
    return statistic.snapshot_checks(warehouse, key, venue, symbol, start, end, first_window_end, current_window_start, now)
