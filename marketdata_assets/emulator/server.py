"""The emulator as an ASGI app, and a loopback server that runs it in a background thread."""

from __future__ import annotations

import importlib
import pkgutil
import threading
import time
from collections.abc import Callable

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import FailureBudget


def upstream_emulators(config: EmulatorConfig, failures: FailureBudget, clock: Callable[[], float]) -> dict:
    """name -> emulator, one per module of this package that has `build(config, failures, clock)`."""
    package = importlib.import_module(__package__)
    emulators = {}
    for module in pkgutil.iter_modules(package.__path__):
        build = getattr(importlib.import_module(f"{__package__}.{module.name}"), "build", None)
        if build is not None:
            emulators[module.name] = build(config, failures, clock)
    return emulators


def build_app(config: EmulatorConfig | None = None, clock: Callable[[], float] = time.time) -> Starlette:
    """Every emulated upstream in one app; their paths do not collide, as their hosts differ.

    `clock` (Unix seconds) decides which candles have closed and which minute weight counts in.
    """
    config = config or EmulatorConfig()
    emulators = upstream_emulators(config, FailureBudget(config.scenario.failing_windows), clock)

    async def stats(request: Request) -> Response:
        body = {name: emulator.stats() for name, emulator in emulators.items()}
        return Response(orjson.dumps(body), media_type="application/json")

    routes = [route for emulator in emulators.values() for route in emulator.routes()]
    app = Starlette(routes=[*routes, Route("/emulator/stats", stats)])
    for name, emulator in emulators.items():
        setattr(app.state, name, emulator)
    return app


class LoopbackServer:
    """Any ASGI app as a real HTTP server in a background thread: `with LoopbackServer(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self):
        self._thread = threading.Thread(target=self._server.run, name="loopback-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmulatorServer(LoopbackServer):
    """The emulator of every upstream on loopback: `with EmulatorServer() as emu: emu.url`."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(build_app(config, clock), host, port)

    def __getattr__(self, name: str):
        """The emulator of one upstream by its module's name: `server.binance`, `server.archive`."""
        try:
            return getattr(self.__dict__["app"].state, name)
        except (AttributeError, KeyError):
            raise AttributeError(name) from None
