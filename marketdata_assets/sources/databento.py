"""CME Globex bars from Databento (dataset GLBX.MDP3) through the vendor's `databento` client.

A series is one root read as its continuous symbol `ROOT.{rule}.0` (`c` calendar, `n` open
interest, `v` volume roll), or its options as the parent symbol `ROOT.OPT`. A window is cut into
pieces (hourly bars at most 7 days, daily bars at most a year, options a month) and each piece is
two requests: `timeseries.get_range(schema=ohlcv-1d|ohlcv-1h)` for the bars and
`schema=definition` for the contracts they came from (instrument_id → raw_symbol such as `ESH4`,
and an option's strike, expiry and type), so each bar keeps the contract it mapped to that day
and rolls show. Within a run (SharedRequests), a request asks for up to three roots at once (the
one being read and the next ones; MARKETDATA_DATABENTO_SYMBOLS_PER_REQUEST) and keeps the others'
answers for their turn; an answer's records are told apart by its symbology mappings. A root the
venue cannot resolve fails its own asset only.

- Prices are int64 × 1e-9; the undefined price (2^63 − 1) makes a row rejected (kept in
  rejected_rows), as do high < low, open or close outside [low, high], and a bar whose
  instrument is not the one the answer's own symbology maps that day to. Databento sends no bar
  for an interval without trades: nothing is invented for one.
- The window's end is clamped to the dataset's available end (`metadata.get_dataset_range`,
  asked once a source): asking past it is a 422.
- A 504 (the gateway timed out on a large request) splits the request's roots in two and, one
  root left, halves its days (down to a day), and tries again; other 5xx and broken transfers are retried with backoff; a 429 waits its
  Retry-After. At most 100 requests a second per process. A 401 (bad key) or another 4xx stops
  the read, naming the request.
- The key (`DATABENTO_API_KEY`, from the environment only) travels in an Authorization header,
  never in a URL; no message raised from here carries it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse, UpstreamError, UpstreamRejected, UpstreamUnavailable
from marketdata_assets.sources.http import Clock, RequestStats, Sleep, WeightBudget
from marketdata_assets.sources.protocol import SourceOutcome

SOURCE = "Databento"
DATASET = "GLBX.MDP3"
KEY_VARIABLE = "DATABENTO_API_KEY"
REQUESTS_PER_SECOND = 100
UNDEFINED_PRICE = 2**63 - 1
PRICE_UNITS = 1e9  # a price's int64 counts 1e-9 units: dividing by 1e9 rounds once
MAX_ATTEMPTS = 5
ROLL_RULES = ("c", "n", "v")


class MissingKey(UpstreamError):
    """Databento needs a key, and the environment has none."""


@dataclass(frozen=True)
class Schema:
    """One bar schema: its name at Databento, our timeframe name, its bar length and the longest
    piece one request asks for."""

    name: str
    timeframe: str
    bar: dt.timedelta
    piece: dt.timedelta


OHLCV_1D = Schema("ohlcv-1d", "1d", dt.timedelta(days=1), dt.timedelta(days=366))
OHLCV_1H = Schema("ohlcv-1h", "1h", dt.timedelta(hours=1), dt.timedelta(days=7))
OPTIONS_1D = Schema("ohlcv-1d", "1d", dt.timedelta(days=1), dt.timedelta(days=31))  # every option: a month


def continuous_symbol(root: str, rule: str = "c") -> str:
    return f"{root}.{rule}.0"


def client_for(base_url: str, key: str) -> Any:
    """The vendor's Historical client sending to `base_url` (its default gateway, or an emulator:
    the client forces https on a gateway, so each endpoint's base URL is set after construction)."""
    import warnings

    import databento
    from databento.common.error import BentoWarning

    # what a warning says (a symbol not resolved) is read from the answer's metadata instead
    warnings.filterwarnings("ignore", category=BentoWarning)
    client = databento.Historical(key)
    base = base_url.rstrip("/")
    client.timeseries._base_url = f"{base}/v0/timeseries"
    client.metadata._base_url = f"{base}/v0/metadata"
    return client


