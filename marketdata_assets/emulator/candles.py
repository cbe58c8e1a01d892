"""Deterministic synthetic candles: the same (market, symbol, timeframe, open_time) always gives
the same bar, so REST pages, archive files and repeated runs agree to the last digit."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import polars as pl

_BASE_PRICE = {"BTC": 30_000.0, "ETH": 2_000.0, "BNB": 300.0, "SOL": 60.0}
_DAY_MS = 86_400_000
_MINUTE_MS = 60_000
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _seed(*parts: str) -> np.uint64:
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _uniform(index: np.ndarray, seed: np.uint64, salt: int) -> np.ndarray:
    """splitmix64 of (index, seed, salt) mapped to [0, 1)."""
    with np.errstate(over="ignore"):
        z = (index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + seed + np.uint64(salt)) & _MASK
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class CandleBlock:
    """Columns of consecutive bars; prices rounded to 0.01, volumes to 1e-5 (as tick sizes do)."""

    open_time: np.ndarray  # int64 ms, bar start
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    quote_volume: np.ndarray
    trades: np.ndarray
    taker_buy_volume: np.ndarray
    taker_buy_quote_volume: np.ndarray

    def __len__(self) -> int:
        return len(self.open_time)


def _mid_price(t_ms: np.ndarray, base: float, phase: float) -> np.ndarray:
    t = t_ms.astype(np.float64) / _DAY_MS
    return base * np.exp(
        0.35 * np.sin(2 * np.pi * t / 365.0 + phase)
        + 0.08 * np.sin(2 * np.pi * t / 7.0 + 2 * phase)
        + 0.01 * np.sin(2 * np.pi * t)
    )


def synthetic_candles(
    market: str, symbol: str, interval_ms: int, open_times: np.ndarray, now_ms: int | None = None,
    closed_ms: Sequence[tuple[int, int]] = (),
) -> CandleBlock:
    """Bars opening at `open_times` (ms, aligned to `interval_ms`).

    A bar longer than a minute is its minutes' bars put together, as an exchange builds it: the
    first minute's open, the highest high, the lowest low, the last minute's close, the sums of
    volumes and trades. Minutes inside `closed_ms` ([start, end) ms: the market was shut) are
    not in it. A bar still open at `now_ms` is cut at `now_ms`: its close and volume are what
    has traded so far, as an exchange reports a forming candle.
    """
    open_times = np.asarray(open_times, dtype=np.int64)
    if interval_ms > _MINUTE_MS and interval_ms % _MINUTE_MS == 0:
        return _of_minutes(market, symbol, interval_ms, open_times, now_ms, closed_ms)
    return _minute_candles(market, symbol, interval_ms, open_times, now_ms)


def _of_minutes(
    market: str, symbol: str, interval_ms: int, open_times: np.ndarray, now_ms: int | None,
    closed_ms: Sequence[tuple[int, int]],
) -> CandleBlock:
    """Bars of `interval_ms` built from their minutes (see synthetic_candles), a few thousand bars
    of minutes at a time."""
    chunk = max(1, 400_000 // (interval_ms // _MINUTE_MS))
    parts = [_minutes_together(market, symbol, interval_ms, open_times[i:i + chunk], now_ms, closed_ms)
             for i in range(0, max(1, len(open_times)), chunk)]
    if len(parts) == 1:
        return parts[0]
    return CandleBlock(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(CandleBlock)))


def _minutes_together(
    market: str, symbol: str, interval_ms: int, open_times: np.ndarray, now_ms: int | None,
    closed_ms: Sequence[tuple[int, int]],
) -> CandleBlock:
    per_bar = interval_ms // _MINUTE_MS
    minutes = (open_times[:, None] + np.arange(per_bar, dtype=np.int64) * _MINUTE_MS).ravel()
    block = _minute_candles(market, symbol, _MINUTE_MS, minutes, now_ms)
    traded = np.ones(len(minutes), dtype=bool)
    for start, end in closed_ms:
        traded &= ~((minutes >= start) & (minutes + _MINUTE_MS <= end))
    if now_ms is not None:
        traded &= minutes < now_ms
    traded = traded.reshape(-1, per_bar)
    traded[~traded.any(axis=1), 0] = True  # a bar asked for has a minute at least (the caller's to drop)
    first = traded.argmax(axis=1)
    last = per_bar - 1 - traded[:, ::-1].argmax(axis=1)
    rows = np.arange(len(open_times))

    def shaped(values: np.ndarray) -> np.ndarray:
        return values.reshape(-1, per_bar)

    def total(values: np.ndarray, digits: int) -> np.ndarray:
        return np.round(np.where(traded, shaped(values), 0).sum(axis=1), digits)

    return CandleBlock(
        open_time=open_times,
        open=shaped(block.open)[rows, first],
        high=np.where(traded, shaped(block.high), -np.inf).max(axis=1),
        low=np.where(traded, shaped(block.low), np.inf).min(axis=1),
        close=shaped(block.close)[rows, last],
        volume=total(block.volume, 5),
        quote_volume=total(block.quote_volume, 8),
        trades=np.where(traded, shaped(block.trades), 0).sum(axis=1).astype(np.int64),
        taker_buy_volume=total(block.taker_buy_volume, 5),
        taker_buy_quote_volume=total(block.taker_buy_quote_volume, 8),
    )


def _minute_candles(
    market: str, symbol: str, interval_ms: int, open_times: np.ndarray, now_ms: int | None = None
) -> CandleBlock:
    seed = _seed(market, symbol, str(interval_ms))
    base = _BASE_PRICE.get(symbol[:3], 100.0)
    phase = float(seed % np.uint64(1000)) / 1000.0 * 2 * np.pi
    index = open_times // interval_ms
    end_times = open_times + interval_ms
    fraction = np.ones(len(open_times))
    if now_ms is not None:
        end_times = np.minimum(end_times, now_ms)
        fraction = np.clip((end_times - open_times) / interval_ms, 0.0, 1.0)
    u = [_uniform(index, seed, salt) for salt in range(7)]
    open_ = np.round(_mid_price(open_times, base, phase) * (1 + 0.001 * (u[0] - 0.5)), 2)
    close = np.round(_mid_price(end_times, base, phase) * (1 + 0.001 * (u[1] - 0.5)), 2)
    high = np.round(np.maximum(open_, close) * (1 + 0.002 * u[2]), 2)
    low = np.round(np.minimum(open_, close) * (1 - 0.002 * u[3]), 2)
    scale = np.sqrt(interval_ms / 60_000)
    volume = np.round((0.5 + 50 * u[4]) * scale * fraction, 5)
    typical = (open_ + close) / 2
    taker = np.round(volume * u[6], 5)
    return CandleBlock(
        open_time=open_times,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        quote_volume=np.round(volume * typical, 8),
        trades=np.floor((10 + 500 * u[5]) * scale * fraction).astype(np.int64),
        taker_buy_volume=taker,
        taker_buy_quote_volume=np.round(taker * typical, 8),
    )


FUNDING_INTERVAL_MS = 8 * 3_600_000


@dataclass(frozen=True)
class FundingBlock:
    """Funding settlements: exact times (ms, a few ms after the 8-hour mark), rates, mark prices."""

    funding_time: np.ndarray
    funding_rate: np.ndarray
    mark_price: np.ndarray


def synthetic_funding(symbol: str, marks_ms: np.ndarray, venue: str = "binance") -> FundingBlock:
    """The settlements at the 8-hour marks `marks_ms`: Binance reports each 1-30 ms late; OKX and
    Bybit report the mark itself."""
    marks_ms = np.asarray(marks_ms, dtype=np.int64)
    seed = _seed("funding", symbol) if venue == "binance" else _seed("funding", venue, symbol)
    index = marks_ms // FUNDING_INTERVAL_MS
    jitter = 1 + np.floor(_uniform(index, seed, 0) * 30).astype(np.int64) if venue == "binance" else 0
    rate = np.round(0.0001 + 0.0006 * (_uniform(index, seed, 1) - 0.35), 8)
    base = _BASE_PRICE.get(symbol[:3], 100.0)
    phase = float(_seed("perp", symbol, "60000") % np.uint64(1000)) / 1000.0 * 2 * np.pi
    return FundingBlock(marks_ms + jitter, rate, np.round(_mid_price(marks_ms, base, phase), 8))


STATS_INTERVAL_MS = 5 * 60_000


@dataclass(frozen=True)
class StatsBlock:
    """Binance's futures statistics at 5-minute marks (ms): open interest and the four long/short
    metrics, rounded as the wire carries them, so REST and the archive's metrics files agree."""

    time: np.ndarray
    open_interest: np.ndarray  # base asset
    open_interest_value: np.ndarray  # quote asset
    # (ratio, long share, short share) of accounts, top-trader accounts, top-trader positions
    global_account: tuple[np.ndarray, np.ndarray, np.ndarray]
    top_trader_account: tuple[np.ndarray, np.ndarray, np.ndarray]
    top_trader_position: tuple[np.ndarray, np.ndarray, np.ndarray]
    taker_volume: tuple[np.ndarray, np.ndarray, np.ndarray]  # (buy/sell ratio, buy volume, sell volume)


