"""Backfill plans as files: `marketdata backfill plan FILE [--wait | --local] [--dry-run]`.

    # config/backfill/majors.yaml
    datasets: [klines, funding]     # datasets, key parts (klines_1m) or groups (sentiment); or all
    timeframes: [1m, 1h]            # of the bar datasets; all when absent
    start: 2024-01-01               # as --from / --to: YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' or now
    end: now
    venue: [binance, okx]           # the instrument filter: lists, or all (the default)
    market: [perp]
    symbols: [BTCUSDT, BTC-USDT-SWAP]
    keys: all                       # series' keys (FRED ids, roots, …)
    concurrency: 2                  # backfills running at once under --wait

The plan becomes one partition-range backfill per PartitionsDefinition, as `marketdata backfill`
launches them. `--dry-run` says what would run (assets, partitions, range runs), the requests and
request weight each venue would be asked for (each dataset's `estimate`), and what a vendor that
bills by volume asks for it. A plan that names nothing, an unknown dataset, venue, market, symbol
or key, or a bad date is one line naming the file, the field and the value.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

FIELDS = ("datasets", "timeframes", "start", "end", "venue", "market", "symbols", "keys", "concurrency")
MARKETS = ("spot", "perp")


class PlanError(ValueError):
    """The plan cannot run as written: one line naming the file, the field and the value."""


@dataclass
class Plan:
    path: Path
    datasets: list[str] | None = None  # None: all
    timeframes: list[str] | None = None
    start: str | None = None
    end: str | None = None
    venue: list[str] | None = None
    market: list[str] | None = None
    symbols: list[str] | None = None
    keys: list[str] | None = None
    concurrency: int | None = None

    def fail(self, name: str, message: str) -> PlanError:
        return PlanError(f"plan {self.path}: {name}: {message}")


def load_plan(path: Path) -> Plan:
    """The plan in the YAML file at `path`; PlanError naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlanError(f"plan {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {path}: not YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"plan {path}: a mapping of {', '.join(FIELDS)} is expected")
    plan = Plan(path)
    for name, value in raw.items():
        if name not in FIELDS:
            raise plan.fail(str(name), f"not a field of a plan (fields: {', '.join(FIELDS)})")
        if name in ("start", "end"):
            setattr(plan, name, None if value is None else str(value))
        elif name == "concurrency":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise plan.fail(name, f"{value!r} is not a whole number of 1 or more")
            plan.concurrency = value
        else:
            setattr(plan, name, _listed(plan, name, value))
    if plan.market is not None:
        for market in plan.market:
            if market not in MARKETS:
                raise plan.fail("market", f"{market!r} is not a market ({', '.join(MARKETS)})")
    return plan


def _listed(plan: Plan, name: str, value: Any) -> list[str] | None:
    """A list field's values (a single value is a list of one; `all` is no filter)."""
    if value is None or value == "all":
        return None
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, str | int) or isinstance(v, bool) for v in values):
        raise plan.fail(name, f"{value!r} is not a list of names (or all)")
    return [str(v) for v in values]


@dataclass
class Planned:
    """What a plan resolves to: its window, the assets and the range runs."""

    plan: Plan
    start: dt.datetime | None
    end: dt.datetime
    specs: list[dg.AssetSpec]
    chosen: list = field(default_factory=list)  # backfills.Selection

    @property
    def partitions(self) -> int:
        return sum(selection.size for selection in self.chosen)


def resolve(plan: Plan, definitions: dg.Definitions, now: dt.datetime) -> Planned:
    """The assets and partitions `plan` names in `definitions`; PlanError naming the field."""
    from marketdata_assets import backfills
    from marketdata_assets.defs.ingest.partitions import partitions_between

    specs = list(definitions.resolve_all_asset_specs())
    named = {spec.key: backfills.asset_names(spec) for spec in specs}
    if plan.datasets is not None:
        known = sorted(set().union(*named.values()))
        for name in plan.datasets:
            if name not in known:
                raise plan.fail("datasets", f"unknown dataset {name!r} (the catalog has {', '.join(known)})")
        specs = [s for s in specs if named[s.key] & set(plan.datasets)]
    narrowed = Filter(plan.venue, plan.market, plan.symbols, plan.keys, plan.timeframes)
    try:
        specs = narrowed.narrow(specs, lambda spec: spec.metadata, "asset of the plan's datasets",
                                label=lambda name: f"{name}:")
    except ValueError as exc:
        raise PlanError(f"plan {plan.path}: {exc}") from None
    if not specs:
        raise PlanError(f"plan {plan.path}: names no asset of the catalog (its filters leave nothing)")
    try:
        start, end = backfills.window(plan.start, plan.end, now, names=("start", "end"))
    except backfills.BackfillError as exc:
        raise PlanError(f"plan {plan.path}: {exc}") from None
    planned = Planned(plan, start, end, specs)
    planned.chosen = backfills.selections(
        specs, lambda spec: partitions_between(spec.partitions_def, start, end, now))  # type: ignore[arg-type]
    if not planned.chosen:
        raise PlanError(f"plan {plan.path}: start..end: no partition of its assets overlaps "
                        f"{plan.start or 'the listing'} .. {plan.end or 'now'}")
    return planned


