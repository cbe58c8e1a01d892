"""The warehouse interface and the URL that picks a backend."""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from marketdata_assets.schemas import TableSpec


class WarehouseError(RuntimeError):
    """The warehouse cannot be opened or written; the message names the URL and the cause."""


def ddl_statements(dialect: str) -> list[str]:
    """Every statement of sql/*.sql, in file order (the same DDL serves DuckDB and PostgreSQL),
    then those of sql/<dialect>/*.sql (what the two write differently: functions)."""
    root = resources.files("marketdata_assets").joinpath("sql")
    if not root.is_dir():  # running from a checkout: sql/ sits beside the package
        root = Path(__file__).resolve().parents[2] / "sql"
    statements = []
    for folder in (root, root.joinpath(dialect)):
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".sql"):
                continue
            text = "\n".join(
                line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
            )
            statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


# Columns that became nullable after tables were made with them NOT NULL: klines' trade counts and
# taker volumes (OKX and Bybit send none). Altered only where still NOT NULL (an ALTER locks the
# table), on the warehouse's first connection of a process, after the DDL.
RELAXED_COLUMNS = {"klines": ("trades", "taker_buy_volume", "taker_buy_quote_volume")}
NOT_NULL_COLUMNS = (
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'market_data' "
    "AND is_nullable = 'NO'"
)


_SQL_TYPES = {pl.Float64: "DOUBLE PRECISION", pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.String: "TEXT",
              pl.Date: "DATE", pl.Boolean: "BOOLEAN", pl.Datetime: "TIMESTAMPTZ"}


def create_table_sql(table: TableSpec) -> str:
    """CREATE TABLE IF NOT EXISTS for a table declared at run time (a catalog transform's), in
    the SQL both warehouses read; the primary key's columns NOT NULL."""
    columns = [f"{name} {_SQL_TYPES[dtype.base_type()]}{' NOT NULL' if name in table.primary_key else ''}"
               for name, dtype in table.schema.items()]
    return (f"CREATE TABLE IF NOT EXISTS {table.qualified_name} ({', '.join(columns)}, "
            f"PRIMARY KEY ({', '.join(table.primary_key)}))")


# The Dagster run whose writes this process makes now (the asset body sets it), for revisions.
_RUN: dict[str, str | None] = {"id": None}


def set_run(run_id: str | None) -> None:
    """Name the run the following upserts belong to (a process runs one step at a time)."""
    _RUN["id"] = run_id


def revision_sql(table: TableSpec, incoming: str, dialect: str, frame: pl.DataFrame) -> tuple[str, list[Any]]:
    """INSERT into market_data.revisions of the stored rows of `table` whose values the rows of
    `incoming` (`frame`, staged as a relation in its columns) change; run inside the upsert's
    transaction, before it. A NULL in a `kept_when_null` column changes nothing (the upsert keeps
    the value). The stored side is narrowed as the overlap probe narrows it (the frame's time
    range, and the key parts it holds one value of), so a month re-written reads a month."""
    json_object = "json_object" if dialect == "duckdb" else "json_build_object"
    key, time = table.primary_key[:-1], table.primary_key[-1]

    def pairs(columns: list[str] | tuple[str, ...]) -> str:
        return ", ".join(f"'{c}', t.{c}" for c in columns)

    changed = " OR ".join(
        (f"(i.{c} IS NOT NULL AND i.{c} IS DISTINCT FROM t.{c})" if c in table.kept_when_null
         else f"i.{c} IS DISTINCT FROM t.{c}") for c in table.compared_columns)
    series = f"concat_ws('/', {', '.join(f'CAST(t.{c} AS TEXT)' for c in key)})" if key else "''"
    narrowed, params = overlap_conditions(table, frame, "t")
    return (
        f"INSERT INTO market_data.revisions (table_name, series, row_time, row_key, old_values, replaced_at, run_id) "
        f"SELECT '{table.name}', {series}, CAST(t.{time} AS TIMESTAMPTZ), "
        f"CAST({json_object}({pairs(table.primary_key)}) AS TEXT), "
        f"CAST({json_object}({pairs(table.compared_columns)}) AS TEXT), now(), ? "
        f"FROM {table.qualified_name} t JOIN {incoming} i ON "
        + " AND ".join(f"t.{c} = i.{c}" for c in table.primary_key)
        + f" WHERE {narrowed} AND ({changed}) ON CONFLICT DO NOTHING",
        [_RUN["id"], *params],
    )


def relaxing_statements(not_null: list[tuple[str, str]]) -> list[str]:
    """The ALTERs that make RELAXED_COLUMNS nullable, given the (table, column) still NOT NULL."""
    return [f"ALTER TABLE market_data.{table} ALTER COLUMN {column} DROP NOT NULL"
            for table, column in not_null if column in RELAXED_COLUMNS.get(table, ())]


