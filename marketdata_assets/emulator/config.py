"""What an emulator instance serves: listings, rate limits, and injected faults."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from marketdata_assets.emulator.scenario import FailingWindow, InvalidBar, Outage, Scenario, documented_outages


def _utc_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


# First candle of each listing on Binance (UTC), as the real exchange has them.
BINANCE_LISTINGS: dict[tuple[str, str], int] = {
    ("spot", "BTCUSDT"): _utc_ms("2017-08-17 04:00"),
    ("spot", "ETHUSDT"): _utc_ms("2017-08-17 04:00"),
    ("spot", "BNBUSDT"): _utc_ms("2017-11-06 03:00"),
    ("spot", "SOLUSDT"): _utc_ms("2020-08-11 06:00"),
    ("perp", "BTCUSDT"): _utc_ms("2019-09-08 17:57"),
    ("perp", "ETHUSDT"): _utc_ms("2019-11-27 07:45"),
    ("perp", "BNBUSDT"): _utc_ms("2020-02-10 08:00"),
    ("perp", "SOLUSDT"): _utc_ms("2020-09-14 07:00"),
}


# First funding settlement of each perpetual on OKX and Bybit (UTC, approximate launch days).
OKX_LISTINGS: dict[str, int] = {
    "BTC-USDT-SWAP": _utc_ms("2019-12-10 08:00"),
    "ETH-USDT-SWAP": _utc_ms("2019-12-10 08:00"),
}
# spot pairs' first trading day on each venue (their klines begin there)
OKX_SPOT_LISTINGS: dict[str, int] = {"BTC-USDT": _utc_ms("2018-01-11 00:00"), "ETH-USDT": _utc_ms("2018-01-11 00:00")}
BYBIT_SPOT_LISTINGS: dict[str, int] = {"BTCUSDT": _utc_ms("2021-07-05 00:00"), "ETHUSDT": _utc_ms("2021-07-05 00:00")}
BYBIT_LISTINGS: dict[str, int] = {
    "BTCUSDT": _utc_ms("2020-03-25 16:00"),
    "ETHUSDT": _utc_ms("2020-10-22 08:00"),
}


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour on data endpoints; rates are probabilities per request."""

    server_error_rate: float = 0.0  # answer 503 with Binance's -1001 body
    truncate_rate: float = 0.0  # answer 200 with the JSON body cut in half
    latency_ms: float = 0.0  # added before every answer
    seed: int = 0


@dataclass(frozen=True)
class ArchiveFaults:
    """Injected misbehaviour of the archive; file names may be shell patterns (`*-2024-01.zip`)."""

    missing: tuple[str, ...] = ()  # zips (and their .CHECKSUM) answered 404
    corrupt: tuple[str, ...] = ()  # zips served with one byte flipped; the .CHECKSUM stays right
    corrupt_once: bool = False  # corrupt only the first download of each, as a flaky CDN does


