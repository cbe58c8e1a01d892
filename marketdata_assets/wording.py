"""Counts as people write them: "1 partition", "2 partitions", "0 rows"."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and `noun`, plural unless the number is 1 (`plural` where adding s is wrong)."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"
