"""`marketdata metrics`: Prometheus metrics of the backfills and the warehouse, under the names
quant platforms already scrape, served by prometheus_client from a custom collector that reads
the Dagster instance and the warehouse at each scrape (no exposition format written here).

    backfill_jobs_in_progress                        partition backfills requested and runs going
    backfill_last_timestamp{node_id,interval}        the newest stored row's time (Unix seconds)
    backfill_retry_total{node_id,interval}           requests retried (5xx, timeouts, 429s) by its runs
    backfill_failure_total{node_id,interval}         partitions its runs failed to materialize
    marketdata_rows{node_id,interval}                rows stored
    marketdata_unexplained_missing_rows{node_id,interval}  rows expected, missing and not explained (gap bars)
    marketdata_check_passed{node_id,check}           the newest result of each check: 1 passed, 0 failed

`node_id` is the asset key (`binance_spot/klines_1m/BTCUSDT`), `interval` its row step in
seconds where it has one (bars: the timeframe), else empty. Counters are read incrementally:
each scrape reads only the materializations and failures recorded since the one before. The
coverage (rows, missing, checks) is the report's, computed at most every `refresh_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from marketdata_assets.settings import Settings

RETRIED = ("retries", "http_429")  # in the run totals each run observes on an asset
LABELS = ["node_id", "interval"]


@dataclass
class _Tally:
    """Running totals of one asset's events, and where the last read stopped."""

    retries: float = 0.0
    failures: int = 0
    observations_cursor: str | None = None
    failures_cursor: str | None = None


@dataclass
class _Coverage:
    taken: float = 0.0
    rows: dict[str, tuple[str, int, float | None, int]] = field(default_factory=dict)  # key -> interval, rows, last, missing
    checks: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> check -> state


