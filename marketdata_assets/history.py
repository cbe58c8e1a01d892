"""The Python read API: history of any catalog series for strategy code, by its asset key.

    from marketdata_assets.history import History

    history = History()                      # the warehouse and catalog of the environment
    bars = history.fetch("binance_spot/klines_1m/BTCUSDT", "2024-01-01", "2024-02-01")
    history.coverage("binance_spot/klines_1m/BTCUSDT")   # [(first, last), …] contiguous, inclusive
    history.fill_missing("binance_spot/klines_1m/BTCUSDT", "2024-01-01", "2024-02-01")
    history.fetch("fred/macro/CPIAUCSL", "2020-01-01", "2024-01-01", as_of="2023-06-30")

`fetch` returns a polars frame of the series' table (its `ts` column first: the row's time in
Unix seconds; `.to_pandas()` gives QMTL's shape). `coverage` splits the stored span wherever the
dataset's own rule finds rows missing (klines: bars missing without explanation; an exchange
outage is not a hole). `fill_missing` launches the partitions holding holes, and those never
materialized, as Dagster runs recorded in the instance of DAGSTER_HOME (the UI shows them, tagged
`marketdata/trigger: History.fill_missing`), and returns when they have landed.

`QmtlHistoryProvider` wraps a History in QMTL's `HistoryProvider` protocol (async, Unix seconds),
so it plugs into `StreamInput(history_provider=…)` unchanged; a node id is an asset key, or is
mapped to one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from marketdata_assets.settings import Settings, redact

Moment = dt.datetime | dt.date | str | int | float
Range = tuple[dt.datetime, dt.datetime]
TRIGGER = "History.fill_missing"


class HistoryError(ValueError):
    """A read that cannot be answered as asked (an unknown series, a bad date, a failed fill): one line."""


def moment(value: Moment, name: str) -> dt.datetime:
    """`value` as a UTC instant: a datetime (naive is UTC), a date (its midnight), ISO 8601 text,
    or Unix seconds. HistoryError naming `name` otherwise."""
    if isinstance(value, bool):
        raise HistoryError(f"{name} {value!r} is not a moment")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise HistoryError(f"{name} {value!r} is not a date (YYYY-MM-DD, ISO 8601, or Unix seconds)") from None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    raise HistoryError(f"{name} {value!r} is not a moment")


@dataclass
class Filled:
    """What `fill_missing` did: the runs it launched and the partitions they covered."""

    series: str
    partitions: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


class History:
    """Reads of the warehouse at `warehouse_url` (the setting MARKETDATA_WAREHOUSE_URL when None),
    for the series of the catalog (MARKETDATA_CATALOG); fills through the Dagster instance of
    DAGSTER_HOME (`dagster_home` overrides it)."""

    def __init__(self, warehouse_url: str | None = None, *, settings: Settings | None = None,
                 dagster_home: str | Path | None = None):
        from marketdata_assets.catalog import CatalogError, load_catalog
        from marketdata_assets.datasets import dataset
        from marketdata_assets.warehouse import WarehouseError, open_warehouse

        settings = settings or Settings.from_env()
        if warehouse_url is not None:
            settings = Settings(**{**settings.__dict__, "warehouse_url": warehouse_url})
        self.settings = settings
        self._dagster_home = dagster_home
        try:
            catalog = load_catalog(settings.catalog_path)
            self._warehouse = open_warehouse(settings.warehouse_url)
        except (CatalogError, WarehouseError) as exc:
            raise HistoryError(str(exc)) from None
        self._series = {}
        for series in catalog.all_series():
            declared = dataset(series.dataset)
            self._series[declared.asset_key(series).to_user_string()] = (declared, series)

    def __repr__(self) -> str:
        return f"History({redact(self.settings.warehouse_url)!r}, {len(self._series)} series)"

    def series(self) -> list[str]:
        """The asset key of every series of the catalog."""
        return sorted(self._series)

    def _find(self, key: str) -> tuple[Any, Any]:
        found = self._series.get(key)
        if found is None:
            close = [k for k in self._series if k.rsplit("/", 1)[-1] == key.rsplit("/", 1)[-1]][:5]
            raise HistoryError(f"unknown series {key!r}: not in the catalog ({'like ' + ', '.join(close) if close else 'keys look like binance_spot/klines_1m/BTCUSDT'})")
        return found

    def interval_seconds(self, key: str) -> int | None:
        """The seconds between two rows of a series with a fixed step (bars: their timeframe), else None."""
        from marketdata_assets.timeframes import timeframe

        _, series = self._find(key)
        name = series.options.get("timeframe")
        return timeframe(name).seconds if name else None

    # --- reads --------------------------------------------------------------------------------

    def fetch(self, key: str, start: Moment | None = None, end: Moment | None = None, *,
              as_of: Moment | None = None) -> pl.DataFrame:
        """The rows of series `key` whose time is in [start, end) (from its start, to now), in time
        order: `ts` (Unix seconds) and the dataset's columns. `as_of`: a FRED series' values as
        known on that day (no look-ahead); without it, the newest of each."""
        declared, series = self._find(key)
        lower = moment(start, "start") if start is not None else dt.datetime.combine(series.start_date, dt.time(), dt.UTC)
        upper = moment(end, "end") if end is not None else dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        if upper <= lower:
            raise HistoryError(f"end {upper:%Y-%m-%d %H:%M:%S} is not after start {lower:%Y-%m-%d %H:%M:%S}")
        day = moment(as_of, "as_of").date() if as_of is not None else None
        try:
            rows = declared.history(self._warehouse, series, lower, upper, day)
        except ValueError as exc:
            raise HistoryError(f"{key}: {exc}") from None
        return rows.select(_unix_seconds(rows, declared.time_column_of(series)).alias("ts"), pl.all())

    def coverage(self, key: str) -> list[Range]:
        """Contiguous inclusive (first, last) row times of what series `key` holds: its stored span,
        split wherever its dataset finds rows missing that could be fetched."""
        declared, series = self._find(key)
        where, params = declared.row_filter(series)
        time = declared.time_column_of(series)
        times = self._warehouse.query(
            f"SELECT DISTINCT {time} AS t FROM {declared.table_of(series).qualified_name} WHERE {where} ORDER BY 1",
            params)
        if times.is_empty():
            return []
        stamps = times.select(_unix_seconds(times, "t")).to_series().to_numpy()
        first, last = _instant(stamps[0]), _instant(stamps[-1])
        holes = declared.missing(self._warehouse, series, first, last + dt.timedelta(microseconds=1),
                                 self._bounds(declared, series), dt.datetime.now(dt.UTC)).windows
        ranges, begin = [], 0
        for lo, hi in sorted(holes):
            before = int(np.searchsorted(stamps, lo.timestamp(), side="left"))  # rows before the hole
            after = int(np.searchsorted(stamps, hi.timestamp(), side="left"))  # the first row after it
            if before <= begin or after >= len(stamps):
                continue
            ranges.append((_instant(stamps[begin]), _instant(stamps[before - 1])))
            begin = after
        ranges.append((_instant(stamps[begin]), last))
        return ranges

    def missing(self, key: str, start: Moment, end: Moment) -> list[Range]:
        """The [start, end) windows of series `key` inside [start, end) whose rows are missing and
        could be fetched (its dataset's rule)."""
        declared, series = self._find(key)
        lower, upper = moment(start, "start"), moment(end, "end")
        return declared.missing(self._warehouse, series, lower, upper, self._bounds(declared, series),
                                dt.datetime.now(dt.UTC)).windows

    # --- fills --------------------------------------------------------------------------------

    def fill_missing(self, key: str, start: Moment, end: Moment) -> Filled:
        """Run, through Dagster, the partitions of series `key` over [start, end) that hold missing
        rows or were never materialized; return when they have landed. HistoryError naming the
        run when one fails."""
        from marketdata_assets import backfills
        from marketdata_assets.app import local_instance
        from marketdata_assets.defs.ingest.partitions import partitions_between
        from marketdata_assets.defs.location import build_definitions

        declared, series = self._find(key)
        now = dt.datetime.now(dt.UTC)
        lower, upper = moment(start, "start"), min(moment(end, "end"), now)
        filled = Filled(key)
        if upper <= lower:
            return filled
        partitions = declared.partitions(series)
        asset_key = declared.asset_key(series)
        env = {"DAGSTER_HOME": str(self._dagster_home)} if self._dagster_home else None
        instance = local_instance(env)
        try:
            window = partitions_between(partitions, lower, upper, now)
            done = instance.get_materialized_partitions(asset_key)
            holes = declared.missing(self._warehouse, series, lower, upper, self._bounds(declared, series), now).windows
            wanted = {p for p in window if p not in done}
            for lo, hi in holes:
                wanted |= set(partitions_between(partitions, lo, hi, now))
            filled.partitions = [p for p in window if p in wanted]
            if not filled.partitions:
                return filled
            definitions = build_definitions(self.settings)
            spec = next(s for s in definitions.resolve_all_asset_specs() if s.key == asset_key)
            chosen = backfills.selections([spec], lambda _: filled.partitions)
            outcomes = backfills.run_here(definitions, chosen, instance, lambda _: None,
                                          {"marketdata/trigger": TRIGGER})
        finally:
            instance.dispose()
        filled.run_ids = [outcome.run_id for outcome in outcomes]
        for outcome in outcomes:
            if not outcome.success:
                raise HistoryError(f"{key}: run {outcome.run_id} over {outcome.selection.first}..."
                                   f"{outcome.selection.last} failed: {'; '.join(outcome.errors) or 'see the run'}")
        return filled

    def _bounds(self, declared: Any, series: Any) -> Any:
        from marketdata_assets.datasets import Bounds
        from marketdata_assets.defs.ingest.partitions import partition_bounds

        return Bounds(*partition_bounds(declared.partitions(series)))


def _unix_seconds(frame: pl.DataFrame, column: str) -> pl.Expr:
    """`column` (a UTC time or a day) as whole Unix seconds."""
    if frame.schema[column] == pl.Date:
        return pl.col(column).cast(pl.Datetime("ms", "UTC")).dt.epoch("s")
    return pl.col(column).dt.epoch("s")


def _instant(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


class QmtlHistoryProvider:
    """QMTL's `HistoryProvider` over a History: `fetch`, `coverage` and `fill_missing` as its
    protocol writes them, times in Unix seconds. `node_ids` maps QMTL node ids to asset keys (a
    node id that is an asset key needs none); `interval` must match a bar series' timeframe."""

    def __init__(self, history: History | None = None, *, node_ids: Mapping[str, str] | None = None):
        self.history = history or History()
        self.node_ids = dict(node_ids or {})

    def _key(self, node_id: str, interval: int | None) -> str:
        key = self.node_ids.get(node_id, node_id)
        step = self.history.interval_seconds(key)
        if step is not None and interval is not None and int(interval) != step:
            raise HistoryError(f"node {node_id!r}: {key} has a row every {step} s, not every {interval} s")
        return key

    async def fetch(self, start: int, end: int, *, node_id: str, interval: int) -> Any:
        """The rows in [start, end) as a pandas frame with a `ts` column (Unix seconds)."""
        key = self._key(node_id, interval)
        frame = await asyncio.to_thread(self.history.fetch, key, int(start), int(end))
        return frame.to_pandas()

    async def coverage(self, node_id: str, interval: int) -> list[tuple[int, int]]:
        """Contiguous inclusive (start, end) Unix seconds of what is stored."""
        key = self._key(node_id, interval)
        ranges = await asyncio.to_thread(self.history.coverage, key)
        return [(int(lo.timestamp()), int(hi.timestamp())) for lo, hi in ranges]

    async def fill_missing(self, start: int, end: int, node_id: str, interval: int) -> None:
        """Fill what is missing in [start, end] (inclusive, as QMTL asks) through Dagster runs."""
        key = self._key(node_id, interval)
        await asyncio.to_thread(self.history.fill_missing, key, int(start), int(end) + max(1, int(interval)))
