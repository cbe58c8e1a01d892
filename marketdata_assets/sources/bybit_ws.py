"""Bybit's kline topics, as `marketdata stream` reads them: `wss://stream.bybit.com/v5/public/spot`
(or `/linear` for perpetuals), `{"op": "subscribe", "args": ["kline.1.BTCUSDT"]}` (at most 10 topics a
request), pushes `{"topic", "data": [{"start", "end", "interval", "open", "close", "high", "low",
"volume", "turnover", "confirm", "timestamp"}], "ts", "type"}`; the closing update has `confirm`
true. The client sends `{"op": "ping"}` every 20 s. Volume in the base coin, turnover in the quote,
as the REST parser reads them (sources/bybit_klines.py)."""

from __future__ import annotations

import datetime as dt

import orjson

from marketdata_assets.sources.binance_ws import Candle, ws_base
from marketdata_assets.sources.bybit_klines import INTERVALS, bybit_interval
from marketdata_assets.sources.errors import MalformedResponse

TOPICS_PER_REQUEST = 10
TOPICS_PER_CONNECTION = 200
_TIMEFRAME_OF_INTERVAL = {interval: name for name, interval in INTERVALS.items()}


class BybitStreamApi:
    venue = "bybit"
    url_settings = {"spot": "bybit_ws_url", "perp": "bybit_ws_url"}
    keepalive: tuple[float, str] | None = (20.0, '{"op":"ping"}')

    def key(self, symbol: str, timeframe: str) -> str:
        return f"kline.{bybit_interval(timeframe)}.{symbol}"

    def connections(self, base: str, market: str, keys: list[str]) -> list[tuple[str, list[str]]]:
        url = f"{ws_base(base).rstrip('/')}/v5/public/{'spot' if market == 'spot' else 'linear'}"
        return [(url, keys[i:i + TOPICS_PER_CONNECTION]) for i in range(0, len(keys), TOPICS_PER_CONNECTION)]

    def subscribe(self, market: str, keys: list[str]) -> list[str]:
        return [orjson.dumps({"op": "subscribe", "args": keys[i:i + TOPICS_PER_REQUEST]}).decode()
                for i in range(0, len(keys), TOPICS_PER_REQUEST)]

    def parse(self, raw: str | bytes, market: str) -> list[Candle]:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedResponse("bybit stream", f"a message that is not JSON: {str(raw)[:80]!r}") from None
        if "op" in message:  # an answer to subscribe or ping
            if message.get("success") is False:
                raise MalformedResponse("bybit stream", f"{message.get('op')} refused: {message.get('ret_msg')}")
            return []
        topic, rows = str(message.get("topic", "")), message.get("data")
        kind, _, rest = topic.partition(".")
        interval, _, symbol = rest.partition(".")
        if kind != "kline" or not isinstance(rows, list):
            return []
        timeframe = _TIMEFRAME_OF_INTERVAL.get(interval)
        if timeframe is None:
            raise MalformedResponse("bybit stream", f"a push on topic {topic!r} of an interval we do not keep")
        candles = []
        for row in rows:
            try:
                candles.append(Candle(topic, row["confirm"] is True, symbol, timeframe,
                                      dt.datetime.fromtimestamp(int(row["start"]) / 1000, dt.UTC),
                                      {"open": float(row["open"]), "high": float(row["high"]), "low": float(row["low"]),
                                       "close": float(row["close"]), "volume": float(row["volume"]),
                                       "quote_volume": float(row["turnover"])}, None, int(row["timestamp"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedResponse("bybit stream", f"{topic}: a row that is not a candle ({exc}): "
                                                        f"{str(row)[:120]}") from None
        return candles
