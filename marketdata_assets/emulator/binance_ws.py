"""Binance's WebSocket kline streams: combined streams on `/stream?streams=btcusdt@kline_1m/…`
(spot; USD-M under `/fstream/stream`), each message `{"stream": …, "data": {"e": "kline", …,
"k": {…, "x": …}}}`.

Every `ws_update_seconds` (real time) a connection gets, for each of its streams, the closing
update of every bar that closed since the last one (`x: true`, the whole bar, the same as REST
serves) and then the bar in progress cut at the emulator's clock (`x: false`). At most 1,024
streams a connection (more: refused); uvicorn pings every 20 s and drops a client that does not
answer; a connection is cut after `ws_connection_seconds` of the emulator's clock (24 h, as
Binance does). Bars wholly inside an outage of the scenario are never sent.

On demand (the tests, `marketdata emulator`'s operator):
- `POST /emulator/ws/disconnect?seconds=N`: every connection is dropped and new ones are refused
  for N seconds of the emulator's clock;
- `POST /emulator/ws/stall?seconds=N`: connections stay open but nothing is sent for N seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from marketdata_assets.emulator.config import EmulatorConfig

MAX_STREAMS = 1024
# Binance's kline intervals and their length (kept apart from the client's timeframes on purpose)
_INTERVALS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
              "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400}


class BinanceStreams:
    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.refused_until = 0.0  # emulator clock: new connections refused before this
        self.stalled_until = 0.0  # emulator clock: nothing sent before this
        self.generation = 0  # bumped by a forced disconnect: connections of older ones close
        self.counts = {"connections": 0, "refused": 0, "messages": 0, "closing_updates": 0, "forced_disconnects": 0}

    def routes(self) -> list:
        return [
            WebSocketRoute("/stream", lambda ws: self._serve(ws, "spot")),
            WebSocketRoute("/fstream/stream", lambda ws: self._serve(ws, "perp")),
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

    def _streams(self, raw: str, market: str) -> list[tuple[str, str, str]] | None:
        """(stream name, symbol, interval) of each `symbol@kline_<interval>`; None if one is unknown."""
        found = []
        for name in filter(None, raw.split("/")):
            symbol, sep, kind = name.partition("@kline_")
            if not sep or kind not in _INTERVALS or (market, symbol.upper()) not in self.config.listings:
                return None
            found.append((name, symbol.upper(), kind))
        return found

    async def _serve(self, ws: WebSocket, market: str) -> None:
        streams = self._streams(ws.query_params.get("streams", ""), market)
        if not streams or len(streams) > MAX_STREAMS or self.clock() < self.refused_until:
            self.counts["refused"] += 1
            await ws.close(code=1008)  # before accepting: the handshake is refused (HTTP 403)
            return
        await ws.accept()
        self.counts["connections"] += 1
        generation, opened = self.generation, self.clock()
        # the bar each stream is in: its closing update is due once the clock passes its end
        current = {name: int(opened // _INTERVALS[kind]) * _INTERVALS[kind] for name, _, kind in streams}
        try:
            while True:
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
                for name, symbol, kind in streams:
                    step = _INTERVALS[kind]
                    opening = int(now // step) * step
                    for bar in range(current[name], opening, step):
                        await self._send(ws, market, name, symbol, kind, bar, now, closed=True)
                    current[name] = opening
                    await self._send(ws, market, name, symbol, kind, opening, now, closed=False)
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away

    async def _send(self, ws: WebSocket, market: str, name: str, symbol: str, kind: str, open_s: int, now: float,
                    closed: bool) -> None:
        step_ms = _INTERVALS[kind] * 1000
        open_ms = open_s * 1000
        if open_ms < self.config.listings[(market, symbol)]:
            return
        scenario = self.config.scenario
        if not len(scenario.trading(market, step_ms, np.array([open_ms], dtype=np.int64))):
            return  # inside an outage: no candle
        bar = scenario.candles(market, symbol, kind, step_ms, np.array([open_ms], dtype=np.int64),
                               now_ms=None if closed else int(now * 1000))
        k = {
            "t": open_ms, "T": open_ms + step_ms - 1, "s": symbol, "i": kind, "f": 100, "L": 200,
            "o": f"{bar.open[0]:.8f}", "c": f"{bar.close[0]:.8f}", "h": f"{bar.high[0]:.8f}", "l": f"{bar.low[0]:.8f}",
            "v": f"{bar.volume[0]:.8f}", "n": int(bar.trades[0]), "x": closed, "q": f"{bar.quote_volume[0]:.8f}",
            "V": f"{bar.taker_buy_volume[0]:.8f}", "Q": f"{bar.taker_buy_quote_volume[0]:.8f}", "B": "0",
        }
        # E: when the message leaves (real time, even when the emulator's clock runs faster): how late
        # a client gets it is measured from here
        event = {"e": "kline", "E": int(time.time() * 1000), "s": symbol, "k": k}
        await ws.send_text(orjson.dumps({"stream": name, "data": event}).decode())  # text frames, as Binance's
        self.counts["messages"] += 1
        self.counts["closing_updates"] += closed


def build(config: EmulatorConfig, failures: object, clock: Callable[[], float] = time.time) -> BinanceStreams:
    """This upstream's emulator, for the server (emulator/server.py) to mount as `binance_ws`."""
    return BinanceStreams(config, clock)
