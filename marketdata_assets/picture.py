"""Coverage a person can see: each asset's partitions as cells, rows stored against rows expected,
coloured by what the audit found (`marketdata report --html FILE`, and a Markdown table on the
asset in Dagster).

A partition is one of:
  complete          materialized, nothing missing
  explained         materialized, every missing row explained (maintenance, verified empty, rejected)
  gaps              materialized, some missing row unexplained
  failed            its latest run failed (not a gap: nothing is expected of it until it lands)
  not_materialized  never materialized (rows stored there anyway are shown, not counted as coverage)

Rows expected in a materialized partition are the rows stored there plus the rows missing there,
by the same audit `marketdata report` runs, so the cells add up to the report's figures.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from marketdata_assets.audit import count_bars, rows_within
from marketdata_assets.coverage import AssetCoverage, SeriesCoverage
from marketdata_assets.wording import counted

STATES = ("complete", "explained", "gaps", "failed", "not_materialized")
_COLOURS = {"complete": "#2f9e5b", "explained": "#9fd37f", "gaps": "#f29d38", "failed": "#d9433a",
            "not_materialized": "#d5dae0"}
_LABELS = {"complete": "complete", "explained": "missing rows, all explained", "gaps": "unexplained gaps",
           "failed": "failed", "not_materialized": "not materialized"}
_SYMBOLS = {"complete": "■", "explained": "▣", "gaps": "▲", "failed": "✖", "not_materialized": "·"}


@dataclass(frozen=True)
class Cell:
    partition: str
    state: str
    stored: int
    expected: int | None  # None where nothing is audited (not materialized, failed)
    unexplained: int = 0
    explained: int = 0

    def describe(self, unit: str) -> str:
        if self.expected is None:
            kept = f"; {self.stored} {unit} stored anyway" if self.stored else ""
            return f"{self.partition}: {_LABELS[self.state]}{kept}"
        found = f"{self.partition}: {self.stored} of {self.expected} {unit} stored"
        if self.unexplained:
            found += f", {self.unexplained} missing unexplained"
        if self.explained:
            found += f", {self.explained} missing explained"
        return found


@dataclass(frozen=True)
class Row:
    """One asset's cells, and what its report line says of it."""

    asset: str
    unit: str
    cells: list[Cell]

    def count(self, state: str) -> int:
        return sum(1 for cell in self.cells if cell.state == state)


def _overlap(windows: Iterable[tuple[dt.datetime, dt.datetime]], start: dt.datetime, end: dt.datetime):
    for a, b in windows:
        if a < end and start < b:
            yield max(a, start), min(b, end)


def _cell(key: str, materialized: set[str], failed: set[str], stored: int, missing: int, unexplained: int) -> Cell:
    """A partition's cell: audited (rows expected = stored + missing) only if it is materialized."""
    if key in failed or key not in materialized:
        return Cell(key, "failed" if key in failed else "not_materialized", stored, None)
    state = "gaps" if unexplained else "explained" if missing else "complete"
    return Cell(key, state, stored, stored + missing, unexplained, missing - unexplained)


def _keys_in(partitions: dg.TimeWindowPartitionsDefinition, windows: Sequence[tuple[dt.datetime, dt.datetime]]) -> set[str]:
    keys = set()
    for start, end in windows:
        for key in partitions.get_partition_keys_in_time_window(dg.TimeWindow(start, end)):
            keys.add(key)
    return keys


def klines_row(item: AssetCoverage, now: dt.datetime) -> Row:
    gaps, partitions = item.gaps, item.partitions
    materialized, failed = _keys_in(partitions, item.materialized_windows), set(item.failed)
    cells = []
    for key in partitions.get_partition_keys(current_time=now):
        window = partitions.time_window_for_partition_key(key)
        cells.append(_cell(
            key, materialized, failed, rows_within(item.stored.rows_by_day, window.start, window.end),
            count_bars(_overlap(gaps.missing, window.start, window.end), gaps.tf_millis),
            count_bars(_overlap(gaps.unexplained, window.start, window.end), gaps.tf_millis),
        ))
    return Row(item.key.to_user_string(), "bars", cells)


