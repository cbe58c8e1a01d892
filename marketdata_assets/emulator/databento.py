"""Databento's historical API (hist.databento.com/v0) for CME Globex (GLBX.MDP3), as the
`databento` 0.88 client calls it:

- `POST /v0/timeseries.get_range`, a form (`dataset`, `start`, `end`, `symbols` comma-separated,
  `schema`, `stype_in`, `stype_out`, `encoding=dbn`, `compression=zstd`, `limit`), HTTP Basic with
  the key as user name. The answer is DBN (version 3) compressed with zstd: the metadata (the
  query, `not_found`, and each requested symbol's mappings: date ranges [start_date, end_date)
  and the instrument id it pointed to then), then the records by `ts_event`.
  - `ohlcv-1h` (rtype 34) and `ohlcv-1d` (rtype 35, UTC days): prices int64 × 1e-9, no record for
    an interval without trades. A continuous symbol's bar carries the price of the contract it
    maps to that day, unadjusted: a roll shows as a jump.
  - `definition`: one InstrumentDefMsg per contract the symbols mapped to in the range (its
    `raw_symbol` such as `ESH4`, `expiration` in ns).
  - `stype_in=continuous`: `ROOT.c.N` (calendar: the Nth contract not yet expired), `ROOT.n.N`
    (open interest: rolls 8 days before expiry), `ROOT.v.N` (volume: 6 days before).
  - `stype_in=parent`: `ROOT.OPT`, the options on the root's two nearest futures (ohlcv-1d and
    definition: `instrument_class` C or P, `strike_price` × 1e-9, `expiration`, `underlying`).
- `GET /v0/metadata.get_dataset_range?dataset=…` → `{"start", "end", "schema": {name: {start, end}}}`
  (ISO 8601, `end` the start of the current hour: nothing later is served yet).
- `POST /v0/metadata.get_cost` (get_range's form) → the price in USD as a JSON number: the bytes
  of the records the same get_range would send, at `usd_per_gb` (the emulator's rates, not
  Databento's list prices).

Globex's week: trade date D's session runs 17:00 CT on D−1 to 16:00 CT on D (the daily
maintenance halt between), Monday to Friday; closed on New Year's Day, Good Friday and Christmas
(a weekend holiday observed on the nearest weekday). Hours in `quiet` ((root, hour start)) have
no trades, as do most hours of the thin roots in `THIN`.

Errors, with the body `{"detail": …}` the client shows: 401 for a missing or malformed key, 422
for a bad query (unknown dataset, schema or symbology, start on or after end, end past the
available range), 504 when a request would send more than `gateway_limit_records` records (the
gateway times out), 429 with `Retry-After` past 100 requests in a second or while `refuse_next`
lasts. Symbols that resolve to nothing are in `not_found` and named in an `X-Warning` header.
Tests read `seen_keys`, `requests` (each get_range's and get_cost's form, with its `endpoint`)
and `answers` (by status).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
import zlib
from collections import Counter
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import databento_dbn as dbn
import numpy as np
import orjson
import zstandard
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DATASET = "GLBX.MDP3"
AVAILABLE_FROM = dt.datetime(2010, 6, 6, tzinfo=dt.UTC)
PUBLISHER_ID = 1  # GLBX.MDP3.GLBX
REQUESTS_PER_SECOND = 100
CHICAGO = ZoneInfo("America/Chicago")
_HOUR_NS = 3_600 * 10**9
_DAY = dt.timedelta(days=1)
_SCHEMAS = {"ohlcv-1h": 34, "ohlcv-1d": 35, "definition": None}
_KEY = re.compile(r"db-[A-Za-z0-9]{20,40}")
_CONTINUOUS = re.compile(r"([A-Z0-9]{1,4})\.([cnv])\.(\d+)")
_MONTH_CODES = "FGHJKMNQUVXZ"
# The rule's days before expiry on which a continuous symbol moves to the next contract.
_ROLL_DAYS = {"c": 0, "n": 8, "v": 6}

# root -> (price level, tick, contract months): quarterly roots expire on the third Friday of
# their month, the others on the 20th of the month before (as energy contracts roughly do).
ROOTS: dict[str, tuple[float, float, str]] = {
    "ES": (4_500.0, 0.25, "HMUZ"), "NQ": (15_000.0, 0.25, "HMUZ"), "YM": (35_000.0, 1.0, "HMUZ"),
    "RTY": (2_000.0, 0.1, "HMUZ"), "MES": (4_500.0, 0.25, "HMUZ"), "MNQ": (15_000.0, 0.25, "HMUZ"),
    "ZN": (110.0, 0.015625, "HMUZ"), "ZB": (120.0, 0.03125, "HMUZ"), "ZF": (107.0, 0.0078125, "HMUZ"),
    "ZT": (102.0, 0.00390625, "HMUZ"), "6E": (1.1, 0.00005, "HMUZ"), "6J": (0.007, 0.0000005, "HMUZ"),
    "6B": (1.27, 0.0001, "HMUZ"), "6A": (0.66, 0.00005, "HMUZ"), "CL": (75.0, 0.01, _MONTH_CODES),
    "NG": (3.0, 0.001, _MONTH_CODES), "RB": (2.3, 0.0001, _MONTH_CODES), "HO": (2.5, 0.0001, _MONTH_CODES),
    "GC": (1_900.0, 0.1, "GJMQVZ"), "SI": (23.0, 0.005, "HKNUZ"), "HG": (3.8, 0.0005, "HKNUZ"),
    "PL": (950.0, 0.1, "FJNV"), "ZC": (450.0, 0.25, "HKNUZ"), "ZS": (1_200.0, 0.25, "FHKNQUX"),
    "ZW": (600.0, 0.25, "HKNUZ"), "ZM": (380.0, 0.1, "FHKNQUVZ"), "ZL": (55.0, 0.01, "FHKNQUVZ"),
    "LE": (180.0, 0.025, "GJMQVZ"), "HE": (85.0, 0.025, "GJKMNQVZ"), "BTC": (60_000.0, 5.0, _MONTH_CODES),
    "ETH": (3_000.0, 0.5, _MONTH_CODES), "LBR": (550.0, 0.5, "FHKNUX"), "DC": (18.0, 0.01, _MONTH_CODES),
}
# The rest of Globex's roots this emulator lists, at a made-up level, a cent's tick, monthly contracts.
for _root in ("ZO ZR XC XW XK KE MWE BZ QM QG MCL MNG PA MGC SIL MHG UB TN TWE SR3 SR1 ZQ EMD NKD MYM M2K "
              "6C 6S 6N 6M 6L 6Z E7 J7 M6E M6A M6B RP GF MBT MET BFF N1U T1U F1U B1U GDK CSC GNF CB DY VXM "
              "BVX SOV").split():
    ROOTS.setdefault(_root, (100.0, 0.01, _MONTH_CODES))
THIN = {"LBR", "DC", "GDK", "CSC", "GNF", "CB", "DY"}  # roots that trade in about one hour of three


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (the anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 - the algorithm's name
    m = (a + 11 * h + 22 * l) // 451
    month, day = divmod(h + l - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def _observed(day: dt.date) -> dt.date:
    return day + _DAY if day.weekday() == 6 else day - _DAY if day.weekday() == 5 else day


def closed_days(year: int) -> set[dt.date]:
    """Trade dates with no session: New Year's Day, Good Friday, Christmas."""
    return {_observed(dt.date(year, 1, 1)), _easter(year) - 2 * _DAY, _observed(dt.date(year, 12, 25))}


