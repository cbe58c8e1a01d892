"""DuckDB warehouse: one embedded file, one writer process at a time.

DuckDB locks the whole file for the process that opens it: another process cannot even read it
meanwhile. So a process holds the file only while it is using it, and waits with backoff while
another process holds it: concurrent runs queue instead of failing.

Opening the file costs ~20 ms and closing it checkpoints the write-ahead log (up to ~250 ms), and
an asset of a run asks the warehouse half a dozen times. Inside `kept_open()` (a run's asset) the
first operation opens the file and the database instance stays open while operations follow
(each then connects to it in ~0.1 ms), across the run's next assets too; it is closed at the
first moment no operation uses it once it has been open `HOLD_SECONDS`, and the process then
lets `COURTESY_SECONDS` pass before opening it again: another process waiting for the file
(trying every `POLL_SECONDS` at most) gets it at least that often. Outside, every operation
opens and closes the file.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from marketdata_assets.schemas import TableSpec
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

_LOCK_MARKERS = ("Could not set lock on file", "Conflicting lock is held")

HOLD_SECONDS = 1.0
COURTESY_SECONDS = 0.05
POLL_SECONDS = 0.02


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
        self._kept = _kept_open(path)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An open connection with the schema in place; waits while another process holds the file.
        Inside a session of this thread, the session's (a check that stores what it learned
        writes from inside one: waiting for a connection of its own could wait on itself)."""
        session = getattr(self._sessions, "con", None)
        if session is not None:
            yield session
            return
        with self._local, self._kept.using(self._lock_timeout_s):
            con = duckdb.connect(str(self.path))  # to the instance the keeper holds open meanwhile
            try:
                con.execute("SET TimeZone = 'UTC'")
                with self._ddl:
                    if not self._schema_ready:
                        for statement in ddl_statements("duckdb"):
                            con.execute(statement)
                        for statement in relaxing_statements(con.execute(NOT_NULL_COLUMNS).fetchall()):
                            con.execute(statement)
                        self._schema_ready = True
                yield con
            finally:
                with contextlib.suppress(duckdb.Error):  # invalidated by an error already raised
                    con.close()

    def kept_open(self) -> AbstractContextManager[None]:
        return self._kept.kept()

    def _create_table(self, table: TableSpec) -> None:
        with self.connect() as con:
            con.execute(create_table_sql(table))

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
                    if table.keeps_revisions and table.compared_columns:
                        con.execute(*revision_sql(table, "incoming", "duckdb", frame))  # the values replaced, kept
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


_KEPT: dict[Path, _KeptOpen] = {}
_KEPT_LOCK = threading.Lock()


def _kept_open(path: Path) -> _KeptOpen:
    """The one keeper of `path`'s instance in this process (every warehouse object of the file shares it)."""
    with _KEPT_LOCK:
        key = path.resolve()
        if key not in _KEPT:
            _KEPT[key] = _KeptOpen(path)
        return _KEPT[key]


class _KeptOpen:
    """The database instance of one file in this process. Inside `kept()` a connection of our
    own keeps it open from the first operation on, until no operation uses it and it has been
    open `HOLD_SECONDS` (a reaper thread closes it then if nothing else does); outside, it is
    closed when the last operation ends.

    Only this connection opens and closes the instance, one thread at a time (under `_state`),
    and never while an operation's connection is open. DuckDB tears an instance down when its
    last connection closes, and a connect racing that teardown got an instance half gone
    ("Table Function with name python_arrow_scan does not exist!" on the next register)."""

    def __init__(self, path: Path):
        self.path = path
        self._state = threading.Condition()
        self._anchor: duckdb.DuckDBPyConnection | None = None
        self._users = self._keeping = 0
        self._opened = self._closed_at = 0.0
        self._lingers = False  # opened inside kept(): stays until HOLD_SECONDS even after it ends
        self._reaper: threading.Thread | None = None

    @contextmanager
    def kept(self) -> Iterator[None]:
        with self._state:
            self._keeping += 1
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name=f"duckdb-release {self.path.name}", daemon=True)
                self._reaper.start()
                atexit.register(self.close_if_unused)
        try:
            yield
        finally:
            with self._state:
                self._keeping -= 1
                self._close_if_due()

    @contextmanager
    def using(self, lock_timeout_s: float) -> Iterator[None]:
        with self._state:
            self._users += 1
        try:
            self._ensure_open(lock_timeout_s)
            yield
        finally:
            with self._state:
                self._users -= 1
                self._close_if_due()

    def _close_if_due(self) -> None:  # with self._state held
        """Closed when unused, unless it was opened inside kept() less than HOLD_SECONDS ago (the
        next asset of a run comes within milliseconds): then the reaper closes it at that time."""
        if self._anchor is None or self._users:
            return
        if not self._lingers or time.monotonic() - self._opened >= HOLD_SECONDS:
            self._close()
        else:
            self._state.notify_all()

    def close_if_unused(self) -> None:
        with self._state:
            if self._anchor is not None and not self._users:
                self._close()

    def _ensure_open(self, lock_timeout_s: float) -> None:
        with self._state:
            if self._anchor is not None:
                return
            courtesy = self._closed_at + COURTESY_SECONDS - time.monotonic()
        if courtesy > 0 and self._keeping:
            time.sleep(courtesy)
        with self._state:
            if self._anchor is None:  # or another thread opened it meanwhile
                self._anchor = self._open(lock_timeout_s)
                self._opened = time.monotonic()
                self._lingers = self._keeping > 0

    def _open(self, lock_timeout_s: float) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + lock_timeout_s
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if not any(marker in str(exc) for marker in _LOCK_MARKERS):
                    raise WarehouseError(f"DuckDB file {self.path}: {exc}") from None
                if time.monotonic() > deadline:
                    raise WarehouseError(
                        f"DuckDB file {self.path} stayed locked by another process for "
                        f"{lock_timeout_s:.0f} s: {exc}"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, POLL_SECONDS)

    def _reap(self) -> None:
        with self._state:
            while True:
                if self._anchor is None or self._users:
                    self._state.wait()
                    continue
                left = self._opened + HOLD_SECONDS - time.monotonic()
                if left <= 0:
                    self._close()
                else:
                    self._state.wait(left)

    def _close(self) -> None:  # with self._state held
        anchor, self._anchor = self._anchor, None
        self._closed_at = time.monotonic()
        with contextlib.suppress(duckdb.Error):
            anchor.close()