def series_row(item: SeriesCoverage, now: dt.datetime) -> Row:
    """Cells of a dataset audited by its `missing` rule: its missing windows are on the dataset's
    cadence, so the rows missing in a partition are the share of the missing rows its part of the
    windows' span holds."""
    asset = item.asset
    partitions = asset.partitions
    materialized_keys, failed = _keys_in(partitions, item.materialized_windows), set(item.failed)
    windows = item.every_missing_window
    span = sum((b - a).total_seconds() for a, b in windows)
    cells = []
    for key in partitions.get_partition_keys(current_time=now):
        window = partitions.time_window_for_partition_key(key)
        inside = sum((b - a).total_seconds() for a, b in _overlap(windows, window.start, window.end))
        missing = round(item.missing * inside / span) if span else 0
        # no rule explains a missing row of these datasets: every one is unexplained
        cells.append(_cell(key, materialized_keys, failed, rows_within(item.rows_by_day, window.start, window.end),
                           missing, missing))
    return Row(asset.key.to_user_string(), asset.dataset.unit, cells)


def rows_of(items: Sequence[AssetCoverage], others: Sequence[SeriesCoverage], now: dt.datetime | None = None) -> list[Row]:
    now = now or dt.datetime.now(dt.UTC)
    return [klines_row(item, now) for item in items] + [series_row(item, now) for item in others]


# --- Markdown: one asset, years down and months across -----------------------------------------------


def markdown(row: Row) -> str:
    """The asset's months as a year-by-month table of symbols, then the legend and the partitions
    that are not complete, each with its figures."""
    by_month: dict[tuple[int, int], list[Cell]] = {}
    for cell in row.cells:
        by_month.setdefault((int(cell.partition[:4]), int(cell.partition[5:7])), []).append(cell)
    if not by_month:
        return "no partitions yet"
    rank = {state: index for index, state in enumerate(("complete", "explained", "not_materialized", "gaps", "failed"))}
    years = sorted({year for year, _ in by_month})
    lines = ["| year | " + " | ".join(f"{m:02d}" for m in range(1, 13)) + " |", "|---" * 13 + "|"]
    for year in years:
        marks = []
        for month in range(1, 13):
            cells = by_month.get((year, month))
            marks.append(_SYMBOLS[max((c.state for c in cells), key=rank.__getitem__)] if cells else " ")
        lines.append(f"| {year} | " + " | ".join(marks) + " |")
    lines += ["", "  ".join(f"{_SYMBOLS[state]} {_LABELS[state]} ({row.count(state)})" for state in STATES)]
    notable = [cell for cell in row.cells if cell.state in ("gaps", "explained", "failed")]
    lines += [f"- {cell.describe(row.unit)}" for cell in notable[:20]]
    if len(notable) > 20:
        lines.append(f"- … and {len(notable) - 20} more")
    return "\n".join(lines)


# --- HTML: every asset, one row each ------------------------------------------------------------------