_EPOCH = dt.date(1970, 1, 1)  # a Thursday: day number n falls on weekday (n + 3) % 7 (Monday 0)


def _day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def _daylight_spans(first_year: int, last_year: int) -> np.ndarray:
    """[start, end) hours since the epoch of US daylight time (the rule since 2007): from the second
    Sunday of March at 02:00 CST (08:00 UTC) to the first Sunday of November at 02:00 CDT (07:00 UTC)."""
    spans = []
    for year in range(first_year, last_year + 1):
        march, november = dt.date(year, 3, 1), dt.date(year, 11, 1)
        second_sunday = march + dt.timedelta(days=(6 - march.weekday()) % 7 + 7)
        first_sunday = november + dt.timedelta(days=(6 - november.weekday()) % 7)
        spans.append((_day_number(second_sunday) * 24 + 8, _day_number(first_sunday) * 24 + 7))
    return np.array(spans, dtype=np.int64)


def session_hours_mask(hours: np.ndarray) -> np.ndarray:
    """Which hours (each an hour number since the epoch, UTC) Globex trades in: a trade date's
    session runs 17:00 CT the day before to 16:00 CT (the halt follows), Monday to Friday, and not
    on a closed day."""
    years = range(1970 + int(hours.min()) // 8766 - 1, 1970 + int(hours.max()) // 8766 + 2)
    spans = _daylight_spans(years.start, years.stop - 1)
    daylight = np.zeros(hours.shape, dtype=bool)
    for opened, closed in spans:
        daylight |= (hours >= opened) & (hours < closed)
    local = hours + np.where(daylight, -5, -6)
    local_hour, local_day = local % 24, local // 24
    trade_day = local_day + (local_hour >= 17)
    closed_days_numbers = [_day_number(day) for year in years for day in closed_days(year)]
    return (local_hour != 16) & ((trade_day + 3) % 7 < 5) & ~np.isin(trade_day, closed_days_numbers)


def _third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


class Contract:
    def __init__(self, root: str, year: int, month: int):
        self.root, self.year, self.month = root, year, month
        months = ROOTS[root][2]
        if months == "HMUZ":
            self.expiry = _third_friday(year, month)
        else:
            before = dt.date(year, month, 1) - _DAY
            self.expiry = before.replace(day=20)
        self.raw_symbol = f"{root}{_MONTH_CODES[month - 1]}{year % 10}"
        # stable across runs; distinct for the contracts of one request
        self.instrument_id = zlib.crc32(f"{root}{year}{month}".encode()) % 4_000_000 + 1_000

    def __eq__(self, other) -> bool:
        return isinstance(other, Contract) and (self.root, self.year, self.month) == (other.root, other.year, other.month)

    def __hash__(self) -> int:
        return hash((self.root, self.year, self.month))


STRIKES_EACH_SIDE = 3


class Option:
    """A call or put on a future at a strike (its grid: 2% of the root's level apart, about it),
    expiring with the future (as quarterly equity options do)."""

    def __init__(self, future: Contract, strike: float, kind: str):
        self.future, self.strike, self.kind = future, strike, kind
        self.raw_symbol = f"{future.raw_symbol} {kind}{strike:g}"
        self.instrument_id = zlib.crc32(f"{future.root}{future.year}{future.month}{kind}{strike:g}".encode()) % 4_000_000 + 5_000_000

    def __eq__(self, other) -> bool:
        return isinstance(other, Option) and self.raw_symbol == other.raw_symbol and self.future == other.future

    def __hash__(self) -> int:
        return hash((self.future, self.raw_symbol))

    def premium(self, future_prices: np.ndarray, days: np.ndarray, tick: float) -> np.ndarray:
        """Intrinsic value plus time value (5% of the future a year, by the square root of time)."""
        intrinsic = np.maximum(0.0, future_prices - self.strike if self.kind == "C" else self.strike - future_prices)
        years = np.maximum(_day_number(self.future.expiry) - days, 0) / 365.0
        return np.maximum(tick, np.round((intrinsic + 0.05 * future_prices * np.sqrt(years)) / tick) * tick)

    def definition(self, start: dt.datetime) -> dbn.InstrumentDefMsg:
        tick = ROOTS[self.future.root][1]
        expiration = dt.datetime.combine(self.future.expiry, dt.time(13, 30), dt.UTC)
        return dbn.InstrumentDefMsg(
            PUBLISHER_ID, self.instrument_id, _ns(start), _ns(start), int(round(tick * 1e9)), 1_000_000_000,
            self.raw_symbol, self.future.root, "OOF",
            dbn.InstrumentClass.CALL if self.kind == "C" else dbn.InstrumentClass.PUT, dbn.SecurityUpdateAction.ADD,
            expiration=_ns(expiration), strike_price=int(round(self.strike * 1e9)), currency="USD", exchange="XCME",
            underlying=self.future.raw_symbol,
        )


def options_on(future: Contract) -> list[Option]:
    level, tick, _ = ROOTS[future.root]
    step = max(tick, round(level * 0.02 / tick) * tick)
    middle = round(level / step) * step
    strikes = [middle + step * n for n in range(-STRIKES_EACH_SIDE, STRIKES_EACH_SIDE + 1)]
    return [Option(future, round(strike, 9), kind) for strike in strikes for kind in ("C", "P")]


def contracts_from(root: str, day: dt.date, count: int) -> list[Contract]:
    """The first `count` contracts of `root` expiring after `day`, nearest first."""
    months = [_MONTH_CODES.index(code) + 1 for code in ROOTS[root][2]]
    found, year = [], day.year
    while len(found) < count:
        for month in months:
            contract = Contract(root, year, month)
            if contract.expiry > day:
                found.append(contract)
                if len(found) == count:
                    break
        year += 1
    return found


def mapped_contract(root: str, rule: str, rank: int, day: dt.date) -> Contract:
    """The contract `ROOT.rule.rank` points to on UTC date `day`."""
    return contracts_from(root, day + dt.timedelta(days=_ROLL_DAYS[rule]), rank + 1)[rank]


def _prices(root: str, hours: np.ndarray, expiry_days: np.ndarray) -> np.ndarray:
    """The price at the start of each hour (hour numbers since the epoch) of the contracts
    expiring on `expiry_days` (day numbers): the root's level with slow and fast waves, plus
    carry to expiry, on the tick."""
    level, tick, _ = ROOTS[root]
    spot = level * (1 + 0.12 * np.sin(hours / 2_900.0 + len(root)) + 0.01 * np.sin(hours / 7.0))
    carry = 1 + 0.002 * (expiry_days - hours // 24) / 30
    return np.round(spot * carry / tick) * tick


def _fixed(prices: np.ndarray) -> np.ndarray:
    return np.rint(prices * 1e9).astype(np.int64)


class DatabentoEmulator:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.gateway_limit_records = 20_000
        self.usd_per_gb = {"ohlcv-1h": 600.0, "ohlcv-1d": 600.0, "definition": 300.0}
        self.quiet: set[tuple[str, dt.datetime]] = set()
        self.undefined: set[tuple[str, dt.datetime]] = set()  # (root, bar start): open sent as 2^63 − 1
        self.refuse_next = 0
        self.seen_keys: set[str] = set()
        self.requests: list[dict[str, str]] = []
        self.answers: Counter[str] = Counter()
        self._second = (-1, 0)

    def routes(self) -> list[Route]:
        return [
            Route("/v0/timeseries.get_range", self.get_range, methods=["POST"]),
            Route("/v0/metadata.get_cost", self.get_cost, methods=["POST"]),
            Route("/v0/metadata.get_dataset_range", self.get_dataset_range, methods=["GET"]),
        ]

    # ---- answers -----------------------------------------------------------------------

    def _error(self, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
        self.answers[str(status)] += 1
        return Response(orjson.dumps({"detail": detail}), status_code=status, media_type="application/json",
                        headers=headers)

    def _refused(self, request: Request) -> Response | None:
        """429 past the per-second budget, 401 without a well-formed key."""
        now = self.clock()
        second, count = self._second
        self._second = (int(now), (count if second == int(now) else 0) + 1)
        if self._second[1] > REQUESTS_PER_SECOND or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return self._error(429, "Too many requests.", {"Retry-After": "1"})
        header = request.headers.get("authorization", "")
        key = ""
        if header.startswith("Basic "):
            try:
                key = base64.b64decode(header[6:]).decode().partition(":")[0]
            except ValueError:
                key = ""
        if key:
            self.seen_keys.add(key)
        if not _KEY.fullmatch(key):
            return self._error(401, "Authentication failed.")
        return None

    def available_end(self) -> dt.datetime:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        return now.replace(minute=0, second=0, microsecond=0)

    async def get_dataset_range(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.query_params.get("dataset") != DATASET:
            return self._error(422, f"Invalid dataset '{request.query_params.get('dataset')}'.")
        start, end = (f"{m:%Y-%m-%dT%H:%M:%S}.000000000Z" for m in (AVAILABLE_FROM, self.available_end()))
        self.answers["200"] += 1
        return Response(orjson.dumps({"start": start, "end": end,
                                      "schema": {name: {"start": start, "end": end} for name in _SCHEMAS}}),
                        media_type="application/json")

    async def get_cost(self, request: Request) -> Response:
        query = await self._asked(request)
        if isinstance(query, Response):
            return query
        schema, records, _, _ = query
        size = sum(len(bytes(record)) for record in records)
        self.answers["200"] += 1
        return Response(orjson.dumps(size / 1e9 * self.usd_per_gb[schema]), media_type="application/json")

    async def get_range(self, request: Request) -> Response:
        query = await self._asked(request)
        if isinstance(query, Response):
            return query
        schema, records, metadata, not_found = query
        if len(records) > self.gateway_limit_records:
            self.answers["504"] += 1
            return Response("<html><body><h1>504 Gateway Time-out</h1></body></html>", status_code=504,
                            media_type="text/html")
        body = zstandard.ZstdCompressor().compress(bytes(metadata) + b"".join(bytes(r) for r in records))
        headers = {}
        if not_found:
            headers["X-Warning"] = orjson.dumps(
                [f"BentoWarning: The following symbols could not be resolved: {', '.join(not_found)}."]).decode()
        self.answers["200"] += 1
        return Response(body, media_type="application/octet-stream", headers=headers)

    # ---- the query -----------------------------------------------------------------------

    async def _asked(self, request: Request):
        """The refusal (429, 401) or the query's error answer, or the query (`_query`)."""
        refused = self._refused(request)
        return refused if refused is not None else await self._query(request)

    async def _query(self, request: Request):
        """(schema, records, metadata, not_found) of a get_range form, or the error answer."""
        form = dict(parse_qsl((await request.body()).decode()))  # application/x-www-form-urlencoded
        self.requests.append({"endpoint": request.url.path.rsplit("/", 1)[-1], **form})
        if form.get("dataset") != DATASET:
            return self._error(422, f"Invalid dataset '{form.get('dataset')}'.")
        schema = form.get("schema", "")
        if schema not in _SCHEMAS:
            return self._error(422, f"Invalid schema '{schema}' for this emulator of {DATASET}.")
        stype_in = form.get("stype_in")
        if stype_in not in ("continuous", "parent"):
            return self._error(422, f"Invalid stype_in '{stype_in}'.")
        if stype_in == "parent" and schema == "ohlcv-1h":
            return self._error(422, "This emulator serves options (parent symbols) as ohlcv-1d and definition only.")
        try:
            start = _moment(form.get("start", ""))
            end = _moment(form["end"]) if form.get("end") else start + (_DAY if schema != "ohlcv-1h" else dt.timedelta(hours=1))
        except ValueError as exc:
            return self._error(422, f"Invalid datetime: {exc}.")
        available = self.available_end()
        if start >= end:
            return self._error(422, f"Invalid time range: start cannot be on or after end "
                                    f"({start.isoformat()} >= {end.isoformat()}).")
        if end > available:
            return self._error(422, f"The end of the requested range {end.isoformat()} is after the available end "
                                    f"of dataset {DATASET} ({available.isoformat()}). Set end to "
                                    f"{available.isoformat()} or earlier.")
        if start < AVAILABLE_FROM:
            return self._error(422, f"The start of the requested range {start.isoformat()} is before the available "
                                    f"start of dataset {DATASET} ({AVAILABLE_FROM.isoformat()}).")
        symbols = [s for s in form.get("symbols", "").split(",") if s]
        if not symbols:
            return self._error(422, "At least one symbol is required.")
        if stype_in == "parent":
            return self._options(schema, symbols, start, end)
        resolved, not_found = [], []
        for symbol in symbols:
            match = _CONTINUOUS.fullmatch(symbol)
            if match is None or match.group(1) not in ROOTS:
                not_found.append(symbol)
            else:
                resolved.append((symbol, match.group(1), match.group(2), int(match.group(3))))
        records, mappings = [], []
        for symbol, root, rule, rank in resolved:
            days = _days(start, end)
            by_day = {day: mapped_contract(root, rule, rank, day) for day in days}
            mappings.append(_Mapping(symbol, _intervals(by_day)))
            if schema == "definition":
                records += [_definition(contract, start) for contract in dict.fromkeys(by_day.values())]
            else:
                records += self._bars(schema, root, by_day, start, end)
        records.sort(key=lambda record: (record.ts_event, record.instrument_id))
        limit = form.get("limit")
        if limit:
            records = records[:int(limit)]
        metadata = dbn.Metadata(
            DATASET, _ns(start), dbn.SType.CONTINUOUS, dbn.SType.INSTRUMENT_ID, dbn.Schema.from_str(schema),
            symbols=symbols, partial=[], not_found=not_found, mappings=mappings, end=_ns(end),
        )
        return schema, records, metadata, not_found

    def _options(self, schema: str, symbols: list[str], start: dt.datetime, end: dt.datetime):
        """Options on futures by parent symbol (`ES.OPT`): on each day, calls and puts on the two
        nearest contracts at STRIKES_EACH_SIDE strikes either side of the root's level, each trading
        on about half the session days; the mappings list every option's days under the parent."""
        records, mappings, not_found = [], [], []
        days = _days(start, end)
        for symbol in symbols:
            root = symbol.removesuffix(".OPT")
            if not symbol.endswith(".OPT") or root not in ROOTS:
                not_found.append(symbol)
                continue
            listed: dict[Option, list[dt.date]] = {}
            for day in days:
                for future in contracts_from(root, day, 2):
                    for option in options_on(future):
                        listed.setdefault(option, []).append(day)
            mappings.append(_Mapping(symbol, [_Interval(on[0], on[-1] + _DAY, str(option.instrument_id))
                                              for option, on in listed.items()]))
            if schema == "definition":
                records += [option.definition(start) for option in listed]
            else:
                records += self._option_bars(root, listed)
        records.sort(key=lambda record: (record.ts_event, record.instrument_id))
        metadata = dbn.Metadata(
            DATASET, _ns(start), dbn.SType.PARENT, dbn.SType.INSTRUMENT_ID, dbn.Schema.from_str(schema),
            symbols=symbols, partial=[], not_found=not_found, mappings=mappings, end=_ns(end),
        )
        return schema, records, metadata, not_found

    def _option_bars(self, root: str, listed: dict[Option, list[dt.date]]) -> list[dbn.OHLCVMsg]:
        """A UTC day's bar of each option that traded that day (a Globex session day, and about one
        in two of them for any one option), priced off its future at the day's open and close."""
        tick = ROOTS[root][1]
        bars = []
        for option, on in listed.items():
            days = np.array([_day_number(day) for day in on], dtype=np.int64)
            hours = days[:, None] * 24 + np.arange(24)[None, :]
            session = session_hours_mask(hours.ravel()).reshape(-1, 24).any(axis=1)
            traded = session & ((days * 31 + option.instrument_id) % 2 == 0)
            expiry = np.full(len(days), _day_number(option.future.expiry))
            opened = option.premium(_prices(root, days * 24, expiry), days, tick)
            closed = option.premium(_prices(root, days * 24 + 24, expiry), days + 1, tick)
            spread = np.maximum(tick, np.round(0.05 * opened / tick) * tick)
            high, low = np.maximum(opened, closed) + spread, np.maximum(tick, np.minimum(opened, closed) - spread)
            volume = 1 + (days * 2_654_435_761 ^ option.instrument_id) % 400
            for index in np.flatnonzero(traded):
                bars.append(dbn.OHLCVMsg(
                    35, PUBLISHER_ID, option.instrument_id, int(days[index]) * 24 * _HOUR_NS,
                    *(int(v) for v in _fixed(np.array([opened[index], high[index], low[index], closed[index]]))),
                    int(volume[index]),
                ))
        return bars

    def _bars(self, schema: str, root: str, by_day: dict[dt.date, Contract], start: dt.datetime,
              end: dt.datetime) -> list[dbn.OHLCVMsg]:
        """The bars of one continuous symbol: an hour's from its price path; a UTC day's from that
        day's hours. Hours outside the sessions, in `quiet`, or (for a thin root) most hours, have
        no trades and no bar."""
        tick = ROOTS[root][1]
        contracts = list(by_day.values())
        days = np.array([_day_number(day) for day in by_day], dtype=np.int64)
        hours = (days[:, None] * 24 + np.arange(24)[None, :]).ravel()
        expiry = np.repeat([_day_number(c.expiry) for c in contracts], 24)
        ids = np.repeat([c.instrument_id for c in contracts], 24)
        traded = session_hours_mask(hours)
        if root in THIN:
            traded &= (hours * 7 + zlib.crc32(root.encode())) % 3 == 0
        for quiet_root, moment in self.quiet:
            if quiet_root == root:
                traded &= hours != int(moment.timestamp()) // 3_600
        opened, closed = _prices(root, hours, expiry), _prices(root, hours + 1, expiry)
        spread = np.maximum(tick, np.round(0.002 * opened / tick) * tick)
        high, low = np.maximum(opened, closed) + spread, np.minimum(opened, closed) - spread
        volume = 50 + ((hours * 2_654_435_761) ^ ids) % 5_000
        first, last = int(start.timestamp()) // 3_600, -(-int(end.timestamp()) // 3_600)
        if schema == "ohlcv-1h":
            chosen = np.flatnonzero(traded & (hours >= first) & (hours < last))
            rows = zip(hours[chosen], ids[chosen], _fixed(opened[chosen]), _fixed(high[chosen]), _fixed(low[chosen]),
                       _fixed(closed[chosen]), volume[chosen], strict=True)
        else:
            by_hour = traded.reshape(-1, 24)
            kept = by_hour.any(axis=1) & (days * 24 >= first) & (days * 24 < last)
            opens = np.argmax(by_hour, axis=1)
            closes = 23 - np.argmax(by_hour[:, ::-1], axis=1)
            index = np.arange(len(days)) * 24
            rows = zip(
                days[kept] * 24, ids[index][kept], _fixed(opened[index + opens][kept]),
                _fixed(np.where(by_hour, high.reshape(-1, 24), -np.inf).max(axis=1)[kept]),
                _fixed(np.where(by_hour, low.reshape(-1, 24), np.inf).min(axis=1)[kept]),
                _fixed(closed[index + closes][kept]), np.where(by_hour, volume.reshape(-1, 24), 0).sum(axis=1)[kept],
                strict=True,
            )
        rtype = _SCHEMAS[schema]
        return [
            dbn.OHLCVMsg(rtype, PUBLISHER_ID, int(instrument), int(hour) * _HOUR_NS,
                         dbn.UNDEF_PRICE if (root, _at(hour)) in self.undefined else int(o), int(h), int(lo), int(c), int(v))
            for hour, instrument, o, h, lo, c, v in rows
        ]

    def stats(self) -> dict:
        return {"answers": dict(sorted(self.answers.items())), "requests": len(self.requests)}


class _Interval:
    def __init__(self, start_date: dt.date, end_date: dt.date, symbol: str):
        self.start_date, self.end_date, self.symbol = start_date, end_date, symbol


class _Mapping:
    def __init__(self, raw_symbol: str, intervals: list[_Interval]):
        self.raw_symbol, self.intervals = raw_symbol, intervals


def _at(hour: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(hour) * 3_600, dt.UTC)


def _moment(text: str) -> dt.datetime:
    """A get_range bound: nanoseconds since the epoch, or an ISO 8601 date or time (UTC if naive)."""
    if text.isdigit():
        return dt.datetime.fromtimestamp(int(text) / 1e9, dt.UTC)
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """The UTC dates that [start, end) touches."""
    first, last = start.date(), (end - dt.timedelta(microseconds=1)).date()
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def _intervals(by_day: dict[dt.date, Contract]) -> list[_Interval]:
    """Runs of days mapped to one contract, as [start_date, end_date) with its instrument id."""
    runs: list[_Interval] = []
    for day, contract in by_day.items():
        if runs and runs[-1].symbol == str(contract.instrument_id) and runs[-1].end_date == day:
            runs[-1].end_date = day + _DAY
        else:
            runs.append(_Interval(day, day + _DAY, str(contract.instrument_id)))
    return runs


def _definition(contract: Contract, start: dt.datetime) -> dbn.InstrumentDefMsg:
    tick = ROOTS[contract.root][1]
    expiration = dt.datetime.combine(contract.expiry, dt.time(13, 30), dt.UTC)
    return dbn.InstrumentDefMsg(
        PUBLISHER_ID, contract.instrument_id, _ns(start), _ns(start), _fixed(tick), 1_000_000_000,
        contract.raw_symbol, contract.root, "FUT", dbn.InstrumentClass.FUTURE, dbn.SecurityUpdateAction.ADD,
        expiration=_ns(expiration), currency="USD", exchange="XCME",
    )


def build(config, failures, clock=time.time) -> DatabentoEmulator:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `databento`."""
    return DatabentoEmulator(clock)
