"""Asset checks of every klines asset: `ohlc_valid`, `gap_count` and `no_unclosed_bars`; and what
every dataset's checks share: the window a result names, and the windows a gap check lists.

They are `check_specs` of the asset, so they run in the same run as its materialization, and
the asset can be subset to run them alone over any partition range. Every check is evaluated on
every partition that landed and recorded on it (defs/ingest/partitions.py), so the check's
partition grid reads per month; every result's metadata also names the window it covered.
"""

import datetime as dt
import warnings

import dagster as dg

from marketdata_assets.audit import (
    Interval,
    SAMPLES,
    GapAudit,
    OhlcAudit,
    BarSeries,
    UnclosedAudit,
    audit_gaps,
    audit_ohlc,
    audit_unclosed,
    describe_interval,
    explanations,
    ohlc_audit_of,
    ohlc_rows,
    rows_within,
    samples_table,
    stored_klines,
    unclosed_audit_of,
    unclosed_rows,
    within,
)
from marketdata_assets.warehouse import Warehouse
from marketdata_assets.wording import counted

OHLC_VALID = "ohlc_valid"
GAP_COUNT = "gap_count"
NO_UNCLOSED_BARS = "no_unclosed_bars"
BARS_UNREVISED = "bars_unrevised"
KLINES_CHECKS = (OHLC_VALID, GAP_COUNT, NO_UNCLOSED_BARS, BARS_UNREVISED)

# Say it once, here and in README: partitioned check specs are preview in 1.13.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")

_DESCRIPTIONS = {
    OHLC_VALID: (
        "No stored bar breaks low ≤ min(open, close) ≤ max(open, close) ≤ high, low > 0, "
        "volume ≥ 0, taker_buy_volume ≤ volume, trades ≥ 0 (ERROR), and no row of the window was "
        "rejected at ingest for breaking them (WARN: kept in market_data.rejected_rows)."
    ),
    GAP_COUNT: (
        "Bars expected in the window minus bars stored. WARN when every missing bar is explained "
        "(documented maintenance, verified empty, or rejected as invalid), ERROR otherwise."
    ),
    NO_UNCLOSED_BARS: "No stored bar was ingested before its window closed.",
    BARS_UNREVISED: (
        "No stored bar's values were changed by a later fetch (a re-uploaded archive file, a corrected "
        "REST answer): WARN naming the bars; the old values are kept in market_data.revisions."
    ),
}


def klines_check_specs(key: dg.AssetKey, partitions_def: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=key, description=_DESCRIPTIONS[name], partitions_def=partitions_def)
        for name in KLINES_CHECKS
    ]


# Every gap check (each dataset's `gap_check`) lists the windows it found missing and
# could not explain, for the gap-repair sensor to map onto partitions (defs/operations/repair.py).
UNEXPLAINED_WINDOWS = "unexplained_windows"
WINDOWS_LISTED = 500


def windows_metadata(intervals: list[Interval]) -> dg.MetadataValue:
    """[[start, end], ...] as ISO-8601 UTC, the first WINDOWS_LISTED of them."""
    return dg.MetadataValue.json([[a.isoformat(), b.isoformat()] for a, b in intervals[:WINDOWS_LISTED]])


_WINDOW_FORMAT = "%Y-%m-%d %H:%M"


def window_text(start: dt.datetime, end: dt.datetime) -> str:
    return f"[{start:{_WINDOW_FORMAT}}, {end:{_WINDOW_FORMAT}}) UTC"


