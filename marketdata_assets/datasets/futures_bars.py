"""CME Globex futures bars from Databento (GLBX.MDP3), in market_data.futures_bars: what the daily
(`ohlcv_1d.py`) and hourly (`ohlcv_1h.py`) datasets share. A series is a CME root (`ES`), kept
as its continuous symbol `ROOT.{roll}.0`: `databento_glbx/ohlcv_1d/ES`.

Catalog: `series: [{source: databento_glbx, dataset: ohlcv_1d, keys: [ES, NQ, …], start_date: …,
roll: c}]`; `roll` is the continuous contract's rule (`c` calendar, the default; `n` open
interest; `v` volume). The key comes from DATABENTO_API_KEY. ICE softs (KC, SB, CC, CT, OJ, DX)
are refused: they trade on ICE, in Databento's IFUS.IMPACT dataset, not on Globex.

Checks:
- valid: no bar of the window rejected at ingest is left unmended (WARN: an undefined price, a
  high below its low, a bar of another contract than the day's mapping), every stored price
  positive (ERROR).
- sessions: the bars CME Globex's sessions call for (the `CMES` calendar of exchange_calendars:
  holidays, early closes, weekends; less the daily 16:00–17:00 CT maintenance halt) are stored,
  between the first stored bar and the newest. Databento sends no bar for an interval without
  trades, so the hourly check warns (a quiet hour of a thin root is no fault); the daily one is
  an error.
- fresh: when the window reaches now, the newest closed session's bar is stored (WARN).
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import polars as pl

from marketdata_assets.audit import SAMPLES, samples_table
from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds, Dataset, Missing
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, window_text, windows_metadata
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.settings import Settings
from marketdata_assets.sources.databento import (
    DATASET as GLBX,
    KEY_VARIABLE,
    ROLL_RULES,
    DatabentoBarsSource,
    Schema,
    SharedRequests,
    continuous_symbol,
    estimate_cost,
)
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

FUTURES_BARS = TableSpec(
    name="futures_bars",
    schema=pl.Schema({
        "dataset": pl.String,  # Databento's dataset: GLBX.MDP3
        "symbol": pl.String,  # the continuous symbol: ES.c.0
        "timeframe": pl.String,  # 1d (UTC days) | 1h
        "ts_event": UTC_TIME,  # the bar's start
        "open": pl.Float64,  # unadjusted prices of the contract the symbol mapped to that day
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Int64,  # contracts
        "instrument_id": pl.Int64,  # Databento's id of that contract
        "raw_symbol": pl.String,  # that contract: ESH4
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("dataset", "symbol", "timeframe", "ts_event"),
)
SOURCE = "databento_glbx"
ICE_SOFTS = ("KC", "SB", "CC", "CT", "OJ", "DX")
_ROOT = re.compile(r"[A-Z0-9]{1,4}")
CHICAGO = ZoneInfo("America/Chicago")
HALT_HOUR_CT = 16  # Globex's daily maintenance halt: 16:00-17:00 CT
_HOUR = dt.timedelta(hours=1)
_DAY = dt.timedelta(days=1)


@cache
def _globex_schedule() -> Any:
    """exchange_calendars' CME Globex sessions (a row each, open and close in UTC), built once a
    process (it takes a moment)."""
    import exchange_calendars

    today = dt.date.today()
    with warnings.catch_warnings(action="ignore", category=DeprecationWarning):  # pandas 3's notes on its internals
        return exchange_calendars.get_calendar("CMES", start="2010-01-01", end=f"{today.year + 1}-12-31").schedule


@cache
def _globex_hours() -> np.ndarray:
    """Every UTC hour Globex trades in, as Unix seconds of its start, ascending: the hours inside
    a CMES session (holidays and early closes as the calendar has them; a session opening off the
    hour trades from the next one), less the daily maintenance halt (computed once a process)."""
    import pandas as pd

    schedule = _globex_schedule()
    opens = schedule["open"].astype("int64").to_numpy() // 10**9  # ns since the epoch, UTC
    closes = schedule["close"].astype("int64").to_numpy() // 10**9
    hour = int(_HOUR.total_seconds())
    starts = -(-opens // hour) * hour
    hours = np.concatenate([np.arange(a, b, hour) for a, b in zip(starts, closes, strict=True)])
    chicago = pd.DatetimeIndex(pd.to_datetime(hours, unit="s", utc=True)).tz_convert(CHICAGO).hour
    return hours[np.asarray(chicago) != HALT_HOUR_CT]


def session_hours_between(start: dt.datetime, end: dt.datetime) -> np.ndarray:
    """The Unix seconds of the hours in [start, end) when Globex trades."""
    hours = _globex_hours()
    return hours[np.searchsorted(hours, start.timestamp()):np.searchsorted(hours, end.timestamp())]


def session_hours(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The UTC hours (their starts) in [start, end) when Globex trades: inside a CMES session
    (holidays and early closes as the calendar has them), not in the daily maintenance halt."""
    return [dt.datetime.fromtimestamp(int(h), dt.UTC) for h in session_hours_between(start, end)]


