"""PostgreSQL warehouse: many readers and writers share one server.

Bulk loads are one transaction per write window. When no stored row shares a key with the
window (a fresh range, the common case of a backfill), the rows are `COPY`ed straight into the
table; otherwise into a temporary staging table, then upserted from it (`INSERT … ON CONFLICT …
DO UPDATE`), about half the speed. Queries take the
same `?` parameters as DuckDB's. Every session runs in UTC.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import polars as pl
import psycopg2
import psycopg2.extensions
import psycopg2.errors
import psycopg2.extras

from marketdata_assets.schemas import TableSpec
from marketdata_assets.settings import redact
from marketdata_assets.warehouse.base import (
    NOT_NULL_COLUMNS,
    Warehouse,
    WarehouseError,
    create_table_sql,
    ddl_statements,
    distinct_keys,
    overlap_probe,
    relaxing_statements,
    revision_sql,
)

# Taken while creating the schema: concurrent CREATE … IF NOT EXISTS can still collide in PostgreSQL.
_DDL_LOCK = 0x6D61726B6574  # "market"


# PostgreSQL type OIDs to polars dtypes, so results are typed the same whether or not rows came back.
_DTYPES: dict[int, pl.DataType] = {
    16: pl.Boolean(),
    20: pl.Int64(), 21: pl.Int64(), 23: pl.Int64(),
    25: pl.String(), 1042: pl.String(), 1043: pl.String(),
    700: pl.Float64(), 701: pl.Float64(), 1700: pl.Float64(),
    1082: pl.Date(),
    1114: pl.Datetime("us"), 1184: pl.Datetime("us", "UTC"),
}


# COPY's binary format per polars dtype: PostgreSQL's type name, and the big-endian numpy type of
# the value (TEXT is handled apart: one value repeated down the batch).
_BINARY: dict[type[pl.DataType], tuple[str, str]] = {
    pl.Float64: ("float8", ">f8"), pl.Int64: ("int8", ">i8"), pl.Int32: ("int4", ">i4"),
    pl.Int16: ("int2", ">i2"), pl.Boolean: ("bool", "u1"), pl.Date: ("date", ">i4"),
    pl.Datetime: ("timestamptz", ">i8"),
}
_PG_EPOCH_DAYS = 10_957  # 2000-01-01, where PostgreSQL's dates and timestamps count from
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension


def binary_copy(frame: pl.DataFrame, pg_types: dict[str, str]) -> bytes | None:
    """`frame` in COPY's binary format, or None where it does not apply (a NULL, a text column
    with more than one value, a column whose type in the table is not the one its dtype maps to):
    the caller sends CSV then. The server parses no text (a third less of its work on klines), and
    every row has the same layout, so the rows are one numpy record array."""
    import numpy as np

    if frame.null_count().sum_horizontal().item():
        return None
    fields: list[tuple[str, str]] = [("count", ">i2")]
    values: dict[str, Any] = {}
    for name, dtype in frame.schema.items():
        column = frame[name]
        if dtype == pl.String:
            if pg_types.get(name) != "text" or column.n_unique() != 1:
                return None
            text = column[0].encode()
            fields += [(f"{name}_len", ">i4"), (name, f"S{len(text)}")]
            values[name] = (len(text), text)
            continue
        kind = _BINARY.get(dtype.base_type())  # type: ignore[call-overload]
        if kind is None or pg_types.get(name) != kind[0]:
            return None
        if dtype == pl.Date:
            data = column.cast(pl.Int32).to_numpy() - _PG_EPOCH_DAYS
        elif isinstance(dtype, pl.Datetime):
            data = column.dt.convert_time_zone("UTC").dt.cast_time_unit("us").cast(pl.Int64).to_numpy() \
                - _PG_EPOCH_DAYS * 86_400_000_000
        else:
            data = column.to_numpy()
        fields += [(f"{name}_len", ">i4"), (name, kind[1])]
        values[name] = (np.dtype(kind[1]).itemsize, data)
    rows = np.empty(frame.height, dtype=fields)
    rows["count"] = frame.width
    for name, (length, data) in values.items():
        rows[f"{name}_len"] = length
        rows[name] = data
    return _BINARY_HEADER + rows.tobytes() + b"\xff\xff"


def _placeholders(sql: str) -> str:
    """`?` parameters to psycopg2's `%s` (a literal `%` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _cause(exc: psycopg2.Error) -> str:
    """The server's message, on one line."""
    return " ".join(str(exc).split())


def _rollback(con: psycopg2.extensions.connection) -> None:
    """End a failed transaction; on a connection already lost there is nothing to end (and its
    error must not hide the one that lost it)."""
    if not con.closed:
        try:
            con.rollback()
        except psycopg2.Error:
            pass


