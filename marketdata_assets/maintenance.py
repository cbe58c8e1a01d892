"""Documented exchange maintenance: windows in which a venue produced no bars at all.

The calendar is the packaged `maintenance.yaml`. It seeds `market_data.known_gaps`, where the
checks and the report find it, beside the windows `marketdata gaps verify` found empty.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from importlib import resources

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marketdata_assets.schemas import KNOWN_GAPS
from marketdata_assets.warehouse import Warehouse

PACKAGED_CALENDAR = "maintenance.yaml"


class MaintenanceWindow(BaseModel):
    """[start, end) UTC during which `venue`'s `market` traded nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    venue: str
    market: str
    start: dt.datetime
    end: dt.datetime
    reason: str
    reference: str

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, moment: dt.datetime) -> dt.datetime:
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _ordered(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class MaintenanceCalendar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: tuple[MaintenanceWindow, ...] = Field(default=())


@cache
def maintenance_windows() -> tuple[MaintenanceWindow, ...]:
    """The packaged calendar; a broken entry fails naming the entry and the field."""
    text = resources.files("marketdata_assets").joinpath(PACKAGED_CALENDAR).read_text()
    try:
        return MaintenanceCalendar.model_validate(yaml.safe_load(text)).windows
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ValueError(f"{PACKAGED_CALENDAR}: {problems}") from None


def maintenance_frame(windows: tuple[MaintenanceWindow, ...]) -> pl.DataFrame:
    """The calendar as rows of `market_data.known_gaps`: every symbol and timeframe of the market."""
    stamp = dt.datetime.now(dt.UTC)
    return pl.DataFrame(
        {
            "venue": [w.venue for w in windows],
            "market": [w.market for w in windows],
            "symbol": ["*"] * len(windows),
            "timeframe": ["*"] * len(windows),
            "gap_start": [w.start for w in windows],
            "gap_end": [w.end for w in windows],
            "reason": [f"{w.reason} ({w.reference})" for w in windows],
            "source": ["maintenance"] * len(windows),
            "ingested_at": [stamp] * len(windows),
        },
        schema=KNOWN_GAPS.schema,
    )


_seeded: set[str] = set()


def seed_maintenance(warehouse: Warehouse) -> None:
    """Write the calendar into known_gaps, once per warehouse and process."""
    if warehouse.url in _seeded:
        return
    windows = maintenance_windows()
    if windows:
        warehouse.upsert(KNOWN_GAPS, maintenance_frame(windows))
    _seeded.add(warehouse.url)