def distinct_keys(table: TableSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with one row per primary key, the last one winning (a later page overrides)."""
    time_column = table.primary_key[-1]
    if frame[time_column].n_unique() == frame.height and all(
        frame[column].n_unique() == 1 for column in table.primary_key[:-1]
    ):
        return frame  # the common case, one series with distinct times: skip the costly unique
    return frame.unique(subset=list(table.primary_key), keep="last", maintain_order=True)


def overlap_conditions(table: TableSpec, frame: pl.DataFrame, alias: str = "") -> tuple[str, list[Any]]:
    """SQL narrowing `table` (as `alias`, if given) to where `frame`'s keys may be: a range on the
    time column (DuckDB skips row groups by their min/max, PostgreSQL walks the key's index) and
    equality on the key parts `frame` holds one value of. With `?` parameters."""
    time_column, prefix = table.primary_key[-1], f"{alias}." if alias else ""
    conditions = [f"{prefix}{time_column} BETWEEN ? AND ?"]
    params: list[Any] = [frame[time_column].min(), frame[time_column].max()]
    for column in table.primary_key[:-1]:
        values = frame[column].unique()
        if len(values) == 1:
            conditions.append(f"{prefix}{column} = ?")
            params.append(values[0])
    return " AND ".join(conditions), params


def overlap_probe(table: TableSpec, frame: pl.DataFrame) -> tuple[str, list[Any]]:
    """A query returning a row if the table may hold a key of `frame` (overlap_conditions)."""
    where, params = overlap_conditions(table, frame)
    return f"SELECT 1 FROM {table.qualified_name} WHERE {where} LIMIT 1", params


class Warehouse(abc.ABC):
    """Upserts canonical frames by primary key, one transaction per call; reads with SQL."""

    url: str
    concurrent_writes: int = 1  # upserts of disjoint keys one process may run at once

    def __init__(self) -> None:
        self._sessions = threading.local()
        self._ensured: set[str] = set()  # tables ensure_table made sure of

    @abc.abstractmethod
    def connect(self) -> AbstractContextManager[Any]:
        """An open connection with the schema in place, closed when the block ends."""

    @abc.abstractmethod
    def _read(self, con: Any, sql: str, params: list[Any]) -> pl.DataFrame:
        """Run a read-only query with `?` parameters on `con`."""

    @abc.abstractmethod
    def upsert(self, table: TableSpec, frame: pl.DataFrame) -> int:
        """Insert or update `frame`'s rows by `table`'s primary key in one transaction.

        Returns the number of distinct keys written. Rows already stored and absent from
        `frame` stay as they are.
        """

    def ensure_table(self, table: TableSpec) -> None:
        """Create `table` if it does not exist (a table declared at run time; the others are in
        sql/), once per warehouse object."""
        if table.qualified_name not in self._ensured:
            self._create_table(table)
            self._ensured.add(table.qualified_name)

    @abc.abstractmethod
    def _create_table(self, table: TableSpec) -> None:
        """CREATE TABLE IF NOT EXISTS `table` (create_table_sql)."""

    def query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> pl.DataFrame:
        """Run a read-only query with `?` parameters."""
        con = getattr(self._sessions, "con", None)
        if con is not None:
            return self._read(con, sql, list(params))
        with self.connect() as con:
            return self._read(con, sql, list(params))

    def kept_open(self) -> AbstractContextManager[None]:
        """Inside the block the warehouse may keep what it opened open between operations (a
        run's asset asks it half a dozen questions in a second); other processes still get
        their turn. Only DuckDB's file costs enough to open for this to matter."""
        return nullcontext()

    @contextmanager
    def session(self) -> Iterator[None]:
        """Queries of this thread inside the block share one connection: opening one costs
        ~30 ms, and an audit asks a dozen questions at once."""
        if getattr(self._sessions, "con", None) is not None:
            yield  # already inside one
            return
        with self.connect() as con:
            self._sessions.con = con
            try:
                yield
            finally:
                self._sessions.con = None


def open_warehouse(url: str) -> Warehouse:
    """The warehouse at `url`: `duckdb:///relative.duckdb`, `duckdb:////absolute.duckdb`, or
    `postgresql://user[:password]@host[:port]/database`."""
    if url.startswith("duckdb:///"):
        from marketdata_assets.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(Path(url.removeprefix("duckdb:///")), url=url)
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
        from marketdata_assets.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(url)
    from marketdata_assets.settings import redact

    raise WarehouseError(
        f"MARKETDATA_WAREHOUSE_URL={redact(url)!r} is not a warehouse URL "
        "(duckdb:///path.duckdb or postgresql://user@host/db)"
    )
