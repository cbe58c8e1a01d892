"""Macro series from FRED, every vintage (ALFRED): `fred/macro/<SERIES_ID>`, in
market_data.macro_observations, a row per observation date and vintage (`realtime_start` to
`realtime_end`, FRED's `.` as a NULL value).

Catalog: `series: [{source: fred, dataset: macro, keys: [DGS10, CPIAUCSL, …]}]`; the key comes from
FRED_API_KEY. A partition is a calendar year of observation dates, whatever the frequency: one
request (a page per 100,000 rows) fetches every vintage of the year's observations, a monthly
series' year is 12 dates, a daily one's about 260; monthly partitions would hold one row of a
monthly series. The year in progress is re-read daily, so revisions inside it land; the year
before is read again once it has closed.

Point in time: `as_of(warehouse, series_id, day)` (and the SQL function `market_data.macro_as_of`
on both warehouses) gives each observation's value as known on `day`: the vintage with the
latest realtime_start on or before it. `market_data.macro_latest` is every observation's newest.

Checks: no vintage rejected at ingest; the vintages of one date never overlap; no observation
missing at the series' cadence (daily: weekdays, FRED writes a holiday as `.`; weekly, monthly,
quarterly, annual), read from its stored dates; fresh by frequency (a monthly series is not stale
after a day).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.datasets.daily import DAY, midnight, utc_day
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.settings import Settings
from marketdata_assets.sources.fred import FredVintagesSource
from marketdata_assets.timeframes import end_day
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

MACRO_OBSERVATIONS = TableSpec(
    name="macro_observations",
    schema=pl.Schema({
        "series_id": pl.String,  # FRED's id: DGS10, CPIAUCSL, …
        "date": pl.Date,  # the observation's date (its period's first day)
        "value": pl.Float64,  # NULL where FRED has `.` (no value that day)
        "realtime_start": pl.Date,  # first day this value was FRED's
        "realtime_end": pl.Date,  # last day it was (9999-12-31: still is)
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("series_id", "realtime_start", "date"),
    keeps_revisions=False,  # every vintage is a row of its own already
)
# Frequency -> how long after an observation's date a newer one is due at the latest (FRED
# publishes a month's CPI mid next month: its date, the month's first day, is ~45 days old then).
DUE_WITHIN = {"D": dt.timedelta(days=10), "W": dt.timedelta(days=21), "M": dt.timedelta(days=80),
              "Q": dt.timedelta(days=220), "A": dt.timedelta(days=550)}
FREQUENCY_NAMES = {"D": "daily", "W": "weekly", "M": "monthly", "Q": "quarterly", "A": "annual"}
VALID = "macro_valid"
DISJOINT = "macro_vintages_disjoint"
CADENCE = "macro_cadence"
FRESH = "macro_fresh"
_SERIES_ID = re.compile(r"[A-Z0-9_]{1,30}")


def as_of(warehouse: Warehouse, series_id: str, day: dt.date) -> pl.DataFrame:
    """date, value, realtime_start of each observation of `series_id` as known on `day` (the
    vintage with the latest realtime_start on or before it); observations first released after
    `day` are not there. What a backtest may see on `day`, free of look-ahead."""
    return warehouse.query(
        "SELECT date, value, realtime_start FROM (SELECT date, value, realtime_start, row_number() OVER "
        "(PARTITION BY date ORDER BY realtime_start DESC) AS newest FROM market_data.macro_observations "
        "WHERE series_id = ? AND realtime_start <= ?) known WHERE newest = 1 ORDER BY date",
        [series_id, day],
    )


known_on = as_of  # the module's function, where a parameter is called as_of


def frequency_of(dates: list[dt.date]) -> str | None:
    """D, W, M, Q or A, read from ascending observation dates (None below three)."""
    if len(dates) < 3:
        return None
    if all(d.day == 1 for d in dates):
        months = [d.year * 12 + d.month for d in dates]
        steps = [b - a for a, b in zip(months, months[1:], strict=False)]
        if all(s % 12 == 0 for s in steps):
            return "A"
        return "Q" if all(s % 3 == 0 for s in steps) else "M"
    steps = sorted((b - a).days for a, b in zip(dates, dates[1:], strict=False))
    return "W" if steps[len(steps) // 2] == 7 else "D"


def expected_dates(frequency: str, anchor: dt.date, first: dt.date, until: dt.date) -> list[dt.date]:
    """The observation dates a `frequency` series whose dates include `anchor` has in [first, until)."""
    days = [first + dt.timedelta(days=n) for n in range(max(0, (until - first).days))]
    if frequency == "D":
        return [d for d in days if d.weekday() < 5]
    if frequency == "W":
        return [d for d in days if (d - anchor).days % 7 == 0]
    step = {"M": 1, "Q": 3, "A": 12}[frequency]
    return [d for d in days if d.day == 1 and (d.month - anchor.month) % step == 0]


class Macro(Dataset):
    name = "macro"
    table = MACRO_OBSERVATIONS
    time_column = "date"
    unit = "observations"
    title = "A FRED series, every vintage (ALFRED)"
    group = "macro"
    position = 60
    checks = (VALID, DISJOINT, CADENCE, FRESH)
    gap_check = CADENCE
    series_source = "fred"
    keys = "required"
    key_column = "series_id"
    moment_names = ("first_date", "last_date")

    def validate_entry(self, keys: tuple[str, ...], options: Mapping[str, Any]) -> None:
        super().validate_entry(keys, options)
        for key in keys:
            if not _SERIES_ID.fullmatch(key):
                raise ValueError(f"keys: {key!r} is not a FRED series id (upper-case letters, digits, _)")

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        from marketdata_assets.defs.ingest.partitions import yearly_partitions

        return yearly_partitions(series.start_date)

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"FRED series {series.key}, every vintage (ALFRED), in {self.table.qualified_name}; yearly UTC "
                f"partitions of observation dates from {partitions.start:%Y}, the year in progress included.")

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> FredVintagesSource:
        # the key from the run's environment, never from the resource's (visible) configuration
        return FredVintagesSource(upstreams.url("fred_url"), Settings.from_env().fred_api_key, MACRO_OBSERVATIONS)

    def _shape(self, warehouse: Warehouse, series: Series, before: dt.date) -> tuple[dt.date | None, dt.date | None, str | None]:
        """(first, newest stored observation date, frequency read from the last 40 dates before `before`)."""
        span = warehouse.query("SELECT min(date) AS first, max(date) AS newest FROM market_data.macro_observations "
                               "WHERE series_id = ?", [series.key])
        recent = warehouse.query(
            "SELECT DISTINCT date FROM market_data.macro_observations WHERE series_id = ? AND date < ? "
            "ORDER BY date DESC LIMIT 40", [series.key, before])["date"].to_list()
        return span["first"][0], span["newest"][0], frequency_of(sorted(recent))

    def history(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, as_of: dt.date | None = None,
    ) -> pl.DataFrame:
        """series_id, date, value and realtime_start (the vintage it comes from) of each observation
        dated in [start, end) as known on `as_of` (today: the newest vintage of each)."""
        known = known_on(warehouse, str(series.key), as_of or dt.datetime.now(dt.UTC).date())
        first, until = self.time_bounds(series, start, end)
        return known.filter((pl.col("date") >= first) & (pl.col("date") < until)).select(
            pl.lit(series.key).alias("series_id"), "date", "value", "realtime_start")

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Observation dates of [start, end) the series' cadence has and the table lacks, between
        its first and its newest stored observation (what is due after that is the freshness
        check's)."""
        return self._missing(warehouse, series, start, end, *self._shape(warehouse, series, end_day(end)))

    def _missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, earliest: dt.date | None,
        newest: dt.date | None, frequency: str | None,
    ) -> Missing:
        first_day, last_day = utc_day(start), end_day(end)
        if earliest is None or newest is None or frequency is None:
            return Missing()
        lower, until = max(first_day, earliest), min(last_day, newest + DAY)
        stored = set(warehouse.query(
            "SELECT DISTINCT date FROM market_data.macro_observations WHERE series_id = ? AND date >= ? AND date < ?",
            [series.key, lower, until])["date"].to_list())
        expected = expected_dates(frequency, newest, lower, until)
        found = Missing(expected=len(expected))
        for index, day in enumerate(expected):
            if day in stored:
                continue
            found.missing += 1
            following = expected[index + 1] if index + 1 < len(expected) else until
            if found.windows and found.windows[-1][1] == midnight(day):
                found.windows[-1] = (found.windows[-1][0], midnight(following))
            else:
                found.windows.append((midnight(day), midnight(following)))
        return found

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(VALID, asset=key, description=(
                "No vintage of the window rejected at ingest (WARN: kept in market_data.rejected_rows).")),
            dg.AssetCheckSpec(DISJOINT, asset=key, description=(
                "The vintages of one observation date never overlap: each ends before the next begins.")),
            dg.AssetCheckSpec(CADENCE, asset=key, description=(
                "Every observation date the series' frequency has (read from its dates) is stored, between its "
                "first and newest observation.")),
            dg.AssetCheckSpec(FRESH, asset=key, description=(
                "When the window reaches today: the newest observation is recent for the series' frequency "
                + ", ".join(f"{FREQUENCY_NAMES[f]} {d.days} days" for f, d in DUE_WITHIN.items()) + " (WARN).")),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        first_day, last_day = utc_day(start), end_day(end)
        with warehouse.session():
            overlapping = warehouse.query(
                "SELECT date, realtime_start, realtime_end, next_start FROM (SELECT date, realtime_start, realtime_end, "
                "lead(realtime_start) OVER (PARTITION BY date ORDER BY realtime_start) AS next_start "
                "FROM market_data.macro_observations WHERE series_id = ? AND date >= ? AND date < ?) v "
                "WHERE next_start <= realtime_end ORDER BY date, realtime_start",
                [series.key, first_day, last_day])
            rejected = warehouse.query(
                "SELECT open_time, reason, payload FROM market_data.rejected_rows WHERE dataset = ? AND symbol = ? "
                "AND open_time >= ? AND open_time < ? ORDER BY open_time", [self.name, series.key, start, end])
            earliest, newest, frequency = self._shape(warehouse, series, last_day)
            missing = self._missing(warehouse, series, start, end, earliest, newest, frequency)
        gaps = "\n".join(f"- [{a:%Y-%m-%d}, {b:%Y-%m-%d})" for a, b in missing.windows[:SAMPLES])
        reaches_today = end > now
        due = utc_day(now) - DUE_WITHIN[frequency] if frequency else None
        fresh = not reaches_today or (newest is not None and due is not None and newest >= due)
        named = FREQUENCY_NAMES.get(frequency or "", "unknown")
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALID, passed=rejected.is_empty(), severity=dg.AssetCheckSeverity.WARN,
                description=f"{counted(rejected.height, 'vintage')} rejected at ingest",
                metadata={"window": window, "rejected_rows": rejected.height,
                          "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts()))},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=DISJOINT, passed=overlapping.is_empty(), severity=dg.AssetCheckSeverity.ERROR,
                description=f"{counted(overlapping.height, 'vintage')} overlapping the next of the same date",
                metadata={"window": window, "overlapping_vintages": overlapping.height,
                          "samples": dg.MetadataValue.md(samples_table(overlapping.head(SAMPLES).to_dicts()))},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=CADENCE, passed=missing.missing == 0, severity=dg.AssetCheckSeverity.ERROR,
                description=f"{missing.missing} of {missing.expected} {named} observations missing",
                metadata={
                    "window": window, "frequency": named, "expected_observations": missing.expected,
                    "missing_observations": missing.missing, "first_gaps": dg.MetadataValue.md(gaps or "none"),
                    UNEXPLAINED_WINDOWS: windows_metadata(missing.windows),
                },
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=FRESH, passed=fresh, severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"newest observation {newest or 'none'}; a {named} series is due one from {due or 'unknown'}"
                    if reaches_today else "the window has closed: freshness is the year in progress's to show"
                ),
                metadata={"window": window, "frequency": named, "newest_observation": str(newest or "none"),
                          "due_from": str(due or "unknown")},
            ),
        ]


DATASET = Macro()
