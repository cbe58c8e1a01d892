"""What a dataset declares, once, in its own module: its table, key and time column, the
partitions and the incremental cron, its checks and the one that finds missing rows, how the
report counts what is missing, and which catalog entries it makes assets of.

Everything that lists datasets (catalog validation, definitions, schedules, the repair sensor,
backfill and seed, coverage, report, summary, the CLI's choices) iterates the registry
(`marketdata_assets.datasets`), never a list of names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
import polars as pl

from marketdata_assets.schemas import TableSpec

if TYPE_CHECKING:
    from marketdata_assets.catalog import Catalog, Series
    from marketdata_assets.warehouse import Warehouse

Interval = tuple[dt.datetime, dt.datetime]


@dataclass
class Missing:
    """Rows a series should hold in some windows, and which of them are missing."""

    expected: int = 0
    missing: int = 0
    windows: list[Interval] = field(default_factory=list)  # the missing ones, [start, end) UTC

    def add(self, other: Missing) -> None:
        self.expected += other.expected
        self.missing += other.missing
        self.windows += other.windows


@dataclass(frozen=True)
class Bounds:
    """What a series' expectations depend on besides its rows: the end of the partition that
    holds its first row (before which nothing is expected) and the start of the partition in
    progress (inside which nothing newer than the newest stored row is expected yet)."""

    first_window_end: dt.datetime
    current_window_start: dt.datetime


_SQL_TYPES = {pl.Float64: "double", pl.Int64: "bigint", pl.Int32: "integer", pl.String: "text", pl.Date: "date",
              pl.Boolean: "boolean", pl.Datetime: "timestamptz"}


_COLUMN_SCHEMAS: dict[str, dg.TableSchema] = {}


def column_schema(table: TableSpec) -> dg.TableSchema:
    """`table`'s columns as Dagster's column schema, the primary key's marked (built once a
    table: every asset of the table shares it)."""
    if table.qualified_name not in _COLUMN_SCHEMAS:
        _COLUMN_SCHEMAS[table.qualified_name] = dg.TableSchema(columns=[
            dg.TableColumn(name, _SQL_TYPES.get(dtype.base_type(), str(dtype)),
                           description="primary key" if name in table.primary_key else None,
                           constraints=dg.TableColumnConstraints(nullable=name not in table.primary_key))
            for name, dtype in table.schema.items()
        ])
    return _COLUMN_SCHEMAS[table.qualified_name]


class Dataset:
    """One dataset. Subclasses declare the class attributes and override what differs."""

    name: ClassVar[str]
    table: ClassVar[TableSpec]
    time_column: ClassVar[str]
    # What one expected row is called in the report: bars, settlements, snapshots, days.
    unit: ClassVar[str]
    title: ClassVar[str]  # one line, for the asset's description
    # What the report says of rows it expected and lacks, after their count (GEX: "not captured"),
    # and whether it counts them over every partition to now rather than the materialized ones
    # (a dataset that can only capture the present: a partition never run is a snapshot missed).
    missing_note: ClassVar[str] = ""
    audits_every_partition: ClassVar[bool] = False
    # The incremental schedule's cron (UTC); MARKETDATA_SCHEDULE_CRON overrides every dataset's.
    cron: ClassVar[str] = "10 0 * * *"
    # How often `cron` keeps it current, in the names of its job and schedule (`klines_daily`).
    cadence_name: ClassVar[str] = "daily"
    # Nothing exists anywhere before this day: partitions begin no earlier.
    earliest: ClassVar[dt.date | None] = None
    # A family several datasets share, for `backfill <group>` and SKIP_<GROUP>=1 (sentiment, macro).
    group: ClassVar[str | None] = None
    # Where the dataset sits in lists (report, summary, errors); smaller first.
    position: ClassVar[int] = 100
    # The checks every asset of the dataset carries, and the one whose unexplained windows the
    # repair sensor re-runs.
    checks: ClassVar[tuple[str, ...]] = ()
    gap_check: ClassVar[str | None] = None
    # Instruments: which venues and markets keep this dataset (catalog `instruments:` entries).
    instrument_venues: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # The instrument field listing the timeframes an instrument keeps of this dataset (klines: its
    # `timeframes`), a series each: without anything in it, the instrument keeps none of it.
    instrument_field: ClassVar[str | None] = None
    # Series: the `source` a catalog `series:` entry of this dataset names, and whether it
    # lists `keys` ("required") or has one series ("none").
    series_source: ClassVar[str | None] = None
    keys: ClassVar[str] = "none"
    # The column holding a series' key in the table of a `series:` dataset with keys (asset, series_id),
    # and the keys the upstream has, when it has a few (blockchain.com charts BTC only).
    key_column: ClassVar[str | None] = None
    allowed_keys: ClassVar[tuple[str, ...] | None] = None
    # The names of the earliest and latest row's time on a materialization.
    moment_names: ClassVar[tuple[str, str]] = ("first_row", "last_row")
    # When an asset counts as fresh (Dagster's FreshnessPolicy), if the dataset says.
    freshness_policy: ClassVar[Any] = None
    # The upstream bills by the volume of data sent (Databento): a launch asks `cost_usd` first.
    bills_by_volume: ClassVar[bool] = False
    # The report audits this dataset in detail (klines: known gaps, rejected rows, Dagster
    # against the warehouse); the others through `missing`.
    detailed_audit: ClassVar[bool] = False

    # --- the catalog -------------------------------------------------------------------------

    def series_of(self, catalog: Catalog) -> list[Series]:
        """Every series of this dataset the catalog asks for (its `series:` entries by default)."""
        from marketdata_assets.catalog import Series

        found = []
        for entry in catalog.series:
            if entry.dataset != self.name:
                continue
            start = entry.start_date or catalog.start_date or self.earliest
            assert start is not None  # the catalog refuses a series with no start anywhere
            for key in entry.keys or (None,):
                found.append(Series(self.name, entry.source, key, start, options=dict(entry.model_extra or {})))
        return found

    def validate_entry(self, keys: tuple[str, ...], options: Mapping[str, Any]) -> None:
        """ValueError naming the field when a catalog `series:` entry does not fit this dataset."""
        if self.keys == "none" and keys:
            raise ValueError(f"keys: {self.name} has one series, so it takes no keys")
        if self.keys == "required" and not keys:
            raise ValueError(f"keys: {self.name} needs at least one key")
        for key in keys:
            if self.allowed_keys is not None and key not in self.allowed_keys:
                raise ValueError(f"keys: {self.name} keeps {', '.join(self.allowed_keys)} only, not {key!r}")
        for name in options:
            raise ValueError(f"{name}: not an option of {self.name}")

    # --- Dagster -----------------------------------------------------------------------------

    def table_of(self, series: Series) -> TableSpec:
        """The table holding `series`' rows: the dataset's `table` (a transform's is its own)."""
        return self.table

    def time_column_of(self, series: Series) -> str:
        """The time column of `series`' table: the dataset's `time_column` (a transform's is declared)."""
        return self.time_column

    def asset_key(self, series: Series) -> dg.AssetKey:
        return dg.AssetKey([series.source, self.name, *([series.slug] if series.key else [])])

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        from marketdata_assets.defs.ingest.partitions import monthly_partitions

        start = max(series.start_date, self.earliest) if self.earliest else series.start_date
        return monthly_partitions(start)

    def build_assets(self, group: list[Series], warehouse_kind: str) -> dg.AssetsDefinition:
        """The assets of series of one source sharing a PartitionsDefinition: the one asset body
        (defs/ingest/assets.py)."""
        from marketdata_assets.defs.ingest.assets import build_dataset_assets

        return build_dataset_assets(self, group, warehouse_kind)

    def input_keys(self, key: dg.AssetKey) -> list[dg.AssetKey]:
        """The assets whose rows the asset `key` is derived from (none for a dataset fetched from
        an upstream): its lineage in the UI, each partition reading the same time window of
        theirs, and what its daily schedule watches for changes."""
        return []

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> Any:
        """The source (sources/protocol.py) of `series`, from `upstreams` (defs/ingest/resources.py),
        or from `warehouse` for a dataset derived from others' rows."""
        raise NotImplementedError(f"{self.name} declares no source")

    def run_scope(self, series: list[Series]) -> Any:
        """What the sources of one run share, given the series it reads in order (None: nothing).
        Its `attach(source)` is called on each source the run opens (Databento asks for several
        roots a request and keeps the others' answers for their turn)."""
        return None

    def unservable(self, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> str | None:
        """Why no upstream can serve [start, end) at `now` (Deribit keeps no past chain), or None:
        `marketdata backfill` refuses such a window before anything runs."""
        return None

    def unmet_requirement(self, settings: Any) -> str | None:
        """Why this dataset cannot run with `settings` (a vendor key missing from the
        environment), or None: `marketdata seed` leaves it out saying so, `backfill` refuses it."""
        return None

    def estimate(self, series: Series, start: dt.datetime, end: dt.datetime, settings: Any) -> tuple[str, int, int] | None:
        """(venue, requests, request weight) reading `series` over [start, end) would ask of its
        upstream, as `marketdata backfill plan --dry-run` shows it; None: no estimate of its own
        (the plan then assumes a request a partition)."""
        return None

    def cost_usd(self, series: list[Series], start: dt.datetime, end: dt.datetime, settings: Any) -> float:
        """What the upstream bills for the rows of `series` over [start, end) UTC, asked of it
        without spending (a dataset that `bills_by_volume` says)."""
        raise NotImplementedError(f"{self.name} is not billed by volume")

    def asset_metadata(self, series: Series) -> dict[str, Any]:
        """What the asset's definition says of itself: its dataset, venue, key and table."""
        found: dict[str, Any] = {"dataset": self.name, "venue": series.venue}
        if series.market:
            found["market"] = series.market
        if series.key:
            found["symbol"] = series.key
        if "timeframe" in series.options:
            found["timeframe"] = series.options["timeframe"]
        table = self.table_of(series)
        return found | {
            "table": table.qualified_name,
            # Dagster's own keys: the UI names the table and lists its columns
            "dagster/table_name": table.qualified_name,
            "dagster/column_schema": column_schema(table),
        }

    def retention(self, venue: str) -> dt.timedelta | None:
        """How far back `venue` still serves this dataset (None: its whole history)."""
        return None

    def checks_for(self, venue: str) -> tuple[str, ...]:
        """The checks an asset of this dataset on `venue` carries (`checks`, unless a venue adds some)."""
        return self.checks

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return []

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        """The results of the checks over [start, end) (at least those in `names`: the others are
        dropped); each one's metadata names the window."""
        return []

    def check_results_by_window(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, windows: list[tuple[str, dt.datetime, dt.datetime]],
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> dict[str, list[dg.AssetCheckResult]]:
        """`check_results` of each window (partition key, start, end), by partition key. A dataset
        with many rows a partition answers it in one pass (klines)."""
        return {partition: self.check_results(warehouse, key, series, start, end, bounds, now, names)
                for partition, start, end in windows}

    # --- the audit ---------------------------------------------------------------------------

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        """SQL condition (and its parameters) selecting the series' rows in the table."""
        if self.key_column:
            return f"{self.key_column} = ?", [series.key]
        return "TRUE", []

    def history(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, as_of: dt.date | None = None,
    ) -> pl.DataFrame:
        """The series' rows whose time is in [start, end), in time order, in the table's schema
        (what `History.fetch` reads). `as_of`: the values as known on that day, for a dataset
        that keeps every vintage; ValueError for the others."""
        if as_of is not None:
            raise ValueError(f"as_of: {self.name} keeps no vintages (FRED's macro series do), so it has no as-of read")
        return self.rows_between(warehouse, series, start, end)

    def rows_between(self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """The stored rows of `series` whose time is in [start, end), every column of its table, in
        time order (`marketdata export` writes them as they are)."""
        where, params = self.row_filter(series)
        table, time = self.table_of(series), self.time_column_of(series)
        return warehouse.query(
            f"SELECT {', '.join(table.columns)} FROM {table.qualified_name} WHERE {where} "
            f"AND {time} >= ? AND {time} < ? ORDER BY {time}",
            [*params, *self.time_bounds(series, start, end)],
        ).cast(dict(table.schema))  # type: ignore[arg-type]

    def time_bounds(self, series: Series, start: dt.datetime, end: dt.datetime) -> tuple[Any, Any]:
        """[start, end) in the time column's terms: a day column's days whose midnight is inside."""
        if self.table_of(series).schema[self.time_column_of(series)] != pl.Date:
            return start, end
        from marketdata_assets.timeframes import end_day

        return end_day(start), end_day(end)

    def rows_stored(self, warehouse: Warehouse, series: Series) -> int:
        """How many rows of the series the table holds."""
        where, params = self.row_filter(series)
        return warehouse.query(f"SELECT count(*) FROM {self.table_of(series).qualified_name} WHERE {where}",
                               params).item()

    def missing(
        self, warehouse: Warehouse, series: Series, start: dt.datetime, end: dt.datetime, bounds: Bounds,
        now: dt.datetime,
    ) -> Missing:
        """Rows expected in [start, end), and the missing ones."""
        return Missing()

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        """SELECT series (the asset key as text), rows, first_time, last_time of every stored
        series; only `symbol`'s when given."""
        time = self.time_column
        first, last = f"min({time})", f"max({time})"
        if self.table.schema[time] == pl.Date:
            first, last = f"CAST({first} AS TIMESTAMPTZ)", f"CAST({last} AS TIMESTAMPTZ)"
        counted = f"count(*) AS rows, {first} AS first_time, {last} AS last_time FROM {self.table.qualified_name}"
        if self.key_column is None:
            return (f"SELECT '{self.series_source}/{self.name}' AS series, {counted} "
                    "WHERE CAST(? AS TEXT) IS NULL HAVING count(*) > 0", [symbol])
        key = self.key_column
        return (f"SELECT '{self.series_source}/{self.name}/' || {key} AS series, {counted} "
                f"WHERE (CAST(? AS TEXT) IS NULL OR {key} = ?) GROUP BY {key}", [symbol, symbol])

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{self.title} ({series.describe()}), in {self.table.qualified_name}; monthly UTC partitions "
                f"from {partitions.start:%Y-%m-%d}, the one in progress included.")


class InstrumentDataset(Dataset):
    """A dataset of exchange instruments (catalog `instruments:` entries): one series per
    instrument that keeps it, its rows found by venue and symbol, its key `<venue>_<market>/<name>/<SYMBOL>`."""

    # The market of every instrument whose rows the table keeps without a market column.
    table_market: ClassVar[str] = "perp"

    def series_of(self, catalog: Catalog) -> list[Series]:
        """A series per instrument keeping this dataset; per timeframe where the dataset's
        `instrument_field` lists them (klines: `timeframes`, resampled bars: `derived`)."""
        from marketdata_assets.catalog import Series

        found = []
        for instrument in catalog.instruments:
            if not instrument.has_dataset(self.name) or instrument.start_date is None:
                continue
            if self.instrument_field is None:
                found.append(Series(self.name, instrument.key_prefix, instrument.symbol, instrument.start_date, instrument))
                continue
            found += [Series(self.name, instrument.key_prefix, instrument.symbol, instrument.start_date, instrument,
                             {"timeframe": name}) for name in getattr(instrument, self.instrument_field)]
        return found

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return "venue = ? AND symbol = ?", [series.venue, series.symbol]

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (
            f"SELECT venue || '_{self.table_market}/{self.name}/' || replace(symbol, '-', '_') AS series, "
            f"count(*) AS rows, min({self.time_column}) AS first_time, max({self.time_column}) AS last_time "
            f"FROM {self.table.qualified_name} WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1",
            [symbol, symbol],
        )
