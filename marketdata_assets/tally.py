"""What each partition of a range run got: its rows (and from where), first and last time, rows
rejected, and its share of what the source spent.

Rows are counted where they are written, by the `source` column every table has ('archive',
'rest'), so a partition's figures add up to the run's. The source's counters are known for the
whole run only (it fetches several windows at once), so each is shared among the partitions in
proportion to the rows of the origin it belongs to, in whole numbers that add up to the run's:
`archive_files` and the other `archive_*` counters by rows from the archive; requests, weight,
retries and 429s (and any other counter) by rows from REST. A counter no row can carry (requests
that brought nothing) stays in the run's totals only.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from marketdata_assets.sources.protocol import SourceOutcome

ORIGIN_COLUMN = "source"


@dataclass
class PartitionTally:
    rows: int = 0
    rejected: int = 0
    first: Any = None
    last: Any = None
    rows_by_origin: Counter = field(default_factory=Counter)
    spent: dict[str, int] = field(default_factory=dict)

    def count(self, origin: str, rows: int, first: Any, last: Any) -> None:
        self.rows += rows
        self.rows_by_origin[origin] += rows
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)


def counters(outcome: SourceOutcome) -> dict[str, int]:
    """The whole-number counters of a source's outcome (floats and texts are the run's)."""
    found = {"requests": outcome.requests}
    for name, value in outcome.metadata.items():
        if isinstance(value, int) and not isinstance(value, bool):
            found[name] = value
    return found


def shares(total: int, weights: dict[str, int]) -> dict[str, int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to `total`."""
    whole = sum(weights.values())
    if not whole:
        return {}
    exact = {key: total * weight / whole for key, weight in weights.items()}
    split = {key: int(value) for key, value in exact.items()}
    for key in sorted(exact, key=lambda k: exact[k] - split[k], reverse=True)[: total - sum(split.values())]:
        split[key] += 1
    return split


class Tally:
    """Figures per partition of [start, end) windows keyed by partition key, for a column of
    datetimes (UTC) or dates."""

    def __init__(self, windows: Sequence[tuple[str, dt.datetime, dt.datetime]], time_column: str):
        self.time_column = time_column
        self.keys = [key for key, _, _ in windows]
        self._starts = [start for _, start, _ in windows]
        self.partitions = {key: PartitionTally() for key in self.keys}

    def _index(self, frame: pl.DataFrame, time_column: str | None = None) -> pl.Series:
        """Each row's partition, as an index into `keys` (-1: before the first)."""
        column = frame[time_column or self.time_column]
        starts = self._starts
        if column.dtype == pl.Date:
            starts = [start.date() for start in starts]
        boundaries = pl.Series("start", starts, dtype=column.dtype)
        return (boundaries.search_sorted(column, side="right") - 1).alias("partition")

    def rows_by_partition(self, frame: pl.DataFrame, time_column: str | None = None) -> dict[str, int]:
        if not self.keys or frame.is_empty():
            return {}
        counts = self._index(frame, time_column).value_counts()
        return {self.keys[i]: n for i, n in counts.iter_rows() if 0 <= i < len(self.keys)}

    def written(self, frame: pl.DataFrame) -> None:
        """Count a committed write batch's rows, first and last times, per partition and origin."""
        if not self.keys or frame.is_empty():
            return
        origin = pl.col(ORIGIN_COLUMN) if ORIGIN_COLUMN in frame.columns else pl.lit("rest")
        per = (
            frame.select(self._index(frame), origin.alias("origin"), pl.col(self.time_column))
            .group_by("partition", "origin")
            .agg(pl.len().alias("rows"), pl.col(self.time_column).min().alias("first"),
                 pl.col(self.time_column).max().alias("last"))
        )
        for index, origin_name, rows, first, last in per.iter_rows():
            if 0 <= index < len(self.keys):
                self.partitions[self.keys[index]].count(origin_name, rows, first, last)

    def share(self, outcome: SourceOutcome) -> None:
        """Share the run's counters among the partitions (see the module's docstring)."""
        for name, total in counters(outcome).items():
            origin = "archive" if name.startswith("archive_") else "rest"
            landed = {key: p for key, p in self.partitions.items() if p.rows}
            if name.startswith("rows_from_"):
                for partition in landed.values():
                    partition.spent[name] = partition.rows_by_origin[name.removeprefix("rows_from_")]
                continue
            weights = {key: p.rows_by_origin[origin] for key, p in landed.items()}
            for key, share in (shares(total, weights) if total else dict.fromkeys(landed, 0)).items():
                self.partitions[key].spent[name] = share
