"""What every dataset of one value (or one set of rows) per UTC day shares: its `date` column, the
days it expects and the ones missing, its gap and freshness checks' results, and its summary line.
Fear & Greed, stablecoin supply, market caps and the SSR are daily datasets; their modules say
only what differs (which rows make a day, and when a day's value is final).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, windows_metadata
from marketdata_assets.warehouse import Warehouse

DAY = dt.timedelta(days=1)


def utc_day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date()


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


class DailyDataset(Dataset):
    """A dataset keyed by UTC day in a DATE column `date`, monthly partitions."""

    time_column = "date"
    unit = "days"
    moment_names = ("first_day", "last_day")
    # How long after a day's 00:00 UTC its value is final and stored: 0 when the upstream
    # publishes the day's value at its start (Fear & Greed), a day when the value moves until the
    # day ends (stablecoin supply): the day in progress is never stored.
    final_after: ClassVar[dt.timedelta] = dt.timedelta(0)

    def day_filter(self, series: Series) -> tuple[str, list[Any]]:
        """SQL condition (and parameters) on the rows that make a day present (a day may have many
        rows, one of them the one that counts: stablecoin supply's USD peg)."""
        return self.row_filter(series)

    def days_stored(self, warehouse: Warehouse, series: Series, first: dt.date, end: dt.date) -> list[dt.date]:
        """The days of [first, end) the series has, ascending."""
        where, params = self.day_filter(series)
        return sorted(set(warehouse.query(
            f"SELECT date FROM {self.table.qualified_name} WHERE {where} AND date >= ? AND date < ?",
            [*params, first, end],
        )["date"].to_list()))

    def rejected_unstored(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime,
    ) -> pl.DataFrame:
        """open_time, reason, payload of the series' rows rejected at ingest in [start, end) whose
        day has no stored row (a later fetch did not mend them)."""
        where, params = self.row_filter(series)
        mine, mine_params = ("AND symbol = ? ", [series.key]) if self.key_column else ("", [])
        return warehouse.query(
            f"SELECT open_time, reason, payload FROM market_data.rejected_rows WHERE dataset = ? {mine}"
            "AND open_time >= ? AND open_time < ? AND open_time NOT IN (SELECT CAST(date AS TIMESTAMPTZ) "
            f"FROM {self.table.qualified_name} WHERE {where}) ORDER BY open_time",
            [self.name, *mine_params, start, end, *params],
        )

    def last_final_day(self, now: dt.datetime) -> dt.date:
        """The newest day whose value is final at `now`."""
        return utc_day(now - self.final_after)

    def newest_day(self, warehouse: Warehouse, series: Series) -> dt.date | None:
        where, params = self.day_filter(series)
        return warehouse.query(f"SELECT max(date) AS newest FROM {self.table.qualified_name} WHERE {where}",
                               params)["newest"][0]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Days of [start, end) with no value. As for bars: nothing is expected before the first
        stored day of the listing partition, nor, in the partition in progress, after the newest
        stored day; a day is due once its value is final."""
        days = self.days_stored(warehouse, series, utc_day(start), utc_day(end))
        first = min(days[0], utc_day(bounds.first_window_end)) if days else utc_day(bounds.first_window_end)
        until = min(utc_day(end), self.last_final_day(now) + DAY)
        if end > bounds.current_window_start:
            newest = days[-1] + DAY if days else utc_day(bounds.current_window_start)
            until = min(until, max(newest, utc_day(bounds.current_window_start)))
        lower = max(utc_day(start), first)
        found = Missing(expected=max(0, (until - lower).days))
        cursor = lower
        for day in [d for d in days if lower <= d < until] + [until]:
            if day > cursor:
                found.windows.append((midnight(cursor), midnight(day)))
                found.missing += (day - cursor).days
            cursor = max(cursor, day + DAY)
        return found

    def daily_specs(self, key: dg.AssetKey, daily: str, fresh: str, what: str) -> list[dg.AssetCheckSpec]:
        """The gap and freshness checks' specs; `what` names a day's value ("A market cap")."""
        due = "yesterday's value" if not self.final_after else "the day before yesterday's"
        return [
            dg.AssetCheckSpec(daily, asset=key, description=(
                f"{what} for every {'ended ' if self.final_after else ''}UTC day of the window, no gaps.")),
            dg.AssetCheckSpec(fresh, asset=key, description=(
                f"When the window reaches today: {due} or a newer one is stored (WARN).")),
        ]

    def daily_result(
        self, key: dg.AssetKey, name: str, window: dg.MetadataValue, missing: Missing, note: str = "",
        **metadata: Any,
    ) -> dg.AssetCheckResult:
        """The gap check's result: every due day of the window has its value (`note` and
        `metadata` add what else the dataset counts)."""
        gaps = "\n".join(f"- [{a:%Y-%m-%d}, {b:%Y-%m-%d}), {(b - a).days} days" for a, b in missing.windows[:SAMPLES])
        return dg.AssetCheckResult(
            asset_key=key, check_name=name, passed=missing.missing == 0, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{missing.missing} of {missing.expected} days missing" + (f"; {note}" if note else ""),
            metadata={
                "window": window, "expected_days": missing.expected, "missing_days": missing.missing,
                "first_gaps": dg.MetadataValue.md(gaps or "none"),
                UNEXPLAINED_WINDOWS: windows_metadata(missing.windows), **metadata,
            },
        )

    def fresh_result(
        self, key: dg.AssetKey, name: str, window: dg.MetadataValue, end: dt.datetime, now: dt.datetime,
        newest: dt.date | None,
    ) -> dg.AssetCheckResult:
        """The freshness check's result (WARN): when the window reaches today, the day before the
        newest final one is stored, or a newer one (a day's grace for the daily schedule)."""
        due = self.last_final_day(now) - DAY
        reaches_today = end > now
        fresh = not reaches_today or (newest is not None and newest >= due)
        return dg.AssetCheckResult(
            asset_key=key, check_name=name, passed=fresh, severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"newest day stored {newest or 'none'}; due {due}" if reaches_today
                else "the window has closed: freshness is the month in progress's to show"
            ),
            metadata={"window": window, "newest_day": str(newest or "none"), "due_day": str(due)},
        )
