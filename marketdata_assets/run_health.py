"""Runs whose process is gone: found and marked failed, so nothing waits on them.

A run killed with `kill -9` (or lost with its machine) never writes its end: Dagster keeps it
STARTED forever, its partitions show "in progress", and whatever waits for in-flight runs (the
repair sensor, the incremental schedules) waits forever. Dagster's run monitoring cannot tell on
the default run launcher (it has no worker health check), so every run that materializes our
assets tags itself with its process (host, pid and the process's start time, which tells a
reused pid apart), and `fail_dead_runs` marks failed those whose process is gone. It runs at
the start of `backfill`, `seed` and `report`, and at every schedule and sensor tick.

Only runs of this host are judged: a process elsewhere cannot be seen from here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import dagster as dg
import psutil

from marketdata_assets.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    NOT_FINISHED_STATUSES,
)

HOST_TAG = "marketdata/host"
PID_TAG = "marketdata/pid"
PROCESS_STARTED_TAG = "marketdata/process_started"  # the process's start, seconds since the epoch
# The run whose process set the tags above: a retried run starts with its parent's tags (Dagster
# copies them), which name the parent's process until the retry's own process tags it.
TAGGED_RUN_TAG = "marketdata/tagged_run"

_IN_PROCESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}


def process_tags(run_id: str, pid: int | None = None) -> dict[str, str]:
    """The tags that tie run `run_id` to process `pid` (this one by default) of this host."""
    process = psutil.Process(pid or os.getpid())
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(process.pid),
            PROCESS_STARTED_TAG: f"{process.create_time():.2f}", TAGGED_RUN_TAG: run_id}


def tag_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tie run `run_id` to this process, unless it is already (a local run is tagged at launch;
    a retried run's tags inherited from its parent are replaced)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(TAGGED_RUN_TAG) != run_id:
        instance.add_run_tags(run_id, process_tags(run_id))


def _process_gone(tags: dict[str, str]) -> bool:
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        started = process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.AccessDenied, ValueError):
        return False  # cannot tell: leave it
    return abs(started - float(tags.get(PROCESS_STARTED_TAG, started))) > 1.0  # the pid was reused


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    status: str
    pid: str
    partitions: str  # "2024-01-01...2024-12-01", or "" for a run of no range

    def describe(self) -> str:
        span = f" of {self.partitions}" if self.partitions else ""
        return (f"run {self.run_id[:8]} ({self.job_name}{span}) was {self.status} but its process "
                f"{self.pid} on {socket.gethostname()} is gone (killed or crashed); marked failed")


def fail_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    """Mark failed every unfinished run of this host whose process is gone; what was marked."""
    host = socket.gethostname()
    dead = []
    for run in instance.get_runs(dg.RunsFilter(statuses=list(NOT_FINISHED_STATUSES))):
        if run.status not in _IN_PROCESS or run.tags.get(HOST_TAG) != host or PID_TAG not in run.tags:
            continue
        if run.tags.get(TAGGED_RUN_TAG) != run.run_id:
            continue  # a retry still carrying its parent's process: its own process has not started yet
        if not _process_gone(run.tags):
            continue
        latest = instance.get_run_by_id(run.run_id)
        if latest is None or latest.status not in _IN_PROCESS:
            continue  # it ended meanwhile
        first = run.tags.get(ASSET_PARTITION_RANGE_START_TAG) or run.tags.get("dagster/partition", "")
        last = run.tags.get(ASSET_PARTITION_RANGE_END_TAG, first)
        found = DeadRun(run.run_id, run.job_name, run.status.value, run.tags[PID_TAG],
                        f"{first}...{last}" if first and last != first else first)
        instance.report_run_failed(latest, found.describe())
        dead.append(found)
    return dead
