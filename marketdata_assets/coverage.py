"""Coverage of every klines asset (and, more briefly, of every asset of the other datasets, each
audited by its own `missing` rule): Dagster's partition status and latest check results, beside
what the warehouse holds, and where the two disagree. `marketdata report` prints it and
`marketdata gaps verify` works through its unexplained gaps.

Gaps are counted inside the partitions Dagster records as materialized: a partition never
materialized is missing coverage (partitions materialized/total), and a failed one is listed as
failed, not counted as a gap.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg
from marketdata_assets.dagster_internals import (
    AssetCheckExecutionRecordStatus,
    AssetRecord,
    check_partition_statuses,
    LoadingContext,
    get_and_update_asset_status_cache_value,
)

from marketdata_assets.audit import (
    SAMPLES,
    Explanations,
    SERIES_COLUMNS,
    GapAudit,
    BarSeries,
    Stored,
    audit_gaps,
    explanations,
    rejected_not_stored,
    stored_klines,
)
from marketdata_assets.catalog import Catalog, Instrument, Series
from marketdata_assets.datasets import Bounds, Dataset, Missing, dataset
from marketdata_assets.defs.quality.checks import KLINES_CHECKS
from marketdata_assets.datasets.klines import DATASET as KLINES, KLINES_CADENCE, klines_asset_key, klines_partitions, klines_series
from marketdata_assets.defs.ingest.partitions import partition_bounds
from marketdata_assets.timeframes import next_month, timeframe
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

DISAGREEMENTS_SHOWN = 3


@dataclass
class CheckOutcome:
    """One check over an asset's partitions, as Dagster's partition grid of the check shows it:
    each partition's latest evaluation of the partition's latest materialization.

    `state` is the worst result recorded ('ERROR', 'WARN', 'passed', or 'not run'); `partitions`
    holds the grid's statuses (passed, failed, execution_failed, skipped, in_progress), each a
    list of partition keys, and `missing` counts the partitions with none; `description` says what the first few failed ones found;
    `latest` is the check's newest record (the check's overview) and `latest_partition` its
    partition. `status` is what the UI's list of checks says of the check."""

    name: str
    state: str
    partitions: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    latest: str = "not run"
    latest_partition: str | None = None
    missing: int = 0

    @property
    def failing(self) -> list[str]:
        return self.partitions.get("failed", [])

    @property
    def not_evaluated(self) -> list[str]:
        """Partitions whose checks were planned by a run that failed before evaluating them."""
        return self.partitions.get("execution_failed", [])

    @property
    def status(self) -> str:
        """The UI's status of a partitioned check in its list: Failed when a partition failed or
        could not be evaluated, else In progress, Skipped, Passed, Not evaluated (in that order)."""
        counts = {name: len(keys) for name, keys in self.partitions.items()}
        if counts.get("failed") or counts.get("execution_failed"):
            return "Failed"
        for name, label in (("in_progress", "In progress"), ("skipped", "Skipped"), ("passed", "Passed")):
            if counts.get(name):
                return label
        return "Not evaluated"

    @property
    def where(self) -> str:
        if len(self.failing) == 1:
            return self.failing[0]
        return f"{counted(len(self.failing), 'partition')} ({', '.join(_some_list(self.failing))})"


def _some_list(keys: list[str]) -> list[str]:
    return keys[:DISAGREEMENTS_SHOWN] + ([f"{len(keys) - DISAGREEMENTS_SHOWN} more"] if len(keys) > DISAGREEMENTS_SHOWN else [])


