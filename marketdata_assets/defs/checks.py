"""Asset checks of every klines asset: `ohlc_valid`, `gap_count` and `no_unclosed_bars`.

They are `check_specs` of the asset, so they run in the same run as its materialization, and
the asset can be subset to run them alone over any partition range. Partitioned checks are
preview in Dagster 1.13 and a range run records one evaluation without a partition, so every
result's metadata names the window it covered.
"""

import datetime as dt
import warnings

import dagster as dg

from marketdata_assets.audit import (
    SAMPLES,
    Series,
    audit_gaps,
    audit_ohlc,
    audit_unclosed,
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


def klines_check_results(
    warehouse: Warehouse, key: dg.AssetKey, series: Series, start: dt.datetime, end: dt.datetime,
    names: set[str], now: dt.datetime | None = None,
) -> list[dg.AssetCheckResult]:
    """The results of the checks `names` over the bars of [start, end)."""
    now = now or dt.datetime.now(dt.UTC)
    window = dg.MetadataValue.text(_window_text(start, end))
    results = []
    if OHLC_VALID in names:
        ohlc = audit_ohlc(warehouse, series, start, end)
        results.append(dg.AssetCheckResult(
            asset_key=key,
            check_name=OHLC_VALID,
            passed=ohlc.violations == 0 and ohlc.rejected == 0,
            severity=dg.AssetCheckSeverity.ERROR if ohlc.violations else dg.AssetCheckSeverity.WARN,
            description=(
                f"{ohlc.violations} stored bars break a rule; {ohlc.rejected} rows rejected at ingest"
            ),
            metadata={
                "window": window,
                "rows_checked": ohlc.rows,
                "invalid_rows": ohlc.violations,
                "invalid_samples": dg.MetadataValue.md(samples_table(ohlc.samples)),
                "rejected_rows": ohlc.rejected,
                "rejected_samples": dg.MetadataValue.md(samples_table(ohlc.rejected_samples)),
            },
        ))
    if GAP_COUNT in names:
        stored = stored_klines(warehouse, [series], start, end)[series.key]
        why = explanations(warehouse, [series], start, end)[series.key]
        gaps = audit_gaps(series, stored, why, [(start, end)], now)
        unexplained = set(gaps.unexplained)
        lines = [
            f"- {describe_interval(gap, gaps.tf_millis)}{'' if gap in unexplained else ' (explained)'}"
            for gap in gaps.missing[:SAMPLES]
        ]
        longest = gaps.longest(gaps.missing)
        results.append(dg.AssetCheckResult(
            asset_key=key,
            check_name=GAP_COUNT,
            passed=gaps.missing_bars == 0,
            severity=dg.AssetCheckSeverity.ERROR if gaps.unexplained_bars else dg.AssetCheckSeverity.WARN,
            description=(
                f"{gaps.missing_bars} of {gaps.expected} bars missing, {gaps.unexplained_bars} unexplained"
            ),
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
            },
        ))
    if NO_UNCLOSED_BARS in names:
        unclosed = audit_unclosed(warehouse, series, start, end)
        results.append(dg.AssetCheckResult(
            asset_key=key,
            check_name=NO_UNCLOSED_BARS,
            passed=unclosed.unclosed == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{unclosed.unclosed} bars stored before they closed",
            metadata={
                "window": window,
                "rows_checked": unclosed.rows,
                "unclosed_rows": unclosed.unclosed,
                "unclosed_samples": dg.MetadataValue.md(samples_table(unclosed.samples)),
            },
        ))
    return results
