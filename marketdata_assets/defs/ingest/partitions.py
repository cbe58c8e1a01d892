"""What every partitioned dataset asset shares: the pool its runs queue in, the bounds of its
partitions, and how a range run records the partitions that landed when others could not be read."""

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from functools import cache

import dagster as dg

from marketdata_assets.sources.errors import PieceFailure
from marketdata_assets.wording import counted


def venue_pool(source: str, warehouse_kind: str) -> str:
    """The Dagster pool an asset's runs take a slot of: its source (venue and market), so runs
    share a venue's rate limit instead of racing for it; with DuckDB one writer for all (one
    process at a time may write the file, and a single writer also paces every venue)."""
    return source if warehouse_kind == "postgres" else "duckdb_writer"


@cache
def monthly_partitions(start: dt.date, cadence: str = "monthly") -> dg.TimeWindowPartitionsDefinition:
    """UTC windows from `start` up to and including the one in progress: monthly from the first
    of the start's month (so the listing month is covered), or daily (for comparisons).

    Monthly, because Dagster records every partition of a range run, ~25 ms each on the SQLite
    instance (bench/RESULTS.md, d): six years of 1m bars as 2,190 daily partitions would spend
    ~55 s on bookkeeping against ~5 s of data, as 72 months ~2 s. The month in progress is a
    partition too (end_offset=1): materializing it stores every row closed so far, and a later
    run adds the rows closed since."""
    if cadence == "daily":
        return dg.DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1)
    return dg.MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat(), end_offset=1)


def yearly_partitions(start: dt.date) -> dg.TimeWindowPartitionsDefinition:
    """Calendar years (UTC) from the start's year up to and including the one in progress: for
    series with a few observations a month or fewer (macro), where a month would hold one row."""
    return dg.TimeWindowPartitionsDefinition(
        start=dt.datetime(start.year, 1, 1, tzinfo=dt.UTC), cron_schedule="0 0 1 1 *", fmt="%Y-%m-%d",
        timezone="UTC", end_offset=1)


def partition_bounds(partitions: dg.TimeWindowPartitionsDefinition) -> tuple[dt.datetime, dt.datetime]:
    """(end of the first partition, which holds the listing; start of the one in progress)."""
    last_key = partitions.get_last_partition_key()
    assert last_key is not None  # the start date is never in the future (catalog)
    first = partitions.get_first_partition_window()
    assert first is not None
    return first.end, partitions.time_window_for_partition_key(last_key).start


def partitions_between(
    partitions: dg.TimeWindowPartitionsDefinition, start: dt.datetime | None, end: dt.datetime, now: dt.datetime,
) -> list[str]:
    """Keys of the partitions overlapping [start, end) (from the first when start is None), as of `now`."""
    keys = []
    for key in partitions.get_partition_keys(current_time=now):
        span = partitions.time_window_for_partition_key(key)
        if span.start < end and (start is None or span.end > start):
            keys.append(key)
    return keys


def adjacent_runs(partitions: dg.TimeWindowPartitionsDefinition, keys: list[str]) -> list[tuple[str, str]]:
    """(first, last) of each run of adjacent partition keys among `keys` (sorted)."""
    runs: list[list[str]] = []
    for key in keys:
        if runs and partitions.get_next_partition_key(runs[-1][-1]) == key:
            runs[-1].append(key)
        else:
            runs.append([key])
    return [(run[0], run[-1]) for run in runs]


class WindowsFailed(Exception):
    """Some windows of a range run could not be read; the others were stored and recorded."""


Window = tuple[str, dt.datetime, dt.datetime]  # a partition: its key, start and end


def windows_of(partitions: dg.TimeWindowPartitionsDefinition, keys: Iterable[str]) -> list[Window]:
    return [(key, *partitions.time_window_for_partition_key(key)) for key in keys]


def failed_partitions(windows: list[Window], failures: list[PieceFailure]) -> set[str]:
    """The partitions some failed window of which overlaps."""
    return {key for key, start, end in windows if any(f.start < end and start < f.end for f in failures)}


def windows_failed(what: str, windows: list[Window], failed: set[str], failures: list[PieceFailure]) -> WindowsFailed:
    return WindowsFailed(
        f"{what}: {counted(len(failures), 'window')} could not be read, so {', '.join(sorted(failed))} "
        f"{'is' if len(failed) == 1 else 'are'} not materialized ({len(failed)} of {counted(len(windows), 'partition')})"
        f"{'; the others are' if len(failed) < len(windows) else ''}:\n"
        + "\n".join(f"- {failure.describe()}" for failure in failures)
    )


def latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partition_keys: list[str]) -> dict:
    """The latest materialization of each of `partition_keys` (one query), as a check's target."""
    from marketdata_assets.dagster_internals import AssetCheckEvaluationTargetMaterializationData

    found: dict = {}
    if not partition_keys:
        return found
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partition_keys), limit=len(partition_keys) * 4,
    ).records
    for record in records:  # newest first
        partition = record.partition_key
        if partition is not None and partition not in found:
            found[partition] = AssetCheckEvaluationTargetMaterializationData(
                run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp)
    return found


def checked_per_partition(
    instance: dg.DagsterInstance, key: dg.AssetKey, windows: list[Window],
    evaluate: Callable[[list[Window]], dict[str, list[dg.AssetCheckResult]]],
) -> Iterator[dg.AssetCheckEvaluation]:
    """Each check's result over each partition, recorded on that partition and naming the
    partition's latest materialization as what it judged (else Dagster's partition grid counts
    it as not run): the grid then reads per month, and the check's latest record is the latest
    partition's. `evaluate` gives the results of every window, by partition key."""
    targets = latest_materializations(instance, key, [partition_key for partition_key, _, _ in windows])
    results = evaluate(windows) if windows else {}
    for partition_key, _, _ in windows:
        for result in results.get(partition_key, []):
            yield dg.AssetCheckEvaluation(
                asset_key=key, check_name=result.check_name or "", passed=result.passed, metadata=result.metadata,
                severity=result.severity, description=result.description, blocking=False, partition=partition_key,
                target_materialization_data=targets.get(partition_key),
            )


def checks_summary(evaluations: list[dg.AssetCheckEvaluation]) -> str:
    """One line of what the checks found over a run's partitions, for the run's log."""
    from marketdata_assets.defs.quality.checks import worst_states

    parts = []
    for name, worst in worst_states(evaluations).items():
        found = [e for e in evaluations if e.check_name == name]
        bad = [e.partition or "" for e in found if not e.passed]
        parts.append(f"{name} passed in {counted(len(found), 'partition')}" if not bad
                     else f"{name} {worst} in {', '.join(bad)} ({len(bad)} of {len(found)})")
    return "; ".join(parts) or "no checks"
