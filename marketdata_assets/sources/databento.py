"""CME Globex bars from Databento (dataset GLBX.MDP3) through the vendor's `databento` client.

A series is one root read as its continuous symbol `ROOT.{rule}.0` (`c` calendar, `n` open
interest, `v` volume roll). A window is cut into pieces (hourly bars at most 7 days, daily bars at
most a year) and each piece is two requests: `timeseries.get_range(schema=ohlcv-1d|ohlcv-1h,
stype_in=continuous)` for the bars and `schema=definition` for the contracts they came from
(instrument_id → raw_symbol such as `ESH4`), so each bar keeps the contract it mapped to that day
and rolls show. One root a request: an asset's rows and cost are its own, and a root the venue
cannot resolve fails its own asset only.

- Prices are int64 × 1e-9; the undefined price (2^63 − 1) makes a row rejected (kept in
  rejected_rows), as do high < low, open or close outside [low, high], and a bar whose
  instrument is not the one the answer's own symbology maps that day to. Databento sends no bar
  for an interval without trades: nothing is invented for one.
- The window's end is clamped to the dataset's available end (`metadata.get_dataset_range`,
  asked once a source): asking past it is a 422.
- A 504 (the gateway timed out on a large request) halves the piece's days and tries again,
  down to a day; other 5xx and broken transfers are retried with backoff; a 429 waits its
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


def parse_bars(
    records: Any, mappings: list[dict], raw_symbols: dict[int, str], symbol: str, schema: Schema, table: TableSpec,
    dataset: str, start: dt.datetime, end: dt.datetime, origin: str, now: dt.datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows in `table`'s schema, rejected rows) of one answer's OHLCV records (a numpy structured
    array as DBNStore.to_ndarray gives it), for `symbol` over [start, end) UTC; rejected rows are
    kept under `dataset`. `mappings` are the
    answer's symbology intervals of `symbol` (start_date, end_date, symbol = instrument id)."""
    where = f"{SOURCE} {symbol} {schema.name}"
    frame = pl.DataFrame({
        "ts_event": _ns_to_utc(records["ts_event"]),
        "instrument_id": pl.Series(records["instrument_id"].astype("int64")),
        **{name: pl.Series(records[name].astype("int64")) for name in ("open", "high", "low", "close")},
        "volume": pl.Series(records["volume"].astype("int64")),
    })
    if frame.is_empty():
        return table.empty_frame(), REJECTED_ROWS.empty_frame()
    times = frame["ts_event"]
    if times.min() < start or times.max() >= end:
        raise MalformedResponse(where, f"asked for bars in [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC, got "
                                       f"bars from {times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M}")
    if not times.is_sorted() or times.n_unique() != len(times):
        raise MalformedResponse(where, "bars are not in strictly ascending ts_event order")
    mapped = pl.DataFrame(
        [(m["start_date"], m["end_date"], int(m["symbol"])) for m in mappings],
        schema={"from": pl.Date, "until": pl.Date, "mapped_id": pl.Int64}, orient="row",
    )
    frame = frame.with_columns(day=pl.col("ts_event").dt.date()).join_where(
        mapped, pl.col("day") >= pl.col("from"), pl.col("day") < pl.col("until"),
    ).sort("ts_event") if mapped.height else frame.with_columns(day=pl.col("ts_event").dt.date(), mapped_id=None)
    undefined = pl.any_horizontal(pl.col(c) == UNDEFINED_PRICE for c in ("open", "high", "low", "close"))
    reason = (
        pl.when(undefined).then(pl.lit("undefined price (2^63-1)"))
        .when(pl.col("high") < pl.col("low")).then(pl.lit("high below low"))
        .when((pl.col("open") < pl.col("low")) | (pl.col("open") > pl.col("high"))
              | (pl.col("close") < pl.col("low")) | (pl.col("close") > pl.col("high")))
        .then(pl.lit("open or close outside [low, high]"))
        .when(pl.col("mapped_id").is_null() | (pl.col("mapped_id") != pl.col("instrument_id")))
        .then(pl.lit("instrument is not the one the symbology maps that day to"))
    )
    frame = frame.with_columns(reason=reason)
    bad = frame.filter(pl.col("reason").is_not_null())
    rejected = pl.DataFrame([
        rejected_row(dataset, "databento_glbx", symbol, row["ts_event"], [row["reason"]],
                     {k: row[k] for k in ("instrument_id", "open", "high", "low", "close", "volume")}, origin, now,
                     timeframe=schema.timeframe)
        for row in bad.iter_rows(named=True)
    ], schema=REJECTED_ROWS.schema)
    good = frame.filter(pl.col("reason").is_null())
    rows = good.height
    kept = pl.DataFrame({
        "dataset": [DATASET] * rows, "symbol": [symbol] * rows, "timeframe": [schema.timeframe] * rows,
        "ts_event": good["ts_event"],
        **{name: good[name].cast(pl.Float64) / PRICE_UNITS for name in ("open", "high", "low", "close")},
        "volume": good["volume"], "instrument_id": good["instrument_id"],
        "raw_symbol": good["instrument_id"].replace_strict(raw_symbols, default=None, return_dtype=pl.String),
        "source": ["rest"] * rows, "ingested_at": [now] * rows,
    }, schema=table.schema)
    return kept, rejected


