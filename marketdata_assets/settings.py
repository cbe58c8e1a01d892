"""Settings from the environment. Defaults are the real public endpoints; tests and the demo
point them at the local emulator. This is the one place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_WAREHOUSE_URL = "duckdb:///.marketdata/warehouse.duckdb"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
KLINES_SOURCES = ("auto", "archive", "rest")

ENDPOINT_DEFAULTS = {
    "binance_spot_url": ("MARKETDATA_BINANCE_SPOT_URL", "https://api.binance.com"),
    "binance_futures_url": ("MARKETDATA_BINANCE_FUTURES_URL", "https://fapi.binance.com"),
    "binance_archive_url": ("MARKETDATA_BINANCE_ARCHIVE_URL", "https://data.binance.vision"),
    "okx_url": ("MARKETDATA_OKX_URL", "https://www.okx.com"),
    "bybit_url": ("MARKETDATA_BYBIT_URL", "https://api.bybit.com"),
    "fear_greed_url": ("MARKETDATA_FEAR_GREED_URL", "https://api.alternative.me"),
    "defillama_url": ("MARKETDATA_DEFILLAMA_URL", "https://stablecoins.llama.fi"),
    "blockchain_url": ("MARKETDATA_BLOCKCHAIN_URL", "https://api.blockchain.info"),
    "fred_url": ("MARKETDATA_FRED_URL", "https://api.stlouisfed.org/fred"),
    "deribit_url": ("MARKETDATA_DERIBIT_URL", "https://www.deribit.com"),
    "databento_url": ("MARKETDATA_DATABENTO_URL", "https://hist.databento.com"),
    "binance_spot_ws_url": ("MARKETDATA_BINANCE_SPOT_WS_URL", "wss://stream.binance.com:9443"),
    "binance_futures_ws_url": ("MARKETDATA_BINANCE_FUTURES_WS_URL", "wss://fstream.binance.com"),
    "okx_ws_url": ("MARKETDATA_OKX_WS_URL", "wss://ws.okx.com:8443"),
    "bybit_ws_url": ("MARKETDATA_BYBIT_WS_URL", "wss://stream.bybit.com"),
}
# Where the emulator serves an upstream whose real host alone tells it apart (both Binance stream
# hosts answer on /stream): the path under the emulator's URL.
_EMULATOR_PATHS = {"MARKETDATA_BINANCE_FUTURES_WS_URL": "/fstream"}


def emulated_endpoints(url: str) -> dict[str, str]:
    """Every upstream's URL variable pointed at one emulator (`marketdata emulator`), each at the
    upstream's own path (FRED's `/fred`)."""
    return {variable: url.rstrip("/") + _EMULATOR_PATHS.get(variable, urlsplit(default).path)
            for variable, default in ENDPOINT_DEFAULTS.values()}


_SECRET_PARAMS = {"password", "pass", "passwd", "api_key", "apikey", "key", "token", "secret"}


def redact(url: str) -> str:
    """`url` fit to print, log or store: its password and any secret query parameter as `***`
    (`postgresql://postgres:***@host/db`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unreadable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{name}=***" if name.lower() in _SECRET_PARAMS else f"{name}={value}" if value or "=" in pair else name
        for pair in parts.query.split("&") if pair
        for name, _, value in [pair.partition("=")]
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret (and `duckdb:///path` keeps its empty host)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _int_setting(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _float_setting(env: Mapping[str, str], name: str, default: float, what: str, rule: str,
                   accept: Callable[[float], bool]) -> float:
    """A number setting: SettingsError saying `what` it should be when it is not one, and
    `rule` when `accept` refuses it."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not accept(value):
        raise SettingsError(f"{name}={raw} must be {rule}")
    return value


def _usd_setting(env: Mapping[str, str], name: str, default: float) -> float:
    return _float_setting(env, name, default, "an amount of USD", "an amount of USD, 0 or more",
                          lambda value: 0 <= value < float("inf"))


def _share_setting(env: Mapping[str, str], name: str, default: float) -> float:
    return _float_setting(env, name, default, "a share (0.01 is 1%)", "a share above 0 and below 1 (0.01 is 1%)",
                          lambda value: 0 < value < 1)


def _flag_setting(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{name}={raw!r} is not a yes or no (1, true, yes; 0, false, no)")
    return raw in ("1", "true", "yes")


def _choice_setting(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


def _cron_setting(env: Mapping[str, str], name: str) -> str | None:
    from marketdata_assets.dagster_internals import is_valid_cron_string

    raw = env.get(name) or None
    if raw is not None and not is_valid_cron_string(raw):
        raise SettingsError(f"{name}={raw!r} is not a cron expression (minute hour day month weekday)")
    return raw


@dataclass(frozen=True)
class Settings:
    warehouse_url: str = DEFAULT_WAREHOUSE_URL
    catalog_path: Path | None = None  # None: the packaged catalog.yaml
    binance_spot_url: str = ENDPOINT_DEFAULTS["binance_spot_url"][1]
    binance_futures_url: str = ENDPOINT_DEFAULTS["binance_futures_url"][1]
    binance_archive_url: str = ENDPOINT_DEFAULTS["binance_archive_url"][1]
    okx_url: str = ENDPOINT_DEFAULTS["okx_url"][1]
    bybit_url: str = ENDPOINT_DEFAULTS["bybit_url"][1]
    fear_greed_url: str = ENDPOINT_DEFAULTS["fear_greed_url"][1]
    defillama_url: str = ENDPOINT_DEFAULTS["defillama_url"][1]
    blockchain_url: str = ENDPOINT_DEFAULTS["blockchain_url"][1]
    fred_url: str = ENDPOINT_DEFAULTS["fred_url"][1]
    deribit_url: str = ENDPOINT_DEFAULTS["deribit_url"][1]
    databento_url: str = ENDPOINT_DEFAULTS["databento_url"][1]
    binance_spot_ws_url: str = ENDPOINT_DEFAULTS["binance_spot_ws_url"][1]
    binance_futures_ws_url: str = ENDPOINT_DEFAULTS["binance_futures_ws_url"][1]
    okx_ws_url: str = ENDPOINT_DEFAULTS["okx_ws_url"][1]
    bybit_ws_url: str = ENDPOINT_DEFAULTS["bybit_ws_url"][1]
    # Binance's published per-IP budgets (request weight per minute); lower them to leave room
    # for other clients on the same IP.
    binance_spot_weight_limit: int = 6000
    binance_futures_weight_limit: int = 2400
    binance_max_concurrency: int = 10
    # Where klines come from unless a catalog entry says otherwise: auto | archive | rest.
    klines_source: str = "auto"
    # Rows per warehouse transaction: a run killed mid-way keeps every whole batch it wrote.
    rows_per_write: int = 400_000
    # The cron of every incremental schedule (UTC), instead of each dataset's own; None: theirs.
    schedule_cron: str | None = None
    # The Dagster webserver `marketdata backfill` talks to.
    dagster_url: str = DEFAULT_DAGSTER_URL
    # The warehouse URL came from the process's MARKETDATA_WAREHOUSE_URL: resources take it from
    # there at run time (dg.EnvVar), so the UI shows the variable's name, never the URL's password.
    warehouse_url_in_environment: bool = False
    fred_api_key: str | None = field(default=None, repr=False)
    databento_api_key: str | None = field(default=None, repr=False)
    # Databento bills by volume: a backfill estimated above this many USD is refused before it
    # sends a data request (`--max-cost` overrides it).
    databento_max_cost: float = 5.0
    # Roots one Databento request asks for at once (a 504 splits them, then the days).
    databento_symbols_per_request: int = 3
    # When the GEX schedule captures Deribit's chain (UTC), and whose side dealers are taken to be
    # on: long calls and short puts by default (calls +, puts −), the reverse when true.
    gex_cron: str = "1 * * * *"
    gex_dealers_short_calls: bool = False
    # The share by which an OKX or Bybit close may differ from Binance's same bar before the
    # cross-venue check warns.
    cross_venue_max_difference: float = 0.01
    # OKX's per-IP budgets for candles, requests per 2 s: history-candles 20, candles 40.
    okx_history_candles_per_2s: int = 20
    okx_candles_per_2s: int = 40
    # `marketdata stream`: where closed candles are published (None: nowhere; a password in it is
    # never printed), whether the candle in progress is published too, the port of its /healthz
    # and /metrics, and how long a subscription may stay silent before it counts as stalled (503,
    # and the connection is made again).
    redis_url: str | None = field(default=None, repr=False)
    stream_publish_open: bool = False
    stream_port: int = 9109
    stream_silent_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        endpoints = {
            attr: env.get(var) or default for attr, (var, default) in ENDPOINT_DEFAULTS.items()
        }
        catalog = env.get("MARKETDATA_CATALOG")
        return cls(
            warehouse_url=env.get("MARKETDATA_WAREHOUSE_URL") or DEFAULT_WAREHOUSE_URL,
            warehouse_url_in_environment=env is os.environ and bool(env.get("MARKETDATA_WAREHOUSE_URL")),
            catalog_path=Path(catalog) if catalog else None,
            binance_spot_weight_limit=_int_setting(
                env, "MARKETDATA_BINANCE_SPOT_WEIGHT_LIMIT", 6000
            ),
            binance_futures_weight_limit=_int_setting(
                env, "MARKETDATA_BINANCE_FUTURES_WEIGHT_LIMIT", 2400
            ),
            binance_max_concurrency=_int_setting(env, "MARKETDATA_BINANCE_MAX_CONCURRENCY", 10),
            rows_per_write=_int_setting(env, "MARKETDATA_ROWS_PER_WRITE", 400_000),
            klines_source=_choice_setting(env, "MARKETDATA_KLINES_SOURCE", "auto", KLINES_SOURCES),
            schedule_cron=_cron_setting(env, "MARKETDATA_SCHEDULE_CRON"),
            dagster_url=(env.get("MARKETDATA_DAGSTER_URL") or DEFAULT_DAGSTER_URL).rstrip("/"),
            fred_api_key=env.get("FRED_API_KEY"),
            databento_api_key=env.get("DATABENTO_API_KEY"),
            databento_max_cost=_usd_setting(env, "MARKETDATA_DATABENTO_MAX_COST", 5.0),
            databento_symbols_per_request=_int_setting(env, "MARKETDATA_DATABENTO_SYMBOLS_PER_REQUEST", 3),
            gex_cron=_cron_setting(env, "MARKETDATA_GEX_CRON") or "1 * * * *",
            gex_dealers_short_calls=_flag_setting(env, "MARKETDATA_GEX_DEALERS_SHORT_CALLS"),
            cross_venue_max_difference=_share_setting(env, "MARKETDATA_CROSS_VENUE_MAX_DIFFERENCE", 0.01),
            okx_history_candles_per_2s=_int_setting(env, "MARKETDATA_OKX_HISTORY_CANDLES_PER_2S", 20),
            okx_candles_per_2s=_int_setting(env, "MARKETDATA_OKX_CANDLES_PER_2S", 40),
            redis_url=env.get("MARKETDATA_REDIS_URL") or None,
            stream_publish_open=_flag_setting(env, "MARKETDATA_STREAM_PUBLISH_OPEN"),
            stream_port=_int_setting(env, "MARKETDATA_STREAM_PORT", 9109, minimum=0),
            stream_silent_seconds=_float_setting(env, "MARKETDATA_STREAM_SILENT_SECONDS", 60.0, "a number of seconds",
                                                 "more than 0 seconds", lambda value: 0 < value < float("inf")),
            **endpoints,
        )
