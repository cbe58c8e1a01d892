"""Binance klines over REST: spot `/api/v3/klines` and USD-M futures `/fapi/v1/klines`.

Windows are half-open, [start, end), in UTC. Binance speaks milliseconds (microseconds when it
sends `X-MBX-TIME-UNIT: MICROSECOND`); frames come out as UTC datetimes in `schemas.KLINES`.
Only closed candles are returned: Binance includes the still-open one, we drop it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
import polars as pl

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.binance import BINANCE_FUTURES, BINANCE_SPOT
from marketdata_assets.sources.http import Clock, RateLimit, RequestStats, Sleep, UpstreamClient
from marketdata_assets.timeframes import Timeframe, timeframe
from marketdata_assets.validation import split_invalid_klines

Market = Literal["spot", "perp"]
TIME_UNIT_HEADER = "X-MBX-TIME-UNIT"
_KLINE_FIELDS = 12
_FLOAT_FIELDS = {  # canonical column -> index in a Binance kline row
    "open": 1,
    "high": 2,
    "low": 3,
    "close": 4,
    "volume": 5,
    "quote_volume": 7,
    "taker_buy_volume": 9,
    "taker_buy_quote_volume": 10,
}


@dataclass(frozen=True)
class KlinesEndpoint:
    """One Binance kline API: its path, page size and per-request weight."""

    market: Market
    path: str
    page_limit: int
    weight_limit: int  # Binance's published weight per minute per IP

    @property
    def source(self) -> str:
        return f"binance {self.market}"

    def request_weight(self, limit: int) -> int:
        if self.market == "spot":
            return 2
        # USD-M: <100 -> 1, <500 -> 2, <=1000 -> 5, more -> 10 (so 499 rows cost 2)
        if limit < 100:
            return 1
        if limit < 500:
            return 2
        if limit <= 1000:
            return 5
        return 10


SPOT = KlinesEndpoint("spot", "/api/v3/klines", page_limit=1000, weight_limit=6000)
PERP = KlinesEndpoint("perp", "/fapi/v1/klines", page_limit=499, weight_limit=2400)
ENDPOINTS: dict[str, KlinesEndpoint] = {"spot": SPOT, "perp": PERP}


def _ms(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone: windows are UTC datetimes")
    return int(moment.timestamp() * 1000)


def parse_klines(
    rows: Any,
    *,
    market: str,
    symbol: str,
    tf: Timeframe,
    time_unit: str = "ms",
    ingested_at: dt.datetime | None = None,
    source: str = "rest",
) -> pl.DataFrame:
    """Binance kline rows (12-field arrays) to a frame in `schemas.KLINES`.

    Open and close times are in `time_unit` ('ms' or 'us'); prices and volumes are decimal
    strings. Raises MalformedResponse naming the first bad row and field.
    """
    where = f"binance {market} {symbol} {tf.name}"
    if not isinstance(rows, list):
        raise MalformedResponse(where, f"expected a JSON array of klines, got {type(rows).__name__}")
    if not rows:
        return KLINES.empty_frame()
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < _KLINE_FIELDS - 1:
            raise MalformedResponse(
                where, f"row {index} is not a {_KLINE_FIELDS}-field kline array: {str(row)[:120]}"
            )
    columns = list(zip(*(row[:_KLINE_FIELDS - 1] for row in rows), strict=True))
    scale = 1000 if time_unit == "us" else 1
    try:
        open_raw = pl.Series("open_time", columns[0], dtype=pl.Int64)
        close_raw = pl.Series("close_time", columns[6], dtype=pl.Int64)
    except (TypeError, pl.exceptions.PolarsError) as exc:
        raise MalformedResponse(where, f"open/close times are not integers: {exc}") from None
    numbers = [*_FLOAT_FIELDS.items(), ("trades", 8)]
    raw = pl.DataFrame([open_raw, close_raw, *(
        pl.Series(name, columns[position], dtype=pl.String, strict=False) for name, position in numbers
    )])
    # One pass builds the canonical frame and the flags of what is wrong; the rows are looked at
    # one by one only to name the first culprit.
    span = tf.millis * scale
    schema = KLINES.schema
    stamp = ingested_at or dt.datetime.now(dt.UTC)
    constants = {"venue": "binance", "market": market, "symbol": symbol, "timeframe": tf.name, "source": source}
    frame = raw.select(
        *(
            pl.lit(constants[name], dtype=schema[name]).alias(name) if name in constants
            else (pl.col("open_time") // scale).cast(pl.Datetime("ms", "UTC")).cast(schema[name]) if name == "open_time"
            else pl.lit(stamp, dtype=schema[name]).alias(name) if name == "ingested_at"
            else pl.col(name).cast(schema[name], strict=False)
            for name in KLINES.columns
        ),
        ((pl.col("close_time") - pl.col("open_time")) != span - 1).alias("_bad_close"),
    )
    bad_close = frame["_bad_close"]
    if bad_close.any():
        index = int(bad_close.arg_true()[0])
        raise MalformedResponse(
            where,
            f"row {index}: close_time {close_raw[index]} is not open_time {open_raw[index]} "
            f"+ {tf.name} - 1 (time unit {time_unit})",
        )
    broken = [(name, position) for name, position in numbers if frame[name].null_count()]
    if broken:
        index, name, position = min((int(frame[name].is_null().arg_true()[0]), name, position) for name, position in broken)
        raise MalformedResponse(where, f"row {index}: field {name} = {columns[position][index]!r} is not a number")
    return frame.drop("_bad_close")


@dataclass
class KlinesFetch:
    """Closed candles of one window, and what fetching them cost."""

    frame: pl.DataFrame
    stats: RequestStats


class BinanceKlinesClient(UpstreamClient):
    """Fetches closed klines of one Binance market, pages concurrently up to the weight budget.

    Use as `async with BinanceKlinesClient(...) as client: await client.fetch(...)`; one client
    shares one budget across every window it fetches.
    """

    def __init__(
        self,
        market: Market,
        base_url: str,
        *,
        weight_limit: int | None = None,
        max_concurrency: int = 10,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        timeout_s: float = 30.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ):
        if market not in ENDPOINTS:
            raise ValueError(f"unknown Binance market {market!r} (spot or perp)")
        self.endpoint = ENDPOINTS[market]
        self._clock = clock
        self.rejected = []
        venue = BINANCE_SPOT if market == "spot" else BINANCE_FUTURES
        self._http = venue.http(
            self.endpoint.source, base_url,
            RateLimit(weight_limit or self.endpoint.weight_limit, scope=self.endpoint.path),
            max_concurrency=max_concurrency, max_attempts=max_attempts, backoff_base_s=backoff_base_s,
            timeout_s=timeout_s, clock=clock, sleep=sleep,
        )

    async def fetch(
        self, symbol: str, timeframe_name: str, start: dt.datetime, end: dt.datetime
    ) -> pl.DataFrame:
        """Closed candles with open_time in [start, end), ascending, each once."""
        tf = timeframe(timeframe_name)
        start_ms, end_ms = _ms(start), _ms(end)
        if end_ms <= start_ms:
            return KLINES.empty_frame()
        closed_before = int(self._clock() * 1000) - tf.millis  # open_time of the newest closed bar
        end_ms = min(end_ms, closed_before + 1)
        if end_ms <= start_ms:
            return KLINES.empty_frame()
        page_span = self.endpoint.page_limit * tf.millis
        pages = [(s, min(s + page_span, end_ms)) for s in range(start_ms, end_ms, page_span)]
        frames = await _gather_cancelling(
            [self._fetch_page(symbol, tf, page_start, page_end) for page_start, page_end in pages]
        )
        non_empty = [f for f in frames if f.height]
        if not non_empty:
            return KLINES.empty_frame()
        frame = pl.concat(non_empty, how="vertical")
        return frame.unique(subset=["open_time"], keep="last", maintain_order=True).sort("open_time")

    async def _fetch_page(
        self, symbol: str, tf: Timeframe, page_start: int, page_end: int
    ) -> pl.DataFrame:
        """Valid rows with open_time in [page_start, page_end); follows on if the server pages
        short. Rows that break a validation rule go to `self.rejected`."""
        parts: list[pl.DataFrame] = []
        cursor = page_start
        while cursor < page_end:
            limit = self.endpoint.page_limit
            params = {
                "symbol": symbol,
                "interval": tf.name,
                "startTime": cursor,
                "endTime": page_end - 1,
                "limit": limit,
            }
            rows, headers = await self._http.get_json(
                self.endpoint.path, params, self.endpoint.request_weight(limit)
            )
            unit = "us" if headers.get(TIME_UNIT_HEADER, "").upper() == "MICROSECOND" else "ms"
            part = parse_klines(rows, market=self.endpoint.market, symbol=symbol, tf=tf, time_unit=unit)
            if part.is_empty():
                break
            self._check_page(part, symbol, tf, cursor, page_end)
            last_ms = int(part["open_time"][-1].timestamp() * 1000)
            part, rejected = split_invalid_klines(
                part,
                lambda indices, rows=rows: [orjson.dumps(rows[i]).decode() for i in indices],
                f"GET {self.endpoint.path}?{urlencode(params)}",
            )
            parts.append(part)
            if rejected.height:
                self.rejected.append(rejected)
            if last_ms + tf.millis >= page_end:
                break
            # Short of page_end: the server pages smaller than asked, or the data pauses here
            # (an outage); ask on from the last row until an empty answer.
            cursor = last_ms + 1
        if not parts:
            return KLINES.empty_frame()
        return pl.concat(parts, how="vertical")

    def _check_page(
        self, part: pl.DataFrame, symbol: str, tf: Timeframe, start_ms: int, end_ms: int
    ) -> None:
        """A server that answers outside the asked range, or out of order, is lying: stop."""
        times = part["open_time"]
        first = int(times[0].timestamp() * 1000)
        last = int(times[-1].timestamp() * 1000)
        where = f"{self.endpoint.source} {symbol} {tf.name}"
        if first < start_ms or last >= end_ms:
            raise MalformedResponse(
                where,
                f"asked for open times in [{start_ms}, {end_ms}) ms, got rows from {first} to {last}",
            )
        if not times.is_sorted() or times.n_unique() != len(times):
            raise MalformedResponse(where, "rows are not in strictly ascending open_time order")


async def _gather_cancelling(coroutines: Sequence[Any]) -> list[Any]:
    """Run coroutines concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def fetch_klines(
    market: Market,
    base_url: str,
    symbol: str,
    timeframe_name: str,
    start: dt.datetime,
    end: dt.datetime,
    **client_options: Any,
) -> KlinesFetch:
    """Blocking convenience: closed klines of one window, with the request statistics."""

    async def run() -> KlinesFetch:
        async with BinanceKlinesClient(market, base_url, **client_options) as client:
            frame = await client.fetch(symbol, timeframe_name, start, end)
            return KlinesFetch(frame, client.stats)

    return asyncio.run(run())
