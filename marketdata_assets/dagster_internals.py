"""Every piece of Dagster's private API this project leans on, in one place, so an upgrade has one
file to check. Each is here because the public API lacks it (Dagster 1.13)."""

from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.errors import DagsterHomeNotSetError
from dagster._core.instance.ref import InstanceRef
from dagster._core.loader import LoadingContext
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.event_log.base import AssetRecord
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.utils import make_new_run_id
from dagster._serdes import ConfigurableClassData
from dagster._utils.schedules import is_valid_cron_string

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",  # a range run's tags (the public API has no constant)
    "ASSET_PARTITION_RANGE_START_TAG",
    "AssetCheckEvaluationTargetMaterializationData",  # which materialization a partition's check judged
    "AssetCheckExecutionRecordStatus",  # a check's latest evaluation: planned or evaluated
    "check_partition_statuses",  # each check partition's status as the UI's grid shows it, for many checks at once
    "AssetRecord",  # batch-loading asset records for the report (one query, not 200)
    "DagsterHomeNotSetError",  # no DAGSTER_HOME: said in one line
    "LoadingContext",
    "NOT_FINISHED_STATUSES",  # runs still in flight
    "get_and_update_asset_status_cache_value",  # partition status as the UI computes it
    "is_valid_cron_string",  # MARKETDATA_SCHEDULE_CRON validated at load
    "make_new_run_id",  # a run id known before the run starts, for the progress watcher
    # dagster_storage.py: Dagster's SQLite storage, subclassed to keep its event log open
    "ConfigurableClassData", "DagsterSqliteStorage", "InstanceRef", "SQLITE_BUSY_TIMEOUT_SECONDS",
    "SqliteEventLogStorage", "SqliteRunStorage", "SqliteScheduleStorage",
    "_event_logs_directory", "_runs_directory", "_schedule_directory",
]


def check_partition_statuses(instance, check_keys) -> dict:
    """Each check's partitions by status, as the UI's partition grid of the check shows them
    (Dagster's AssetCheckState: a partition's latest record; a result counts only while it judged
    the partition's latest materialization; a planned one is in progress until its run ends, then
    skipped, or execution failed if the run failed), in two queries for every check instead of
    one each: {check key: {partition: 'passed' | 'failed' | 'in_progress' | 'skipped' |
    'execution_failed'}}."""
    import sqlalchemy as db

    from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus, RunsFilter
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable

    wanted = {(key.asset_key.to_string(), key.name): key for key in check_keys}
    assets = sorted({asset for asset, _ in wanted})
    found: dict = {key: {} for key in check_keys}
    if not assets:
        return found
    checks, events = AssetCheckExecutionsTable, SqlEventLogStorageTable
    newest = (
        db.select(db.func.max(checks.c.id).label("id"))
        .where(checks.c.asset_key.in_(assets), checks.c.evaluation_event_storage_id.isnot(None),
               checks.c.partition.isnot(None))
        .group_by(checks.c.asset_key, checks.c.check_name, checks.c.partition)
        .subquery()
    )
    records = db.select(checks.c.asset_key, checks.c.check_name, checks.c.partition, checks.c.execution_status,
                        checks.c.run_id, checks.c.materialization_event_storage_id) \
        .select_from(checks.join(newest, checks.c.id == newest.c.id))
    materialized = (
        db.select(events.c.asset_key, events.c.partition, db.func.max(events.c.id))
        .where(events.c.asset_key.in_(assets), events.c.dagster_event_type == "ASSET_MATERIALIZATION",
               events.c.partition.isnot(None))
        .group_by(events.c.asset_key, events.c.partition)
    )
    with instance.event_log_storage.index_connection() as conn:
        rows = [row for row in conn.execute(records).fetchall() if (row[0], row[1]) in wanted]
        latest = {(asset, partition): storage_id for asset, partition, storage_id in conn.execute(materialized)}
    planned = {row[4] for row in rows if row[3] == AssetCheckExecutionRecordStatus.PLANNED.value}
    runs = {run.run_id: run.status for run in instance.get_runs(RunsFilter(run_ids=sorted(planned)))} if planned else {}
    for asset, name, partition, status, run_id, target in rows:
        if status == AssetCheckExecutionRecordStatus.PLANNED.value:
            run = runs.get(run_id)
            state = ("in_progress" if run is None or run not in FINISHED_STATUSES
                     else "execution_failed" if run == DagsterRunStatus.FAILURE else "skipped")
        else:
            newest_materialization = latest.get((asset, partition))
            if newest_materialization is not None and newest_materialization != target:
                continue  # a newer materialization: the result judged an older one
            state = "passed" if status == AssetCheckExecutionRecordStatus.SUCCEEDED.value else "failed"
        found[wanted[(asset, name)]][partition] = state
    return found