def parse_window_text(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The window a check result's `window` metadata names (the inverse of how checks write it)."""
    start, end = text.removeprefix("[").removesuffix(") UTC").split(", ")
    return tuple(  # type: ignore[return-value]
        dt.datetime.strptime(moment, _WINDOW_FORMAT).replace(tzinfo=dt.UTC) for moment in (start, end)
    )


def klines_check_results(
    warehouse: Warehouse, key: dg.AssetKey, series: BarSeries, start: dt.datetime, end: dt.datetime,
    names: set[str], now: dt.datetime | None = None,
) -> list[dg.AssetCheckResult]:
    """The results of the checks `names` over the bars of [start, end)."""
    now = now or dt.datetime.now(dt.UTC)
    window = dg.MetadataValue.text(window_text(start, end))
    results = []
    with warehouse.session():  # a dozen questions, one connection
        if OHLC_VALID in names:
            results.append(_ohlc_valid(audit_ohlc(warehouse, series, start, end), key, window))
        if GAP_COUNT in names:
            stored = stored_klines(warehouse, [series], start, end)[series.key]
            why = explanations(warehouse, [series], start, end)[series.key]
            results.append(_gap_count(audit_gaps(series, stored, why, [(start, end)], now), key, window))
        if NO_UNCLOSED_BARS in names:
            results.append(_no_unclosed_bars(audit_unclosed(warehouse, series, start, end), key, window))
        if BARS_UNREVISED in names:
            results.append(_bars_unrevised(revised_bars(warehouse, series, start, end), key, window))
    return results


def klines_check_results_by_window(
    warehouse: Warehouse, key: dg.AssetKey, series: BarSeries, windows: list[tuple[str, dt.datetime, dt.datetime]],
    names: set[str], now: dt.datetime | None = None,
) -> dict[str, list[dg.AssetCheckResult]]:
    """`klines_check_results` of each window (partition key, start, end; on UTC midnights, in
    order), from one pass of each query over all of them: a range run's partitions are checked
    in a handful of queries, not a handful each."""
    now = now or dt.datetime.now(dt.UTC)
    if not windows:
        return {}
    start, end = windows[0][1], windows[-1][2]
    with warehouse.session():
        stored = stored_klines(warehouse, [series], start, end)[series.key]
        if OHLC_VALID in names:
            invalid, rejected = ohlc_rows(warehouse, series, start, end)
        if GAP_COUNT in names:
            why = explanations(warehouse, [series], start, end)[series.key]
        if NO_UNCLOSED_BARS in names:
            unclosed = unclosed_rows(warehouse, series, start, end)
        if BARS_UNREVISED in names:
            revised = revised_bars(warehouse, series, start, end)
    found = {}
    for partition, lo, hi in windows:
        window = dg.MetadataValue.text(window_text(lo, hi))
        rows = rows_within(stored.rows_by_day, lo, hi)
        results = []
        if OHLC_VALID in names:
            audit = ohlc_audit_of(within(invalid, lo, hi), within(rejected, lo, hi), rows)
            results.append(_ohlc_valid(audit, key, window))
        if GAP_COUNT in names:
            results.append(_gap_count(audit_gaps(series, stored, why, [(lo, hi)], now), key, window))
        if NO_UNCLOSED_BARS in names:
            results.append(_no_unclosed_bars(unclosed_audit_of(within(unclosed, lo, hi), rows), key, window))
        if BARS_UNREVISED in names:
            results.append(_bars_unrevised(within(revised, lo, hi, "row_time"), key, window))
        found[partition] = results
    return found


def _ohlc_valid(ohlc: OhlcAudit, key: dg.AssetKey, window: dg.MetadataValue) -> dg.AssetCheckResult:
    invalid, rejected = len(ohlc.invalid), len(ohlc.rejected)
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=OHLC_VALID,
        passed=invalid == 0 and rejected == 0,
        severity=dg.AssetCheckSeverity.ERROR if invalid else dg.AssetCheckSeverity.WARN,
        description=f"{counted(invalid, 'stored bar')} break a rule; {counted(rejected, 'row')} rejected at ingest",
        metadata={
            "window": window,
            "rows_checked": ohlc.rows,
            "invalid_rows": invalid,
            "invalid_samples": dg.MetadataValue.md(samples_table(ohlc.samples)),
            "rejected_rows": rejected,
            "rejected_samples": dg.MetadataValue.md(samples_table(ohlc.rejected_samples)),
        },
    )