def utc_moment(text: str) -> dt.datetime:
    """An ISO 8601 time as Databento writes it (`2024-03-15T00:00:00.000000000Z`, nanoseconds), UTC."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "").split(".")[0])
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _ns_to_utc(column: Any) -> pl.Series:
    return pl.Series(column.astype("int64")).cast(pl.Datetime("ns", "UTC")).cast(pl.Datetime("us", "UTC"))


def records_frame(records: Any) -> pl.DataFrame:
    """ts_event (UTC), instrument_id, open/high/low/close (int64, 1e-9 units), volume of an answer's
    OHLCV records (a numpy structured array, as DBNStore.to_ndarray gives it)."""
    return pl.DataFrame({
        "ts_event": _ns_to_utc(records["ts_event"]),
        "instrument_id": pl.Series(records["instrument_id"].astype("int64")),
        **{name: pl.Series(records[name].astype("int64")) for name in ("open", "high", "low", "close")},
        "volume": pl.Series(records["volume"].astype("int64")),
    })


def _mapped(mappings: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([(m["start_date"], m["end_date"], int(m["symbol"])) for m in mappings],
                        schema={"from": pl.Date, "until": pl.Date, "instrument_id": pl.Int64}, orient="row")


def split_by_symbol(records: pl.DataFrame, mappings: dict[str, list[dict]], symbols: list[str]) -> dict[str, pl.DataFrame]:
    """The records of an answer for several symbols, each symbol's apart: a record belongs to the
    symbol whose mapping holds its instrument that day (one nobody's goes to the first symbol,
    whose screening rejects it)."""
    if len(symbols) == 1 or records.is_empty():
        return {symbols[0]: records, **{symbol: records.clear() for symbol in symbols[1:]}}
    day = records.with_row_index("row").with_columns(day=pl.col("ts_event").dt.date())
    owner = pl.Series("owner", [symbols[0]] * records.height, dtype=pl.String)
    for symbol in symbols:
        rows = day.join_where(_mapped(mappings.get(symbol, [])), pl.col("instrument_id") == pl.col("instrument_id_right"),
                              pl.col("day") >= pl.col("from"), pl.col("day") < pl.col("until"))["row"]
        owner = owner.scatter(rows, symbol)
    tagged = records.with_columns(owner)
    return {symbol: tagged.filter(pl.col("owner") == symbol).drop("owner") for symbol in symbols}


def screened_bars(
    frame: pl.DataFrame, mappings: list[dict], symbol: str, schema: Schema, dataset: str, start: dt.datetime,
    end: dt.datetime, origin: str, now: dt.datetime, defined: set[int] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(bars that pass, rejected rows) of `symbol`'s records of one answer (records_frame) over
    [start, end) UTC: ts_event, instrument_id, prices in USD, volume. `mappings` are the answer's
    symbology intervals of `symbol` (start_date, end_date, symbol = an instrument id); a bar must
    come from an instrument mapped that day (and, given `defined`, one the answer defines).
    Rejected rows are kept under `dataset`."""
    where = f"{SOURCE} {symbol} {schema.name}"
    if frame.is_empty():
        return frame, REJECTED_ROWS.empty_frame()
    times = frame["ts_event"]
    if times.min() < start or times.max() >= end:
        raise MalformedResponse(where, f"asked for bars in [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC, got "
                                       f"bars from {times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M}")
    if not times.is_sorted() or frame.select("instrument_id", "ts_event").is_duplicated().any():
        raise MalformedResponse(where, "bars are not in ascending ts_event order, one per instrument and time")
    mapped = _mapped(mappings)
    frame = frame.with_row_index("row").with_columns(day=pl.col("ts_event").dt.date())
    matched = frame.join_where(mapped, pl.col("instrument_id") == pl.col("instrument_id_right"),
                               pl.col("day") >= pl.col("from"), pl.col("day") < pl.col("until"))["row"]
    undefined = pl.any_horizontal(pl.col(c) == UNDEFINED_PRICE for c in ("open", "high", "low", "close"))
    reason = (
        pl.when(undefined).then(pl.lit("undefined price (2^63-1)"))
        .when(pl.col("high") < pl.col("low")).then(pl.lit("high below low"))
        .when((pl.col("open") < pl.col("low")) | (pl.col("open") > pl.col("high"))
              | (pl.col("close") < pl.col("low")) | (pl.col("close") > pl.col("high")))
        .then(pl.lit("open or close outside [low, high]"))
        .when(~pl.col("row").is_in(matched.implode()))
        .then(pl.lit("instrument is not one the symbology maps that day to"))
    )
    if defined is not None:
        reason = reason.when(~pl.col("instrument_id").is_in(list(defined))).then(pl.lit("instrument not defined in the answer"))
    frame = frame.with_columns(reason=reason)
    bad = frame.filter(pl.col("reason").is_not_null())
    rejected = pl.DataFrame([
        rejected_row(dataset, "databento_glbx", symbol, row["ts_event"], [row["reason"]],
                     {k: row[k] for k in ("instrument_id", "open", "high", "low", "close", "volume")}, origin, now,
                     timeframe=schema.timeframe)
        for row in bad.iter_rows(named=True)
    ], schema=REJECTED_ROWS.schema)
    good = frame.filter(pl.col("reason").is_null()).select(
        "ts_event", "instrument_id", *(pl.col(c).cast(pl.Float64) / PRICE_UNITS for c in ("open", "high", "low", "close")),
        "volume")
    return good, rejected


