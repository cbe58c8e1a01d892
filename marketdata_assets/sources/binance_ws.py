"""Binance's kline streams, as a client reads them: combined-stream URLs of at most 1,024 streams
each, and each message read into a candle (closed or in progress) in market_data.klines' terms.

    wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m   (spot)
    wss://fstream.binance.com/stream?streams=…                                        (USD-M)
    {"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": …, "s": "BTCUSDT",
     "k": {"t": open_ms, "T": close_ms, "s", "i", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q"}}}

`x` is true on the closing update only: only those are stored. No Dagster here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson

from marketdata_assets.sources.errors import MalformedResponse

STREAMS_PER_CONNECTION = 1024
_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "q": "quote_volume",
           "V": "taker_buy_volume", "Q": "taker_buy_quote_volume"}


def stream_name(symbol: str, timeframe: str) -> str:
    return f"{symbol.lower()}@kline_{timeframe}"


def ws_base(url: str) -> str:
    """A stream host's URL as a WebSocket URL: http(s) becomes ws(s) (the emulator's URL serves both)."""
    if url.startswith("http://"):
        return "ws://" + url.removeprefix("http://")
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    return url


def connection_urls(base: str, names: list[str], per_connection: int = STREAMS_PER_CONNECTION) -> list[tuple[str, list[str]]]:
    """(URL, its streams) of each connection the streams `names` need, at most `per_connection` each."""
    base = ws_base(base).rstrip("/")
    chunks = [names[i:i + per_connection] for i in range(0, len(names), per_connection)]
    return [(f"{base}/stream?streams={'/'.join(chunk)}", chunk) for chunk in chunks]


@dataclass(frozen=True)
class Candle:
    """One kline update: its stream, whether it is the closing one, the bar's values, when sent."""

    stream: str
    closed: bool
    symbol: str
    timeframe: str
    open_time: dt.datetime
    values: dict[str, float]
    trades: int | None  # None where the venue does not count them (OKX, Bybit)
    event_ms: int

    @property
    def close_time(self) -> dt.datetime:
        from marketdata_assets.timeframes import timeframe

        return self.open_time + dt.timedelta(milliseconds=timeframe(self.timeframe).millis)


def parse_message(raw: str | bytes) -> Candle | None:
    """The candle a combined-stream message carries (None for another event type);
    MalformedResponse naming the stream and the field when it is not one."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedResponse("binance stream", f"a message that is not JSON: {str(raw)[:80]!r}") from None
    if not isinstance(message, dict) or "data" not in message:
        return None  # an answer to a request (`{"result": null, "id": 1}`), not an event
    stream, data = message.get("stream"), message["data"]
    if not isinstance(data, dict) or data.get("e") != "kline":
        return None
    k = data.get("k")
    try:
        values = {name: float(k[field]) for field, name in _FIELDS.items()}
        candle = Candle(str(stream), bool(k["x"]), str(k["s"]), str(k["i"]),
                        dt.datetime.fromtimestamp(int(k["t"]) / 1000, dt.UTC), values, int(k["n"]), int(data["E"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedResponse("binance stream", f"{stream}: a kline without a readable {exc}") from None
    if candle.values["high"] < max(candle.values["open"], candle.values["close"], candle.values["low"]):
        raise MalformedResponse("binance stream", f"{stream}: a kline whose high is below its open, close or low")
    return candle


class BinanceStreamApi:
    """Binance's kline streams as `marketdata stream` uses every venue's: which setting holds the
    host of a market, a subscription's key, the connections keys need, what to send once connected
    and to keep alive, and the candles of a message."""

    venue = "binance"
    url_settings = {"spot": "binance_spot_ws_url", "perp": "binance_futures_ws_url"}
    keepalive: tuple[float, str] | None = None  # the server pings; the client library answers

    def key(self, symbol: str, timeframe: str) -> str:
        return stream_name(symbol, timeframe)

    def connections(self, base: str, market: str, keys: list[str]) -> list[tuple[str, list[str]]]:
        return connection_urls(base, keys)

    def subscribe(self, market: str, keys: list[str]) -> list[str]:
        return []  # the URL names the streams

    def parse(self, raw: str | bytes, market: str) -> list[Candle]:
        candle = parse_message(raw)
        return [candle] if candle is not None else []