def _gap_count(gaps: GapAudit, key: dg.AssetKey, window: dg.MetadataValue) -> dg.AssetCheckResult:
    unexplained = set(gaps.unexplained)
    lines = [
        f"- {describe_interval(gap, gaps.tf_millis)}{'' if gap in unexplained else ' (explained)'}"
        for gap in gaps.missing[:SAMPLES]
    ]
    longest = gaps.longest(gaps.missing)
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=GAP_COUNT,
        passed=gaps.missing_bars == 0,
        severity=dg.AssetCheckSeverity.ERROR if gaps.unexplained_bars else dg.AssetCheckSeverity.WARN,
        description=f"{gaps.missing_bars} of {gaps.expected} bars missing, {gaps.unexplained_bars} unexplained",
        metadata={
            "window": window,
            "expected_bars": gaps.expected,
            "missing_bars": gaps.missing_bars,
            "unexplained_bars": gaps.unexplained_bars,
            "known_gap_bars": gaps.known_bars,
            "rejected_bars": gaps.rejected_bars,
            "gaps": len(gaps.missing),
            "unexplained_gaps": len(gaps.unexplained),
            "first_gaps": dg.MetadataValue.md("\n".join(lines) or "none"),
            "longest_gap": dg.MetadataValue.text(describe_interval(longest, gaps.tf_millis) if longest else "none"),
            UNEXPLAINED_WINDOWS: windows_metadata(gaps.unexplained),
        },
    )


def _no_unclosed_bars(unclosed: UnclosedAudit, key: dg.AssetKey, window: dg.MetadataValue) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=NO_UNCLOSED_BARS,
        passed=not unclosed.unclosed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(unclosed.unclosed)} bars stored before they closed",
        metadata={
            "window": window,
            "rows_checked": unclosed.rows,
            "unclosed_rows": len(unclosed.unclosed),
            "unclosed_samples": dg.MetadataValue.md(samples_table(unclosed.samples)),
        },
    )


def revised_bars(warehouse: Warehouse, series: BarSeries, start: dt.datetime, end: dt.datetime):
    """The revisions of the series' bars opening in [start, end): row_time, replaced_at, run_id."""
    return warehouse.query(
        "SELECT row_time, replaced_at, run_id FROM market_data.revisions WHERE table_name = 'klines' AND series = ? "
        "AND row_time >= ? AND row_time < ? ORDER BY row_time, replaced_at", ["/".join(series.key), start, end])


def _bars_unrevised(revised, key: dg.AssetKey, window: dg.MetadataValue) -> dg.AssetCheckResult:
    bars = revised["row_time"].unique(maintain_order=True).to_list() if revised.height else []
    said = f"{counted(len(bars), 'stored bar')} changed by a later fetch"
    if bars:
        said += ": " + ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in bars[:SAMPLES]) + (" …" if len(bars) > SAMPLES else "")
    return dg.AssetCheckResult(
        asset_key=key, check_name=BARS_UNREVISED, passed=not bars, severity=dg.AssetCheckSeverity.WARN,
        description=said,
        metadata={"window": window, "bars_revised": len(bars), "revisions": revised.height,
                  "samples": dg.MetadataValue.md(samples_table(revised.head(SAMPLES).to_dicts()))},
    )


def run_klines_checks(
    instance: dg.DagsterInstance, assets_def: dg.AssetsDefinition, first_key: str, last_key: str
) -> list[dg.AssetCheckEvaluation]:
    """Run every check of a klines asset alone over partitions first_key..last_key, in this
    process and recorded in `instance` as any run is; the evaluations, one a check and partition
    (of the partitions materialized: the others are not checked)."""
    from marketdata_assets.dagster_internals import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    (key,) = assets_def.keys
    result = dg.materialize(
        [assets_def],
        instance=instance,
        selection=dg.AssetSelection.checks(*(dg.AssetCheckKey(key, name) for name in KLINES_CHECKS)),
        tags={ASSET_PARTITION_RANGE_START_TAG: first_key, ASSET_PARTITION_RANGE_END_TAG: last_key},
    )
    return result.get_asset_check_evaluations()


def worst_states(evaluations: list[dg.AssetCheckEvaluation]) -> dict[str, str]:
    """Each check's worst result over the partitions evaluated: 'ERROR', 'WARN' or 'passed'."""
    rank = {"passed": 0, "WARN": 1, "ERROR": 2}
    worst: dict[str, str] = {}
    for evaluation in evaluations:
        state = "passed" if evaluation.passed else evaluation.severity.value
        if rank[state] >= rank[worst.get(evaluation.check_name, "passed")]:
            worst[evaluation.check_name] = state
    return worst