def render_html(rows: Sequence[Row], generated: dt.datetime) -> str:
    """A self-contained page (no script, no outside resource): a heatmap of every asset's
    partitions, each cell titled with its figures, and a legend with the counts."""
    esc = html.escape
    legend = "".join(
        f'<span class="key"><i style="background:{_COLOURS[state]}"></i>{esc(_LABELS[state])} '
        f'(<b data-count="{state}">{sum(row.count(state) for row in rows)}</b>)</span>'
        for state in STATES
    )
    columns = sorted({cell.partition for row in rows for cell in row.cells})
    years: dict[str, int] = {}
    for key in columns:
        years[key[:4]] = years.get(key[:4], 0) + 1
    header = "".join(f'<th class="y" colspan="{span}">{year}</th>' for year, span in years.items())
    body = []
    for row in rows:
        mine = {cell.partition: cell for cell in row.cells}
        cells = "".join(
            f'<td class="c" data-partition="{cell.partition}" data-state="{cell.state}" '
            f'style="background:{_COLOURS[cell.state]}" title="{esc(cell.describe(row.unit))}"></td>'
            if (cell := mine.get(key)) else '<td class="c"></td>'
            for key in columns
        )
        stored = sum(cell.stored for cell in row.cells)
        expected = sum(cell.expected or 0 for cell in row.cells)
        summary = (f"{stored} {row.unit} stored; of the materialized partitions' {expected}, "
                   f"{sum(c.unexplained for c in row.cells)} missing unexplained")
        body.append(
            f'<tr data-asset="{esc(row.asset)}"><th title="{esc(summary)}">{esc(row.asset)}</th>'
            f'<td class="n">{row.count("complete") + row.count("explained") + row.count("gaps")}/{len(row.cells)}</td>'
            f'<td class="n">{row.count("failed")}</td><td class="n">{sum(c.unexplained for c in row.cells)}</td>'
            f'{cells}</tr>'
        )
    first, last = (columns[0], columns[-1]) if columns else ("", "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>marketdata coverage</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 24px; color: #1d232b; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} p {{ margin: 0 0 12px; color: #555; }}
.key {{ margin-right: 16px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px; }}
table.assets {{ border-collapse: collapse; margin-top: 12px; }}
table.assets > tbody > tr > th {{ text-align: left; font-weight: 500; padding: 2px 12px 2px 0; white-space: nowrap; }}
table.assets > thead th {{ text-align: left; font-weight: 600; padding: 2px 12px 4px 0; }}
td.n {{ text-align: right; padding: 0 12px 0 0; font-variant-numeric: tabular-nums; }}
td.c {{ width: 9px; min-width: 9px; height: 16px; padding: 0; border: 1px solid #fff; }}
th.y {{ font-weight: 500; color: #555; text-align: left; border-left: 1px solid #aaa; padding-left: 2px; }}
</style></head><body>
<h1>Coverage</h1>
<p>{counted(len(rows), "asset")}, partitions {esc(first)} to {esc(last)}; as of {generated:%Y-%m-%d %H:%M} UTC.
Hover over a cell for its rows stored against rows expected.</p>
<div>{legend}</div>
<table class="assets"><thead><tr><th>asset</th><th>landed</th><th>failed</th><th>unexplained</th>{header}</tr>
</thead><tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


# --- one asset, from inside its run -------------------------------------------------------------------


def asset_row(
    instance: dg.DagsterInstance, warehouse, dataset, series, key: dg.AssetKey,
    partitions: dg.TimeWindowPartitionsDefinition, failed_now: Iterable[str] = (), now: dt.datetime | None = None,
) -> Row:
    """The picture of one asset as `marketdata report --html` draws it; `failed_now`: partitions
    the run under way failed (Dagster records them when the run ends)."""
    import dataclasses

    from marketdata_assets.coverage import KlinesAsset, SeriesAsset, klines_coverage, series_coverage
    from marketdata_assets.datasets.klines import klines_series
    from marketdata_assets.timeframes import timeframe

    now = now or dt.datetime.now(dt.UTC)
    if dataset.detailed_audit:
        bars = klines_series(series.instrument, timeframe(series.options["timeframe"]), partitions)
        (item,) = klines_coverage(instance, warehouse, [KlinesAsset(key, series.instrument, bars, partitions)], now)
        item = dataclasses.replace(item, failed=sorted(set(item.failed) | set(failed_now)))
        return klines_row(item, now)
    (found,) = series_coverage(instance, warehouse, [SeriesAsset(key, dataset, series, partitions)], now)
    found = dataclasses.replace(found, failed=sorted(set(found.failed) | set(failed_now)))
    return series_row(found, now)