@dataclass
class AssetCoverage:
    key: dg.AssetKey
    dataset: str
    instrument: Instrument
    series: BarSeries
    partitions: dg.TimeWindowPartitionsDefinition
    partitions_total: int
    materialized: int  # partitions
    failed: list[str]  # partition keys
    materialized_windows: list[tuple[dt.datetime, dt.datetime]]
    stored: Stored
    why: Explanations
    gaps: GapAudit
    rejected_rows: int
    checks: list[CheckOutcome] = field(default_factory=list)
    empty_materialized: list[str] = field(default_factory=list)  # materialized, no rows stored
    unrecorded_with_rows: list[str] = field(default_factory=list)  # rows stored, never materialized
    revisions: int = 0  # stored values replaced by others (market_data.revisions)

    @property
    def catalog_series(self) -> Series:
        """The catalog's series of this asset (what its dataset's sources read)."""
        return Series("klines", self.instrument.key_prefix, self.instrument.symbol, self.instrument.start_date,
                      self.instrument, {"timeframe": self.series.timeframe})

    @property
    def disagreements(self) -> list[str]:
        notes = []
        if self.empty_materialized:
            notes.append(f"materialized without rows: {_some(self.empty_materialized)}")
        if self.unrecorded_with_rows:
            notes.append(f"rows in partitions never materialized: {_some(self.unrecorded_with_rows)}")
        return notes


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:DISAGREEMENTS_SHOWN])
    return shown + (f" and {len(keys) - DISAGREEMENTS_SHOWN} more" if len(keys) > DISAGREEMENTS_SHOWN else "")


@dataclass(frozen=True)
class KlinesAsset:
    key: dg.AssetKey
    instrument: Instrument
    series: BarSeries
    partitions: dg.TimeWindowPartitionsDefinition


def klines_assets(
    catalog: Catalog, symbols: Iterable[str] = (), cadence: str = KLINES_CADENCE
) -> list[KlinesAsset]:
    """Every klines asset of the catalog (of `symbols` only, if any are given)."""
    wanted = set(symbols)
    assets = []
    for instrument in catalog.instruments:
        if not instrument.has_dataset("klines") or (wanted and instrument.symbol not in wanted):
            continue
        assert instrument.start_date is not None
        partitions = klines_partitions(instrument.start_date, cadence)
        for name in instrument.timeframes:
            tf = timeframe(name)
            assets.append(KlinesAsset(
                klines_asset_key(instrument, tf), instrument, klines_series(instrument, tf, partitions), partitions
            ))
    return assets


