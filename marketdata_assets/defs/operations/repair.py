"""The gap-repair sensor, on by default: it re-runs the partitions whose latest run failed and
those whose gap check (each dataset's `gap_check`) found unexplained gaps, bounded and backed off,
and never windows verified empty."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

from marketdata_assets.coverage import check_history, partition_statuses, status_subsets
from marketdata_assets.dagster_internals import NOT_FINISHED_STATUSES, AssetCheckExecutionRecordStatus
from marketdata_assets.defs.ingest.bans import banned_venues
from marketdata_assets.defs.ingest.partitions import adjacent_runs, partitions_between
from marketdata_assets.defs.operations.schedules import RANGE_END, RANGE_START, TRIGGER_TAG, IncrementalJob, Plan
from marketdata_assets.defs.quality.checks import UNEXPLAINED_WINDOWS, parse_window_text
from marketdata_assets.run_health import fail_dead_runs
from marketdata_assets.wording import counted, duration

# Repairs: at most this many re-runs of a window, the first one REPAIR_BACKOFF[0] after the sensor
# finds the window, each next one the following wait after the re-run before (a transient fault
# gets time to pass), and at most this many runs a tick: a venue that is down gets a trickle of
# runs, not a storm.
REPAIR_ATTEMPTS = 3
REPAIR_BACKOFF = (dt.timedelta(minutes=15), dt.timedelta(hours=1), dt.timedelta(hours=4))
REPAIR_RUNS_PER_TICK = 5
REPAIR_INTERVAL_S = 300


@dataclass
class RepairState:
    """The repair sensor's cursor: the newest gap-check evaluation read per check, the windows
    (asset|partition) whose latest gap check found unexplained gaps, and the re-runs made of each
    window with when the next is allowed."""

    checks: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> RepairState:
        if not cursor:
            return cls()
        raw = json.loads(cursor)
        return cls(raw["checks"], raw["gaps"], {k: (int(n), float(t)) for k, (n, t) in raw["attempts"].items()})

    def to_cursor(self) -> str:
        return json.dumps({"checks": self.checks, "gaps": self.gaps, "attempts": self.attempts}, sort_keys=True)


def read_gap_checks(
    instance: dg.DagsterInstance, jobs: Sequence[IncrementalJob], state: RepairState, decisions: list[str],
) -> None:
    """Fold every gap-check evaluation recorded since the cursor into `state.gaps`: each
    partition the evaluation covered is pending if it holds an unexplained window, cleared if not.
    Verified-empty windows and documented maintenance are explained, so they never become pending."""
    for job in jobs:
        gap_check = job.declared.gap_check
        if gap_check is None:
            continue
        for key in job.keys:
            check_key = dg.AssetCheckKey(key, gap_check)
            seen = state.checks.get(check_key.to_user_string(), 0)
            since = seen
            newer = list(itertools.takewhile(lambda record: record.id > since, check_history(instance, check_key)))
            for record in reversed(newer):  # oldest first
                if record.status == AssetCheckExecutionRecordStatus.PLANNED:
                    run = instance.get_run_by_id(record.run_id)
                    if run is not None and not run.is_finished:
                        break  # read it once it is evaluated
                    seen = record.id
                    continue
                seen = record.id
                if record.evaluation is not None and "window" in record.evaluation.metadata:
                    _fold_evaluation(state, job.partitions, check_key, record.evaluation, decisions)
            state.checks[check_key.to_user_string()] = seen


def _fold_evaluation(
    state: RepairState, partitions: dg.TimeWindowPartitionsDefinition, check_key: dg.AssetCheckKey,
    evaluation: dg.AssetCheckEvaluation, decisions: list[str],
) -> None:
    """Each partition `evaluation` covered becomes pending if it holds an unexplained window, or is cleared."""
    start, end = parse_window_text(str(evaluation.metadata["window"].value))
    listed = evaluation.metadata.get(UNEXPLAINED_WINDOWS)
    windows = [
        (dt.datetime.fromisoformat(a), dt.datetime.fromisoformat(b))
        for a, b in (listed.value if listed is not None else [])  # type: ignore[union-attr]
    ]
    asset = check_key.asset_key.to_user_string()
    for partition in partitions_between(partitions, start, end, end):
        span = partitions.time_window_for_partition_key(partition)
        count = sum(1 for a, b in windows if a < span.end and span.start < b)
        window_id = f"{asset}|{partition}"
        if count:
            state.gaps[window_id] = f"{check_key.name} found {counted(count, 'unexplained gap')}"
        elif state.gaps.pop(window_id, None):
            decisions.append(f"{window_id}: {check_key.name} passes now (or its gaps are verified empty)")
    known = evaluation.metadata.get("known_gap_bars")
    if known is not None and known.value and not windows:
        decisions.append(
            f"{asset}: the gaps {check_key.name} found over {start:%Y-%m-%d}..{end:%Y-%m-%d} "
            "are all verified empty or documented maintenance: not re-run"
        )


@dataclass(frozen=True)
class _Asset:
    key: dg.AssetKey
    partitions: dg.TimeWindowPartitionsDefinition


def failed_partitions(instance: dg.DagsterInstance, jobs: Sequence[IncrementalJob]) -> dict[str, str]:
    """window id -> why, for every partition whose latest run failed (Dagster's partition status)."""
    assets = [_Asset(key, job.partitions) for job in jobs for key in job.keys]
    failed = {}
    for asset, status in zip(assets, partition_statuses(instance, assets), strict=True):
        _, failed_subset = status_subsets(status, asset.partitions)
        for partition in failed_subset.get_partition_keys():
            failed[f"{asset.key.to_user_string()}|{partition}"] = "its latest run failed"
    return failed


def plan_repairs(
    state: RepairState, failed: dict[str, str], busy: set[str], now: float,
    job_of: dict[str, IncrementalJob], tick: str, banned: dict[str, str] | None = None,
) -> Plan:
    """Re-runs of the windows that failed or hold unexplained gaps: each at most REPAIR_ATTEMPTS
    times, after the waits of REPAIR_BACKOFF (the first counted from the tick that finds the
    window), REPAIR_RUNS_PER_TICK runs a tick (one per asset and run of adjacent partitions).
    `busy`: assets a run is already materializing; `banned`: assets whose venue banned our IP,
    and why. Updates `state`."""
    banned = banned or {}
    plan = Plan()
    wanted = {**state.gaps, **failed}
    for window_id in sorted(set(state.attempts) - set(wanted)):
        attempts, _ = state.attempts.pop(window_id)
        plan.decisions.append(f"{window_id}: nothing left to repair "
                              + (f"({counted(attempts, 're-run')} requested)" if attempts else "(before any re-run)"))
    due: dict[str, list[str]] = defaultdict(list)
    for window_id in sorted(wanted):
        asset, partition = window_id.rsplit("|", 1)
        if window_id not in state.attempts:  # found now: its first re-run waits REPAIR_BACKOFF[0]
            state.attempts[window_id] = (0, now + REPAIR_BACKOFF[0].total_seconds())
        attempts, next_at = state.attempts[window_id]
        why = wanted[window_id]
        if asset in busy:
            plan.decisions.append(f"{window_id}: {why}; a run of {asset} is in progress, so waiting for it")
        elif asset in banned:
            plan.decisions.append(f"{window_id}: {why}; {banned[asset]}, so waiting for the ban to end")
        elif attempts >= REPAIR_ATTEMPTS:
            plan.decisions.append(
                f"{window_id}: {why} after {attempts} re-runs; giving up. Fix the cause and run it again "
                f"(`marketdata backfill`), or record windows the venue has no data for (`marketdata gaps verify`)"
            )
        elif now < next_at:
            plan.decisions.append(
                f"{window_id}: {why}; re-run {attempts + 1} of {REPAIR_ATTEMPTS} waits until "
                f"{dt.datetime.fromtimestamp(next_at, dt.UTC):%Y-%m-%d %H:%M} UTC"
            )
        else:
            due[asset].append(partition)
    launched = 0
    for asset, partition_keys in sorted(due.items()):
        job = job_of[asset]
        for first, last in adjacent_runs(job.partitions, sorted(partition_keys)):
            span = list(job.partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first, last)))
            if launched >= REPAIR_RUNS_PER_TICK:
                plan.decisions.append(
                    f"{asset} {first}...{last}: due, but {REPAIR_RUNS_PER_TICK} repair runs were requested "
                    "this tick already; the next tick asks again"
                )
                continue
            launched += 1
            attempt = 0
            for partition in span:
                window_id = f"{asset}|{partition}"
                attempts = state.attempts.get(window_id, (0, 0.0))[0] + 1
                wait = REPAIR_BACKOFF[min(attempts, len(REPAIR_BACKOFF) - 1)]  # before the next re-run
                state.attempts[window_id] = (attempts, now + wait.total_seconds())
                attempt = max(attempt, attempts)
            plan.decisions.append(f"{asset} {first}...{last}: {wanted[f'{asset}|{first}']}; re-run {attempt} of {REPAIR_ATTEMPTS}")
            plan.requests.append(dg.RunRequest(
                run_key=f"repair:{asset}:{first}...{last}:{tick}",
                job_name=job.name,
                asset_selection=[dg.AssetKey.from_user_string(asset)],
                tags={RANGE_START: first, RANGE_END: last, TRIGGER_TAG: "gap_repair",
                      "marketdata/repair_attempt": str(attempt)},
            ))
    return plan