def synthetic_stats(symbol: str, times_ms: np.ndarray) -> StatsBlock:
    """The statistics at `times_ms` (5-minute marks)."""
    times_ms = np.asarray(times_ms, dtype=np.int64)
    seed = _seed("stats", symbol)
    index = times_ms // STATS_INTERVAL_MS
    u = [_uniform(index, seed, salt) for salt in range(6)]
    base = _BASE_PRICE.get(symbol[:3], 100.0)
    phase = float(_seed("perp", symbol, "60000") % np.uint64(1000)) / 1000.0 * 2 * np.pi
    price = _mid_price(times_ms, base, phase)
    days = times_ms.astype(np.float64) / _DAY_MS
    contracts = np.round(2.4e9 / base * (1 + 0.3 * np.sin(2 * np.pi * days / 90)) * (1 + 0.01 * u[0]), 3)

    def shares(u_long: np.ndarray, centre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        long = np.round(centre + 0.2 * (u_long - 0.5), 4)
        short = np.round(1 - long, 4)
        return np.round(long / short, 4), long, short

    buy = np.round(50 + 500 * u[4], 3)
    sell = np.round(50 + 500 * u[5], 3)
    return StatsBlock(
        time=times_ms,
        open_interest=contracts,
        open_interest_value=np.round(contracts * price, 8),
        global_account=shares(u[1], 0.6),
        top_trader_account=shares(u[2], 0.55),
        top_trader_position=shares(u[3], 0.5),
        taker_volume=(np.round(buy / sell, 4), buy, sell),
    )


def _plain(values: np.ndarray, digits: int) -> pl.Expr:
    """A column rounded to `digits`, written as the venues write numbers: plain decimals, no
    exponent, no trailing zeros."""
    column = pl.lit(pl.Series(np.round(np.asarray(values, dtype=np.float64), digits)))
    if np.any((values != 0) & (np.abs(values) < 1e-4)):  # polars would write 1e-7: the venues 0.0000001
        column = pl.lit(pl.Series([format(float(v), f".{digits}f") for v in np.round(values, digits)]))
        return column.str.replace(r"0+$", "").str.replace(r"\.$", "")
    return column.cast(pl.String).str.replace(r"\.0$", "")


def string_rows(times: np.ndarray, *columns: tuple[np.ndarray, int] | list[str]) -> orjson.Fragment:
    """A JSON array of rows of strings, `[["<ms>", "<number>", …], …]`, as the venues send candles:
    the times, then each (values, digits) column as plain decimals or a list of strings as is;
    built in one pass of polars (a page of 1,000 rows at once) and embedded in the answer as is."""
    parts = [pl.lit(pl.Series(times.astype(np.int64))).cast(pl.String)]
    for column in columns:
        parts.append(pl.lit(pl.Series(column, dtype=pl.String)) if isinstance(column, list) else _plain(*column))
    quoted = [piece for part in parts for piece in (pl.lit('","'), part)][1:]
    rows = pl.select(pl.concat_str([pl.lit('["'), *quoted, pl.lit('"]')]).str.join(","))
    return orjson.Fragment(("[" + rows.item() + "]").encode())