@dataclass(frozen=True)
class EmulatorConfig:
    spot_weight_limit: int = 6000
    futures_weight_limit: int = 2400
    # Requests that keep coming while a 429's Retry-After runs (after `ban_grace_s` for requests
    # already in flight) earn an IP ban: HTTP 418 for `ban_seconds`.
    ban_after_violations: int = 5
    ban_grace_s: float = 1.0
    ban_seconds: int = 120
    faults: Faults = field(default_factory=Faults)
    archive_faults: ArchiveFaults = field(default_factory=ArchiveFaults)
    # Archive file formats: spot times turn to µs from this day; futures CSVs gain a header.
    archive_spot_microseconds_from: dt.date = dt.date(2025, 1, 1)
    archive_futures_header_from: dt.date = dt.date(2022, 1, 1)
    archive_publish_delay_s: float = 0.0  # a file appears this long after its period ends
    # The archive's futures metrics files start about here (earlier days: 404).
    archive_metrics_from: dt.date = dt.date(2021, 12, 1)
    # Built archive files kept in memory, least recently used dropped first. A universe whose
    # files do not fit is rebuilt on every pass (a scan larger than an LRU cache always misses).
    archive_cache_mb: int = 1024
    # Futures statistics: requests per 5 minutes per IP, and whether `timestamp` is sent as a
    # string (as Binance's docs show it) rather than a number (as real answers carry it).
    stats_request_limit: int = 1000
    stats_timestamp_as_string: bool = False
    # The exchange's history: outages (the documented ones by default), wrong candles, and
    # windows whose first fetches fail.
    scenario: Scenario = field(default_factory=Scenario)
    listings: Mapping[tuple[str, str], int] = field(default_factory=lambda: dict(BINANCE_LISTINGS))
    # OKX: perpetuals by instId, about three months of funding kept, 10 requests / 2 s per IP and
    # instrument on the funding history.
    okx_listings: Mapping[str, int] = field(default_factory=lambda: dict(OKX_LISTINGS))
    okx_funding_retention_days: int = 92
    okx_funding_requests_per_2s: int = 10
    okx_spot_listings: Mapping[str, int] = field(default_factory=lambda: dict(OKX_SPOT_LISTINGS))
    # OKX klines: history-candles 20 requests / 2 s per IP (100 rows a page), candles 40 / 2 s
    okx_history_candles_per_2s: int = 20
    okx_candles_per_2s: int = 40
    # Bybit: linear perpetuals by symbol; 600 requests / 5 s per IP, then HTTP 403 and a ban of
    # `bybit_ban_seconds`; `bybit_requests_per_s` (None: off) answers retCode 10006 beyond it.
    bybit_listings: Mapping[str, int] = field(default_factory=lambda: dict(BYBIT_LISTINGS))
    bybit_requests_per_5s: int = 600
    bybit_ban_seconds: int = 600
    bybit_requests_per_s: int | None = None
    bybit_spot_listings: Mapping[str, int] = field(default_factory=lambda: dict(BYBIT_SPOT_LISTINGS))
    # Binance's kline streams: real seconds between updates (about 2 s on spot), and how long
    # (emulator clock) a connection lives before the server cuts it (24 hours)
    ws_update_seconds: float = 2.0
    ws_connection_seconds: float = 86_400.0

    def with_listing(self, market: str, symbol: str, first_open: dt.datetime) -> EmulatorConfig:
        listings = dict(self.listings)
        listings[(market, symbol)] = int(first_open.timestamp() * 1000)
        return replace(self, listings=listings)

    def with_listings(self, texts: Iterable[str]) -> EmulatorConfig:
        """More Binance listings, each `MARKET:SYMBOL@YYYY-MM-DD` (the first candle at 00:00 UTC)."""
        config = self
        for text in texts:
            market, _, rest = text.partition(":")
            symbol, _, day = rest.partition("@")
            try:
                first = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            except ValueError:
                first = None
            if market not in ("spot", "perp") or not symbol.isalnum() or first is None:
                raise ValueError(f"listing {text!r} is not MARKET:SYMBOL@YYYY-MM-DD (market spot or perp)")
            config = config.with_listing(market, symbol.upper(), first)
        return config

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmulatorConfig:
        """MARKETDATA_EMULATOR_{SPOT,FUTURES}_WEIGHT_LIMIT, _5XX_RATE, _TRUNCATE_RATE, _LATENCY_MS,
        _SEED, _ARCHIVE_CACHE_MB, _OKX_HISTORY_CANDLES_PER_2S, _OKX_CANDLES_PER_2S, _ARCHIVE_MISSING / _ARCHIVE_CORRUPT (comma-separated zip names or patterns) with
        _ARCHIVE_CORRUPT_ONCE=1, and the scenario: _OUTAGES (`[MARKET@]START/END`, added to the
        documented ones), _INVALID_BARS (`SYMBOL/TF/TIME`), _FAILING_WINDOWS (`START/END[xN]`), and
        _LISTINGS (`MARKET:SYMBOL@YYYY-MM-DD`, added to the real ones)."""
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            raw = env.get(f"MARKETDATA_EMULATOR_{name}")
            if not raw:
                return default
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"MARKETDATA_EMULATOR_{name}={raw!r} is not a number") from None

        def names(name: str) -> tuple[str, ...]:
            raw = env.get(f"MARKETDATA_EMULATOR_{name}", "")
            return tuple(part.strip() for part in raw.split(",") if part.strip())

        def parsed(name: str, parse):
            try:
                return tuple(parse(part) for part in names(name))
            except ValueError as exc:
                raise ValueError(f"MARKETDATA_EMULATOR_{name}: {exc}") from None

        config = cls(
            spot_weight_limit=int(number("SPOT_WEIGHT_LIMIT", 6000)),
            futures_weight_limit=int(number("FUTURES_WEIGHT_LIMIT", 2400)),
            faults=Faults(
                server_error_rate=number("5XX_RATE", 0.0),
                truncate_rate=number("TRUNCATE_RATE", 0.0),
                latency_ms=number("LATENCY_MS", 0.0),
                seed=int(number("SEED", 0)),
            ),
            archive_cache_mb=int(number("ARCHIVE_CACHE_MB", 1024)),
            okx_history_candles_per_2s=int(number("OKX_HISTORY_CANDLES_PER_2S", 20)),
            okx_candles_per_2s=int(number("OKX_CANDLES_PER_2S", 40)),
            archive_faults=ArchiveFaults(
                missing=names("ARCHIVE_MISSING"),
                corrupt=names("ARCHIVE_CORRUPT"),
                corrupt_once=env.get("MARKETDATA_EMULATOR_ARCHIVE_CORRUPT_ONCE", "") in ("1", "true"),
            ),
            scenario=Scenario(
                outages=documented_outages() + parsed("OUTAGES", Outage.parse),
                invalid_bars=parsed("INVALID_BARS", InvalidBar.parse),
                failing_windows=parsed("FAILING_WINDOWS", FailingWindow.parse),
            ),
        )
        try:
            return config.with_listings(names("LISTINGS"))
        except ValueError as exc:
            raise ValueError(f"MARKETDATA_EMULATOR_LISTINGS: {exc}") from None
