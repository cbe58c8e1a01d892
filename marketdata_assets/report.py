"""`marketdata report`: the coverage audit as a table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from marketdata_assets.audit import describe_interval
from marketdata_assets.coverage import AssetCoverage, CheckOutcome, SeriesCoverage

FORMATS = ("table", "json", "csv")
GAPS_SHOWN = 5


def _moment(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else None


def check_partitions(check: CheckOutcome) -> dict[str, Any]:
    """A check as Dagster's UI shows it: its status in the list of checks, its partitions by the
    statuses of its partition grid (the passed and missing ones counted, the others listed), and
    its newest evaluation (the check's overview)."""
    found: dict[str, Any] = {"status": check.status}
    for name, keys in check.partitions.items():
        found[name] = len(keys) if name == "passed" else keys
    return found | {"missing": check.missing, "latest": check.latest, "latest_partition": check.latest_partition}


def report_record(item: AssetCoverage) -> dict[str, Any]:
    """One asset's row, as JSON and CSV give it."""
    gaps = item.gaps
    return {
        "asset": item.key.to_user_string(),
        "dataset": item.dataset,
        "venue": item.series.venue,
        "market": item.series.market,
        "symbol": item.series.symbol,
        "timeframe": item.series.timeframe,
        "first_bar": _moment(item.stored.first),
        "last_bar": _moment(item.stored.last),
        "rows": item.stored.rows,
        "partitions_materialized": item.materialized,
        "partitions_total": item.partitions_total,
        "partitions_failed": len(item.failed),
        "failed_partitions": item.failed,
        "expected_bars": gaps.expected,
        "missing_bars": gaps.missing_bars,
        "unexplained_gaps": len(gaps.unexplained),
        "unexplained_bars": gaps.unexplained_bars,
        "unexplained_gap_windows": [
            {"start": _moment(a), "end": _moment(b)} for a, b in gaps.unexplained
        ],
        "known_gap_bars": gaps.known_bars,
        "rejected_bars": gaps.rejected_bars,
        "rejected_rows": item.rejected_rows,
        "revisions": item.revisions,
        "checks": {check.name: check.state for check in item.checks},
        "check_partitions": {check.name: check_partitions(check) for check in item.checks},
        "disagreements": item.disagreements,
    }


def series_record(item: SeriesCoverage) -> dict[str, Any]:
    """An asset's row (of any dataset but klines), as JSON and CSV give it."""
    asset = item.asset
    unit = asset.dataset.unit
    return {
        "asset": asset.key.to_user_string(),
        "dataset": asset.dataset.name,
        "venue": asset.series.venue,
        "market": asset.series.market,
        "symbol": asset.series.symbol,
        "first_row": _moment(item.first),
        "last_row": _moment(item.last),
        "rows": item.rows,
        "partitions_materialized": item.materialized,
        "partitions_total": item.partitions_total,
        "partitions_failed": len(item.failed),
        "failed_partitions": item.failed,
        f"expected_{unit}": item.expected,
        f"missing_{unit}": item.missing,
        "missing_windows": [{"start": _moment(a), "end": _moment(b)} for a, b in item.missing_windows],
        "revisions": item.revisions,
        "checks": {check.name: check.state for check in item.checks},
        "check_partitions": {check.name: check_partitions(check) for check in item.checks},
    }


def render_json(items: list[AssetCoverage], others: list[SeriesCoverage] = ()) -> str:  # type: ignore[assignment]
    return json.dumps([report_record(item) for item in items] + [series_record(item) for item in others], indent=2)


def render_csv(items: list[AssetCoverage], others: list[SeriesCoverage] = ()) -> str:  # type: ignore[assignment]
    """One CSV: the klines columns, then the other datasets' (blank where a row has none)."""
    out = io.StringIO()
    records = [report_record(item) for item in items] + [series_record(item) for item in others]
    flat = []
    for record in records:
        row = {k: v for k, v in record.items() if k not in ("checks", "check_partitions")}
        row["failed_partitions"] = " ".join(record["failed_partitions"])
        if "disagreements" in record:
            row["disagreements"] = "; ".join(record["disagreements"])
        for name in ("unexplained_gap_windows", "missing_windows"):
            if name in record:
                row[name] = " ".join(f"{w['start']}/{w['end']}" for w in record[name])
        for name, state in record["checks"].items():
            row[f"check_{name}"] = state
        flat.append(row)
    if flat:
        fields = list(dict.fromkeys(name for row in flat for name in row))
        writer = csv.DictWriter(out, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    return out.getvalue()


def render_table(items: list[AssetCoverage], others: list[SeriesCoverage] = ()) -> str:  # type: ignore[assignment]
    """One line per asset, then the gaps, failures and disagreements of those that have any."""
    header = (
        f"{'asset':<34} {'first bar':<16}  {'last bar':<16}  {'partitions':>10} {'failed':>6}  "
        f"{'unexplained':>18}  {'known':>6} {'rejected':>8}  checks"
    )
    lines = [header]
    details = []
    for item in items:
        gaps = item.gaps
        unexplained = f"{len(gaps.unexplained)} ({gaps.unexplained_bars} bars)"
        checks = " ".join(f"{check.name}={check.state}" for check in item.checks)
        lines.append(
            f"{item.key.to_user_string():<34} {_moment(item.stored.first) or '-':<16}  "
            f"{_moment(item.stored.last) or '-':<16}  "
            f"{item.materialized:>4}/{item.partitions_total:<5} {len(item.failed):>6}  "
            f"{unexplained:>18}  {gaps.known_bars:>6} {gaps.rejected_bars:>8}  {checks}"
        )
        label = item.key.to_user_string()
        for gap in gaps.unexplained[:GAPS_SHOWN]:
            details.append(f"{label}: unexplained gap {describe_interval(gap, gaps.tf_millis)}")
        if len(gaps.unexplained) > GAPS_SHOWN:
            details.append(f"{label}: ... and {len(gaps.unexplained) - GAPS_SHOWN} more unexplained gaps")
        if item.failed:
            details.append(f"{label}: failed partitions {' '.join(item.failed)}")
        for note in item.disagreements:
            details.append(f"{label}: Dagster and the warehouse disagree: {note}")
        details += _check_details(label, item.checks)
    if not items:
        lines = []  # no klines asset asked for: no klines table
    if others:
        lines += [""] if lines else []
        lines.append(f"{'asset':<36} {'first':<16}  {'last':<16}  {'partitions':>10} {'failed':>6}  {'missing':>22}  checks")
    for item in others:
        label = item.asset.key.to_user_string()
        note = item.asset.dataset.missing_note
        missing = f"{item.missing} of {item.expected} {item.asset.dataset.unit}" + (f" {note}" if note else "")
        checks = " ".join(f"{check.name}={check.state}" for check in item.checks)
        lines.append(
            f"{label:<36} {_moment(item.first) or '-':<16}  {_moment(item.last) or '-':<16}  "
            f"{item.materialized:>4}/{item.partitions_total:<5} {len(item.failed):>6}  {missing:>22}  {checks}"
        )
        for a, b in item.missing_windows:
            details.append(f"{label}: missing [{_moment(a)}, {_moment(b)}) UTC")
        if item.failed:
            details.append(f"{label}: failed partitions {' '.join(item.failed)}")
        details += _check_details(label, item.checks)
    by_dataset: dict[str, list[SeriesCoverage]] = {}
    for item in others:
        by_dataset.setdefault(item.asset.dataset.name, []).append(item)
    for name, items_of in by_dataset.items():
        empty = [item.asset.key.path[-1] for item in items_of if not item.rows]
        if empty and len(items_of) > 1:  # what users ran by hand: which of the symbols asked for are absent
            details.append(f"{name}: {len(items_of) - len(empty)} of {len(items_of)} series stored; nothing stored "
                           f"of {', '.join(empty)}")
    if details:
        lines += ["", *details]
    return "\n".join(lines)


def _check_details(label: str, checks: list[CheckOutcome]) -> list[str]:
    lines = []
    for check in checks:
        if check.state in ("WARN", "ERROR"):
            lines.append(f"{label}: {check.name} {check.state} in {check.where}: {check.description}")
    not_evaluated: dict[tuple[str, ...], list[str]] = {}
    for check in checks:
        if check.not_evaluated:
            not_evaluated.setdefault(tuple(check.not_evaluated), []).append(check.name)
    for partitions, names in not_evaluated.items():
        lines.append(f"{label}: {', '.join(names)} not evaluated on {', '.join(partitions)}: the run that planned "
                     f"{'it' if len(names) == 1 else 'them'} failed there (Dagster shows Execution failed)")
    return lines


def render(items: list[AssetCoverage], others: list[SeriesCoverage], fmt: str) -> str:
    return {"table": render_table, "json": render_json, "csv": render_csv}[fmt](items, others)
