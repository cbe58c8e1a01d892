"""Quality: the checks (klines' own, and what every dataset's checks share)."""
