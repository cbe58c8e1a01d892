"""The dataset registry: every module of this package that declares `DATASET` is a dataset.

A new dataset is a new module here (with its source, its emulator, its SQL and a catalog
entry); nothing else lists datasets.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from marketdata_assets.datasets.base import Bounds, Dataset, InstrumentDataset, Missing

__all__ = ["Bounds", "Dataset", "InstrumentDataset", "Missing", "all_datasets", "dataset", "groups", "venue_datasets"]


@cache
def all_datasets() -> tuple[Dataset, ...]:
    """Every dataset, in their declared order."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        declared = getattr(importlib.import_module(f"{__name__}.{module.name}"), "DATASET", None)
        if declared is not None:
            found.append(declared)
    return tuple(sorted(found, key=lambda d: (d.position, d.name)))


def dataset(name: str) -> Dataset:
    """The dataset called `name`; KeyError naming the known ones."""
    for candidate in all_datasets():
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown dataset {name!r} (known: {', '.join(d.name for d in all_datasets())})")


@cache
def groups() -> dict[str, tuple[str, ...]]:
    """Each family name (sentiment, macro, …) and the datasets in it (computed once: do not change it)."""
    found: dict[str, list[str]] = {}
    for each in all_datasets():
        if each.group:
            found.setdefault(each.group, []).append(each.name)
    return {group: tuple(names) for group, names in found.items()}


@cache
def venue_datasets() -> dict[str, dict[str, tuple[str, ...]]]:
    """venue -> market -> the datasets a catalog instrument there can keep (computed once, as the
    catalog asks it for every instrument: do not change it)."""
    found: dict[str, dict[str, list[str]]] = {}
    for each in all_datasets():
        for venue, markets in each.instrument_venues.items():
            for market in markets:
                found.setdefault(venue, {}).setdefault(market, []).append(each.name)
    return {venue: {market: tuple(names) for market, names in markets.items()} for venue, markets in found.items()}
