"""Deribit: the option chain of a currency as it stands now, from its public JSON-RPC API over HTTP.

- `public/get_book_summary_by_currency?currency=…&kind=option`: a line per live option with its open
  interest (coins), mark_iv (percent), mark_price (in the currency) and underlying_price. No greeks.
- `public/get_instruments?currency=…&kind=option`: each option's strike, call or put, and expiry
  (08:00 UTC). Deribit allows it about once every 10 s (a burst of 5): the answer is kept for the
  process and asked again only when a summary names an instrument it does not hold.

Deribit serves only the current chain: a snapshot is what it answers now. Errors come as
`{"error": {"code", "message"}}`: 10028 (too_many_requests, HTTP 429) is waited out, never
hammered; -32602 (invalid params) is refused. A line whose open interest or volatility is not a
number, or is negative, or whose instrument Deribit does not define, is rejected (kept in
rejected_rows), never stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import polars as pl

from marketdata_assets.schemas import REJECTED_ROWS, TableSpec, rejected_row
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.http import Clock, EnvelopeError, RateLimit, Sleep, UpstreamClient, Venue
from marketdata_assets.sources.protocol import SourceOutcome

SOURCE = "Deribit options"
INSTRUMENTS_PATH = "/api/v2/public/get_instruments"
SUMMARY_PATH = "/api/v2/public/get_book_summary_by_currency"
CURRENCIES = ("BTC", "ETH")
# get_instruments: a burst of 5, then one every 10 s; book summaries ~20 a second (non-matching-engine calls)
INSTRUMENTS_LIMIT = RateLimit(5, 50.0, INSTRUMENTS_PATH)
SUMMARIES_LIMIT = RateLimit(20, 1.0, SUMMARY_PATH)


def deribit_error_detail(response: httpx.Response) -> tuple[str, int | None]:
    """`code N: message (reason)` of a JSON-RPC error body."""
    try:
        error = response.json()["error"]
        reason = (error.get("data") or {}).get("reason")
        return f"code {error['code']}: {error['message']}" + (f" ({reason})" if reason else ""), int(error["code"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return (response.text[:200] or response.reason_phrase), None


def deribit_envelope_error(body: Any) -> EnvelopeError | None:
    """The JSON-RPC error of a 200 answer, if it carries one (10028 means slow down)."""
    if not isinstance(body, dict):
        return EnvelopeError(-1, f"not a JSON-RPC answer: {str(body)[:160]}")
    error = body.get("error")
    if error is None:
        return None if isinstance(body.get("result"), list) else EnvelopeError(-1, f"no result in {str(body)[:160]}")
    code = int(error.get("code", -1)) if isinstance(error, dict) else -1
    return EnvelopeError(code, str(error.get("message", error) if isinstance(error, dict) else error),
                         throttled=code == 10028)


VENUE = Venue("deribit", "deribit_url", error_detail=deribit_error_detail, envelope_check=deribit_envelope_error,
              default_retry_after_s=10.0)


def parse_instruments(body: Any, currency: str) -> dict[str, tuple[dt.datetime, float, str]]:
    """instrument_name -> (expiry UTC, strike, 'call'|'put') of a get_instruments answer."""
    where = f"{SOURCE} {currency} get_instruments"
    found = {}
    for index, row in enumerate(body.get("result") or []):
        try:
            kind = str(row["option_type"])
            if kind not in ("call", "put"):
                raise ValueError(f"option_type {kind!r}")
            found[str(row["instrument_name"])] = (
                dt.datetime.fromtimestamp(int(row["expiration_timestamp"]) / 1000, dt.UTC), float(row["strike"]), kind)
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(where, f"instrument {index} is not an option ({exc}): {str(row)[:160]}") from None
    return found


def parse_chain(
    body: Any, instruments: dict[str, tuple[dt.datetime, float, str]], currency: str, table: TableSpec, dataset: str,
    origin: str, now: dt.datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows in `table`'s schema, rejected rows) of a get_book_summary_by_currency answer, each line
    with its instrument's expiry, strike and type; snapshot_time the answer's own time."""
    rows, rejected = [], []
    for index, line in enumerate(body.get("result") or []):
        if not isinstance(line, dict) or "instrument_name" not in line:
            raise MalformedResponse(f"{SOURCE} {currency}", f"summary line {index} names no instrument: {str(line)[:160]}")
        name = str(line["instrument_name"])
        reasons = []
        try:
            stamp = dt.datetime.fromtimestamp(int(line["creation_timestamp"]) / 1000, dt.UTC)
        except (KeyError, TypeError, ValueError):
            stamp = now
        values = {}
        for field in ("open_interest", "mark_iv", "mark_price", "underlying_price"):
            raw = line.get(field)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
                reasons.append(f"{field} {raw!r} is not a number of 0 or more")
            else:
                values[field] = float(raw)
        if name not in instruments:
            reasons.append("an instrument get_instruments does not list")
        if reasons:
            rejected.append(rejected_row(dataset, "deribit", currency, stamp, reasons, line, origin, now, timeframe=""))
            continue
        expiry, strike, kind = instruments[name]
        rows.append((stamp, currency, name, expiry, strike, kind, values["open_interest"], values["mark_iv"],
                     values["mark_price"], values["underlying_price"], "rest", now))
    frame = pl.DataFrame(rows, schema=table.schema, orient="row")
    return frame, pl.DataFrame(rejected, schema=REJECTED_ROWS.schema)


