"""`marketdata`: the command line. `marketdata --help` lists the commands."""

from __future__ import annotations

import sys

import click

from marketdata_assets.settings import Settings


@click.group()
def main() -> None:
    """Historical market-data backfill and incremental updates on Dagster."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8900, show_default=True, type=int, help="0 picks a free port.")
@click.option("--spot-weight-limit", type=int, help="Spot request weight per minute [6000].")
@click.option("--futures-weight-limit", type=int, help="USD-M request weight per minute [2400].")
@click.option("--fault-5xx-rate", type=float, help="Share of data requests answered with 503.")
@click.option("--fault-truncate-rate", type=float, help="Share of data answers cut in half.")
@click.option("--fault-latency-ms", type=float, help="Delay before every data answer.")
@click.option("--archive-missing", multiple=True, help="Archive zip name (or pattern) to answer 404.")
@click.option("--archive-corrupt", multiple=True, help="Archive zip name (or pattern) to serve corrupted.")
@click.option("--archive-corrupt-once", is_flag=True, default=None, help="Corrupt only the first download.")
def emulator(
    host, port, spot_weight_limit, futures_weight_limit, fault_5xx_rate, fault_truncate_rate,
    fault_latency_ms, archive_missing, archive_corrupt, archive_corrupt_once,
) -> None:
    """Serve the local emulators of every upstream until interrupted.

    Defaults come from MARKETDATA_EMULATOR_* variables; options override them.
    """
    import dataclasses

    import uvicorn

    from marketdata_assets.emulator import EmulatorConfig, build_app

    config = EmulatorConfig.from_env()
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
        faults=faults,
        archive_faults=dataclasses.replace(
            config.archive_faults,
            missing=tuple(archive_missing) or config.archive_faults.missing,
            corrupt=tuple(archive_corrupt) or config.archive_faults.corrupt,
            corrupt_once=config.archive_faults.corrupt_once if archive_corrupt_once is None else True,
        ),
    )
    server = uvicorn.Server(
        uvicorn.Config(build_app(config), host=host, port=port, log_level="warning", access_log=False)
    )

    async def announce() -> None:
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{host}:{bound}"
        click.echo(f"emulator listening on {url}", err=True)
        click.echo(
            f"export MARKETDATA_BINANCE_SPOT_URL={url} MARKETDATA_BINANCE_FUTURES_URL={url} "
            f"MARKETDATA_BINANCE_ARCHIVE_URL={url}",
            err=True,
        )

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
@click.option("--symbol", help="Only this symbol.")
def summary(symbol: str | None) -> None:
    """Rows and date range stored per series in the warehouse."""
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    settings = Settings.from_env()
    try:
        warehouse = open_warehouse(settings.warehouse_url)
        frame = warehouse.query(
            "SELECT venue, market, symbol, timeframe, count(*) AS rows, "
            "min(open_time) AS first_open_time, max(open_time) AS last_open_time "
            "FROM market_data.klines WHERE (? IS NULL OR symbol = ?) "
            "GROUP BY ALL ORDER BY ALL",
            [symbol, symbol],
        )
    except WarehouseError as exc:
        click.echo(f"marketdata summary: {exc}", err=True)
        sys.exit(2)
    if frame.is_empty():
        click.echo(f"no klines stored in {settings.warehouse_url}")
        return
    header = f"{'series':<34} {'rows':>10}  {'first open (UTC)':<19}  {'last open (UTC)':<19}"
    click.echo(header)
    for row in frame.iter_rows(named=True):
        series = f"{row['venue']}_{row['market']}/klines_{row['timeframe']}/{row['symbol']}"
        click.echo(
            f"{series:<34} {row['rows']:>10}  {row['first_open_time']:%Y-%m-%d %H:%M}     "
            f"{row['last_open_time']:%Y-%m-%d %H:%M}"
        )


@main.command()
@click.option("--from", "from_date", envvar="FROM_DATE", help="First day (YYYY-MM-DD) [90 days ago].")
@click.option("--to", "to_date", envvar="TO_DATE", help="Last day (YYYY-MM-DD) [yesterday].")
def demo(from_date: str | None, to_date: str | None) -> None:
    """Backfill the catalog from a local emulator, then print what is stored."""
    from marketdata_assets.demo import parse_date, run_demo

    run_demo(
        parse_date("FROM_DATE", from_date) if from_date else None,
        parse_date("TO_DATE", to_date) if to_date else None,
    )


if __name__ == "__main__":
    main()
