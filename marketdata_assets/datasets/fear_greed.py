"""The Crypto Fear & Greed Index from alternative.me: one value (0–100) and its classification per
UTC day since 2018-02-01 (`alternative_me/fear_greed`), in market_data.fear_greed.

Catalog: `series: [{source: alternative_me, dataset: fear_greed}]`. Checks: every stored value
within 0–100 with the classification alternative.me gives it (and no row rejected at ingest),
one row per day, and the newest day stored by the day after.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.alternative_me import BANDS, VENUE, FearGreedSource
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

FEAR_GREED = TableSpec(
    name="fear_greed",
    schema=pl.Schema({
        "date": pl.Date,  # the UTC day the value is for
        "value": pl.Int16,  # 0 (extreme fear) to 100 (extreme greed)
        "classification": pl.String,  # alternative.me's name for the value
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("date",),
)
VALUES_VALID = "fear_greed_valid"
DAILY = "fear_greed_daily"
FRESH = "fear_greed_fresh"
DAY = dt.timedelta(days=1)
# A stored row alternative.me could not have given, as SQL over the table's columns.
_BROKEN = "NOT (value BETWEEN 0 AND 100) OR classification <> CASE " + " ".join(
    f"WHEN value >= {lowest} THEN '{name}'" for lowest, name in reversed(BANDS)
) + " END"


def _day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date()


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


class FearGreed(Dataset):
    name = "fear_greed"
    table = FEAR_GREED
    time_column = "date"
    unit = "days"
    title = "The Crypto Fear & Greed Index, one value a UTC day"
    earliest = dt.date(2018, 2, 1)  # alternative.me's first day
    group = "sentiment"
    position = 50
    checks = (VALUES_VALID, DAILY, FRESH)
    gap_check = DAILY
    series_source = VENUE.name
    moment_names = ("first_day", "last_day")

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds) -> FearGreedSource:
        return FearGreedSource(upstreams.url(VENUE.url_setting), FEAR_GREED)

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        bands = ", ".join(f"{name} from {lowest}" for lowest, name in BANDS)
        return [
            dg.AssetCheckSpec(VALUES_VALID, asset=key, description=(
                f"Every stored value within 0–100 and classified as alternative.me does ({bands}) (ERROR), and "
                "no row of the window rejected at ingest for breaking that (WARN: kept in market_data.rejected_rows).")),
            dg.AssetCheckSpec(DAILY, asset=key, description="One value for every UTC day of the window, no gaps."),
            dg.AssetCheckSpec(FRESH, asset=key, description=(
                "When the window reaches today: yesterday's value or a newer one is stored (WARN).")),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        with warehouse.session():
            rows = warehouse.query(
                f"SELECT date, value, classification FROM market_data.fear_greed WHERE date >= ? AND date < ? "
                f"AND ({_BROKEN}) ORDER BY date", [_day(start), _day(end)],
            )
            rejected = warehouse.query(
                "SELECT open_time, reason, payload FROM market_data.rejected_rows WHERE dataset = ? "
                "AND open_time >= ? AND open_time < ? AND open_time NOT IN "
                "(SELECT CAST(date AS TIMESTAMPTZ) FROM market_data.fear_greed) ORDER BY open_time",
                [self.name, start, end],
            )
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = warehouse.query("SELECT max(date) AS newest FROM market_data.fear_greed")["newest"][0]
        gaps = "\n".join(f"- [{a:%Y-%m-%d}, {b:%Y-%m-%d}), {(b - a).days} days" for a, b in missing.windows[:SAMPLES])
        due = _day(now) - DAY
        reaches_today = end > now
        fresh = not reaches_today or (newest is not None and newest >= due)
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=VALUES_VALID, passed=rows.is_empty() and rejected.is_empty(),
                severity=dg.AssetCheckSeverity.ERROR if rows.height else dg.AssetCheckSeverity.WARN,
                description=f"{counted(rows.height, 'stored day')} break a rule; {counted(rejected.height, 'row')} rejected at ingest",
                metadata={
                    "window": window, "invalid_rows": rows.height, "rejected_rows": rejected.height,
                    "invalid_samples": dg.MetadataValue.md(samples_table(rows.head(SAMPLES).to_dicts())),
                    "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts())),
                },
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=DAILY, passed=missing.missing == 0, severity=dg.AssetCheckSeverity.ERROR,
                description=f"{missing.missing} of {missing.expected} days missing",
                metadata={
                    "window": window, "expected_days": missing.expected, "missing_days": missing.missing,
                    "first_gaps": dg.MetadataValue.md(gaps or "none"),
                    UNEXPLAINED_WINDOWS: windows_metadata(missing.windows),
                },
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=FRESH, passed=fresh, severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"newest day stored {newest or 'none'}; due {due}" if reaches_today
                    else "the window has closed: freshness is the month in progress's to show"
                ),
                metadata={"window": window, "newest_day": str(newest or "none"), "due_day": str(due)},
            ),
        ]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Days of [start, end) with no value. As for bars: nothing is expected before the first
        stored day of the listing partition, nor, in the partition in progress, after the newest
        stored day; today's value is due once today has begun."""
        days = sorted(warehouse.query(
            "SELECT date FROM market_data.fear_greed WHERE date >= ? AND date < ?", [_day(start), _day(end)],
        )["date"].to_list())
        first = min(days[0], _day(bounds.first_window_end)) if days else _day(bounds.first_window_end)
        until = min(_day(end), _day(now) + DAY)
        if end > bounds.current_window_start:
            newest = days[-1] + DAY if days else _day(bounds.current_window_start)
            until = min(until, max(newest, _day(bounds.current_window_start)))
        lower = max(_day(start), first)
        found = Missing(expected=max(0, (until - lower).days))
        cursor = lower
        for day in [d for d in days if lower <= d < until] + [until]:
            if day > cursor:
                found.windows.append((_midnight(cursor), _midnight(day)))
                found.missing += (day - cursor).days
            cursor = max(cursor, day + DAY)
        return found

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            "SELECT 'alternative_me/fear_greed' AS series, count(*) AS rows, CAST(min(date) AS TIMESTAMPTZ) AS first_time, "
            "CAST(max(date) AS TIMESTAMPTZ) AS last_time FROM market_data.fear_greed "
            "WHERE CAST(? AS TEXT) IS NULL HAVING count(*) > 0",
            [symbol],
        )


DATASET = FearGreed()
