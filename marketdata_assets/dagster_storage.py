"""Dagster's SQLite event log, kept open: the instance class `dagster_instance.yaml` names.

Dagster's own `SqliteEventLogStorage` builds a SQLAlchemy engine, opens the shard's file, writes
and closes it again for every event. Closing the last connection of a WAL database checkpoints
it and deletes its write-ahead log, so each event cost a range run about 10 ms: 216 check
results on the six-year target took 2.3 s, a 2,100-asset seed minutes. This class is the same
storage, the same files and tables (an instance can switch to it and back), with one engine per
shard kept open for the few shards a process is writing (its run's and the index), and WAL's
`synchronous=NORMAL`: a commit is durable against a crash of the process; a power cut may forget
the last events, never corrupt the file, and the warehouse commits its rows before Dagster hears
of them, so what is lost is at worst re-fetched.

`Instance` is Dagster's own instance with this storage as its default under the home it is
opened from (`DAGSTER_HOME`, or the directory given to `DagsterInstance.from_config`), exactly
where Dagster's default SQLite storage lives. A dagster.yaml naming another storage (the
PostgreSQL one in docker/) overrides it as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from dagster import DagsterInstance
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from marketdata_assets.dagster_internals import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    DagsterSqliteStorage,
    InstanceRef,
    SqliteRunStorage,
    SqliteScheduleStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from marketdata_assets.dagster_internals import SqliteEventLogStorage as DagsterSqliteEventLogStorage

# Shards a process keeps open: a run writes its own and the index; the webserver reads many
# runs' in turn, and the least recently used are closed past this many.
OPEN_SHARDS = 8


class SqliteEventLogStorage(DagsterSqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data: Any = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> SqliteEventLogStorage:  # type: ignore[override]
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                pool_size=1, max_overflow=2,  # Dagster holds _db_lock around every use
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            event.listen(engine, "connect", _normal_sync)
            while len(self._engines) >= OPEN_SHARDS:
                _, oldest = self._engines.popitem(last=False)
                oldest.dispose()
        self._engines[shard] = engine
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Whether the index shard holds `table_name`. Dagster asks before storing every asset
        check result (a fresh engine opening the file each time: 6% of a long run); a table once
        there stays, so a yes is remembered. Called inside `_connect`, so it takes no lock."""
        if table_name in self._tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables.add(table_name)
        return found

    def dispose(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()


def _normal_sync(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class SqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, events, schedules under one base directory) with the
    event log above."""

    def __init__(self, base_dir: str, inst_data: Any = None):
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = SqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> SqliteStorage:  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData:
        return ConfigurableClassData(
            __name__, SqliteEventLogStorage.__name__,
            yaml.dump({"base_dir": _event_logs_directory(self.base_dir)}, default_flow_style=False),
        )


class Instance(DagsterInstance):
    """Dagster's instance; where dagster.yaml names no storage, `SqliteStorage` under its home."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> dict[str, Any]:
        return {
            **InstanceRef.config_defaults(base_dir),
            "storage": ConfigurableClassData(__name__, SqliteStorage.__name__,
                                             yaml.dump({"base_dir": base_dir}, default_flow_style=False)),
        }
