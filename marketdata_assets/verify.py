"""`marketdata gaps verify`: fetch every unexplained gap again, so audits converge.

Bars that come back are stored (valid ones in klines, invalid ones in rejected_rows). What the
exchange again returns nothing for is recorded in known_gaps as verified empty, so the next audit
counts it as explained. Nothing is ever filled with invented candles.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from marketdata_assets.audit import Interval, count_bars, describe_interval, subtract_intervals
from marketdata_assets.coverage import AssetCoverage
from marketdata_assets.schemas import KLINES, KNOWN_GAPS, REJECTED_ROWS
from marketdata_assets.sources.errors import UpstreamError
from marketdata_assets.validation import rejected_frame
from marketdata_assets.warehouse import Warehouse

VERIFIED = "verified"


@dataclass
class GapVerdict:
    """What a second fetch of one unexplained gap found."""

    asset: str
    gap: Interval
    tf_millis: int
    stored: int = 0
    rejected: int = 0
    empty: list[Interval] = field(default_factory=list)  # recorded as verified empty
    error: str | None = None

    @property
    def empty_bars(self) -> int:
        return count_bars(self.empty, self.tf_millis)

    def describe(self) -> str:
        where = f"{self.asset} {describe_interval(self.gap, self.tf_millis)}"
        if self.error:
            return f"{where}: could not be fetched: {self.error}"
        empty_bars = self.empty_bars
        found = []
        if self.stored:
            found.append(f"{self.stored} bars fetched and stored")
        if self.rejected:
            found.append(f"{self.rejected} bars rejected again (kept in rejected_rows)")
        if empty_bars:
            found.append(f"{empty_bars} bars verified empty, recorded as a known gap")
        return f"{where}: {'; '.join(found) or 'nothing to do'}"


def _verified_gaps(item: AssetCoverage, empty: list[Interval], reason: str) -> pl.DataFrame:
    stamp = dt.datetime.now(dt.UTC)
    series = item.series
    return pl.DataFrame(
        {
            "venue": [series.venue] * len(empty),
            "market": [series.market] * len(empty),
            "symbol": [series.symbol] * len(empty),
            "timeframe": [series.timeframe] * len(empty),
            "gap_start": [a for a, _ in empty],
            "gap_end": [b for _, b in empty],
            "reason": [reason] * len(empty),
            "source": [VERIFIED] * len(empty),
            "ingested_at": [stamp] * len(empty),
        },
        schema=KNOWN_GAPS.schema,
    )


async def _read(source: Any, series: Any, start: dt.datetime, end: dt.datetime) -> tuple[pl.DataFrame, list, str | None]:
    """(bars, rejected frames, why the window could not be read) of one window from `source`."""
    try:
        frames = [frame async for frame in source.read(series, start, end)]
    except UpstreamError as exc:
        return KLINES.empty_frame(), [], str(exc)
    outcome = source.outcome()
    failed = "; ".join(failure.describe() for failure in outcome.failures) or None
    return (pl.concat(frames) if frames else KLINES.empty_frame()), outcome.rejected, failed


async def _verify_asset(
    item: AssetCoverage, source_for: Callable[[AssetCoverage], Any], warehouse: Warehouse,
    report: Callable[[GapVerdict], None],
) -> list[GapVerdict]:
    series = item.series
    step = dt.timedelta(milliseconds=series.tf.millis)
    verdicts = []
    for gap in item.gaps.unexplained:
        verdict = GapVerdict(item.key.to_user_string(), gap, series.tf.millis)
        async with source_for(item) as source:  # a source a gap: its outcome is that gap's
            frame, rejected_frames, verdict.error = await _read(source, item.catalog_series, gap[0], gap[1])
        if verdict.error is None:
            rejected = rejected_frame(rejected_frames)
            if frame.height:
                verdict.stored = await asyncio.to_thread(warehouse.upsert, KLINES, frame)
            if rejected.height:
                verdict.rejected = await asyncio.to_thread(warehouse.upsert, REJECTED_ROWS, rejected)
            came_back = [(t, t + step) for t in frame["open_time"].to_list() + rejected["open_time"].to_list()]
            verdict.empty = subtract_intervals([gap], sorted(came_back))
            if verdict.empty:
                reason = f"no bars on a second fetch (marketdata gaps verify, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)"
                await asyncio.to_thread(warehouse.upsert, KNOWN_GAPS, _verified_gaps(item, verdict.empty, reason))
        report(verdict)
        verdicts.append(verdict)
    return verdicts


def verify_gaps(
    items: list[AssetCoverage], source_for: Callable[[AssetCoverage], Any], warehouse: Warehouse,
    report: Callable[[GapVerdict], None] = lambda verdict: None,
) -> list[GapVerdict]:
    """Fetch each unexplained gap of `items` again over REST (`source_for(item)`: the venue's
    klines source, REST only), store what comes back and record what does not as verified empty.
    `report` sees each verdict as it is reached."""

    async def run() -> list[GapVerdict]:
        verdicts: list[GapVerdict] = []
        for item in items:
            verdicts += await _verify_asset(item, source_for, warehouse, report)
        return verdicts

    return asyncio.run(run())
