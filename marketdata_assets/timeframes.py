"""Bar timeframes, named as Binance names them, and their length; UTC calendar steps."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

@dataclass(frozen=True)
class Timeframe:
    """A fixed-length bar interval, named as Binance names it (`1m`, `1h`, `1d`)."""

    name: str
    millis: int

    @property
    def seconds(self) -> int:
        return self.millis // 1000


TIMEFRAMES: dict[str, Timeframe] = {
    t.name: t
    for t in (
        Timeframe("1m", MINUTE_MS),
        Timeframe("3m", 3 * MINUTE_MS),
        Timeframe("5m", 5 * MINUTE_MS),
        Timeframe("15m", 15 * MINUTE_MS),
        Timeframe("30m", 30 * MINUTE_MS),
        Timeframe("1h", HOUR_MS),
        Timeframe("2h", 2 * HOUR_MS),
        Timeframe("4h", 4 * HOUR_MS),
        Timeframe("6h", 6 * HOUR_MS),
        Timeframe("8h", 8 * HOUR_MS),
        Timeframe("12h", 12 * HOUR_MS),
        Timeframe("1d", DAY_MS),
    )
}


def timeframe(name: str) -> Timeframe:
    """The `Timeframe` called `name`; ValueError naming the supported ones otherwise."""
    try:
        return TIMEFRAMES[name]
    except KeyError:
        raise ValueError(
            f"unsupported timeframe {name!r} (supported: {', '.join(TIMEFRAMES)})"
        ) from None


def next_month(moment: dt.datetime) -> dt.datetime:
    """The first instant of the month after `moment`'s."""
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + dt.timedelta(days=32)).replace(day=1)


def month_windows(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut at the first of each month: the windows, in order."""
    windows, lower = [], start
    while lower < end:
        upper = min(end, next_month(lower))
        windows.append((lower, upper))
        lower = upper
    return windows


def end_day(end: dt.datetime) -> dt.date:
    """The first UTC day not in a window ending at `end` (a day begun before `end` is in it)."""
    end = end.astimezone(dt.UTC)
    return end.date() if end.time() == dt.time(0) else end.date() + dt.timedelta(days=1)
