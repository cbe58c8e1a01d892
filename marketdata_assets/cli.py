"""`marketdata`: the command line. `marketdata --help` lists the commands."""

from __future__ import annotations

import datetime as dt
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
@click.option("--outage", multiple=True, metavar="[MARKET@]START/END",
              help="A window with no candles, besides the documented maintenance.")
@click.option("--invalid-bar", multiple=True, metavar="SYMBOL/TF/TIME", help="A candle served with high < low.")
@click.option("--failing-window", multiple=True, metavar="START/END[xN]",
              help="Requests touching this window get 503 until N of them have [5].")
def emulator(
    host, port, spot_weight_limit, futures_weight_limit, fault_5xx_rate, fault_truncate_rate,
    fault_latency_ms, archive_missing, archive_corrupt, archive_corrupt_once, outage, invalid_bar,
    failing_window,
) -> None:
    """Serve the local emulators of every upstream until interrupted.

    Defaults come from MARKETDATA_EMULATOR_* variables; options override them.
    """
    import dataclasses

    import uvicorn

    from marketdata_assets.emulator import EmulatorConfig, FailingWindow, InvalidBar, Outage, build_app

    try:
        config = EmulatorConfig.from_env()
        scenario = dataclasses.replace(
            config.scenario,
            outages=config.scenario.outages + tuple(Outage.parse(text) for text in outage),
            invalid_bars=config.scenario.invalid_bars + tuple(InvalidBar.parse(text) for text in invalid_bar),
            failing_windows=config.scenario.failing_windows + tuple(FailingWindow.parse(t) for t in failing_window),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
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
        scenario=scenario,
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
        frame = warehouse.query(_SUMMARY_SQL, [symbol, symbol] * 4)
    except WarehouseError as exc:
        click.echo(f"marketdata summary: {exc}", err=True)
        sys.exit(2)
    if frame.is_empty():
        click.echo(f"nothing stored in {settings.warehouse_url}")
        return
    click.echo(f"{'series':<40} {'rows':>10}  {'first (UTC)':<19}  {'last (UTC)':<19}")
    for row in frame.iter_rows(named=True):
        click.echo(
            f"{row['series']:<40} {row['rows']:>10}  {row['first_time']:%Y-%m-%d %H:%M}     {row['last_time']:%Y-%m-%d %H:%M}"
        )


# Each stored series under its asset key, with its rows and first and last times.
_SUMMARY_SQL = " UNION ALL ".join(
    f"SELECT {series} AS series, count(*) AS rows, min({time}) AS first_time, max({time}) AS last_time "
    f"FROM market_data.{table} WHERE (CAST(? AS TEXT) IS NULL OR symbol = ?) GROUP BY 1"
    for table, series, time in (
        ("klines", "venue || '_' || market || '/klines_' || timeframe || '/' || replace(symbol, '-', '_')", "open_time"),
        ("funding_rates", "venue || '_perp/funding/' || replace(symbol, '-', '_')", "funding_time"),
        ("open_interest", "venue || '_perp/open_interest/' || replace(symbol, '-', '_')", "snapshot_time"),
        ("long_short_ratios", "venue || '_perp/long_short/' || replace(symbol, '-', '_')", "snapshot_time"),
    )
) + " ORDER BY 1"


def _fail(command: str, message: str) -> None:
    """One clear line on stderr and exit code 2: the command could not run as asked."""
    click.echo(f"marketdata {command}: {message}", err=True)
    sys.exit(2)


def _coverage(command: str, symbols: tuple[str, ...], dataset: str | None = "klines"):
    """(settings, warehouse, instance, klines coverage, funding/open-interest/long-short coverage)
    of the assets of `symbols` and `dataset` (None: every dataset), for report and verify."""
    import dagster as dg
    from dagster._core.errors import DagsterHomeNotSetError

    from marketdata_assets.catalog import CatalogError, load_catalog
    from marketdata_assets.coverage import derivative_assets, derivatives_coverage, klines_assets, klines_coverage
    from marketdata_assets.warehouse import WarehouseError, open_warehouse

    try:
        settings = Settings.from_env()
        catalog = load_catalog(settings.catalog_path)
        warehouse = open_warehouse(settings.warehouse_url)
    except (CatalogError, WarehouseError, ValueError) as exc:
        _fail(command, str(exc))
    assets = klines_assets(catalog, symbols) if dataset in (None, "klines") else []
    others = derivative_assets(catalog, symbols, [dataset] if dataset else []) if dataset != "klines" else []
    unknown = sorted(set(symbols) - {asset.instrument.symbol for asset in [*assets, *others]})
    if unknown:
        _fail(command, f"no {dataset + ' ' if dataset else ''}asset for symbol {', '.join(unknown)} in the catalog")
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        _fail(command, "DAGSTER_HOME is not set: partition status and check results live in the Dagster "
                       "instance that `dagster asset materialize` and `dagster dev` use; point DAGSTER_HOME at it")
    try:
        return (settings, warehouse, instance, klines_coverage(instance, warehouse, assets),
                derivatives_coverage(instance, warehouse, others))
    except WarehouseError as exc:
        _fail(command, str(exc))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--dataset", type=click.Choice(["klines", "funding", "open_interest", "long_short"]), help="Only this dataset.")
@click.option("--symbol", "symbols", multiple=True, help="Only this symbol (repeatable).")
@click.option("--fail-on-gaps", is_flag=True, help="Exit 1 if any asset has unexplained gaps or missing rows (for CI).")
def report(fmt: str, dataset: str | None, symbols: tuple[str, ...], fail_on_gaps: bool) -> None:
    """Coverage audit: one row per asset, from Dagster's partition status and the warehouse.

    Gaps are counted inside materialized partitions; known gaps are documented maintenance and
    windows `marketdata gaps verify` found empty.
    """
    from marketdata_assets.report import render

    _, _, instance, items, others = _coverage("report", symbols, dataset)
    instance.dispose()
    click.echo(render(items, others, fmt))
    if fail_on_gaps and (any(item.gaps.unexplained for item in items) or any(item.missing for item in others)):
        sys.exit(1)


@main.group()
def gaps() -> None:
    """Work on the gaps the audit finds."""


@gaps.command("verify")
@click.option("--dataset", type=click.Choice(["klines"]), help="Only this dataset.")
@click.option("--symbol", "symbols", multiple=True, help="Only this symbol (repeatable).")
def gaps_verify(dataset: str | None, symbols: tuple[str, ...]) -> None:
    """Fetch every unexplained gap again: store what comes back, record what does not as
    verified empty (market_data.known_gaps), then run the checks of the partitions concerned
    again, so the UI shows the same. Exit 1 if a gap could not be fetched."""
    from marketdata_assets.definitions import build_definitions
    from marketdata_assets.defs.checks import run_klines_checks
    from marketdata_assets.defs.resources import resources_from
    from marketdata_assets.verify import verify_gaps

    settings, warehouse, instance, items, _ = _coverage("gaps verify", symbols)
    pending = [item for item in items if item.gaps.unexplained]
    if not pending:
        instance.dispose()
        click.echo("no unexplained gaps")
        return
    binance = resources_from(settings)["binance"]
    verdicts = verify_gaps(
        pending, binance.klines_client, warehouse, report=lambda verdict: click.echo(verdict.describe())
    )
    definitions = build_definitions(settings)
    for item in pending:
        gaps = [v.gap for v in verdicts if v.asset == item.key.to_user_string() and not v.error]
        if not gaps:
            continue
        first = item.partitions.get_partition_key_for_timestamp(gaps[0][0].timestamp())
        last = item.partitions.get_partition_key_for_timestamp((gaps[-1][1] - dt.timedelta(microseconds=1)).timestamp())
        evaluations = run_klines_checks(instance, definitions.resolve_assets_def(item.key), first, last)
        states = " ".join(
            f"{e.check_name}={'passed' if e.passed else e.severity.value}" for e in evaluations
        )
        click.echo(f"checked {item.key.to_user_string()} again over {first}...{last}: {states}")
    instance.dispose()
    failed = [v for v in verdicts if v.error]
    empty_bars = sum(v.empty_bars for v in verdicts)
    click.echo(
        f"{len(verdicts)} gaps fetched again: {sum(v.stored for v in verdicts)} bars stored, "
        f"{empty_bars} bars verified empty, {sum(v.rejected for v in verdicts)} rejected, {len(failed)} failed"
    )
    if failed:
        sys.exit(1)


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