def _busy_assets(instance: dg.DagsterInstance) -> set[str]:
    runs = instance.get_runs(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES))
    return {key.to_user_string() for run in runs for key in (run.asset_selection or ())}


def gap_repair_sensor(jobs: Sequence[IncrementalJob], venue_of: dict[str, str]) -> dg.SensorDefinition:
    """The sensor over `jobs`; `venue_of`: asset (user string) -> the venue it reads."""
    job_of = {key.to_user_string(): job for job in jobs for key in job.keys}

    @dg.sensor(
        name="gap_repair",
        jobs=[job.job for job in jobs],
        minimum_interval_seconds=REPAIR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Re-runs the partitions whose latest run failed and those whose gap check found "
            f"unexplained gaps: at most {REPAIR_ATTEMPTS} times each, the first {duration(REPAIR_BACKOFF[0])} "
            f"after it finds them, the next {' and '.join(duration(b) for b in REPAIR_BACKOFF[1:])} after the "
            f"re-run before; {REPAIR_RUNS_PER_TICK} runs a tick. "
            "Windows verified empty are never re-run."
        ),
    )
    def gap_repair(context: dg.SensorEvaluationContext):
        state = RepairState.from_cursor(context.cursor)
        decisions = [run.describe() for run in fail_dead_runs(context.instance)]
        read_gap_checks(context.instance, jobs, state, decisions)
        now = dt.datetime.now(dt.UTC)
        bans = banned_venues(context.instance, now)
        plan = plan_repairs(
            state, failed_partitions(context.instance, jobs), _busy_assets(context.instance), now.timestamp(), job_of,
            tick=now.isoformat(), banned={a: bans[v] for a, v in venue_of.items() if v in bans},
        )
        for line in decisions + plan.decisions:
            context.log.info(line)
        if plan.requests:
            return dg.SensorResult(run_requests=plan.requests, cursor=state.to_cursor())
        return dg.SensorResult(
            skip_reason="; ".join(decisions + plan.decisions) or "no failed partitions and no unexplained gaps",
            cursor=state.to_cursor(),
        )

    return gap_repair