class _Loading(LoadingContext):
    """Lets Dagster fetch every asset's record in one query instead of one each."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._loaders: dict = {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


def _partition_days(windows: Iterable[tuple[dt.datetime, dt.datetime]], cadence: str) -> Iterable[int]:
    """The first day (days since 1970-01-01) of every partition inside `windows`; Dagster's own
    key iteration costs ~30 µs a key, too slow for 365,000."""
    for start, end in windows:
        cursor = start
        while cursor < end:
            yield int(cursor.timestamp()) // 86_400
            cursor = cursor + dt.timedelta(days=1) if cadence == "daily" else next_month(cursor)


_EPOCH_DATE = dt.date(1970, 1, 1)


def _partition_day(day: int, cadence: str) -> int:
    """The first day of the partition holding `day`."""
    if cadence == "daily":
        return day
    return ((_EPOCH_DATE + dt.timedelta(days=day)).replace(day=1) - _EPOCH_DATE).days


def _key(day: int) -> str:
    return (_EPOCH_DATE + dt.timedelta(days=day)).isoformat()  # Dagster's daily and monthly key format


_GRID = ("passed", "failed", "execution_failed", "skipped", "in_progress")  # as check_partition_statuses names them


def _state(evaluation: dg.AssetCheckEvaluation | None) -> str:
    if evaluation is None:
        return "not run"
    return "passed" if evaluation.passed else evaluation.severity.value


def check_history(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, status: set | None = None, page_size: int = 500,
) -> Iterator:
    """The check's execution records (of `status` only, if given), newest first, a page at a
    time: a range run records one a partition, so there can be thousands."""
    cursor = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=page_size, cursor=cursor, status=status)
        yield from page
        if len(page) < page_size:
            return
        cursor = page[-1].id


def _failed_evaluations(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, partitions: set[str],
) -> dict[str, dg.AssetCheckEvaluation]:
    """The latest failed evaluation of each of `partitions` (whose latest evaluation failed)."""
    found: dict[str, dg.AssetCheckEvaluation] = {}
    for record in check_history(instance, check_key, {AssetCheckExecutionRecordStatus.FAILED}):
        if record.partition in partitions and record.partition not in found and record.evaluation is not None:
            found[record.partition] = record.evaluation
            if len(found) == len(partitions):
                break
    return found


def _check_outcomes(
    instance: dg.DagsterInstance, assets: Sequence, names: dict[dg.AssetKey, tuple[str, ...]] | None = None,
) -> dict[dg.AssetCheckKey, CheckOutcome]:
    """Each check of `assets` (`names` per key; the klines checks by default) over the asset's
    partitions, read as Dagster's UI reads it (the check's partition statuses and latest record)."""
    check_keys = [(dg.AssetCheckKey(a.key, name), a.partitions) for a in assets for name in (names or {}).get(a.key, KLINES_CHECKS)]
    grids = check_partition_statuses(instance, [key for key, _ in check_keys])
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key for key, _ in check_keys])
    totals: dict = {}
    outcomes = {}
    for check_key, partitions in check_keys:
        if partitions not in totals:
            totals[partitions] = partitions.get_num_partitions()
        grid = grids.get(check_key, {})
        by_status: dict = {label: [] for label in _GRID}
        for partition, status in grid.items():
            by_status[status].append(partition)
        for keys in by_status.values():
            keys.sort()
        missing = totals[partitions] - len(grid)  # counted, not listed: there can be thousands
        failing = by_status["failed"]
        failed = _failed_evaluations(instance, check_key, set(failing)) if failing else {}
        severities = {evaluation.severity.value for evaluation in failed.values()}
        state = ("ERROR" if "ERROR" in severities else "WARN" if severities
                 else "passed" if by_status["passed"] else "not run")
        record = latest.get(check_key)
        evaluation = record.evaluation if record is not None else None
        outcomes[check_key] = CheckOutcome(
            check_key.name, state, by_status,
            (failed[failing[0]].description or "") if len(failing) == 1 and failing[0] in failed else
            "; ".join(f"{key}: {failed[key].description}" for key in failing[:DISAGREEMENTS_SHOWN] if key in failed),
            _state(evaluation) if record is None or record.status != AssetCheckExecutionRecordStatus.PLANNED
            else "in progress" if not _finished(instance, record.run_id) else "execution failed",
            record.partition if record is not None else None,
            missing,
        )
    return outcomes


def _finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished


def status_subsets(status, partitions: dg.TimeWindowPartitionsDefinition):
    """(materialized, failed) partition subsets from an asset's cached status (None: never run)."""
    if status is None:
        return partitions.empty_subset(), partitions.empty_subset()
    return (status.deserialize_materialized_partition_subsets(partitions),
            status.deserialize_failed_partition_subsets(partitions))


def partition_statuses(instance: dg.DagsterInstance, assets: Sequence[KlinesAsset]) -> list:
    """Dagster's cached partition status of each asset, brought up to date as the UI does. An
    asset with no record has had no event at all (a planned materialization writes one), so its
    status is None without the query Dagster would make to find that out."""
    loading = _Loading(instance)
    AssetRecord.prepare(loading, [asset.key for asset in assets])
    return [
        get_and_update_asset_status_cache_value(instance, asset.key, asset.partitions, loading_context=loading)
        if AssetRecord.blocking_get(loading, asset.key) is not None else None
        for asset in assets
    ]


