"""Bar timeframes: their length, and the partition cadence each one is stored under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

PartitionCadence = Literal["daily", "monthly"]


@dataclass(frozen=True)
class Timeframe:
    """A fixed-length bar interval, named as Binance names it (`1m`, `1h`, `1d`)."""

    name: str
    millis: int
    # Daily partitions cost ~25 ms of Dagster bookkeeping each (README, "Partitions"). Below one
    # hour a day holds >= 48 bars and >= 1 request of rate-limited fetching, so a daily window pays
    # for itself; from 1h up a day is <= 24 bars, and a month keeps bookkeeping below the fetch.
    cadence: PartitionCadence

    @property
    def seconds(self) -> int:
        return self.millis // 1000


TIMEFRAMES: dict[str, Timeframe] = {
    t.name: t
    for t in (
        Timeframe("1m", MINUTE_MS, "daily"),
        Timeframe("3m", 3 * MINUTE_MS, "daily"),
        Timeframe("5m", 5 * MINUTE_MS, "daily"),
        Timeframe("15m", 15 * MINUTE_MS, "daily"),
        Timeframe("30m", 30 * MINUTE_MS, "daily"),
        Timeframe("1h", HOUR_MS, "monthly"),
        Timeframe("2h", 2 * HOUR_MS, "monthly"),
        Timeframe("4h", 4 * HOUR_MS, "monthly"),
        Timeframe("6h", 6 * HOUR_MS, "monthly"),
        Timeframe("8h", 8 * HOUR_MS, "monthly"),
        Timeframe("12h", 12 * HOUR_MS, "monthly"),
        Timeframe("1d", DAY_MS, "monthly"),
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
