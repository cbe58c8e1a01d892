"""Local emulators of every upstream, as real HTTP servers on loopback: for tests, demo, benchmarks."""

from marketdata_assets.emulator.config import EmulatorConfig
from marketdata_assets.emulator.scenario import FailingWindow, InvalidBar, Outage, Scenario
from marketdata_assets.emulator.server import EmulatorServer, LoopbackServer, build_app

__all__ = [
    "EmulatorConfig", "EmulatorServer", "FailingWindow", "InvalidBar", "LoopbackServer", "Outage", "Scenario",
    "build_app",
]
