"""Every piece of Dagster's private API this project leans on, in one place, so an upgrade has one
file to check. Each is here because the public API lacks it (Dagster 1.13)."""

from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.errors import DagsterHomeNotSetError
from dagster._core.loader import LoadingContext
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionResolvedStatus,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.event_log.base import AssetRecord
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.utils import make_new_run_id
from dagster._utils.schedules import is_valid_cron_string

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",  # a range run's tags (the public API has no constant)
    "ASSET_PARTITION_RANGE_START_TAG",
    "AssetCheckEvaluationTargetMaterializationData",  # which materialization a partition's check judged
    "AssetCheckExecutionRecordStatus",  # a check's latest evaluation: planned or evaluated
    "AssetCheckExecutionResolvedStatus",  # a check partition's status, as the UI's grid shows it
    "AssetRecord",  # batch-loading asset records for the report (one query, not 200)
    "DagsterHomeNotSetError",  # no DAGSTER_HOME: said in one line
    "LoadingContext",
    "NOT_FINISHED_STATUSES",  # runs still in flight
    "get_and_update_asset_status_cache_value",  # partition status as the UI computes it
    "is_valid_cron_string",  # MARKETDATA_SCHEDULE_CRON validated at load
    "make_new_run_id",  # a run id known before the run starts, for the progress watcher
]