class DeribitChainSource(UpstreamClient):
    """The chain of one currency now: one book summary, and the instruments when they are new."""

    _instruments: dict[tuple[str, str], dict[str, tuple[dt.datetime, float, str]]] = {}  # (base URL, currency)

    def __init__(self, base_url: str, table: TableSpec, dataset: str, *, clock: Clock = time.time,
                 sleep: Sleep = asyncio.sleep, backoff_base_s: float = 0.5):
        self.table = table
        self.dataset = dataset
        self.rejected: list[pl.DataFrame] = []
        self._base_url = base_url.rstrip("/")
        self._rows = 0
        self._instrument_requests = 0
        self._http = VENUE.http(SOURCE, base_url, SUMMARIES_LIMIT, max_concurrency=1, clock=clock, sleep=sleep,
                                backoff_base_s=backoff_base_s)
        self._instruments_http = VENUE.http(SOURCE, base_url, INSTRUMENTS_LIMIT, max_concurrency=1, clock=clock,
                                            sleep=sleep, backoff_base_s=backoff_base_s)

    async def __aenter__(self) -> DeribitChainSource:
        await self._http.__aenter__()
        await self._instruments_http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.__aexit__(*exc_info)
        await self._instruments_http.__aexit__(*exc_info)

    def outcome(self) -> SourceOutcome:
        requests = self.stats.requests + self._instruments_http.stats.requests
        return SourceOutcome(rejected=self.take_rejected(), requests=requests, rows_by_source={"rest": self._rows},
                             metadata={"rows_from_rest": self._rows, "deribit_requests": requests,
                                       "instrument_lists_fetched": self._instrument_requests,
                                       "http_429": self.stats.throttled + self._instruments_http.stats.throttled})

    def count_rows(self, rows: int) -> None:
        """Rows written from this source's answers by a reader that does not go through `read`."""
        self._rows += rows

    async def instruments(self, currency: str, refresh: bool = False) -> dict[str, tuple[dt.datetime, float, str]]:
        key = (self._base_url, currency)
        if refresh or key not in self._instruments:
            body, _ = await self._instruments_http.get_json(INSTRUMENTS_PATH, {"currency": currency, "kind": "option",
                                                                              "expired": "false"}, 1)
            self._instrument_requests += 1
            self._instruments[key] = parse_instruments(body, currency)
        return self._instruments[key]

    async def snapshot(self, currency: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(chain rows, rejected rows) of `currency` now."""
        params = {"currency": currency, "kind": "option"}
        body, _ = await self._http.get_json(SUMMARY_PATH, params, 1)
        known = await self.instruments(currency)
        names = {line.get("instrument_name") for line in body.get("result") or [] if isinstance(line, dict)}
        if names - set(known):  # a new listing since the instruments were read
            known = await self.instruments(currency, refresh=True)
        origin = f"GET {SUMMARY_PATH}?currency={currency}&kind=option"
        return parse_chain(body, known, currency, self.table, self.dataset, origin, dt.datetime.now(dt.UTC))

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        """The chain of `series` (its key a currency) now, whatever the window: the dataset asks
        only for the hour in progress (Deribit serves no past chain)."""
        frame, rejected = await self.snapshot(str(series.key))
        self.rejected.append(rejected)
        self._rows += frame.height
        yield frame
