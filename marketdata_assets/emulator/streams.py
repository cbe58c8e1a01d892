"""The venues' WebSocket kline streams, on the emulator's port beside their REST APIs:

- Binance: combined streams on `/stream?streams=btcusdt@kline_1m/…` (spot; USD-M under
  `/fstream/stream`), each message `{"stream": …, "data": {"e": "kline", "E": …, "k": {…, "x": …}}}`;
- OKX: `/ws/v5/business`, `{"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]}`,
  pushes `{"arg": {…}, "data": [[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]]}`; the text
  `ping` is answered `pong`;
- Bybit: `/v5/public/spot` and `/v5/public/linear`, `{"op": "subscribe", "args": ["kline.1.BTCUSDT"]}`,
  pushes `{"topic": …, "data": [{"start", "end", "interval", "open", "close", "high", "low",
  "volume", "turnover", "confirm", "timestamp"}], "ts": …, "type": "snapshot"}`; `{"op": "ping"}`
  is answered.

Every `ws_update_seconds` (real time) a connection gets, for each of its subscriptions, the
closing update of every bar that closed since the last one (the whole bar, the same as REST
serves it) and then the bar in progress cut at the emulator's clock. Binance: at most 1,024
streams a connection, an unknown symbol or interval refused at the handshake, no candle inside an
outage of the scenario. uvicorn pings every 20 s and drops a client that does not answer; a
connection is cut after `ws_connection_seconds` of the emulator's clock (24 h, as Binance does).

On demand (the tests, `marketdata emulator`'s operator), for every venue at once:
- `POST /emulator/ws/disconnect?seconds=N`: every connection is dropped and new ones are refused
  for N seconds of the emulator's clock;
- `POST /emulator/ws/stall?seconds=N`: connections stay open but nothing is sent for N seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from marketdata_assets.emulator.bybit import KLINE_INTERVALS, bybit_values
from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.okx import OKX_BARS, okx_rows

MAX_STREAMS = 1024
# Binance's kline intervals and their length in seconds (kept apart from the client's timeframes)
_BINANCE_INTERVALS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
                      "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400}


class Subscribed:
    """One subscription of a connection: what it streams and the bar it is in."""

    def __init__(self, market: str, symbol: str, step_s: int, name: str, now: float):
        self.market, self.symbol, self.step_s, self.name = market, symbol, step_s, name
        self.current = int(now // step_s) * step_s  # its closing update is due once the clock passes its end


class Binance:
    def __init__(self, config: EmulatorConfig, market: str):
        self.config, self.market = config, market

    def initial(self, ws: WebSocket, now: float) -> dict[str, Subscribed] | None:
        """The streams the URL names; None to refuse the handshake."""
        found = {}
        for name in filter(None, ws.query_params.get("streams", "").split("/")):
            symbol, sep, kind = name.partition("@kline_")
            if not sep or kind not in _BINANCE_INTERVALS or (self.market, symbol.upper()) not in self.config.listings:
                return None
            found[name] = Subscribed(self.market, symbol.upper(), _BINANCE_INTERVALS[kind], kind, now)
        return found if 0 < len(found) <= MAX_STREAMS else None

    def answer(self, text: str, subscribed: dict[str, Subscribed], now: float) -> list[str]:
        return []

    def message(self, key: str, sub: Subscribed, open_s: int, now: float, closed: bool) -> str | None:
        step_ms, open_ms = sub.step_s * 1000, open_s * 1000
        if open_ms < self.config.listings[(sub.market, sub.symbol)]:
            return None
        scenario = self.config.scenario
        opens = np.array([open_ms], dtype=np.int64)
        if not len(scenario.trading(sub.market, step_ms, opens)):
            return None  # inside an outage: no candle
        bar = scenario.candles(sub.market, sub.symbol, sub.name, step_ms, opens, now_ms=None if closed else int(now * 1000))
        k = {
            "t": open_ms, "T": open_ms + step_ms - 1, "s": sub.symbol, "i": sub.name, "f": 100, "L": 200,
            "o": f"{bar.open[0]:.8f}", "c": f"{bar.close[0]:.8f}", "h": f"{bar.high[0]:.8f}", "l": f"{bar.low[0]:.8f}",
            "v": f"{bar.volume[0]:.8f}", "n": int(bar.trades[0]), "x": closed, "q": f"{bar.quote_volume[0]:.8f}",
            "V": f"{bar.taker_buy_volume[0]:.8f}", "Q": f"{bar.taker_buy_quote_volume[0]:.8f}", "B": "0",
        }
        # E: when the message leaves (real time, even when the emulator's clock runs faster): how late
        # a client gets it is measured from here
        return orjson.dumps({"stream": key, "data": {"e": "kline", "E": int(time.time() * 1000), "s": sub.symbol,
                                                     "k": k}}).decode()


class Okx:
    def __init__(self, config: EmulatorConfig):
        self.config = config

    def initial(self, ws: WebSocket, now: float) -> dict[str, Subscribed]:
        return {}

    def answer(self, text: str, subscribed: dict[str, Subscribed], now: float) -> list[str]:
        if text == "ping":
            return ["pong"]
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [orjson.dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:80]}"}).decode()]
        replies = []
        for arg in request.get("args", []) if request.get("op") == "subscribe" else []:
            channel, inst_id = str(arg.get("channel", "")), str(arg.get("instId", ""))
            bar = channel.removeprefix("candle")
            market = "perp" if inst_id.endswith("-SWAP") else "spot"
            listed = (self.config.okx_listings if market == "perp" else self.config.okx_spot_listings).get(inst_id)
            if not channel.startswith("candle") or bar not in OKX_BARS or OKX_BARS[bar][1] or listed is None:
                replies.append(orjson.dumps({"event": "error", "code": "60018", "connId": "emulator",
                                             "msg": f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist."}).decode())
                continue
            subscribed[f"{channel}:{inst_id}"] = Subscribed(market, inst_id, OKX_BARS[bar][0] // 1000, bar, now)
            replies.append(orjson.dumps({"event": "subscribe", "arg": arg, "connId": "emulator"}).decode())
        return replies

    def message(self, key: str, sub: Subscribed, open_s: int, now: float, closed: bool) -> str | None:
        step_ms, open_ms = sub.step_s * 1000, open_s * 1000
        now_ms = max(int(now * 1000), open_ms + step_ms) if closed else int(now * 1000)
        rows = okx_rows(sub.market, sub.symbol, step_ms, np.array([open_ms], dtype=np.int64), now_ms)
        channel = key.partition(":")[0]
        return orjson.dumps({"arg": {"channel": channel, "instId": sub.symbol}, "data": rows}).decode()


class Bybit:
    def __init__(self, config: EmulatorConfig, category: str):
        self.config, self.category = config, category

    def initial(self, ws: WebSocket, now: float) -> dict[str, Subscribed]:
        return {}

    def answer(self, text: str, subscribed: dict[str, Subscribed], now: float) -> list[str]:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [orjson.dumps({"success": False, "ret_msg": "error:request not json", "op": ""}).decode()]
        if request.get("op") == "ping":
            return [orjson.dumps({"success": True, "ret_msg": "pong", "conn_id": "emulator", "op": "ping"}).decode()]
        if request.get("op") != "subscribe":
            return []
        listings = self.config.bybit_listings if self.category == "linear" else self.config.bybit_spot_listings
        bad = []
        for topic in request.get("args", []):
            kind, _, rest = str(topic).partition(".")
            interval, _, symbol = rest.partition(".")
            if kind != "kline" or interval not in KLINE_INTERVALS or symbol not in listings:
                bad.append(str(topic))
                continue
            market = "perp" if self.category == "linear" else "spot"
            subscribed[str(topic)] = Subscribed(market, symbol, KLINE_INTERVALS[interval] // 1000, interval, now)
        said = f"error:handler not found,topic:{bad[0]}" if bad else ""
        return [orjson.dumps({"success": not bad, "ret_msg": said, "conn_id": "emulator", "req_id": request.get("req_id", ""),
                              "op": "subscribe"}).decode()]

    def message(self, key: str, sub: Subscribed, open_s: int, now: float, closed: bool) -> str | None:
        step_ms, open_ms = sub.step_s * 1000, open_s * 1000
        now_ms = int(now * 1000)
        o, h, lo, c, volume, turnover = (float(v[0]) for v in bybit_values(
            self.category, sub.symbol, step_ms, np.array([open_ms], dtype=np.int64),
            max(now_ms, open_ms + step_ms) if closed else now_ms))
        data = {"start": open_ms, "end": open_ms + step_ms - 1, "interval": sub.name, "open": repr(o), "close": repr(c),
                "high": repr(h), "low": repr(lo), "volume": repr(volume), "turnover": repr(turnover), "confirm": closed,
                "timestamp": now_ms}
        return orjson.dumps({"topic": key, "data": [data], "ts": now_ms, "type": "snapshot"}).decode()


class Streams:
    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.refused_until = 0.0  # emulator clock: new connections refused before this
        self.stalled_until = 0.0  # emulator clock: nothing sent before this
        self.generation = 0  # bumped by a forced disconnect: connections of older ones close
        self.counts = {"connections": 0, "refused": 0, "messages": 0, "closing_updates": 0, "forced_disconnects": 0}

    def routes(self) -> list:
        def served(protocol: Any) -> Callable:
            return lambda ws: self._serve(ws, protocol)

        return [
            WebSocketRoute("/stream", served(Binance(self.config, "spot"))),
            WebSocketRoute("/fstream/stream", served(Binance(self.config, "perp"))),
            WebSocketRoute("/ws/v5/business", served(Okx(self.config))),
            WebSocketRoute("/v5/public/spot", served(Bybit(self.config, "spot"))),
            WebSocketRoute("/v5/public/linear", served(Bybit(self.config, "linear"))),
            Route("/emulator/ws/disconnect", self._disconnect, methods=["POST"]),
            Route("/emulator/ws/stall", self._stall, methods=["POST"]),
        ]

    def stats(self) -> dict:
        return dict(self.counts)

    async def _disconnect(self, request: Request) -> Response:
        self.refused_until = self.clock() + float(request.query_params.get("seconds", "0"))
        self.generation += 1
        self.counts["forced_disconnects"] += 1
        return JSONResponse({"refused_until": self.refused_until})

    async def _stall(self, request: Request) -> Response:
        self.stalled_until = self.clock() + float(request.query_params.get("seconds", "0"))
        return JSONResponse({"stalled_until": self.stalled_until})

    async def _serve(self, ws: WebSocket, protocol: Any) -> None:
        subscribed = protocol.initial(ws, self.clock())
        if subscribed is None or self.clock() < self.refused_until:
            self.counts["refused"] += 1
            await ws.close(code=1008)  # before accepting: the handshake is refused (HTTP 403)
            return
        await ws.accept()
        self.counts["connections"] += 1
        generation, opened = self.generation, self.clock()

        async def listen() -> None:
            async for text in ws.iter_text():
                for reply in protocol.answer(text, subscribed, self.clock()):
                    await ws.send_text(reply)

        listening = asyncio.create_task(listen())
        try:
            while not listening.done():
                await asyncio.sleep(self.config.ws_update_seconds)
                now = self.clock()
                if generation != self.generation:
                    await ws.close(code=1001)
                    return
                if now - opened > self.config.ws_connection_seconds:
                    await ws.close(code=1000)  # Binance cuts every connection after 24 hours
                    return
                if now < self.stalled_until:
                    continue
                for key, sub in list(subscribed.items()):
                    opening = int(now // sub.step_s) * sub.step_s
                    for bar in range(sub.current, opening, sub.step_s):
                        await self._send(ws, protocol.message(key, sub, bar, now, True), closed=True)
                    sub.current = opening
                    await self._send(ws, protocol.message(key, sub, opening, now, False), closed=False)
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away
        finally:
            listening.cancel()

    async def _send(self, ws: WebSocket, text: str | None, closed: bool) -> None:
        if text is None:
            return
        await ws.send_text(text)  # text frames, as the venues send
        self.counts["messages"] += 1
        self.counts["closing_updates"] += closed


def build(config: EmulatorConfig, failures: object, clock: Callable[[], float] = time.time) -> Streams:
    """This module's emulator, for the server (emulator/server.py) to mount as `streams`."""
    return Streams(config, clock)
