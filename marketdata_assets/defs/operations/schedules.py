"""The incremental schedules, on by default: one job and one schedule per dataset and
PartitionsDefinition, at the dataset's cron.

**Schedules, not `AutomationCondition.on_cron`.** Our partitions are months, the one in progress
included, so "the newest closed day" is a re-run of the current month, and after the daemon was
down across a month's end the closing days of the month before are missing too. `on_cron`
requests only the latest time window, and no built-in condition knows that a partition was last
materialized before its window closed. A schedule's evaluation reads exactly that from the
instance and requests one range run per job, its reasons in the tick log.

One job (and schedule) per dataset and PartitionsDefinition: a run of partition keys needs every
asset it selects to share one.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import dagster as dg

from marketdata_assets.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    NOT_FINISHED_STATUSES,
)
from marketdata_assets.datasets import Dataset, dataset as dataset_named
from marketdata_assets.run_health import fail_dead_runs
from marketdata_assets.wording import counted

RANGE_START, RANGE_END = ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG
TRIGGER_TAG = "marketdata/trigger"


def dataset_of(asset: dg.AssetsDefinition | dg.AssetSpec) -> str:
    """The dataset an asset keeps: every asset's metadata names it."""
    spec = asset if isinstance(asset, dg.AssetSpec) else next(iter(asset.specs))
    return str(spec.metadata["dataset"])


@dataclass(frozen=True)
class IncrementalJob:
    """The assets of one dataset sharing a PartitionsDefinition: one job, and one schedule of the
    same name, saying what it keeps current and how often (`klines_daily`, `funding_8h`); where a
    dataset's assets begin in different months, each job also says since when
    (`klines_daily_since_2019_09`)."""

    dataset: str
    partitions: dg.TimeWindowPartitionsDefinition
    keys: tuple[dg.AssetKey, ...]
    name: str

    @property
    def declared(self) -> Dataset:
        return dataset_named(self.dataset)

    @cached_property
    def job(self) -> dg.UnresolvedAssetJobDefinition:
        return dg.define_asset_job(
            self.name,
            selection=dg.AssetSelection.assets(*self.keys),
            description=f"{self.dataset} of {len(self.keys)} assets whose partitions begin {self.partitions.start:%Y-%m}.",
        )


def incremental_jobs(assets: Iterable[dg.AssetsDefinition]) -> list[IncrementalJob]:
    groups: dict[tuple[str, dg.TimeWindowPartitionsDefinition], list[dg.AssetKey]] = defaultdict(list)
    for asset in assets:
        assert isinstance(asset.partitions_def, dg.TimeWindowPartitionsDefinition)
        for spec in asset.specs:
            groups[(dataset_of(spec), asset.partitions_def)].append(spec.key)
    per_dataset = defaultdict(int)
    for dataset, _ in groups:
        per_dataset[dataset] += 1

    def name(dataset: str, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        base = f"{dataset}_{dataset_named(dataset).cadence_name}"
        return base if per_dataset[dataset] == 1 else f"{base}_since_{partitions.start:%Y_%m}"

    return [
        IncrementalJob(dataset, partitions, tuple(sorted(keys, key=lambda k: k.path)), name(dataset, partitions))
        for (dataset, partitions), keys in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1].start))
    ]


