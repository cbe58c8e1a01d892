"""The catalog: which instruments, timeframes and datasets to keep, loaded from YAML into typed,
validated objects. A bad entry fails at load with a message naming the entry and the field."""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marketdata_assets.timeframes import TIMEFRAMES

PACKAGED_CATALOG = "catalog.yaml"
PERP_DATASETS = ("klines", "funding", "open_interest", "long_short")
# What each venue and market can keep so far. OKX and Bybit: funding only (their klines,
# open interest and positioning are not fetched yet).
VENUE_DATASETS: dict[str, dict[str, tuple[str, ...]]] = {
    "binance": {"spot": ("klines",), "perp": PERP_DATASETS},
    "okx": {"perp": ("funding",)},
    "bybit": {"perp": ("funding",)},
}
SUPPORTED_VENUES = tuple(VENUE_DATASETS)
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9._-]*$")


class CatalogError(ValueError):
    """The catalog cannot be used; the message names the file, the entry and the field."""


class Instrument(BaseModel):
    """One tradable instrument on one venue, and the datasets kept for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    venue: str
    market: Literal["spot", "perp"]
    symbol: str
    timeframes: tuple[str, ...] = ()  # required when klines are kept
    start_date: dt.date | None = None
    datasets: tuple[str, ...] | None = None
    # Where klines come from: archive files where they exist, else REST (auto); only one of them.
    # None: the MARKETDATA_KLINES_SOURCE setting decides.
    source: Literal["auto", "archive", "rest"] | None = None

    @field_validator("venue")
    @classmethod
    def _known_venue(cls, venue: str) -> str:
        if venue not in SUPPORTED_VENUES:
            raise ValueError(f"unsupported venue {venue!r} (supported: {', '.join(SUPPORTED_VENUES)})")
        return venue

    @field_validator("symbol")
    @classmethod
    def _venue_native_symbol(cls, symbol: str) -> str:
        if not _SYMBOL.match(symbol):
            raise ValueError(
                f"{symbol!r} is not a venue-native symbol (upper-case letters and digits, "
                "e.g. BTCUSDT or BTC-USDT)"
            )
        return symbol

    @field_validator("timeframes")
    @classmethod
    def _supported_timeframes(cls, timeframes: tuple[str, ...]) -> tuple[str, ...]:
        for name in timeframes:
            if name not in TIMEFRAMES:
                raise ValueError(
                    f"unsupported timeframe {name!r} (supported: {', '.join(TIMEFRAMES)})"
                )
        if len(set(timeframes)) != len(timeframes):
            raise ValueError(f"timeframes are listed twice: {list(timeframes)}")
        return timeframes

    @field_validator("start_date")
    @classmethod
    def _not_in_future(cls, start: dt.date | None) -> dt.date | None:
        if start is not None and start > dt.datetime.now(dt.UTC).date():
            raise ValueError(f"start_date {start} is in the future")
        return start

    @model_validator(mode="after")
    def _datasets_fit_venue_and_market(self) -> Instrument:
        allowed = self.supported_datasets
        if not allowed:
            markets = ", ".join(VENUE_DATASETS[self.venue])
            raise ValueError(f"market: {self.venue} has no {self.market} datasets yet (supported: {markets})")
        for name in self.datasets or ():
            if name not in allowed:
                raise ValueError(
                    f"datasets: {name!r} is not a dataset of a {self.venue} {self.market} instrument "
                    f"(allowed: {', '.join(allowed)})"
                )
        if self.has_dataset("klines") and not self.timeframes:
            raise ValueError("timeframes: is required to keep klines (or narrow `datasets` to leave klines out)")
        if self.timeframes and "klines" not in allowed:  # (narrowed out by `datasets`, they wait unused)
            raise ValueError(f"timeframes: given, but {self.venue} klines are not supported yet")
        if self.venue == "okx" and self.market == "perp" and not self.symbol.endswith("-SWAP"):
            raise ValueError(f"symbol: {self.symbol!r} is not an OKX perpetual instrument id (like BTC-USDT-SWAP)")
        return self

    @property
    def supported_datasets(self) -> tuple[str, ...]:
        return VENUE_DATASETS[self.venue].get(self.market, ())

    @property
    def slug(self) -> str:
        """The symbol as an asset-key part: characters a key cannot hold become `_`."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.symbol)

    @property
    def key_prefix(self) -> str:
        return f"{self.venue}_{self.market}"

    def has_dataset(self, name: str) -> bool:
        """Whether this instrument keeps `name`: every dataset its venue and market support,
        unless `datasets` narrows them."""
        return name in (self.supported_datasets if self.datasets is None else self.datasets)

    def describe(self) -> str:
        return f"{self.venue} {self.market} {self.symbol}"


