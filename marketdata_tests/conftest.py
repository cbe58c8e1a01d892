"""Real parts for every test: the emulator as an HTTP server on loopback, DuckDB files in a
temporary directory, and Dagster instances in a temporary DAGSTER_HOME."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketdata_assets.emulator import EmulatorServer
from marketdata_assets.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
REPO = Path(__file__).resolve().parents[1]


class TimeWarp:
    """A clock running `speed` times faster than real time from `start`, and its matching sleep.

    Client and emulator share it, so minutes of rate-limit accounting pass in seconds while
    every request still crosses a real socket.
    """

    def __init__(self, speed: float, start: dt.datetime | None = None):
        self.speed = speed
        self._origin = (start or dt.datetime.now(dt.UTC)).timestamp()
        self._real0 = time.monotonic()

    def __call__(self) -> float:
        return self._origin + (time.monotonic() - self._real0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.speed)

    def wait_for_next_minute(self, offset_s: float = 1.0) -> None:
        """Block until `offset_s` warped seconds after the next warped minute starts."""
        now = self()
        target = (now // 60 + 1) * 60 + offset_s
        time.sleep((target - now) / self.speed)


@pytest.fixture(autouse=True)
def no_ban_outlives_its_test() -> Iterator[None]:
    """A ban an emulator gave is that emulator's: its port may be handed to the next test's."""
    yield
    from marketdata_assets.sources.http import Bans

    Bans.clear()


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    """The default emulator: Binance's real limits, no faults."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def warehouse_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"


POSTGRES = os.environ.get("MARKETDATA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def postgres_database(prefix: str = "md_test"):
    """A fresh database on the local PostgreSQL server (trust auth), dropped afterwards; its URL.
    Never skipped: without the server the test fails, as it must under CI."""
    from marketdata_assets.warehouse.postgres import temporary_database

    return temporary_database(POSTGRES, prefix)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["duckdb", "postgresql"])
def any_warehouse_url(request, tmp_path: Path) -> Iterator[str]:
    """The same test against both warehouses, so they cannot drift apart."""
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def settings(emulator: EmulatorServer, warehouse_url: str) -> Settings:
    return Settings(
        warehouse_url=warehouse_url,
        binance_spot_url=emulator.url,
        binance_futures_url=emulator.url,
        binance_archive_url=emulator.url,
    )


def write_catalog(path: Path, instruments: list[dict], start_date: str = "2017-08-17") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"start_date": start_date, "instruments": instruments}))
    return path


def cli_env(settings: Settings, dagster_home: Path, catalog: Path | None = None) -> dict[str, str]:
    """The environment a user would export to point the CLIs at the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETDATA_", "DAGSTER_"))}
    env.update(
        MARKETDATA_WAREHOUSE_URL=settings.warehouse_url,
        MARKETDATA_BINANCE_SPOT_URL=settings.binance_spot_url,
        MARKETDATA_BINANCE_FUTURES_URL=settings.binance_futures_url,
        MARKETDATA_BINANCE_ARCHIVE_URL=settings.binance_archive_url,
        MARKETDATA_KLINES_SOURCE=settings.klines_source,
        DAGSTER_HOME=str(dagster_home),
    )
    if catalog is not None:
        env["MARKETDATA_CATALOG"] = str(catalog)
    return env


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "marketdata_assets" / "dagster_instance.yaml").read_text())
    # Create the instance's storage once, as any first use does: concurrent first runs on a
    # brand-new SQLite instance race to create its tables (a Dagster start-up race, not ours).
    from dagster import DagsterInstance

    DagsterInstance.from_config(str(home)).dispose()
    return home


def with_settings(settings: Settings, **changes) -> Settings:
    return Settings(**{**settings.__dict__, **changes})


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def bars_in_maintenance(market: str, seconds: int, start: dt.datetime, end: dt.datetime) -> int:
    """Bars of `seconds` in [start, end) wholly inside a documented maintenance window of
    Binance `market`: the exchange (and the emulator) has no candle for them."""
    from marketdata_assets.maintenance import maintenance_windows

    count = 0
    for window in maintenance_windows():
        if (window.venue, window.market) != ("binance", market):
            continue
        lo = max(window.start.timestamp(), start.timestamp())
        hi = min(window.end.timestamp(), end.timestamp())
        count += max(0, int(hi // seconds) - int(-(-lo // seconds)))
    return count