def klines_coverage(
    instance: dg.DagsterInstance, warehouse: Warehouse, assets: list[KlinesAsset],
    now: dt.datetime | None = None, cadence: str = KLINES_CADENCE,
) -> list[AssetCoverage]:
    """Coverage of `assets`: a few queries for all of them, not a few per asset. The warehouse
    and the Dagster instance are read at the same time (both wait on their databases, not on
    Python)."""
    now = now or dt.datetime.now(dt.UTC)
    series = [asset.series for asset in assets]

    def read_warehouse():
        with warehouse.session():
            stored = stored_klines(warehouse, series)
            why = explanations(warehouse, series)
            rejected = Counter(
                tuple(row) for row in rejected_not_stored(warehouse, series).select(SERIES_COLUMNS).iter_rows()
            )
            revised = revisions_by_series(warehouse, KLINES.table.name)
        return stored, why, rejected, revised

    with ThreadPoolExecutor(1) as pool:
        from_warehouse = pool.submit(read_warehouse)
        names = {asset.key: KLINES.checks_for(asset.series.venue) for asset in assets}
        checks = _check_outcomes(instance, assets, names)
        statuses = partition_statuses(instance, assets)
        stored, why, rejected, revised = from_warehouse.result()
    report = []
    for asset, status in zip(assets, statuses, strict=True):
        materialized_subset, failed_subset = status_subsets(status, asset.partitions)
        windows = [(w.start, w.end) for w in materialized_subset.included_time_windows]  # type: ignore[attr-defined]
        materialized = list(_partition_days(windows, cadence))
        series_key = asset.series.key
        with_rows = {_partition_day(day, cadence) for day in stored[series_key].rows_by_day}
        recorded = set(materialized)
        report.append(AssetCoverage(
            key=asset.key,
            dataset="klines",
            instrument=asset.instrument,
            series=asset.series,
            partitions=asset.partitions,
            partitions_total=asset.partitions.get_num_partitions(),
            materialized=len(materialized),
            failed=sorted(failed_subset.get_partition_keys()),
            materialized_windows=windows,
            stored=stored[series_key],
            why=why[series_key],
            gaps=audit_gaps(asset.series, stored[series_key], why[series_key], windows, now),
            rejected_rows=rejected.get(series_key, 0),
            checks=[checks[dg.AssetCheckKey(asset.key, name)] for name in names[asset.key]],
            empty_materialized=[_key(day) for day in materialized if day not in with_rows],
            unrecorded_with_rows=[_key(day) for day in sorted(with_rows - recorded)],
            revisions=revised.get("/".join(series_key), 0),
        ))
    return report


@dataclass(frozen=True)
class SeriesAsset:
    """An asset of a dataset audited through its `missing` rule (every dataset but klines)."""

    key: dg.AssetKey
    dataset: Dataset
    series: Series
    partitions: dg.TimeWindowPartitionsDefinition


@dataclass
class SeriesCoverage:
    """An asset's rows stored, partitions, and the rows (settlements, snapshots, days) missing
    inside its materialized partitions."""

    asset: SeriesAsset
    rows: int
    first: dt.datetime | None
    last: dt.datetime | None
    partitions_total: int
    materialized: int
    failed: list[str]
    expected: int  # rows due in the materialized partitions
    missing_windows: list[tuple[dt.datetime, dt.datetime]]  # first ones
    missing: int
    checks: list[CheckOutcome]
    every_missing_window: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)
    rows_by_day: dict[int, int] = field(default_factory=dict)  # days since 1970-01-01 UTC
    materialized_windows: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)
    revisions: int = 0  # stored values replaced by others (market_data.revisions)


def revisions_by_series(warehouse: Warehouse, table: str) -> dict[str, int]:
    """How many stored values of `table` upserts replaced, by series (the key's values but the
    time, joined by '/')."""
    counted = warehouse.query("SELECT series, count(*) AS n FROM market_data.revisions WHERE table_name = ? "
                              "GROUP BY series", [table])
    return dict(counted.iter_rows())