class BackfillCollector(Collector):
    """What `marketdata metrics` serves, read from `instance` and the warehouse of `settings`."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance, refresh_seconds: float = 30.0):
        from marketdata_assets.catalog import load_catalog
        from marketdata_assets.datasets import dataset

        self.settings = settings
        self.instance = instance
        self.refresh_seconds = refresh_seconds
        catalog = load_catalog(settings.catalog_path)
        self._series = {dataset(s.dataset).asset_key(s): s for s in catalog.all_series()}
        self._catalog = catalog
        self._tallies = {key: _Tally() for key in self._series}
        self._coverage = _Coverage()
        self._lock = threading.Lock()

    def _interval(self, key: dg.AssetKey) -> str:
        from marketdata_assets.timeframes import timeframe

        name = self._series[key].options.get("timeframe")
        return str(timeframe(name).seconds) if name else ""

    def collect(self) -> Iterator[Any]:
        with self._lock:
            yield self._jobs_in_progress()
            yield from self._counters()
            yield from self._stored()

    def _jobs_in_progress(self) -> GaugeMetricFamily:
        from dagster._core.execution.backfill import BulkActionStatus

        from marketdata_assets.dagster_internals import NOT_FINISHED_STATUSES

        backfills = len(self.instance.get_backfills(status=BulkActionStatus.REQUESTED))
        runs = [r for r in self.instance.get_runs(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES))
                if "dagster/backfill" not in r.tags]
        return GaugeMetricFamily("backfill_jobs_in_progress",
                                 "Partition backfills requested and not finished, and runs going outside them",
                                 value=backfills + len(runs))

    def _counters(self) -> Iterator[CounterMetricFamily]:
        retries = CounterMetricFamily("backfill_retry", "Requests its runs retried (5xx, timeouts, 429s)", labels=LABELS)
        failures = CounterMetricFamily("backfill_failure", "Partitions that failed to materialize", labels=LABELS)
        for key, tally in self._tallies.items():
            self._read_new(key, tally)
            labels = [key.to_user_string(), self._interval(key)]
            retries.add_metric(labels, tally.retries)
            failures.add_metric(labels, tally.failures)
        yield retries
        yield failures

    def _read_new(self, key: dg.AssetKey, tally: _Tally) -> None:
        """Add what was recorded of `key` since the last read: the totals each run observes on the
        asset (failed runs' included), and its failed partitions."""
        while True:
            found = self.instance.fetch_observations(key, limit=1000, cursor=tally.observations_cursor, ascending=True)
            for record in found.records:
                observation = record.event_log_entry.asset_observation
                run = observation.metadata.get("run") if observation else None
                totals = run.value if run is not None else {}
                if isinstance(totals, dict):
                    tally.retries += sum(float(totals.get(name) or 0) for name in RETRIED)
                    tally.failures += len(totals.get("partitions_failed") or ())
            tally.observations_cursor = found.cursor
            if not found.has_more:
                break
        while True:  # a run that died before its totals: Dagster's own failure events, where it writes them
            failed = self.instance.fetch_failed_materializations(key, limit=1000, cursor=tally.failures_cursor,
                                                                 ascending=True)
            tally.failures += len(failed.records)
            tally.failures_cursor = failed.cursor
            if not failed.has_more:
                break

    def _stored(self) -> Iterator[GaugeMetricFamily]:
        coverage = self._refreshed()
        last = GaugeMetricFamily("backfill_last_timestamp", "The newest stored row's time, Unix seconds", labels=LABELS)
        rows = GaugeMetricFamily("marketdata_rows", "Rows stored", labels=LABELS)
        missing = GaugeMetricFamily("marketdata_unexplained_missing_rows",
                                    "Rows expected, missing and not explained (klines: unexplained gap bars)",
                                    labels=LABELS)
        checks = GaugeMetricFamily("marketdata_check_passed", "The newest result of each check: 1 passed, 0 failed",
                                   labels=["node_id", "check"])
        for node_id, (interval, count, newest, lacking) in sorted(coverage.rows.items()):
            rows.add_metric([node_id, interval], count)
            missing.add_metric([node_id, interval], lacking)
            if newest is not None:
                last.add_metric([node_id, interval], newest)
        for node_id, states in sorted(coverage.checks.items()):
            for check, state in sorted(states.items()):
                if state != "not run":  # passed, or the worst failure recorded: ERROR, WARN
                    checks.add_metric([node_id, check], 1.0 if state == "passed" else 0.0)
        yield from (last, rows, missing, checks)

    def _refreshed(self) -> _Coverage:
        """The report's coverage of every series, again when older than refresh_seconds."""
        if self._coverage.taken and time.monotonic() - self._coverage.taken < self.refresh_seconds:
            return self._coverage
        from marketdata_assets.coverage import klines_assets, klines_coverage, series_assets, series_coverage
        from marketdata_assets.warehouse import open_warehouse

        warehouse = open_warehouse(self.settings.warehouse_url)
        found = _Coverage(time.monotonic())
        for item in klines_coverage(self.instance, warehouse, klines_assets(self._catalog, [])):
            last = item.stored.last.timestamp() if item.stored.last else None
            found.rows[item.key.to_user_string()] = (self._interval(item.key), item.stored.rows, last,
                                                     item.gaps.unexplained_bars)
            found.checks[item.key.to_user_string()] = {check.name: check.state for check in item.checks}
        for item in series_coverage(self.instance, warehouse, series_assets(self._catalog, [], [])):
            key = item.asset.key
            last = item.last.timestamp() if item.last else None
            found.rows[key.to_user_string()] = (self._interval(key), item.rows, last, item.missing)
            found.checks[key.to_user_string()] = {check.name: check.state for check in item.checks}
        self._coverage = found
        return found


def registry_for(settings: Settings, instance: dg.DagsterInstance, refresh_seconds: float = 30.0) -> CollectorRegistry:
    """A registry holding only our collector (no process metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackfillCollector(settings, instance, refresh_seconds))
    return registry