class PostgresWarehouse(Warehouse):
    # Separate transactions of one process write at once; the server serializes only what collides.
    concurrent_writes = 2

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        self._schema_ready = False
        self._ddl = threading.Lock()
        self._types: dict[str, dict[str, str]] = {}

    @property
    def _where(self) -> str:
        return redact(self.url).split("@")[-1]  # host, port and database; a secret query parameter as ***

    @contextmanager
    def connect(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection in UTC with the schema in place; closed afterwards."""
        try:
            con = psycopg2.connect(self._dsn)
        except psycopg2.OperationalError as exc:
            raise WarehouseError(f"PostgreSQL warehouse {self._where}: {str(exc).strip()}") from None
        try:
            with con.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
            con.commit()
            with self._ddl:
                if not self._schema_ready:
                    with con.cursor() as cur:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_LOCK])
                        for statement in ddl_statements("postgres"):
                            cur.execute(statement)
                        cur.execute(NOT_NULL_COLUMNS)
                        for statement in relaxing_statements(cur.fetchall()):
                            cur.execute(statement)
                    con.commit()
                    self._schema_ready = True
            yield con
        finally:
            con.close()

    def _create_table(self, table: TableSpec) -> None:
        with self.connect() as con:
            try:
                with con.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_LOCK])
                    cur.execute(create_table_sql(table))
                con.commit()
            except psycopg2.Error as exc:
                _rollback(con)
                raise WarehouseError(f"PostgreSQL warehouse {self._where}: creating {table.qualified_name} failed: "
                                     f"{_cause(exc)}") from None

    def upsert(self, table: TableSpec, frame: pl.DataFrame) -> int:
        """One transaction; a connection lost on the way (server restart, `pg_terminate_backend`,
        network) writes nothing, and the window is written once more on a new connection."""
        if frame.is_empty():
            return 0
        frame = distinct_keys(table, frame.select(table.columns))
        encoded = binary_copy(frame, self._column_types(table))
        if encoded is not None:
            rows, fmt = io.BytesIO(encoded), "binary"
        else:
            rows, fmt = io.BytesIO(), "csv"
            frame.write_csv(rows, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.6f%:z", null_value="")
            rows.seek(0)
        probe = overlap_probe(table, frame)
        revise = revision_sql(table, "staging", "postgres", frame) if table.keeps_revisions and table.compared_columns \
            else None
        try:
            self._write(table, rows, fmt, probe, revise)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            rows.seek(0)  # the connection was lost, so nothing was written: once more on a new one
            try:
                self._write(table, rows, fmt, probe, revise)
            except psycopg2.Error as exc:
                raise self._write_failed(table, frame.height, exc, " (and again on a new connection)") from None
        except psycopg2.Error as exc:
            raise self._write_failed(table, frame.height, exc) from None
        return frame.height

    def _write_failed(self, table: TableSpec, rows: int, exc: psycopg2.Error, again: str = "") -> WarehouseError:
        return WarehouseError(
            f"PostgreSQL warehouse {self._where}: writing {rows} rows to {table.qualified_name} failed{again}, "
            f"nothing of them written: {_cause(exc)}"
        )

    def _column_types(self, table: TableSpec) -> dict[str, str]:
        """Each column's type name in the server's table (`float8`, `text`, …), asked once."""
        if table.qualified_name not in self._types:
            schema, name = table.qualified_name.split(".")
            found = self.query(
                "SELECT a.attname AS name, t.typname AS type FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE n.nspname = ? AND c.relname = ? AND a.attnum > 0 AND NOT a.attisdropped", [schema, name])
            self._types[table.qualified_name] = dict(found.iter_rows())
        return self._types[table.qualified_name]

    def _write(self, table: TableSpec, rows: io.BytesIO, fmt: str, probe: tuple[str, list[Any]],
               revise: tuple[str, list[Any]] | None = None) -> None:
        columns = ", ".join(table.columns)
        with self.connect() as con:
            try:
                with con.cursor() as cur:
                    cur.execute(_placeholders(probe[0]), probe[1])
                    if cur.fetchone() is None:
                        try:
                            cur.execute("SAVEPOINT fresh")
                            cur.copy_expert(f"COPY {table.qualified_name} ({columns}) FROM STDIN WITH (FORMAT {fmt})", rows)
                            con.commit()
                            return
                        except psycopg2.errors.UniqueViolation:
                            # Another writer stored one of these keys since the probe: upsert instead.
                            cur.execute("ROLLBACK TO SAVEPOINT fresh")
                            rows.seek(0)
                    cur.execute(
                        f"CREATE TEMPORARY TABLE staging (LIKE {table.qualified_name} INCLUDING DEFAULTS) ON COMMIT DROP"
                    )
                    cur.copy_expert(f"COPY staging ({columns}) FROM STDIN WITH (FORMAT {fmt})", rows)
                    if revise is not None:  # the values this upsert replaces, kept
                        cur.execute("ANALYZE staging")  # else the planner guesses its size, and nests loops
                        cur.execute(_placeholders(revise[0]), revise[1])
                    cur.execute(
                        f"INSERT INTO {table.qualified_name} ({columns}) SELECT {columns} FROM staging "
                        f"{table.on_conflict_update}"
                    )
                con.commit()
            except psycopg2.Error:
                _rollback(con)
                raise

    def _read(self, con: psycopg2.extensions.connection, sql: str, params: list[Any]) -> pl.DataFrame:
        try:
            with con.cursor() as cur:
                cur.execute(_placeholders(sql), params)
                schema = {column.name: _DTYPES.get(column.type_code, pl.Object()) for column in cur.description}
                rows = cur.fetchall()
            con.rollback()  # reads only: end the transaction
        except psycopg2.Error as exc:
            _rollback(con)
            raise WarehouseError(f"PostgreSQL warehouse {self._where}: query failed: {_cause(exc)}") from None
        return pl.DataFrame(rows, schema=schema, orient="row")


@contextmanager
def temporary_database(server: str, prefix: str) -> Iterator[str]:
    """A new database on `server` (`postgresql://user@host:port`), dropped when the block ends;
    its URL. For tests and benchmarks."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server + "/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{server}/{name}"
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
