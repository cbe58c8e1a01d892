"""Asset checks of every klines asset: `ohlc_valid`, `gap_count` and `no_unclosed_bars`.

They are `check_specs` of the asset, so they run in the same run as its materialization, and
the asset can be subset to run them alone over any partition range. Partitioned checks are
preview in Dagster 1.13: a range run plans an evaluation per partition but records only one,
without a partition. So every run records both: one evaluation per partition it covered (the UI's
per-partition check status), and one for its whole window. Every result's metadata names the
window it covered.
"""

import datetime as dt
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from marketdata_assets.audit import (
    SAMPLES,
    GapAudit,
    Series,
    audit_gaps,
    audit_ohlc,
    audit_unclosed,
    count_within,
    describe_interval,
    explanations,
    samples_table,
    stored_klines,
)
from marketdata_assets.warehouse import Warehouse

OHLC_VALID = "ohlc_valid"
GAP_COUNT = "gap_count"
NO_UNCLOSED_BARS = "no_unclosed_bars"
KLINES_CHECKS = (OHLC_VALID, GAP_COUNT, NO_UNCLOSED_BARS)

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
}


def klines_check_specs(key: dg.AssetKey, partitions_def: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=key, description=_DESCRIPTIONS[name], partitions_def=partitions_def)
        for name in KLINES_CHECKS
    ]


def _window_text(start: dt.datetime, end: dt.datetime) -> str:
    return f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC"


@dataclass(frozen=True)
class PartitionWindow:
    key: str
    start: dt.datetime
    end: dt.datetime


@dataclass
class KlinesCheckOutcome:
    """One evaluation per partition of the run (so the UI's per-partition check status is right),
    and one result for the run's whole window, which names it."""

    per_partition: list[dg.AssetCheckEvaluation] = field(default_factory=list)
    results: list[dg.AssetCheckResult] = field(default_factory=list)


