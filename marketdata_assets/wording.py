"""Counts as people write them: "1 partition", "2 partitions", "0 rows", "15 minutes", "1 hour"."""

from __future__ import annotations

import datetime as dt


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and `noun`, plural unless the number is 1 (`plural` where adding s is wrong)."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"


def duration(span: dt.timedelta) -> str:
    """Whole hours as hours, anything else as minutes."""
    minutes = int(span.total_seconds() // 60)
    return counted(minutes // 60, "hour") if minutes % 60 == 0 else counted(minutes, "minute")
