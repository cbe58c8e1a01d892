"""What happened at the emulated exchange: outages with no candles, candles it got wrong, and
windows whose first fetches fail. REST and the archive serve the same history.

By default the exchange had the outages of the documented maintenance calendar
(`maintenance.yaml`): real Binance has no candles there either.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from dataclasses import dataclass

import numpy as np

from marketdata_assets.emulator.candles import CandleBlock, synthetic_candles
from marketdata_assets.maintenance import maintenance_windows


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def parse_time(text: str) -> int:
    """`2024-01-10T02:00` or `2024-01-10 02:00:00` (UTC) to Unix milliseconds."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a UTC time like 2024-01-10T02:00") from None
    return _ms(moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment)


def _span(text: str) -> tuple[int, int]:
    start, sep, end = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not a window START/END")
    lo, hi = parse_time(start), parse_time(end)
    if hi <= lo:
        raise ValueError(f"{text!r}: the end is not after the start")
    return lo, hi


@dataclass(frozen=True)
class Outage:
    """[start_ms, end_ms) with no trading: bars whose whole window lies inside have no candle."""

    start_ms: int
    end_ms: int
    market: str | None = None  # None: spot and perp alike

    @classmethod
    def parse(cls, text: str) -> Outage:
        """`[MARKET@]START/END`, e.g. `spot@2024-01-10T00:00/2024-01-10T02:00`."""
        market, sep, span = text.partition("@")
        if not sep:
            market, span = "", text
        if market and market not in ("spot", "perp"):
            raise ValueError(f"outage {text!r}: market {market!r} is not spot or perp")
        return cls(*_span(span), market or None)


@dataclass(frozen=True)
class InvalidBar:
    """A candle the exchange serves with high and low swapped (high < low)."""

    symbol: str
    timeframe: str
    open_ms: int

    @classmethod
    def parse(cls, text: str) -> InvalidBar:
        """`SYMBOL/TIMEFRAME/TIME`, e.g. `BTCUSDT/1m/2024-01-15T10:00`."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"invalid bar {text!r} is not SYMBOL/TIMEFRAME/TIME")
        return cls(parts[0], parts[1], parse_time(parts[2]))


@dataclass(frozen=True)
class FailingWindow:
    """Requests touching [start_ms, end_ms) get 503 until `times` of them have."""

    start_ms: int
    end_ms: int
    times: int = 5  # as many as the REST client's attempts, one more than the archive client's

    @classmethod
    def parse(cls, text: str) -> FailingWindow:
        """`START/END[xN]`, e.g. `2024-02-10T00:00/2024-02-10T06:00x5`."""
        span, sep, times = text.partition("x")
        if sep and not times.isdigit():
            raise ValueError(f"failing window {text!r}: {times!r} after 'x' is not a count")
        return cls(*_span(span), int(times) if sep else cls.times)


def documented_outages() -> tuple[Outage, ...]:
    return tuple(Outage(_ms(w.start), _ms(w.end), w.market) for w in maintenance_windows() if w.venue == "binance")


@dataclass(frozen=True)
class Scenario:
    outages: tuple[Outage, ...] = dataclasses.field(default_factory=documented_outages)
    invalid_bars: tuple[InvalidBar, ...] = ()
    failing_windows: tuple[FailingWindow, ...] = ()
    # candles the exchange restates: served with the close 1% higher (and the high raised to it)
    revised_bars: tuple[InvalidBar, ...] = ()

    def trading(self, market: str, interval_ms: int, open_times: np.ndarray) -> np.ndarray:
        """`open_times` without the bars that fall wholly inside an outage of `market`."""
        keep = np.ones(len(open_times), dtype=bool)
        for outage in self.outages:
            if outage.market in (None, market):
                keep &= ~((open_times >= outage.start_ms) & (open_times + interval_ms <= outage.end_ms))
        return open_times if keep.all() else open_times[keep]

    def candles(
        self, market: str, symbol: str, timeframe: str, interval_ms: int, open_times: np.ndarray,
        now_ms: int | None = None,
    ) -> CandleBlock:
        """The exchange's candles at `open_times`, its mistakes included."""
        shut = [(o.start_ms, o.end_ms) for o in self.outages if o.market in (None, market)]
        bars = synthetic_candles(market, symbol, interval_ms, open_times, now_ms=now_ms, closed_ms=shut)
        revised = [b.open_ms for b in self.revised_bars if (b.symbol, b.timeframe) == (symbol, timeframe)]
        if revised and np.isin(bars.open_time, revised).any():
            moved = np.isin(bars.open_time, revised)
            close = np.where(moved, np.round(bars.close * 1.01, 2), bars.close)
            bars = dataclasses.replace(bars, close=close, high=np.maximum(bars.high, close))
        wrong = [b.open_ms for b in self.invalid_bars if (b.symbol, b.timeframe) == (symbol, timeframe)]
        if not wrong:
            return bars
        flip = np.isin(bars.open_time, wrong)
        if not flip.any():
            return bars
        return dataclasses.replace(
            bars, high=np.where(flip, bars.low, bars.high), low=np.where(flip, bars.high, bars.low)
        )


class FailureBudget:
    """How many more failures each failing window hands out; REST and the archive share it."""

    def __init__(self, windows: tuple[FailingWindow, ...]):
        self._left = {window: window.times for window in windows}
        self._lock = threading.Lock()

    def fails(self, start_ms: int, end_ms: int) -> bool:
        """Whether a request for [start_ms, end_ms) is to fail (and count it if so)."""
        with self._lock:
            for window, left in self._left.items():
                if left and start_ms < window.end_ms and window.start_ms < end_ms:
                    self._left[window] = left - 1
                    return True
        return False