def klines_check_results(
    warehouse: Warehouse, key: dg.AssetKey, series: Series, partitions: list[PartitionWindow],
    names: set[str], now: dt.datetime | None = None,
) -> KlinesCheckOutcome:
    """The checks `names` over the bars of `partitions` (consecutive windows), each and all."""
    now = now or dt.datetime.now(dt.UTC)
    start, end = partitions[0].start, partitions[-1].end
    window = dg.MetadataValue.text(_window_text(start, end))
    outcome = KlinesCheckOutcome()

    def per_partition(name: str, verdict: Callable[[PartitionWindow], tuple[bool, dg.AssetCheckSeverity, str, dict]]):
        for part in partitions:
            passed, severity, description, metadata = verdict(part)
            outcome.per_partition.append(dg.AssetCheckEvaluation(
                asset_key=key, check_name=name, passed=passed, severity=severity, description=description,
                metadata={"window": dg.MetadataValue.text(_window_text(part.start, part.end)), **metadata},
                partition=part.key,
            ))

    if OHLC_VALID in names:
        ohlc = audit_ohlc(warehouse, series, start, end)

        def ohlc_verdict(invalid: int, rejected: int) -> tuple[bool, dg.AssetCheckSeverity, str]:
            severity = dg.AssetCheckSeverity.ERROR if invalid else dg.AssetCheckSeverity.WARN
            return invalid == 0 and rejected == 0, severity, (
                f"{invalid} stored bars break a rule; {rejected} rows rejected at ingest"
            )

        def ohlc_part(part: PartitionWindow):
            invalid = count_within(ohlc.invalid, part.start, part.end)
            rejected = count_within(ohlc.rejected, part.start, part.end)
            return *ohlc_verdict(invalid, rejected), {"invalid_rows": invalid, "rejected_rows": rejected}

        per_partition(OHLC_VALID, ohlc_part)
        passed, severity, description = ohlc_verdict(len(ohlc.invalid), len(ohlc.rejected))
        outcome.results.append(dg.AssetCheckResult(
            asset_key=key, check_name=OHLC_VALID, passed=passed, severity=severity, description=description,
            metadata={
                "window": window,
                "rows_checked": ohlc.rows,
                "invalid_rows": len(ohlc.invalid),
                "invalid_samples": dg.MetadataValue.md(samples_table(ohlc.samples)),
                "rejected_rows": len(ohlc.rejected),
                "rejected_samples": dg.MetadataValue.md(samples_table(ohlc.rejected_samples)),
            },
        ))
    if GAP_COUNT in names:
        stored = stored_klines(warehouse, [series], start, end)[series.key]
        why = explanations(warehouse, [series], start, end)[series.key]

        def gap_verdict(gaps: GapAudit) -> tuple[bool, dg.AssetCheckSeverity, str, dict]:
            severity = dg.AssetCheckSeverity.ERROR if gaps.unexplained_bars else dg.AssetCheckSeverity.WARN
            description = f"{gaps.missing_bars} of {gaps.expected} bars missing, {gaps.unexplained_bars} unexplained"
            return gaps.missing_bars == 0, severity, description, {
                "expected_bars": gaps.expected,
                "missing_bars": gaps.missing_bars,
                "unexplained_bars": gaps.unexplained_bars,
                "known_gap_bars": gaps.known_bars,
                "rejected_bars": gaps.rejected_bars,
            }

        per_partition(GAP_COUNT, lambda part: gap_verdict(audit_gaps(series, stored, why, [(part.start, part.end)], now)))
        gaps = audit_gaps(series, stored, why, [(start, end)], now)
        passed, severity, description, counts = gap_verdict(gaps)
        unexplained = set(gaps.unexplained)
        lines = [
            f"- {describe_interval(gap, gaps.tf_millis)}{'' if gap in unexplained else ' (explained)'}"
            for gap in gaps.missing[:SAMPLES]
        ]
        longest = gaps.longest(gaps.missing)
        outcome.results.append(dg.AssetCheckResult(
            asset_key=key, check_name=GAP_COUNT, passed=passed, severity=severity, description=description,
            metadata={
                "window": window,
                **counts,
                "gaps": len(gaps.missing),
                "unexplained_gaps": len(gaps.unexplained),
                "first_gaps": dg.MetadataValue.md("\n".join(lines) or "none"),
                "longest_gap": dg.MetadataValue.text(describe_interval(longest, gaps.tf_millis) if longest else "none"),
            },
        ))
    if NO_UNCLOSED_BARS in names:
        unclosed = audit_unclosed(warehouse, series, start, end)

        def unclosed_part(part: PartitionWindow):
            count = count_within(unclosed.unclosed, part.start, part.end)
            return count == 0, dg.AssetCheckSeverity.ERROR, f"{count} bars stored before they closed", {
                "unclosed_rows": count}

        per_partition(NO_UNCLOSED_BARS, unclosed_part)
        outcome.results.append(dg.AssetCheckResult(
            asset_key=key, check_name=NO_UNCLOSED_BARS, passed=not unclosed.unclosed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{len(unclosed.unclosed)} bars stored before they closed",
            metadata={
                "window": window,
                "rows_checked": unclosed.rows,
                "unclosed_rows": len(unclosed.unclosed),
                "unclosed_samples": dg.MetadataValue.md(samples_table(unclosed.samples)),
            },
        ))
    return outcome


def run_klines_checks(
    instance: dg.DagsterInstance, assets_def: dg.AssetsDefinition, first_key: str, last_key: str
) -> list[dg.AssetCheckEvaluation]:
    """Run every check of a klines asset alone over partitions first_key..last_key, in this
    process and recorded in `instance` as any run is; the whole window's evaluations."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    (key,) = assets_def.keys
    result = dg.materialize(
        [assets_def],
        instance=instance,
        selection=dg.AssetSelection.checks(*(dg.AssetCheckKey(key, name) for name in KLINES_CHECKS)),
        tags={ASSET_PARTITION_RANGE_START_TAG: first_key, ASSET_PARTITION_RANGE_END_TAG: last_key},
    )
    return [e for e in result.get_asset_check_evaluations() if e.partition is None]