def futures_rows(good: pl.DataFrame, symbol: str, schema: Schema, raw_symbols: dict[int, str], table: TableSpec,
                 now: dt.datetime) -> pl.DataFrame:
    """Bars that passed (screened_bars) as rows of market_data.futures_bars."""
    rows = good.height
    return good.with_columns(
        dataset=pl.lit(DATASET), symbol=pl.lit(symbol), timeframe=pl.lit(schema.timeframe),
        raw_symbol=good["instrument_id"].replace_strict(raw_symbols, default=None, return_dtype=pl.String),
        source=pl.lit("rest"), ingested_at=pl.Series([now] * rows, dtype=pl.Datetime("us", "UTC")),
    ).select(table.columns).cast(dict(table.schema))


class DatabentoBarsSource:
    """The bars of one root's continuous symbol over a window, piece by piece."""

    stype_in = "continuous"

    def __init__(
        self, base_url: str, api_key: str | None, schema: Schema, table: TableSpec, dataset: str, *, rule: str = "c",
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep, backoff_base_s: float = 0.5,
    ):
        self.schema = schema
        self.table = table
        self.dataset = dataset  # the name its rejected rows are kept under
        self.rule = rule
        self.rejected: list[pl.DataFrame] = []
        self.stats = RequestStats()
        self._base_url = base_url.rstrip("/")
        self._key = api_key
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff_base_s
        self._rows = 0
        self._halved = 0
        self._client: Any = None
        self._available_end: dt.datetime | None = None
        self.shared: SharedRequests | None = None  # the run's, when a run scope attached it
        self._budget = WeightBudget.for_host(self._base_url, REQUESTS_PER_SECOND, clock, sleep, 1.0)

    async def __aenter__(self) -> DatabentoBarsSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def outcome(self) -> SourceOutcome:
        rejected, self.rejected = self.rejected, []
        return SourceOutcome(
            rejected=rejected, requests=self.stats.requests, rows_by_source={"rest": self._rows},
            metadata={"rows_from_rest": self._rows, "databento_requests": self.stats.requests,
                      "http_429": self.stats.throttled, "retries": self.stats.retries,
                      "pieces_halved_after_504": self._halved},
        )

    def client(self) -> Any:
        if not self._key:
            raise MissingKey(SOURCE, f"set {KEY_VARIABLE} to a Databento API key (https://databento.com/portal/keys)")
        if self._client is None:
            self._client = client_for(self._base_url, self._key)
        return self._client

    def _scrubbed(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def _call(self, request: str, call: Any) -> Any:
        """`call()` in a thread, paced, retried; a 504 is raised to the caller as GatewayTimeout."""
        from databento.common.error import BentoClientError, BentoError, BentoServerError

        failure = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await self._budget.acquire(1, self.stats)
            self.stats.requests += 1
            if attempt > 1:
                self.stats.retries += 1
            try:
                return await asyncio.to_thread(call)
            except BentoClientError as exc:
                detail = self._scrubbed(str(exc.message or exc))
                if exc.http_status == 429:
                    self.stats.throttled += 1
                    self._budget.pause(float((exc.headers or {}).get("Retry-After", 1)))
                    failure = f"HTTP 429: {detail}"
                    continue
                raise UpstreamRejected(SOURCE, request, exc.http_status or 400, detail) from None
            except BentoServerError as exc:
                if exc.http_status == 504:
                    raise GatewayTimeout(SOURCE, f"{request}: {self._scrubbed(str(exc.message))}") from None
                failure = f"HTTP {exc.http_status}: {self._scrubbed(str(exc.message or 'no detail'))}"
            except (BentoError, OSError) as exc:  # a broken transfer, a refused connection
                failure = self._scrubbed(f"{exc.__class__.__name__}: {exc}")
            finally:
                self._budget.settle(1)
            await self._sleep(min(self._backoff * 2 ** attempt, 10.0))
        raise UpstreamUnavailable(SOURCE, f"{request}: {failure} ({MAX_ATTEMPTS} attempts)")

    async def available_end(self) -> dt.datetime:
        if self._available_end is None:
            client = self.client()
            answer = await self._call(f"metadata.get_dataset_range {DATASET}",
                                      lambda: client.metadata.get_dataset_range(DATASET))
            try:
                self._available_end = utc_moment(str(answer["end"]))
            except (KeyError, TypeError, ValueError):
                raise MalformedResponse(SOURCE, f"metadata.get_dataset_range {DATASET}: no end in {str(answer)[:160]}") from None
        return self._available_end

    async def _ask(self, symbols: list[str], start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """Each of `symbols`' (rows, rejected rows) over [start, end) from one request for the bars
        and one for their contracts' definitions; a symbol Databento cannot resolve gets the
        UpstreamRejected its asset fails with."""
        client = self.client()
        span = f"{start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}"
        listed = ",".join(symbols)
        request = f"timeseries.get_range {self.schema.name} {listed} {span}"

        def ask(schema: str) -> Any:
            return client.timeseries.get_range(dataset=DATASET, schema=schema, symbols=symbols,
                                               stype_in=self.stype_in, start=start.isoformat(), end=end.isoformat())

        bars = await self._call(request, lambda: ask(self.schema.name))
        definitions = list(await self._call(f"timeseries.get_range definition {listed} {span}", lambda: ask("definition")))
        now = dt.datetime.now(dt.UTC)
        mappings = bars.metadata.mappings
        found: dict[str, Any] = {}
        for symbol, records in split_by_symbol(records_frame(bars.to_ndarray()), mappings, symbols).items():
            if symbol in bars.metadata.not_found:
                found[symbol] = UpstreamRejected(SOURCE, request, 200, f"{DATASET} has no symbol {symbol} "
                                                                       "(not found in its symbology)")
            else:
                found[symbol] = self.rows(records, mappings.get(symbol, []), definitions, symbol, start, end,
                                          f"POST /v0/timeseries.get_range {self.schema.name} {symbol} {span}", now)
        return found

    async def _answers(self, symbols: list[str], start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """`_ask`, made smaller until the gateway answers: a 504 splits the symbols in two, and,
        one symbol left, the days (down to one)."""
        try:
            return await self._ask(symbols, start, end)
        except GatewayTimeout:
            if len(symbols) > 1:
                self._halved += 1
                middle = (len(symbols) + 1) // 2
                return await self._answers(symbols[:middle], start, end) | await self._answers(symbols[middle:], start, end)
            half = (end - start) / 2
            if half < dt.timedelta(days=1):
                raise
            self._halved += 1
            middle_day = start + dt.timedelta(days=max(1, round(half / dt.timedelta(days=1))))
            first, second = await self._answers(symbols, start, middle_day), await self._answers(symbols, middle_day, end)
            symbol = symbols[0]
            if isinstance(first[symbol], Exception) or isinstance(second[symbol], Exception):
                return first if isinstance(first[symbol], Exception) else second
            return {symbol: tuple(pl.concat([a, b]) for a, b in zip(first[symbol], second[symbol], strict=True))}

    def rows(self, records: pl.DataFrame, mappings: list[dict], definitions: list, symbol: str, start: dt.datetime,
             end: dt.datetime, origin: str, now: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(rows, rejected rows) of `symbol`'s records of one piece, with the answer's definitions."""
        good, rejected = screened_bars(records, mappings, symbol, self.schema, self.dataset, start, end, origin, now)
        raw_symbols = {int(record.instrument_id): str(record.raw_symbol) for record in definitions}
        return futures_rows(good, symbol, self.schema, raw_symbols, self.table, now), rejected

    def symbol_of(self, series: Any) -> str:
        return continuous_symbol(str(series.key), self.rule)

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The bars of `series` (its key a root) with ts_event in [start, end) UTC, a piece at a time.
        With the run's `shared` requests, each piece is asked for the next roots of the run too,
        and what it fetched for them waits there for their turn."""
        symbol = self.symbol_of(series)
        shared = self.shared
        if shared is not None and shared.available_end is None:
            shared.available_end = await self.available_end()
        end = min(end, shared.available_end if shared is not None else await self.available_end())
        cursor = start
        while cursor < end:
            piece = (cursor, min(cursor + self.schema.piece, end))
            cursor = piece[1]
            answer = shared.take(symbol, piece) if shared is not None else None
            if answer is None:
                chunk = [symbol, *(shared.following(symbol, piece) if shared is not None else [])]
                answers = await self._answers(chunk, *piece)
                if shared is not None:
                    shared.keep(answers, piece, symbol)
                answer = answers[symbol]
            if isinstance(answer, Exception):
                raise answer
            frame, rejected = answer
            self.rejected.append(rejected)
            self._rows += frame.height
            yield frame


class SharedRequests:
    """The Databento requests of one run of one dataset: a piece is asked for up to `per_request`
    of the run's symbols at once (the one being read and the next ones), and each other symbol's
    answer is kept here until its own asset reads it; `attach` gives a source of the run this."""

    def __init__(self, symbols: list[str], per_request: int):
        self.order = list(symbols)
        self.per_request = max(1, per_request)
        self.available_end: dt.datetime | None = None
        self._kept: dict[tuple[str, tuple[dt.datetime, dt.datetime]], Any] = {}
        self._asked: set[tuple[str, tuple[dt.datetime, dt.datetime]]] = set()

    def attach(self, source: DatabentoBarsSource) -> None:
        source.shared = self

    def take(self, symbol: str, piece: tuple[dt.datetime, dt.datetime]) -> Any:
        return self._kept.pop((symbol, piece), None)

    def following(self, symbol: str, piece: tuple[dt.datetime, dt.datetime]) -> list[str]:
        """Up to per_request − 1 symbols after `symbol` in the run not yet asked for `piece`."""
        after = self.order[self.order.index(symbol) + 1:] if symbol in self.order else []
        return [s for s in after if (s, piece) not in self._asked][:self.per_request - 1]

    def keep(self, answers: dict[str, Any], piece: tuple[dt.datetime, dt.datetime], reader: str) -> None:
        for symbol, answer in answers.items():
            self._asked.add((symbol, piece))
            if symbol != reader:
                self._kept[symbol, piece] = answer


class GatewayTimeout(UpstreamUnavailable):
    """Databento's gateway timed out (HTTP 504): the request was too large; a smaller one may pass."""


def estimate_cost(base_url: str, api_key: str, schema: Schema, symbols: list[str], stype_in: str,
                  start: dt.datetime, end: dt.datetime) -> float:
    """USD Databento asks for `schema` of `symbols` (continuous `ES.c.0` or parent `ES.OPT`, as
    `stype_in` says) over [start, end) UTC, by `metadata.get_cost` (its end clamped to the
    dataset's available end), without spending."""
    from databento.common.error import BentoError

    client = client_for(base_url, api_key)
    try:
        end = min(end, utc_moment(str(client.metadata.get_dataset_range(DATASET)["end"])))
        if start >= end:
            return 0.0
        return float(client.metadata.get_cost(
            dataset=DATASET, schema=schema.name, symbols=symbols, stype_in=stype_in,
            start=start.isoformat(), end=end.isoformat(),
        ))
    except BentoError as exc:
        message = str(getattr(exc, "message", None) or exc).replace(api_key, "***")
        raise UpstreamRejected(SOURCE, f"metadata.get_cost {schema.name}", getattr(exc, "http_status", None) or 0,
                               message) from None


OPTION_TYPES = {"C": "call", "P": "put"}


class DatabentoOptionsSource(DatabentoBarsSource):
    """The daily bars of every option on a root's futures (parent symbol `ROOT.OPT`), each with its
    contract from the definition schema: raw symbol, underlying, expiration, strike, call or put."""

    stype_in = "parent"

    def symbol_of(self, series: Any) -> str:
        return f"{series.key}.OPT"

    def rows(self, records: pl.DataFrame, mappings: list[dict], definitions: list, symbol: str, start: dt.datetime,
             end: dt.datetime, origin: str, now: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
        contracts = {}
        for record in definitions:
            kind = str(getattr(record.instrument_class, "value", record.instrument_class))
            if kind in OPTION_TYPES and record.strike_price != UNDEFINED_PRICE:
                contracts[int(record.instrument_id)] = (
                    str(record.raw_symbol), str(record.underlying), int(record.expiration), record.strike_price / PRICE_UNITS,
                    kind)
        good, rejected = screened_bars(records, mappings, symbol, self.schema, self.dataset, start, end, origin, now,
                                       defined=set(contracts))
        defined = pl.DataFrame(
            [(i, *c) for i, c in contracts.items()], orient="row",
            schema={"instrument_id": pl.Int64, "raw_symbol": pl.String, "underlying": pl.String,
                    "expiration_ns": pl.Int64, "strike": pl.Float64, "option_type": pl.String},
        )
        return good.join(defined, on="instrument_id", how="left").with_columns(
            dataset=pl.lit(DATASET), parent=pl.lit(symbol),
            expiration=pl.col("expiration_ns").cast(pl.Datetime("ns", "UTC")).cast(pl.Datetime("us", "UTC")),
            source=pl.lit("rest"), ingested_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")),
        ).select(self.table.columns).cast(dict(self.table.schema)).sort("ts_event", "instrument_id"), rejected