class DatabentoBarsSource:
    """The bars of one root's continuous symbol over a window, piece by piece."""

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

    async def _piece(self, symbol: str, start: dt.datetime, end: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
        client = self.client()
        span = f"{start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}"
        request = f"timeseries.get_range {self.schema.name} {symbol} {span}"

        def ask(schema: str) -> Any:
            return client.timeseries.get_range(dataset=DATASET, schema=schema, symbols=[symbol],
                                               stype_in="continuous", start=start.isoformat(), end=end.isoformat())

        bars = await self._call(request, lambda: ask(self.schema.name))
        if symbol in bars.metadata.not_found:
            raise UpstreamRejected(SOURCE, request, 200, f"{DATASET} has no symbol {symbol} (not found in its symbology)")
        definitions = await self._call(f"timeseries.get_range definition {symbol} {span}", lambda: ask("definition"))
        raw_symbols = {int(record.instrument_id): str(record.raw_symbol) for record in definitions}
        mappings = bars.metadata.mappings.get(symbol, [])
        return parse_bars(bars.to_ndarray(), mappings, raw_symbols, symbol, self.schema, self.table, self.dataset,
                          start, end,
                          f"POST /v0/timeseries.get_range {self.schema.name} {symbol} {span}", dt.datetime.now(dt.UTC))

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The bars of `series` (its key a root) with ts_event in [start, end) UTC, a piece at a time."""
        symbol = continuous_symbol(str(series.key), self.rule)
        end = min(end, await self.available_end())
        pending = []
        cursor = start
        while cursor < end:
            pending.append((cursor, min(cursor + self.schema.piece, end)))
            cursor = pending[-1][1]
        while pending:
            piece_start, piece_end = pending.pop(0)
            try:
                frame, rejected = await self._piece(symbol, piece_start, piece_end)
            except GatewayTimeout:
                days = (piece_end - piece_start) / 2
                if days < dt.timedelta(days=1):
                    raise
                self._halved += 1
                middle = piece_start + dt.timedelta(days=max(1, round(days / dt.timedelta(days=1))))
                pending[:0] = [(piece_start, middle), (middle, piece_end)]
                continue
            self.rejected.append(rejected)
            self._rows += frame.height
            yield frame


class GatewayTimeout(UpstreamUnavailable):
    """Databento's gateway timed out (HTTP 504): the request was too large; a smaller one may pass."""


def estimate_cost(base_url: str, api_key: str, schema: Schema, roots: list[tuple[str, str]],
                  start: dt.datetime, end: dt.datetime) -> float:
    """USD Databento asks for the bars of `roots` ((root, rule)) over [start, end) UTC, by
    `metadata.get_cost` (its end clamped to the dataset's available end), without spending."""
    from databento.common.error import BentoError

    client = client_for(base_url, api_key)
    try:
        end = min(end, utc_moment(str(client.metadata.get_dataset_range(DATASET)["end"])))
        if start >= end:
            return 0.0
        return float(client.metadata.get_cost(
            dataset=DATASET, schema=schema.name, symbols=[continuous_symbol(root, rule) for root, rule in roots],
            stype_in="continuous", start=start.isoformat(), end=end.isoformat(),
        ))
    except BentoError as exc:
        message = str(getattr(exc, "message", None) or exc).replace(api_key, "***")
        raise UpstreamRejected(SOURCE, f"metadata.get_cost {schema.name}", getattr(exc, "http_status", None) or 0,
                               message) from None
