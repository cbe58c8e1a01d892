"""User transforms: a catalog entry names a function `module:function` (a polars frame in, a frame
out) that makes a table of its own from another series' rows, as an asset downstream of that
series (`user/transform/<name>`, in market_data.transform_<name>).

    series:
      - source: user
        dataset: transform
        keys: [btc_1h_returns]                 # one name an entry: the asset's and the table's
        function: my_features:log_returns      # importable where the code location runs
        input: binance_spot/klines_1h/BTCUSDT  # an asset key the catalog keeps
        columns: {open_time: datetime, log_return: float}   # float, int, text, bool, date, datetime
        time_column: open_time                 # (unless only one column is a date or datetime)
        primary_key: [open_time]               # (the time column unless given)

The asset has the input's partitions: a partition hands the function the input's rows of the
same window (as `History.fetch` gives them, without `ts`) and stores the declared columns of what
it returns, the rows of the window only. A function that raises, returns something else than a
frame, or a declared column missing or of another type fails the asset naming the function and
the column, and nothing is stored. Columns it returns beyond the declared ones are left out. The
daily schedule re-runs a month whenever the input's month was materialized after it.

Check `transform_columns`: no declared column of the window holds a NULL or a NaN (WARN, the
count of each in the metadata).
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.catalog import Catalog, Series
from marketdata_assets.datasets.base import Bounds, Dataset
from marketdata_assets.defs.quality.checks import window_text
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.protocol import SourceOutcome
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

TYPES: dict[str, pl.DataType] = {"float": pl.Float64(), "int": pl.Int64(), "text": pl.String(), "bool": pl.Boolean(),
                                 "date": pl.Date(), "datetime": UTC_TIME}
OPTIONS = ("function", "input", "columns", "time_column", "primary_key")
COLUMNS_CHECK = "transform_columns"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
_COLUMN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = ("source", "ingested_at")


class TransformError(Exception):
    """A transform's function failed or returned something else than it declared: one line."""


def load_function(text: str) -> Callable[[pl.DataFrame], Any]:
    """The function `module:function` names; ValueError saying why it cannot be had."""
    module, sep, name = str(text).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"function: {text!r} is not module:function (for example my_features:log_returns)")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"function: cannot import module {module!r} ({exc})") from None
    except AttributeError:
        raise ValueError(f"function: module {module!r} has no {name!r}") from None
    if not callable(found):
        raise ValueError(f"function: {text} is not callable")
    return found


@dataclass(frozen=True)
class Declared:
    """What a transform entry declares: its function, input, table and time column."""

    function: str
    input: str
    table: TableSpec
    time_column: str
    columns: dict[str, pl.DataType]


def declared(key: str, options: Mapping[str, Any]) -> Declared:
    """The declaration of the transform `key` from its entry's options (validated: ValueError
    naming the field)."""
    columns = options.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError(f"columns: name each column and its type ({', '.join(TYPES)}), e.g. {{open_time: datetime, "
                         "log_return: float}")
    types = {}
    for name, kind in columns.items():
        if not isinstance(name, str) or not _COLUMN.fullmatch(name) or name in _RESERVED:
            raise ValueError(f"columns: {name!r} is not a column name a table can have (lower case, digits and _; "
                             f"not {' or '.join(_RESERVED)})")
        if kind not in TYPES:
            raise ValueError(f"columns: {name}: type {kind!r} is not one of {', '.join(TYPES)}")
        types[name] = TYPES[kind]
    timed = [name for name, dtype in types.items() if dtype in (pl.Date(), UTC_TIME)]
    time_column = options.get("time_column") or (timed[0] if len(timed) == 1 else None)
    if time_column is None:
        raise ValueError(f"time_column: name the column of the row's time (one of the date or datetime columns: "
                         f"{', '.join(timed) or 'none declared'})")
    if time_column not in timed:
        raise ValueError(f"time_column: {time_column!r} is not a declared date or datetime column")
    primary = list(options.get("primary_key") or [time_column])
    for name in primary:
        if name not in types:
            raise ValueError(f"primary_key: {name!r} is not a declared column")
    if time_column not in primary:
        raise ValueError(f"primary_key: must hold the time column {time_column!r}")
    primary = [name for name in primary if name != time_column] + [time_column]  # the time column last
    schema = pl.Schema({**types, "source": pl.String(), "ingested_at": UTC_TIME})
    return Declared(str(options.get("function")), str(options.get("input")),
                    TableSpec(f"transform_{key}", schema, tuple(primary)), time_column, types)