@dataclass
class Plan:
    """What an evaluation requests, and why, one line per decision."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> float | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0].timestamp if records else None


def stale_partitions(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: dg.TimeWindowPartitionsDefinition, now: dt.datetime,
) -> tuple[list[str], str]:
    """The partitions of `key` an incremental at `now` must run, and since when they were missed.

    Missed is everything whose window ends after the newest partition was last materialized (on
    a fresh instance: after the day before `now`), unless it was materialized after it closed.
    So a daily run re-reads the month in progress, and after days without runs the months those
    days fell in are read again, the one that closed meanwhile included. If the partition before
    the newest was last materialized before it closed (the newest was run by hand while the
    daemon was down across its start), missed begins there.
    """
    keys = list(partitions.get_partition_keys(current_time=now))
    materialized = instance.get_materialized_partitions(key)
    done = [k for k in keys if k in materialized]
    done_at: dict[str, float | None] = {}

    def materialized_at(partition: str) -> float | None:
        if partition not in done_at:
            done_at[partition] = _latest_materialization(instance, key, partition) if partition in materialized else None
        return done_at[partition]

    def closed_since(partition: str) -> bool:
        at = materialized_at(partition)
        return at is not None and at >= partitions.time_window_for_partition_key(partition).end.timestamp()

    head_time = materialized_at(done[-1]) if done else None
    if len(done) > 1 and head_time is not None and not closed_since(done[-2]):
        head_time = min(head_time, materialized_at(done[-2]))  # type: ignore[type-var]
    since = (
        dt.datetime.fromtimestamp(head_time, dt.UTC) if head_time is not None else now - dt.timedelta(days=1)
    )
    stale = [
        partition for partition in keys
        if partitions.time_window_for_partition_key(partition).end > since and not closed_since(partition)
    ]
    reason = f"last materialized {since:%Y-%m-%d %H:%M} UTC" if head_time is not None else "never materialized"
    return stale, reason


def inputs_changed(
    instance: dg.DagsterInstance, key: dg.AssetKey, inputs: list[dg.AssetKey],
    partitions: dg.TimeWindowPartitionsDefinition, now: dt.datetime,
) -> list[str]:
    """The partitions of `key` (derived from `inputs`' rows) some input materialized after `key`
    last did: the event log's storage ids order materializations of every asset."""
    if not inputs:
        return []
    event = dg.DagsterEventType.ASSET_MATERIALIZATION
    own = instance.get_latest_storage_id_by_partition(key, event)
    keys = set(partitions.get_partition_keys(current_time=now))
    changed = set()
    for upstream in inputs:
        for partition, storage_id in instance.get_latest_storage_id_by_partition(upstream, event).items():
            if partition in keys and storage_id > own.get(partition, -1):
                changed.add(partition)
    return sorted(changed)


def _window(partitions: dg.TimeWindowPartitionsDefinition, key: str) -> tuple[dt.datetime, dt.datetime]:
    window = partitions.time_window_for_partition_key(key)
    return window.start, window.end


def plan_incremental(
    instance: dg.DagsterInstance, job: IncrementalJob, now: dt.datetime, tick: str,
) -> Plan:
    """One range run per set of assets of `job` that missed the same partitions."""
    plan = Plan(decisions=[run.describe() for run in fail_dead_runs(instance)])
    in_flight = instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=NOT_FINISHED_STATUSES), limit=1)
    if in_flight:
        plan.decisions.append(f"{job.name}: run {in_flight[0].run_id} is still {in_flight[0].status.value}; "
                              "the next tick picks up what it leaves")
        return plan
    by_range: dict[tuple[str, str], list[dg.AssetKey]] = defaultdict(list)
    for key in job.keys:
        stale, reason = stale_partitions(instance, key, job.partitions, now)
        changed = inputs_changed(instance, key, job.declared.input_keys(key), job.partitions, now)
        if changed:  # one range run: every partition from the first changed one on
            every = list(job.partitions.get_partition_keys(current_time=now))
            wanted = sorted(set(stale) | set(changed))
            stale = every[every.index(wanted[0]):every.index(wanted[-1]) + 1]
            reason += f"; an input was materialized after it in {', '.join(changed)}"
        servable = [p for p in stale if not job.declared.unservable(
            *_window(job.partitions, p), now)]
        if len(servable) < len(stale):  # Deribit keeps no past chain: only the hour in progress can be taken
            reason += f"; {counted(len(stale) - len(servable), 'partition')} no upstream serves any more left out"
            stale = servable
        if not stale:
            plan.decisions.append(f"{key.to_user_string()}: up to date ({reason})")
            continue
        plan.decisions.append(
            f"{key.to_user_string()}: {reason}; runs {stale[0]}...{stale[-1]} ({counted(len(stale), 'partition')})"
        )
        by_range[(stale[0], stale[-1])].append(key)
    for (first, last), keys in sorted(by_range.items()):
        plan.requests.append(dg.RunRequest(
            run_key=f"{tick}:{first}...{last}:{','.join(k.to_user_string() for k in keys)}",
            asset_selection=keys,
            tags={RANGE_START: first, RANGE_END: last, TRIGGER_TAG: "incremental"},
        ))
    return plan


def incremental_schedule(job: IncrementalJob, cron: str | None) -> dg.ScheduleDefinition:
    cron = cron or job.declared.cron

    @dg.schedule(
        name=job.name,
        job=job.job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Keeps {job.dataset} current ({cron} UTC): re-runs the month in progress and every "
            "partition missed since the last run, in one range run."
        ),
    )
    def incremental(context: dg.ScheduleEvaluationContext):
        tick = (context.scheduled_execution_time or dt.datetime.now(dt.UTC)).isoformat()
        plan = plan_incremental(context.instance, job, dt.datetime.now(dt.UTC), tick)
        for line in plan.decisions:
            context.log.info(line)
        return plan.requests or dg.SkipReason("; ".join(plan.decisions))

    return incremental
