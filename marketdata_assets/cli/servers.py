"""The long-running commands: the emulators, the metrics exporter, the live tail."""

from __future__ import annotations

import sys

import click


from marketdata_assets.cli import main
from marketdata_assets.cli.common import _fail


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8900, show_default=True, type=int, help="0 picks a free port.")
@click.option("--spot-weight-limit", type=int, help="Spot request weight per minute [6000].")
@click.option("--futures-weight-limit", type=int, help="USD-M request weight per minute [2400].")
@click.option("--fault-5xx-rate", type=float, help="Share of data requests answered with 503.")
@click.option("--fault-truncate-rate", type=float, help="Share of data answers cut in half.")
@click.option("--fault-latency-ms", type=float, help="Delay before every data answer.")
@click.option("--archive-cache-mb", type=int, help="Built archive files kept in memory [1024].")
@click.option("--archive-missing", multiple=True, help="Archive zip name (or pattern) to answer 404.")
@click.option("--archive-corrupt", multiple=True, help="Archive zip name (or pattern) to serve corrupted.")
@click.option("--archive-corrupt-once", is_flag=True, default=None, help="Corrupt only the first download.")
@click.option("--outage", multiple=True, metavar="[MARKET@]START/END",
              help="A window with no candles, besides the documented maintenance.")
@click.option("--invalid-bar", multiple=True, metavar="SYMBOL/TF/TIME", help="A candle served with high < low.")
@click.option("--failing-window", multiple=True, metavar="START/END[xN]",
              help="Requests touching this window get 503 until N of them have [5].")
@click.option("--listing", multiple=True, metavar="MARKET:SYMBOL@YYYY-MM-DD",
              help="A Binance symbol listed besides the real ones (spot or perp), from that day.")
def emulator(
    host, port, spot_weight_limit, futures_weight_limit, fault_5xx_rate, fault_truncate_rate,
    fault_latency_ms, archive_cache_mb, archive_missing, archive_corrupt, archive_corrupt_once, outage, invalid_bar,
    failing_window, listing,
) -> None:
    """Serve the local emulators of every upstream until interrupted.

    Defaults come from MARKETDATA_EMULATOR_* variables; options override them.
    """
    import socket

    if not 0 <= port <= 65535:
        _fail("emulator", f"--port {port} is not a port (0 to 65535; 0 picks a free one)")
    for option, share in (("--fault-5xx-rate", fault_5xx_rate), ("--fault-truncate-rate", fault_truncate_rate)):
        if share is not None and not 0 <= share <= 1:
            _fail("emulator", f"{option} {share} is not a share of requests (0 to 1)")
    if fault_latency_ms is not None and fault_latency_ms < 0:
        _fail("emulator", f"--fault-latency-ms {fault_latency_ms} is negative")
    if archive_cache_mb is not None and archive_cache_mb < 1:
        _fail("emulator", f"--archive-cache-mb {archive_cache_mb} is not a size (1 or more)")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            _fail("emulator", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    import dataclasses

    import uvicorn

    from marketdata_assets.emulator import EmulatorConfig, FailingWindow, InvalidBar, Outage, build_app

    try:
        config = EmulatorConfig.from_env().with_listings(listing)
        scenario = dataclasses.replace(
            config.scenario,
            outages=config.scenario.outages + tuple(Outage.parse(text) for text in outage),
            invalid_bars=config.scenario.invalid_bars + tuple(InvalidBar.parse(text) for text in invalid_bar),
            failing_windows=config.scenario.failing_windows + tuple(FailingWindow.parse(t) for t in failing_window),
        )
    except ValueError as exc:
        _fail("emulator", str(exc))
    faults = config.faults
    faults = dataclasses.replace(
        faults,
        server_error_rate=faults.server_error_rate if fault_5xx_rate is None else fault_5xx_rate,
        truncate_rate=faults.truncate_rate if fault_truncate_rate is None else fault_truncate_rate,
        latency_ms=faults.latency_ms if fault_latency_ms is None else fault_latency_ms,
    )
    config = dataclasses.replace(
        config,
        spot_weight_limit=spot_weight_limit or config.spot_weight_limit,
        futures_weight_limit=futures_weight_limit or config.futures_weight_limit,
        archive_cache_mb=archive_cache_mb or config.archive_cache_mb,
        faults=faults,
        archive_faults=dataclasses.replace(
            config.archive_faults,
            missing=tuple(archive_missing) or config.archive_faults.missing,
            corrupt=tuple(archive_corrupt) or config.archive_faults.corrupt,
            corrupt_once=config.archive_faults.corrupt_once if archive_corrupt_once is None else True,
        ),
        scenario=scenario,
    )
    server = uvicorn.Server(
        uvicorn.Config(build_app(config), host=host, port=port, log_level="warning", access_log=False)
    )

    async def announce() -> None:
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{host}:{bound}"
        click.echo(f"emulator listening on {url}", err=True)
        from marketdata_assets.settings import emulated_endpoints

        click.echo("export " + " ".join(f"{variable}={value}" for variable, value in emulated_endpoints(url).items()),
                   err=True)

    import asyncio

    async def serve() -> None:
        config_task = asyncio.create_task(server.serve())
        while not server.started and not config_task.done():
            await asyncio.sleep(0.01)
        if server.started:
            await announce()
        await config_task

    asyncio.run(serve())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to be scraped from elsewhere.")
@click.option("--port", default=9108, show_default=True, type=int)
@click.option("--refresh", "refresh_seconds", default=30.0, show_default=True, type=float,
              help="Seconds a coverage reading (rows, missing rows, checks) is served before it is read again.")
def metrics(host: str, port: int, refresh_seconds: float) -> None:
    """Serve Prometheus metrics of the backfills and the warehouse on http://HOST:PORT/metrics."""
    from marketdata_assets import app

    try:
        server = app.metrics_server(host, port, refresh_seconds)
    except app.AppError as exc:
        _fail("metrics", str(exc))
    click.echo(f"serving http://{host}:{server.server_port}/metrics (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where /healthz and /metrics listen.")
@click.option("--port", type=int, default=None, help="Their port [MARKETDATA_STREAM_PORT, 9109]; 0 picks a free one.")
def stream(host: str, port: int | None) -> None:
    """Stream the closed candles of every catalog instrument marked `stream` into the warehouse
    (and onto Redis with MARKETDATA_REDIS_URL), joining every seam through REST, until stopped."""
    import asyncio
    import logging
    import signal

    from marketdata_assets.app import AppError, check_warehouse
    from marketdata_assets.catalog import CatalogError
    from marketdata_assets.settings import Settings, SettingsError
    from marketdata_assets.stream import Streamer

    try:
        settings = Settings.from_env()
        streamer = Streamer(settings)
        check_warehouse(settings)
    except (SettingsError, CatalogError, AppError) as exc:
        _fail("stream", str(exc))
    if not streamer.subscriptions:
        _fail("stream", "no catalog instrument is marked `stream` (add `stream: true` or `stream: [1m]` to one)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    click.echo(streamer.describe(), err=True)

    async def main_loop() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, streamer.stopping.set)
        await streamer.run(host, settings.stream_port if port is None else port,
                           lambda bound: click.echo(f"health on http://{host}:{bound}/healthz, metrics on /metrics",
                                                    err=True))

    try:
        asyncio.run(main_loop())
    except OSError as exc:
        _fail("stream", f"cannot listen on {host}:{port if port is not None else settings.stream_port} ({exc})")