# What each filter reads of an asset's description (its metadata, or a series' venue, market and
# symbol) and which assets it applies to: symbols to instruments' (with a market), keys to series'.
_FILTERS = {
    "timeframes": (lambda about: about.get("timeframe"), lambda about: "timeframe" in about),
    "venue": (lambda about: about.get("venue"), lambda about: True),
    "market": (lambda about: about.get("market"), lambda about: True),
    "symbols": (lambda about: about.get("symbol"), lambda about: about.get("market") is not None),
    "keys": (lambda about: about.get("symbol"), lambda about: about.get("market") is None),
}


@dataclass
class Filter:
    """The instrument filter of `--venue`, `--market`, `--symbols` and `--keys`, with the meaning
    a plan gives them: each a list (None: no filter); `symbols` narrows the instruments' assets,
    `keys` the series'; an asset without a market is left out by `market`."""

    venue: list[str] | None = None
    market: list[str] | None = None
    symbols: list[str] | None = None
    keys: list[str] | None = None
    timeframes: list[str] | None = None  # of the bar datasets (a plan's; the CLI has none)

    @classmethod
    def of(cls, **options: Any) -> Filter | None:
        """From CLI options (tuples of comma-separated values); None when none is given."""
        found = {name: [v.strip() for raw in values for v in str(raw).split(",") if v.strip()] or None
                 for name, values in options.items()}
        return cls(**found) if any(found.values()) else None

    def narrow(self, items: list, about: Any, what: str = "asset", label: Any = lambda name: f"--{name}") -> list:
        """`items` kept by the filter; ValueError `--NAME 'VALUE' matches no …` (`label` names the
        field) for a value none of them has."""
        for name, (value, applies) in _FILTERS.items():
            wanted = getattr(self, name)
            if wanted is None:
                continue
            present = {str(value(about(i))) for i in items if applies(about(i)) and value(about(i)) is not None}
            for each in wanted:
                if each not in present:
                    raise ValueError(f"{label(name)} {each!r} matches no {what}"
                                     + (f" (they have {', '.join(sorted(present)[:12])})" if present else ""))
            items = [i for i in items if not applies(about(i)) or str(value(about(i))) in wanted]
        return items


def about_series(series: Any) -> dict[str, Any]:
    """What the filter reads of a catalog series."""
    return {"venue": series.venue, "market": series.market, "symbol": series.symbol}


@dataclass
class Estimate:
    """What a plan would ask one venue for."""

    venue: str
    requests: int = 0
    weight: int = 0
    exact: bool = True  # False: some dataset gave no estimate of its own (a request a partition assumed)


def estimates(planned: Planned, settings: Any) -> list[Estimate]:
    """The requests and weight each venue would be asked for, by the datasets' own estimates."""
    from marketdata_assets.catalog import load_catalog
    from marketdata_assets.datasets import dataset as dataset_named

    now = dt.datetime.now(dt.UTC)
    by_key = {dataset_named(s.dataset).asset_key(s): s for s in load_catalog(settings.catalog_path).all_series()}
    found: dict[str, Estimate] = {}
    for selection in planned.chosen:
        start = selection.partitions.time_window_for_partition_key(selection.first).start
        end = min(selection.partitions.time_window_for_partition_key(selection.last).end, now)
        for key in selection.keys:
            series = by_key[key]
            declared = dataset_named(series.dataset)
            guessed = declared.estimate(series, start, end, settings)
            if guessed is None:
                venue, requests, weight, exact = series.source, len(selection.partition_keys), len(selection.partition_keys), False
            else:
                venue, requests, weight = guessed
                exact = True
            total = found.setdefault(venue, Estimate(venue))
            total.requests += requests
            total.weight += weight
            total.exact &= exact
    return sorted(found.values(), key=lambda e: e.venue)