class TransformSource:
    """One window of a transform: the input's rows of the window through the function."""

    def __init__(self, warehouse: Warehouse, declaration: Declared, reading: tuple[Dataset, Series]):
        self._warehouse = warehouse
        self._declared = declaration
        self._input = reading
        self._rows = 0
        self._dropped: set[str] = set()

    async def __aenter__(self) -> TransformSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def outcome(self) -> SourceOutcome:
        return SourceOutcome(rows_by_source={"transform": self._rows},
                             metadata={"function": self._declared.function,
                                       "columns_left_out": ", ".join(sorted(self._dropped))})

    async def read(self, series: Series, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        given = self._input[0].history(self._warehouse, self._input[1], start, end)
        frame = self.transformed(given)
        time = pl.col(self._declared.time_column)
        lower, upper = (start.date(), end.date()) if self._declared.columns[self._declared.time_column] == pl.Date() \
            else (start, end)
        frame = frame.filter((time >= lower) & (time < upper)).with_columns(
            pl.lit("transform").alias("source"), pl.lit(dt.datetime.now(dt.UTC)).alias("ingested_at"))
        self._rows += frame.height
        yield frame.cast(dict(self._declared.table.schema))  # type: ignore[arg-type]

    def transformed(self, given: pl.DataFrame) -> pl.DataFrame:
        """The function's answer for `given`, its declared columns only; TransformError naming the
        function and the column when it is not what was declared."""
        name = self._declared.function
        function = load_function(name)
        try:
            answer = function(given)
        except Exception as exc:
            raise TransformError(f"transform {name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(answer, pl.LazyFrame):
            answer = answer.collect()
        if not isinstance(answer, pl.DataFrame):
            raise TransformError(f"transform {name} returned a {type(answer).__name__}, not a polars DataFrame")
        for column, dtype in self._declared.columns.items():
            if column not in answer.columns:
                raise TransformError(f"transform {name} returned no column {column!r} (declared {dtype})")
            found = answer.schema[column]
            if dtype == UTC_TIME and isinstance(found, pl.Datetime):
                if found.time_zone is None:
                    raise TransformError(f"transform {name}: column {column!r} is a datetime without a time zone, "
                                         "declared datetime (UTC)")
                answer = answer.with_columns(pl.col(column).dt.convert_time_zone("UTC").cast(UTC_TIME))
            elif found != dtype:
                raise TransformError(f"transform {name}: column {column!r} is {found}, declared {dtype}")
        for column in self._declared.table.primary_key:
            nulls = answer[column].null_count()
            if nulls:
                raise TransformError(f"transform {name}: column {column!r} of the primary key holds "
                                     f"{counted(nulls, 'null')}")
        self._dropped |= set(answer.columns) - set(self._declared.columns)
        return answer.select(list(self._declared.columns))


class Transform(Dataset):
    name = "transform"
    table = TableSpec("transform", pl.Schema({"time": UTC_TIME}), ("time",))  # each series' own: table_of
    time_column = "time"
    unit = "rows"
    title = "A user transform of another series"
    position = 90
    cron = "50 0 * * *"  # after the others' daily runs
    checks = (COLUMNS_CHECK,)
    series_source = "user"
    keys = "required"
    # asset key (text) -> the dataset and series it reads, as the last catalog loaded says
    _inputs: dict[str, tuple[Dataset, Series]] = {}
    _input_names: dict[str, str] = {}  # asset key (text) -> the input it names

    def validate_entry(self, keys: tuple[str, ...], options: Mapping[str, Any]) -> None:
        if len(keys) != 1:
            raise ValueError("keys: a transform entry names one transform (its asset and table): give one key")
        if not _NAME.fullmatch(keys[0]):
            raise ValueError(f"keys: {keys[0]!r} is not a table name (lower case, digits and _, up to 41)")
        for name in options:
            if name not in OPTIONS:
                raise ValueError(f"{name}: not an option of transform (options: {', '.join(OPTIONS)})")
        for name in ("function", "input"):
            if not options.get(name):
                raise ValueError(f"{name}: is required")
        load_function(options["function"])
        declared(keys[0], options)

    def series_of(self, catalog: Catalog) -> list[Series]:
        found = super().series_of(catalog)
        if not found:
            return found
        from marketdata_assets.datasets import all_datasets

        kept = {each.asset_key(series).to_user_string(): (each, series)
                for each in all_datasets() if each is not self for series in each.series_of(catalog)}
        for series in found:
            reads = str(series.options["input"])
            self._input_names[self.asset_key(series).to_user_string()] = reads
            if reads in kept:  # (one the catalog lacks: the catalog names it, reading input_keys)
                self._inputs[self.asset_key(series).to_user_string()] = kept[reads]
        return found

    def _reading(self, series: Series) -> tuple[Dataset, Series]:
        return self._inputs[self.asset_key(series).to_user_string()]

    def table_of(self, series: Series) -> TableSpec:
        return declared(str(series.key), series.options).table

    def time_column_of(self, series: Series) -> str:
        return declared(str(series.key), series.options).time_column

    def row_filter(self, series: Series) -> tuple[str, list[Any]]:
        return "TRUE", []  # a table of its own

    def partitions(self, series: Series) -> dg.TimeWindowPartitionsDefinition:
        reads, read_series = self._reading(series)
        return reads.partitions(read_series)  # the input's: a partition reads the same window

    def input_keys(self, key: dg.AssetKey) -> list[dg.AssetKey]:
        return [dg.AssetKey.from_user_string(self._input_names[key.to_user_string()])]

    def asset_metadata(self, series: Series) -> dict[str, Any]:
        return super().asset_metadata(series) | {"function": str(series.options["function"]),
                                                 "input": str(series.options["input"])}

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{series.options['function']} of {series.options['input']}, in "
                f"{self.table_of(series).qualified_name}: a partition reads the same window of the input.")

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> TransformSource:
        declaration = declared(str(series.key), series.options)
        warehouse.ensure_table(declaration.table)
        return TransformSource(warehouse, declaration, self._reading(series))

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        # each transform's table is its own (the catalog names them): `marketdata export` reads them
        return ("SELECT CAST(NULL AS TEXT) AS series, CAST(0 AS BIGINT) AS rows, CAST(NULL AS TIMESTAMPTZ) AS "
                "first_time, CAST(NULL AS TIMESTAMPTZ) AS last_time WHERE CAST(? AS TEXT) IS NULL AND 1 = 0", [symbol])

    def check_specs(self, key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        return [dg.AssetCheckSpec(COLUMNS_CHECK, asset=key, description=(
            "No declared column of the window holds a NULL or a NaN (WARN: the count of each in the metadata)."))]

    def check_results(
        self, warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
        bounds: Bounds, now: dt.datetime, names: set[str],
    ) -> list[dg.AssetCheckResult]:
        declaration = declared(str(series.key), series.options)
        warehouse.ensure_table(declaration.table)
        rows = self.history(warehouse, series, start, end)
        empty = {column: rows[column].null_count() + (rows[column].is_nan().sum() if dtype == pl.Float64() else 0)
                 for column, dtype in declaration.columns.items()}
        bad = {column: count for column, count in empty.items() if count}
        said = f"{counted(rows.height, 'row')}; " + (
            ", ".join(f"{column}: {counted(count, 'NULL or NaN', 'NULLs or NaNs')}" for column, count in bad.items())
            if bad else "no declared column holds a NULL or a NaN")
        return [dg.AssetCheckResult(
            asset_key=key, check_name=COLUMNS_CHECK, passed=not bad, severity=dg.AssetCheckSeverity.WARN,
            description=said,
            metadata={"window": dg.MetadataValue.text(window_text(start, end)), "rows": rows.height,
                      **{f"empty_{column}": count for column, count in empty.items()}},
        )]


DATASET = Transform()
