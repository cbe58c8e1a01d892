"""`marketdata export`: the stored rows of chosen series as CSV or Parquet files, for every dataset.

A series' rows are read a month at a time (`ORDER BY` its time column) and appended to the file, so
a decade of 1m bars goes out in bounded memory. Files are written under a temporary name beside
their place and renamed when whole: a failed export leaves nothing half-written. Times are UTC:
ISO 8601 in CSV, timestamps with time zone UTC in Parquet.

Names are those users of other downloaders expect: `Binance-BTCUSDT-1m-2024-01-01_2024-12-31.csv`
(a perpetual's with `PERP`, a series' with its dataset: `Fred-DGS10-macro-…`). `--partitioned`
writes a Hive tree per table instead, `<path>/<table>/venue=…/symbol=…/year=…/<name>.parquet`,
which DuckDB, polars and pandas read as one dataset (venue and symbol then live in the path).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from marketdata_assets.catalog import Catalog, Series
from marketdata_assets.datasets import Dataset, dataset
from marketdata_assets.timeframes import month_windows
from marketdata_assets.warehouse import Warehouse

FORMATS = ("csv", "parquet")
CSV_TIME = "%Y-%m-%dT%H:%M:%S%.fZ"  # ISO 8601, UTC, the fraction of a second only where there is one
HIVE_COLUMNS = ("venue", "symbol")  # in the path of a partitioned tree, not in its files


class ExportError(Exception):
    """The export cannot run as asked (an unknown series, a path it cannot write): one line."""


@dataclass(frozen=True)
class Chosen:
    """One series to export: its dataset, catalog series and asset key as text."""

    dataset: Dataset
    series: Series
    key: str

    @property
    def label(self) -> str:
        """The series in a file name: `Binance-BTCUSDT-1m`, `Binance-BTCUSDT-PERP-funding`, `Fred-DGS10-macro`."""
        series = self.series
        what = series.options.get("timeframe") or self.dataset.name
        parts = [series.venue.title(), series.key, "PERP" if series.market == "perp" else None, what]
        return "-".join(str(part).replace("/", "_") for part in parts if part)


def choose(catalog: Catalog, selection: str) -> list[Chosen]:
    """The series of the catalog whose asset keys match `selection`: keys or shell patterns
    (`binance_*/klines_1m/*`), comma-separated. ExportError naming a part that matches nothing."""
    known: dict[str, Chosen] = {}
    for series in catalog.all_series():
        declared = dataset(series.dataset)
        key = declared.asset_key(series).to_user_string()
        known[key] = Chosen(declared, series, key)
    chosen: dict[str, Chosen] = {}
    for part in (text.strip() for text in selection.split(",")):
        matched = [key for key in known if fnmatch.fnmatchcase(key, part)] if part else []
        if not matched:
            raise ExportError(f"no asset of the catalog matches {part!r} (keys look like binance_spot/klines_1m/BTCUSDT; "
                              "patterns like binance_*/klines_1m/* also work)")
        chosen |= {key: known[key] for key in matched}
    return list(chosen.values())


def batches(warehouse: Warehouse, chosen: Chosen, start: dt.datetime, end: dt.datetime) -> Iterator[pl.DataFrame]:
    """The series' rows in [start, end), a month at a time, in time order, in its table's schema."""
    for lower, upper in month_windows(start, end):
        frame = chosen.dataset.rows_between(warehouse, chosen.series, lower, upper)
        if frame.height:
            yield frame


@dataclass
class Written:
    key: str
    path: Path
    rows: int


def target_directory(path: Path | None) -> Path:
    """Where files go: `path` (a directory that exists, or can be made in one that does) or the
    working directory. ExportError when it cannot be written."""
    directory = path or Path.cwd()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"--path {directory}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise ExportError(f"--path {directory}: {existing} is not writable")
    return directory


def plan_files(chosen: list[Chosen], path: Path | None, fmt: str) -> tuple[Path, Path | None]:
    """(directory, the one file's path when `path` names a file): a path ending in .csv or
    .parquet names the file of a single series."""
    if path is not None and path.suffix in (".csv", ".parquet"):
        if len(chosen) != 1:
            raise ExportError(f"--path {path} names one file, but {len(chosen)} series are chosen: give a directory")
        if path.suffix != f".{fmt}":
            raise ExportError(f"--path {path} ends in {path.suffix}, but --format is {fmt}")
        return target_directory(path.parent), path
    return target_directory(path), None


def export(
    warehouse: Warehouse, chosen: list[Chosen], start: dt.datetime | None, end: dt.datetime, fmt: str,
    path: Path | None = None, partitioned: bool = False,
) -> list[Written]:
    """Every chosen series' rows over [start, end) (from each series' start without `start`) into
    files; what was written. Nothing is left half-written when it fails."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if partitioned and fmt != "parquet":
        raise ExportError("--partitioned writes a Parquet tree: use --format parquet")
    directory, one_file = plan_files(chosen, path, fmt)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".marketdata-export-", dir=directory))
    written, moves = [], []
    try:
        for each in chosen:
            since = start or dt.datetime.combine(each.series.start_date, dt.time(), dt.UTC)
            last_day = (end - dt.timedelta(microseconds=1)).date()
            name = f"{each.label}-{since:%Y-%m-%d}_{last_day:%Y-%m-%d}.{fmt}"
            frames = batches(warehouse, each, since, end)
            if partitioned:
                rows, files = _write_tree(frames, staging, each, name)
                moves += [(staged, directory / staged.relative_to(staging)) for staged in files]
                final = directory / each.dataset.table_of(each.series).name
            else:
                staged = staging / name
                rows = _write_file(frames, staged, fmt)
                final = one_file or directory / name
                if rows:
                    moves.append((staged, final))
            written.append(Written(each.key, final, rows))
        for staged, final in moves:  # only once every file is whole
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_file(frames: Iterator[pl.DataFrame], path: Path, fmt: str) -> int:
    rows = 0
    writer: Any = None
    with path.open("wb") as out:
        for frame in frames:
            if fmt == "csv":
                frame.write_csv(out, include_header=rows == 0, datetime_format=CSV_TIME)
            else:
                import pyarrow.parquet as pq

                table = frame.to_arrow()
                writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
                writer.write_table(table)
            rows += frame.height
        if writer is not None:
            writer.close()
    return rows