class FuturesBars(Dataset):
    """A bar schema of GLBX.MDP3: the subclasses say which (`schema`), their partitions and cron."""

    table = FUTURES_BARS
    time_column = "ts_event"
    unit = "bars"
    group = "futures"
    series_source = SOURCE
    keys = "required"
    key_column = "symbol"
    moment_names = ("first_bar", "last_bar")
    bills_by_volume = True
    schema: ClassVar[Schema]
    stype_in: ClassVar[str] = "continuous"  # how Databento reads `symbol()`: a continuous contract
    # the sessions check's severity: an hour may pass without a trade, a Globex day hardly
    missing_severity: ClassVar[dg.AssetCheckSeverity] = dg.AssetCheckSeverity.ERROR

    @property
    def checks(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.valid_check, self.sessions_check, self.fresh_check)

    @property
    def gap_check(self) -> str | None:  # type: ignore[override]
        # the repair sensor re-runs an error's windows; an hour without trades is no error, and
        # asking Databento again for it would only cost money
        return self.sessions_check if self.missing_severity == dg.AssetCheckSeverity.ERROR else None

    @property
    def valid_check(self) -> str:
        return f"{self.name}_valid"

    @property
    def sessions_check(self) -> str:
        return f"{self.name}_sessions"

    @property
    def fresh_check(self) -> str:
        return f"{self.name}_fresh"

    # --- the catalog -------------------------------------------------------------------------

    def validate_entry(self, keys: tuple[str, ...], options: Mapping[str, Any]) -> None:
        super().validate_entry(keys, {k: v for k, v in options.items() if k != "roll"})
        roll = options.get("roll", "c")
        if roll not in ROLL_RULES:
            raise ValueError(f"roll: {roll!r} is not a roll rule (c calendar, n open interest, v volume)")
        for key in keys:
            if key in ICE_SOFTS:
                raise ValueError(f"keys: {key} trades on ICE, not CME Globex: it needs Databento's IFUS.IMPACT "
                                 f"dataset, which {self.name} ({GLBX}) does not read")
            if not _ROOT.fullmatch(key):
                raise ValueError(f"keys: {key!r} is not a CME root (1 to 4 upper-case letters or digits: ES, 6E, MES)")

    def rule(self, series: Series) -> str:
        return str(series.options.get("roll", "c"))

    def symbol(self, series: Series) -> str:
        return continuous_symbol(str(series.key), self.rule(series))

    # --- Dagster -----------------------------------------------------------------------------

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{self.title}: {self.symbol(series)} ({GLBX}, unadjusted, with the contract of each bar), in "
                f"{self.table.qualified_name}; {self.partition_name} UTC partitions from {partitions.start:%Y-%m-%d}, "
                "the one in progress included.")

    partition_name: ClassVar[str] = "monthly"

    def asset_metadata(self, series: Series) -> dict[str, Any]:
        return super().asset_metadata(series) | {"databento_symbol": self.symbol(series),
                                                 "timeframe": self.schema.timeframe}

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> DatabentoBarsSource:
        # the key from the run's environment, never from the resource's (visible) configuration
        return DatabentoBarsSource(upstreams.url("databento_url"), Settings.from_env().databento_api_key,
                                   self.schema, FUTURES_BARS, self.name, rule=self.rule(series))

    def run_scope(self, series: list[Series]) -> SharedRequests:
        return SharedRequests([self.symbol(s) for s in series], Settings.from_env().databento_symbols_per_request)

    def unmet_requirement(self, settings: Settings) -> str | None:
        return None if settings.databento_api_key else f"{KEY_VARIABLE} is not set (Databento's API key)"

    def cost_usd(self, series: list[Series], start: dt.datetime, end: dt.datetime, settings: Settings) -> float:
        return estimate_cost(settings.databento_url, settings.databento_api_key or "", self.schema,
                             [self.symbol(s) for s in series], self.stype_in, start, end)

    # --- the audit ---------------------------------------------------------------------------

    def row_filter(self, series: Series, alias: str = "") -> tuple[str, list[Any]]:
        return (f"{alias}dataset = ? AND {alias}symbol = ? AND {alias}timeframe = ?",
                [GLBX, self.symbol(series), self.schema.timeframe])

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (f"SELECT '{SOURCE}/{self.name}/' || split_part(symbol, '.', 1) AS series, count(*) AS rows, "
                f"min(ts_event) AS first_time, max(ts_event) AS last_time FROM {self.table.qualified_name} "
                "WHERE timeframe = ? AND (CAST(? AS TEXT) IS NULL OR split_part(symbol, '.', 1) = ?) GROUP BY 1",
                [self.schema.timeframe, symbol, symbol])

    def expected_bars(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """The bar starts Globex's sessions call for in [start, end): its trading hours, or the UTC
        days they touch."""
        if self.schema.bar == _HOUR:
            return session_hours(start, end)
        day = int(_DAY.total_seconds())
        return [dt.datetime.fromtimestamp(int(d) * day, dt.UTC) for d in np.unique(session_hours_between(start, end) // day)]

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Bars of [start, end) the sessions call for and the table lacks, between the series'
        first stored bar and its newest (what is due after that is the freshness check's)."""
        where, params = self.row_filter(series)
        span = warehouse.query(f"SELECT min(ts_event) AS first, max(ts_event) AS newest FROM "
                               f"{self.table.qualified_name} WHERE {where}", params)
        first, newest = span["first"][0], span["newest"][0]
        if first is None:
            return Missing()
        lower, until = max(start, first), min(end, newest + self.schema.bar)
        if lower >= until:
            return Missing()
        stored = set(warehouse.query(
            f"SELECT ts_event FROM {self.table.qualified_name} WHERE {where} AND ts_event >= ? AND ts_event < ?",
            [*params, lower, until])["ts_event"].to_list())
        found = Missing()
        for bar in self.expected_bars(lower, until):
            found.expected += 1
            if bar in stored:
                continue
            found.missing += 1
            if found.windows and found.windows[-1][1] == bar:
                found.windows[-1] = (found.windows[-1][0], bar + self.schema.bar)
            else:
                found.windows.append((bar, bar + self.schema.bar))
        return found

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(self.valid_check, asset=key, description=(
                "Every stored price is positive (ERROR), and no bar of the window rejected at ingest is left unmended "
                "(WARN: an undefined price, a high below its low, another contract than the day's; kept in "
                "market_data.rejected_rows).")),
            dg.AssetCheckSpec(self.sessions_check, asset=key, description=(
                f"Every {'hour' if self.schema.bar == _HOUR else 'UTC day'} CME Globex trades in (the CMES calendar: "
                "holidays, early closes, weekends; not the 16:00-17:00 CT halt) has its bar, between the first stored "
                f"bar and the newest ({'WARN: Databento sends no bar for an hour without trades' if self.schema.bar == _HOUR else 'ERROR'}).")),
            dg.AssetCheckSpec(self.fresh_check, asset=key, description=(
                "When the window reaches now: the bar of the newest closed trading "
                f"{'hour' if self.schema.bar == _HOUR else 'day'} before the last one is stored (WARN).")),
        ]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        window = dg.MetadataValue.text(window_text(start, end))
        where, params = self.row_filter(series)
        mended, mended_params = self.row_filter(series, "b.")
        with warehouse.session():
            broken = warehouse.query(
                f"SELECT ts_event, open, high, low, close FROM {self.table.qualified_name} WHERE {where} AND "
                "ts_event >= ? AND ts_event < ? AND NOT (open > 0 AND high > 0 AND low > 0 AND close > 0) "
                "ORDER BY ts_event", [*params, start, end])
            rejected = warehouse.query(
                "SELECT open_time, reason, payload FROM market_data.rejected_rows r WHERE dataset = ? AND symbol = ? "
                "AND timeframe = ? AND open_time >= ? AND open_time < ? AND NOT EXISTS (SELECT 1 FROM "
                f"{self.table.qualified_name} b WHERE {mended} AND b.ts_event = r.open_time) ORDER BY open_time",
                [self.name, self.symbol(series), self.schema.timeframe, start, end, *mended_params])
            missing = self.missing(warehouse, series, start, end, bounds, now)
            newest = warehouse.query(f"SELECT max(ts_event) AS newest FROM {self.table.qualified_name} WHERE {where}",
                                     params)["newest"][0]
        gaps = "\n".join(f"- [{a:%Y-%m-%d %H:%M}, {b:%Y-%m-%d %H:%M}) UTC" for a, b in missing.windows[:SAMPLES])
        reaches_now = end > now
        due = self._due(now)
        fresh = not reaches_now or due is None or (newest is not None and newest >= due)
        return [
            dg.AssetCheckResult(
                asset_key=key, check_name=self.valid_check, passed=broken.is_empty() and rejected.is_empty(),
                severity=dg.AssetCheckSeverity.ERROR if broken.height else dg.AssetCheckSeverity.WARN,
                description=(f"{counted(broken.height, 'stored bar')} with a price not positive; "
                             f"{counted(rejected.height, 'bar')} rejected at ingest"),
                metadata={"window": window, "invalid_bars": broken.height, "rejected_bars": rejected.height,
                          "invalid_samples": dg.MetadataValue.md(samples_table(broken.head(SAMPLES).to_dicts())),
                          "rejected_samples": dg.MetadataValue.md(samples_table(rejected.head(SAMPLES).to_dicts()))},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=self.sessions_check, passed=missing.missing == 0,
                severity=self.missing_severity,
                description=f"{missing.missing} of {missing.expected} session bars missing",
                metadata={"window": window, "expected_bars": missing.expected, "missing_bars": missing.missing,
                          "first_gaps": dg.MetadataValue.md(gaps or "none"),
                          UNEXPLAINED_WINDOWS: windows_metadata(missing.windows)},
            ),
            dg.AssetCheckResult(
                asset_key=key, check_name=self.fresh_check, passed=fresh, severity=dg.AssetCheckSeverity.WARN,
                description=(f"newest bar {newest or 'none'}; due {due}" if reaches_now
                             else "the window has closed: freshness is the partition in progress's to show"),
                metadata={"window": window, "newest_bar": str(newest or "none"), "due_bar": str(due)},
            ),
        ]

    def _due(self, now: dt.datetime) -> dt.datetime | None:
        """The bar that must be stored by `now`: the one before the newest closed one (a cycle's
        grace for the schedule)."""
        closed = [bar for bar in self.expected_bars(now - 10 * _DAY, now) if bar + self.schema.bar <= now]
        return closed[-2] if len(closed) >= 2 else None