class Catalog(BaseModel):
    """The whole catalog. `instruments` carry their own start_date, defaulted from the top level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_date: dt.date
    instruments: tuple[Instrument, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _fill_start_and_reject_duplicates(self) -> Catalog:
        seen: dict[tuple[str, str, str], int] = {}
        filled = []
        for index, instrument in enumerate(self.instruments):
            ident = (instrument.venue, instrument.market, instrument.slug)
            if ident in seen:
                raise ValueError(
                    f"instruments[{index}] ({instrument.describe()}) repeats "
                    f"instruments[{seen[ident]}]: merge their timeframes into one entry"
                )
            seen[ident] = index
            if instrument.start_date is None:
                instrument = instrument.model_copy(update={"start_date": self.start_date})
            filled.append(instrument)
        object.__setattr__(self, "instruments", tuple(filled))
        return self

    def find(self, venue: str, market: str, symbol: str) -> Instrument | None:
        for instrument in self.instruments:
            if (instrument.venue, instrument.market, instrument.symbol) == (venue, market, symbol):
                return instrument
        return None


def _describe_location(raw: Any, loc: tuple[Any, ...]) -> str:
    """`instruments[2] (binance perp BTCUSDT), field 'timeframes'` from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "instruments" and isinstance(loc[1], int):
        entry = raw["instruments"][loc[1]] if isinstance(raw.get("instruments"), list) else {}
        label = f"instruments[{loc[1]}]"
        if isinstance(entry, dict):
            who = " ".join(str(entry.get(k)) for k in ("venue", "market", "symbol") if entry.get(k))
            label += f" ({who})" if who else ""
        fields = [str(part) for part in loc[2:] if not isinstance(part, int)]
        return f"{label}, field '{fields[0]}'" if fields else label
    if loc:
        return f"field '{loc[0]}'"
    return ""


def parse_catalog(raw: Any, origin: str) -> Catalog:
    """Validate an already-parsed YAML document; `origin` names it in error messages."""
    if not isinstance(raw, dict):
        raise CatalogError(f"catalog {origin}: expected a mapping with start_date and instruments")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        entry_failed = any(len(e["loc"]) > 1 and e["loc"][0] == "instruments" for e in errors)
        for error in errors:
            if entry_failed and tuple(error["loc"]) == ("instruments",):
                continue  # pydantic counts the failed entries out; their own errors say why
            where = _describe_location(raw, tuple(error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            elif error["type"] == "missing":
                message = "is required"
            problems.append(f"{where}: {message}" if where else message)
        raise CatalogError(f"catalog {origin}: " + "; ".join(problems)) from None


def load_catalog(path: Path | None = None) -> Catalog:
    """Load the catalog at `path`, or the packaged default when `path` is None."""
    if path is None:
        text = resources.files("marketdata_assets").joinpath(PACKAGED_CATALOG).read_text()
        origin = f"(packaged {PACKAGED_CATALOG})"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CatalogError(f"catalog {path}: cannot be read: {exc.strerror}") from None
        origin = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {origin}: not valid YAML: {exc}") from None
    return parse_catalog(raw, origin)