def _write_tree(frames: Iterator[pl.DataFrame], root: Path, chosen: Chosen, name: str) -> tuple[int, list[Path]]:
    """The series' rows under root/<table>/venue=/symbol=/year=/, a file a year. A table with a
    venue or symbol column (one value a series) gives its value to the path and drops it from
    the files; the others take the series' venue and key."""
    import pyarrow.parquet as pq

    series, time = chosen.series, chosen.dataset.time_column_of(chosen.series)
    fallback = {"venue": series.venue, "symbol": series.key or chosen.dataset.name}
    rows, files, writers, branch = 0, [], {}, None
    try:
        for frame in frames:
            if branch is None:
                values = {c: frame[c][0] if c in frame.columns else fallback[c] for c in HIVE_COLUMNS}
                branch = root / chosen.dataset.table_of(series).name / "/".join(f"{c}={values[c]}" for c in HIVE_COLUMNS)
            frame = frame.drop([c for c in HIVE_COLUMNS if c in frame.columns])
            for (year,), part in frame.group_by(pl.col(time).dt.year(), maintain_order=True):
                if year not in writers:
                    leaf = branch / f"year={year}" / name
                    leaf.parent.mkdir(parents=True, exist_ok=True)
                    writers[year] = pq.ParquetWriter(leaf, part.to_arrow().schema, compression="zstd")
                    files.append(leaf)
                writers[year].write_table(part.to_arrow())
            rows += frame.height
    finally:
        for writer in writers.values():
            writer.close()
    return rows, files