def series_revisions(revised: dict[str, int], params: list) -> int:
    """The revisions of a series whose rows its dataset's filter selects with `params`: those of
    the series named by them, and of the series within it (a key of more parts)."""
    named = "/".join(str(p) for p in params)
    return sum(n for series, n in revised.items() if not named or series == named or series.startswith(named + "/"))


def series_assets(catalog: Catalog, symbols: Iterable[str] = (), datasets: Iterable[str] = ()) -> list[SeriesAsset]:
    """Every asset of the catalog audited through its dataset's `missing` rule (of `datasets`, and
    of `symbols` when given), in the catalog's order of instruments, then the other series."""
    wanted, chosen = set(symbols), set(datasets)
    order = {instrument: index for index, instrument in enumerate(catalog.instruments)}
    assets = []
    for series in catalog.all_series():
        declared = dataset(series.dataset)
        if declared.detailed_audit or (chosen and declared.name not in chosen):
            continue
        if wanted and series.symbol not in wanted:
            continue
        assets.append(SeriesAsset(declared.asset_key(series), declared, series, declared.partitions(series)))
    return sorted(assets, key=lambda a: (order.get(a.series.instrument, len(order)), a.dataset.position))


def series_coverage(
    instance: dg.DagsterInstance, warehouse: Warehouse, assets: list[SeriesAsset], now: dt.datetime | None = None,
) -> list[SeriesCoverage]:
    """Coverage of `assets`, audited over the partitions Dagster records as materialized."""
    now = now or dt.datetime.now(dt.UTC)
    names = {asset.key: asset.dataset.checks_for(asset.series.venue) for asset in assets}
    checks = _check_outcomes(instance, assets, names)
    statuses = partition_statuses(instance, assets)  # type: ignore[arg-type]
    report = []
    revised: dict[str, dict[str, int]] = {}  # table -> series -> revisions
    with warehouse.session():
        for asset, status in zip(assets, statuses, strict=True):
            declared, time_column = asset.dataset, asset.dataset.time_column_of(asset.series)
            where, params = declared.row_filter(asset.series)
            by_day = warehouse.query(
                f"SELECT CAST(floor(extract(epoch FROM {time_column}) / 86400) AS BIGINT) AS day, count(*) AS n, "
                f"min({time_column}) AS first, max({time_column}) AS last "
                f"FROM {declared.table_of(asset.series).qualified_name} WHERE {where} GROUP BY 1",
                params,
            )
            stored = (int(by_day["n"].sum()), by_day["first"].min(), by_day["last"].max()) if by_day.height \
                else (0, None, None)
            materialized_subset, failed_subset = status_subsets(status, asset.partitions)
            windows = [(w.start, w.end) for w in materialized_subset.included_time_windows]  # type: ignore[attr-defined]
            bounds = Bounds(*partition_bounds(asset.partitions))
            found = Missing()
            # a dataset that can only capture the present counts every hour of its span, run or not
            audited = [(asset.partitions.start, now)] if declared.audits_every_partition else windows
            for start, end in audited:
                found.add(declared.missing(warehouse, asset.series, start, end, bounds, now))
            first, last = (_as_moment(value) for value in stored[1:])
            table = declared.table_of(asset.series)
            if table.name not in revised:
                revised[table.name] = revisions_by_series(warehouse, table.name)
            report.append(SeriesCoverage(
                asset, stored[0], first, last, asset.partitions.get_num_partitions(),
                len(materialized_subset.get_partition_keys()),
                sorted(failed_subset.get_partition_keys()), found.expected, sorted(set(found.windows))[:SAMPLES],
                found.missing, [checks[dg.AssetCheckKey(asset.key, name)] for name in names[asset.key]],
                sorted(set(found.windows)), dict(zip(by_day["day"].to_list(), by_day["n"].to_list(), strict=True)),
                windows, series_revisions(revised[table.name], params),
            ))
    return report


def _as_moment(value: dt.datetime | dt.date | None) -> dt.datetime | None:
    """A stored time as a UTC datetime; a DATE column's day at 00:00 UTC."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
