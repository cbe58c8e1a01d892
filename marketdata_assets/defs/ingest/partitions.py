"""What every partitioned dataset asset shares: the pool its runs queue in, the bounds of its
partitions, and how a range run records the partitions that landed when others could not be read."""

import datetime as dt
from collections.abc import Iterator
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


def partial_outcome(
    context: dg.AssetExecutionContext, key: dg.AssetKey, partitions: dg.TimeWindowPartitionsDefinition,
    failures: list[PieceFailure], rows_written: int, what: str, checks: list[dg.AssetCheckResult],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckResult]:
    """For a run some of whose windows failed: a materialization of each partition that fully
    landed, then the check results, then WindowsFailed naming every failed window."""
    failed = set()
    for partition_key in context.partition_keys:
        window = partitions.time_window_for_partition_key(partition_key)
        if any(f.start < window.end and window.start < f.end for f in failures):
            failed.add(partition_key)
    for partition_key in context.partition_keys:
        if partition_key not in failed:
            window = partitions.time_window_for_partition_key(partition_key)
            yield dg.AssetMaterialization(
                asset_key=key,
                partition=partition_key,
                metadata={
                    "window": dg.MetadataValue.text(f"[{window.start.isoformat()}, {window.end.isoformat()})"),
                    "run_rows_written": dg.MetadataValue.int(rows_written),
                    "note": dg.MetadataValue.text(f"stored; {len(failed)} other partitions of this run failed"),
                },
            )
    yield from checks
    raise WindowsFailed(
        f"{what}: {counted(len(failures), 'window')} could not be read, so partitions {', '.join(sorted(failed))} are not "
        f"materialized; the other {len(context.partition_keys) - len(failed)} are:\n"
        + "\n".join(f"- {failure.describe()}" for failure in failures)
    )
