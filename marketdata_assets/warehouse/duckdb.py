"""DuckDB warehouse: one embedded file, one writer process at a time.

DuckDB locks the whole file for the process that opens it: another process cannot even read it
meanwhile. So every operation opens the file, does one transaction and closes it, and waits with
backoff while another process holds the lock. Concurrent runs queue instead of failing.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from marketdata_assets.schemas import TableSpec
from marketdata_assets.warehouse.base import Warehouse, WarehouseError, ddl_statements, distinct_keys, overlap_probe

_LOCK_MARKERS = ("Could not set lock on file", "Conflicting lock is held")
# DuckDB keeps one database instance per file in a process and tears it down when its last
# connection closes. A connect racing that teardown in another thread can get an instance half
# gone ("Table Function with name python_arrow_scan does not exist!" on the next register), so
# opening and closing connections take turns within the process.
_OPEN_CLOSE = threading.Lock()


class DuckDBWarehouse(Warehouse):
    # Two transactions of one process append to the same database at once (DuckDB shares one
    # instance per file within a process): ~1.3x the rows per second of one, as index upkeep
    # dominates a write and runs on one core per transaction.
    concurrent_writes = 2

    def __init__(self, path: Path, *, url: str | None = None, lock_timeout_s: float = 900.0):
        if path.stem == "market_data":
            # DuckDB names the catalog after the file: it would shadow schema market_data.
            raise WarehouseError(
                f"DuckDB file {path}: a file named market_data.* makes `market_data.klines` "
                "ambiguous in DuckDB; choose another name"
            )
        super().__init__()
        self.path = path
        self.url = url or f"duckdb:///{path}"
        self._lock_timeout_s = lock_timeout_s
        self._schema_ready = False
        self._local = threading.BoundedSemaphore(self.concurrent_writes)
        self._ddl = threading.Lock()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An open connection with the schema in place; waits while another process holds the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._lock_timeout_s
        delay = 0.01
        with self._local:
            while True:
                try:
                    with _OPEN_CLOSE:
                        con = duckdb.connect(str(self.path))
                    break
                except duckdb.IOException as exc:
                    if not any(marker in str(exc) for marker in _LOCK_MARKERS):
                        raise WarehouseError(f"DuckDB file {self.path}: {exc}") from None
                    if time.monotonic() > deadline:
                        raise WarehouseError(
                            f"DuckDB file {self.path} stayed locked by another process for "
                            f"{self._lock_timeout_s:.0f} s: {exc}"
                        ) from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.5)
            try:
                con.execute("SET TimeZone = 'UTC'")
                with self._ddl:
                    if not self._schema_ready:
                        for statement in ddl_statements():
                            con.execute(statement)
                        self._schema_ready = True
                yield con
            finally:
                with _OPEN_CLOSE, contextlib.suppress(duckdb.Error):  # invalidated by an error already raised
                    con.close()

    def upsert(self, table: TableSpec, frame: pl.DataFrame) -> int:
        if frame.is_empty():
            return 0
        frame = distinct_keys(table, frame.select(table.columns))
        columns = ", ".join(table.columns)
        insert = f"INSERT INTO {table.qualified_name} ({columns}) SELECT {columns} FROM incoming"
        with self.connect() as con:
            con.register("incoming", frame.to_arrow())
            con.execute("BEGIN TRANSACTION")
            try:
                if self._holds_any_key(con, table, frame):
                    con.execute(f"{insert} {table.on_conflict_update}")
                else:
                    # No stored row shares a key: a plain insert, twice as fast as ON CONFLICT.
                    con.execute(insert)
                con.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(duckdb.Error):  # a failed write (a full disk) may have ended it already
                    con.execute("ROLLBACK")
                if isinstance(exc, (duckdb.IOException, duckdb.FatalException)):  # the disk, not the rows
                    raise WarehouseError(
                        f"DuckDB file {self.path}: writing {frame.height} rows to {table.qualified_name} failed, "
                        f"nothing of them written: {' '.join(str(exc).split())}"
                    ) from None
                raise
            finally:
                with contextlib.suppress(duckdb.Error):  # invalidated by the failure above, the one to tell
                    con.unregister("incoming")
        return frame.height

    @staticmethod
    def _holds_any_key(con: duckdb.DuckDBPyConnection, table: TableSpec, frame: pl.DataFrame) -> bool:
        return con.execute(*overlap_probe(table, frame)).fetchone() is not None

    def _read(self, con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pl.DataFrame:
        return con.sql(sql, params=params).pl()
