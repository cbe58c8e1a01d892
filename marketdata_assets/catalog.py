"""The catalog: which instruments, timeframes and series to keep, loaded from YAML into typed,
validated objects. A bad entry fails at load with a message naming the entry and the field.

Two lists, either of which may be empty or absent: `instruments:` (venue, market, symbol, the
datasets an exchange instrument keeps) and `series:` (source, dataset, optional keys, for every
source that has no instruments). Both become `Series`, one per asset; which datasets exist, and
what each accepts, comes from the dataset registry (`marketdata_assets.datasets`)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

# libyaml's loader where the wheel has it: ten times quicker on a catalog of hundreds of instruments
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from marketdata_assets.timeframes import TIMEFRAMES

PACKAGED_CATALOG = "catalog.yaml"
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9._-]*")  # the whole symbol (fullmatch): no whitespace, no newline


def _venue_datasets() -> dict[str, dict[str, tuple[str, ...]]]:
    """venue -> market -> datasets, as the registry declares them (imported late: the dataset
    modules build on the catalog's types)."""
    from marketdata_assets.datasets import venue_datasets

    return venue_datasets()


def _listing_field(dataset_name: str) -> str | None:
    """The instrument field that must name something for an instrument to keep `dataset_name`
    (klines: `timeframes`; resampled bars: `derived`), if the dataset declares one (registry,
    imported late)."""
    from marketdata_assets.datasets import dataset

    return dataset(dataset_name).instrument_field


def _streams(venue: str) -> bool:
    """Whether `marketdata stream` can stream `venue`'s klines (the klines dataset says; imported late)."""
    from marketdata_assets.datasets.klines import STREAM_APIS

    return venue in STREAM_APIS


def _has_archive(venue: str) -> bool:
    """Whether `venue`'s klines have an archive besides REST (the klines dataset says; imported late)."""
    from marketdata_assets.datasets.klines import REST_CLIENTS

    return venue not in REST_CLIENTS


def slug(text: str) -> str:
    """`text` as an asset-key part: characters a key cannot hold become `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _start_not_in_future(start: dt.date | None) -> dt.date | None:
    if start is not None and start > dt.datetime.now(dt.UTC).date():
        raise ValueError(f"start_date {start} is in the future")
    return start


def _earliest(dataset_name: str) -> dt.date | None:
    """The first day a dataset has anywhere, if it declares one (registry, imported late)."""
    from marketdata_assets.datasets import dataset

    return dataset(dataset_name).earliest


class CatalogError(ValueError):
    """The catalog cannot be used; the message names the file, the entry and the field."""


class Instrument(BaseModel):
    """One tradable instrument on one venue, and the datasets kept for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    venue: str
    market: Literal["spot", "perp"]
    symbol: str
    timeframes: tuple[str, ...] = ()  # required when klines are kept
    # Coarser timeframes built from the stored 1m bars (datasets/resampled.py), not fetched.
    derived: tuple[str, ...] = ()
    # Klines streamed live by `marketdata stream` (stream.py): true for every timeframe, or a list.
    stream: bool | tuple[str, ...] = False
    start_date: dt.date | None = None
    datasets: tuple[str, ...] | None = None
    # Where klines come from: archive files where they exist, else REST (auto); only one of them.
    # None: the MARKETDATA_KLINES_SOURCE setting decides.
    source: Literal["auto", "archive", "rest"] | None = None

    @field_validator("venue")
    @classmethod
    def _known_venue(cls, venue: str) -> str:
        if venue not in _venue_datasets():
            raise ValueError(f"unsupported venue {venue!r} (supported: {', '.join(_venue_datasets())})")
        return venue

    @field_validator("symbol")
    @classmethod
    def _venue_native_symbol(cls, symbol: str) -> str:
        if not _SYMBOL.fullmatch(symbol):
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

    @field_validator("derived")
    @classmethod
    def _coarser_than_a_minute(cls, derived: tuple[str, ...]) -> tuple[str, ...]:
        for name in derived:
            if name not in TIMEFRAMES or name == "1m":
                raise ValueError(f"derived: {name!r} is not a timeframe coarser than 1m (supported: "
                                 f"{', '.join(t for t in TIMEFRAMES if t != '1m')})")
        if len(set(derived)) != len(derived):
            raise ValueError(f"derived: timeframes are listed twice: {list(derived)}")
        return derived

    @field_validator("start_date")
    @classmethod
    def _not_in_future(cls, start: dt.date | None) -> dt.date | None:
        return _start_not_in_future(start)

    @model_validator(mode="after")
    def _datasets_fit_venue_and_market(self) -> Instrument:
        allowed = self.supported_datasets
        if not allowed:
            markets = ", ".join(_venue_datasets()[self.venue])
            raise ValueError(f"market: {self.venue} has no {self.market} datasets yet (supported: {markets})")
        for name in self.datasets or ():
            if name not in allowed:
                raise ValueError(
                    f"datasets: {name!r} is not a dataset of a {self.venue} {self.market} instrument "
                    f"(allowed: {', '.join(allowed)})"
                )
        for name in self.datasets or ():
            needed = _listing_field(name)
            if needed and not getattr(self, needed):
                raise ValueError(f"{needed}: is required to keep {name} (name the timeframes, or leave {name} out of "
                                 "`datasets`)")
        if self.stream and not self.has_dataset("klines"):
            raise ValueError("stream: streams klines: name the timeframes to keep")
        if self.stream and not _streams(self.venue):
            raise ValueError(f"stream: {self.venue} klines cannot be streamed yet")
        if not isinstance(self.stream, bool):
            for name in self.stream:
                if name not in self.timeframes:
                    raise ValueError(f"stream: {name!r} is not one of this instrument's timeframes "
                                     f"({', '.join(self.timeframes)})")
        if self.derived and not self.keeps_minutes:
            raise ValueError("derived: bars are resampled from the stored 1m bars: add 1m to `timeframes` (and keep "
                             "klines)")
        if self.timeframes and "klines" not in allowed:  # (narrowed out by `datasets`, they wait unused)
            raise ValueError(f"timeframes: given, but {self.venue} klines are not supported yet")
        if self.source not in (None, "rest") and not _has_archive(self.venue):
            raise ValueError(f"source: {self.venue} klines come from its REST API only (no archive), not {self.source!r}")
        if self.venue == "okx" and (self.market == "perp") != self.symbol.endswith("-SWAP"):
            example = "BTC-USDT-SWAP" if self.market == "perp" else "BTC-USDT"
            raise ValueError(f"symbol: {self.symbol!r} is not an OKX {self.market} instrument id (like {example})")
        return self

    @property
    def supported_datasets(self) -> tuple[str, ...]:
        return _venue_datasets()[self.venue].get(self.market, ())

    @property
    def slug(self) -> str:
        """The symbol as an asset-key part: characters a key cannot hold become `_`."""
        return slug(self.symbol)

    @property
    def key_prefix(self) -> str:
        return f"{self.venue}_{self.market}"

    def has_dataset(self, name: str) -> bool:
        """Whether this instrument keeps `name`: every dataset its venue and market support (klines
        when it names timeframes), unless `datasets` narrows them."""
        needed = _listing_field(name)
        if needed and not getattr(self, needed):  # klines in the timeframes the entry names: without any, none
            return False
        if self.datasets is not None:
            return name in self.datasets
        return name in self.supported_datasets

    @property
    def streamed(self) -> tuple[str, ...]:
        """The timeframes `marketdata stream` keeps live (none unless the entry says `stream`)."""
        if self.stream is True:
            return self.timeframes
        return self.stream or ()

    @property
    def keeps_minutes(self) -> bool:
        """Whether this instrument keeps 1m klines (what resampled bars are built from)."""
        return "1m" in self.timeframes and self.has_dataset("klines")

    def describe(self) -> str:
        return f"{self.venue} {self.market} {self.symbol}"


class SeriesEntry(BaseModel):
    """A `series:` entry: one dataset from one source, for each of its `keys` (symbols, series
    ids, roots, currencies) or once when the dataset has a single series. Other fields are the
    dataset's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str
    dataset: str
    keys: tuple[str, ...] = ()
    start_date: dt.date | None = None

    @field_validator("start_date")
    @classmethod
    def _not_in_future(cls, start: dt.date | None) -> dt.date | None:
        return _start_not_in_future(start)

    @field_validator("keys")
    @classmethod
    def _distinct_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(keys)) != len(keys):
            raise ValueError(f"keys are listed twice: {list(keys)}")
        return keys

    @model_validator(mode="after")
    def _fits_dataset(self) -> SeriesEntry:
        from marketdata_assets.datasets import all_datasets

        served = {d.name: d for d in all_datasets() if d.series_source}
        if self.dataset not in served:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r} for a series entry (known: {', '.join(served)})")
        declared = served[self.dataset]
        if self.source != declared.series_source:
            raise ValueError(f"source: {self.dataset} comes from {declared.series_source}, not {self.source!r}")
        declared.validate_entry(self.keys, self.model_extra or {})
        return self

    def describe(self) -> str:
        return f"{self.source} {self.dataset}"


@dataclass(frozen=True)
class Series:
    """One series of one dataset: what one asset keeps. From an `instruments:` entry (then
    `instrument` is set, `source` is `<venue>_<market>` and `key` its symbol) or a `series:` entry."""

    dataset: str
    source: str  # the asset key's first part: binance_perp, alternative_me
    key: str | None  # symbol, series id, root or currency; None when the dataset has one series
    start_date: dt.date
    instrument: Instrument | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def slug(self) -> str:
        return slug(self.key or "")

    @property
    def venue(self) -> str:
        return self.instrument.venue if self.instrument else self.source

    @property
    def market(self) -> str | None:
        return self.instrument.market if self.instrument else None

    @property
    def symbol(self) -> str | None:
        return self.instrument.symbol if self.instrument else self.key

    def describe(self) -> str:
        if self.instrument is not None:
            return self.instrument.describe()
        return f"{self.source} {self.dataset}" + (f" {self.key}" if self.key else "")


class Catalog(BaseModel):
    """The whole catalog. Entries carry their own start_date, defaulted from the top level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_date: dt.date | None = None
    instruments: tuple[Instrument, ...] = ()
    series: tuple[SeriesEntry, ...] = ()

    @field_validator("start_date")
    @classmethod
    def _not_in_future(cls, start: dt.date | None) -> dt.date | None:
        return _start_not_in_future(start)

    @model_validator(mode="after")
    def _fill_start_and_reject_duplicates(self) -> Catalog:
        if not self.instruments and not self.series:
            raise ValueError("the catalog lists no instruments and no series: nothing to keep")
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
                if self.start_date is None:
                    raise ValueError(f"instruments[{index}] ({instrument.describe()}): start_date is required "
                                     "(on the entry or at the top level)")
                instrument = instrument.model_copy(update={"start_date": self.start_date})
            filled.append(instrument)
        object.__setattr__(self, "instruments", tuple(filled))
        keys_seen: dict[tuple[str, str, str | None], int] = {}
        for index, entry in enumerate(self.series):
            if entry.start_date is None and self.start_date is None and _earliest(entry.dataset) is None:
                raise ValueError(f"series[{index}] ({entry.describe()}): start_date is required "
                                 "(on the entry or at the top level)")
            for key in entry.keys or (None,):
                ident = (entry.source, entry.dataset, key)
                if ident in keys_seen:
                    raise ValueError(f"series[{index}] ({entry.describe()}) repeats series[{keys_seen[ident]}]"
                                     + (f" for key {key}" if key else ""))
                keys_seen[ident] = index
        self._inputs_kept()
        return self

    def _inputs_kept(self) -> None:
        """ValueError naming the entry when a derived series' input (ssr's market_cap) is not in
        the catalog: it would have nothing to read."""
        from marketdata_assets.datasets import all_datasets

        reading = [(each, series, needed) for each in all_datasets() if each.series_source
                   for series in each.series_of(self) for needed in each.input_keys(each.asset_key(series))]
        if not reading:
            return  # the instruments' thousands of asset keys are built only when some series reads them
        kept = {each.asset_key(series) for each in all_datasets() for series in each.series_of(self)}
        for each, series, needed in reading:
            if needed not in kept:
                index = next(i for i, e in enumerate(self.series)
                             if e.dataset == each.name and series.key in (e.keys or (None,)))
                raise ValueError(f"series[{index}] ({self.series[index].describe()}): {each.name} reads "
                                 f"{needed.to_user_string()}, which the catalog does not keep")

    def find(self, venue: str, market: str, symbol: str) -> Instrument | None:
        for instrument in self.instruments:
            if (instrument.venue, instrument.market, instrument.symbol) == (venue, market, symbol):
                return instrument
        return None

    def all_series(self) -> list[Series]:
        """Every series of every dataset the catalog keeps: one asset each."""
        from marketdata_assets.datasets import all_datasets

        return [series for each in all_datasets() for series in each.series_of(self)]


def _describe_location(raw: Any, loc: tuple[Any, ...]) -> str:
    """`instruments[2] (binance perp BTCUSDT), field 'timeframes'` from a pydantic error location."""
    if len(loc) >= 2 and loc[0] in ("instruments", "series") and isinstance(loc[1], int):
        entry = raw[loc[0]][loc[1]] if isinstance(raw.get(loc[0]), list) else {}
        label = f"{loc[0]}[{loc[1]}]"
        naming = ("venue", "market", "symbol") if loc[0] == "instruments" else ("source", "dataset")
        if isinstance(entry, dict):
            who = " ".join(str(entry.get(k)) for k in naming if entry.get(k))
            label += f" ({who})" if who else ""
        fields = [str(part) for part in loc[2:] if not isinstance(part, int)]
        return f"{label}, field '{fields[0]}'" if fields else label
    if loc:
        return f"field '{loc[0]}'"
    return ""


def parse_catalog(raw: Any, origin: str) -> Catalog:
    """Validate an already-parsed YAML document; `origin` names it in error messages."""
    if not isinstance(raw, dict):
        raise CatalogError(f"catalog {origin}: expected a mapping with start_date, instruments and series")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        failed_lists = {e["loc"][0] for e in errors if len(e["loc"]) > 1 and e["loc"][0] in ("instruments", "series")}
        for error in errors:
            if tuple(error["loc"]) in {(name,) for name in failed_lists}:
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
        raw = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {origin}: not valid YAML: {exc}") from None
    return parse_catalog(raw, origin)
