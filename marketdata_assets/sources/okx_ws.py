"""OKX's candle channels, as `marketdata stream` reads them: `wss://ws.okx.com:8443/ws/v5/business`,
`{"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]}`, pushes
`{"arg": {"channel", "instId"}, "data": [[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]]}`
(the rows as REST pages them; confirm "1" on the closing update). The client sends `ping` every
20 s (OKX drops a connection silent for 30 s) and gets `pong`. Values are read as the REST
parser reads them (sources/okx_klines.py): a swap's volume in coins (`volCcy`), spot's `vol`."""

from __future__ import annotations

import datetime as dt

import orjson

from marketdata_assets.sources.binance_ws import Candle, ws_base
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.sources.okx_klines import BARS, okx_bar

SUBSCRIPTIONS_PER_CONNECTION = 100
_TIMEFRAME_OF_BAR = {bar: name for name, bar in BARS.items()}


class OkxStreamApi:
    venue = "okx"
    url_settings = {"spot": "okx_ws_url", "perp": "okx_ws_url"}
    keepalive: tuple[float, str] | None = (20.0, "ping")

    def key(self, symbol: str, timeframe: str) -> str:
        return f"candle{okx_bar(timeframe)}:{symbol}"

    def connections(self, base: str, market: str, keys: list[str]) -> list[tuple[str, list[str]]]:
        url = f"{ws_base(base).rstrip('/')}/ws/v5/business"
        return [(url, keys[i:i + SUBSCRIPTIONS_PER_CONNECTION]) for i in range(0, len(keys), SUBSCRIPTIONS_PER_CONNECTION)]

    def subscribe(self, market: str, keys: list[str]) -> list[str]:
        args = [{"channel": channel, "instId": inst_id} for channel, _, inst_id in (key.partition(":") for key in keys)]
        return [orjson.dumps({"op": "subscribe", "args": args}).decode()]

    def parse(self, raw: str | bytes, market: str) -> list[Candle]:
        if raw in ("pong", b"pong"):
            return []
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedResponse("okx stream", f"a message that is not JSON: {str(raw)[:80]!r}") from None
        if message.get("event") == "error":
            raise MalformedResponse("okx stream", f"refused: {message.get('code')} {message.get('msg')}")
        arg, rows = message.get("arg") or {}, message.get("data")
        if not isinstance(rows, list):
            return []  # a subscription's acknowledgement
        channel, inst_id = str(arg.get("channel", "")), str(arg.get("instId", ""))
        timeframe = _TIMEFRAME_OF_BAR.get(channel.removeprefix("candle"))
        if timeframe is None:
            raise MalformedResponse("okx stream", f"a push on channel {channel!r}, not a UTC candle channel")
        candles = []
        for row in rows:
            try:
                ts, o, h, low, c, vol, vol_ccy, vol_quote, confirm = row
                volume = float(vol if market == "spot" else vol_ccy)
                candles.append(Candle(f"{channel}:{inst_id}", confirm == "1", inst_id, timeframe,
                                      dt.datetime.fromtimestamp(int(ts) / 1000, dt.UTC),
                                      {"open": float(o), "high": float(h), "low": float(low), "close": float(c),
                                       "volume": volume, "quote_volume": float(vol_quote)}, None, int(ts)))
            except (TypeError, ValueError) as exc:
                raise MalformedResponse("okx stream", f"{channel}:{inst_id}: a row that is not a candle ({exc}): "
                                                      f"{str(row)[:120]}") from None
        return candles
