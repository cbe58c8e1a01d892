"""`marketdata`: the command line. `marketdata --help` lists the commands."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from marketdata_assets.settings import Settings, redact
from marketdata_assets.wording import counted


@click.group()
def main() -> None:
    """Historical market-data backfill and incremental updates on Dagster."""
    import os

    # Whatever DAGSTER_HOME's dagster.yaml says (a home made elsewhere may say nothing, which
    # Dagster reads as "on"), this command's runs upload no telemetry: Dagster uploads nothing
    # while the variable is set.
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def _filter_options(*names: str):
    """--venue, --market, --symbols and --keys (those named), with a plan's meaning (plans.Filter)."""
    helps = {"venue": "Only these venues (binance, okx, bybit, fred, …): comma-separated or repeated.",
             "market": "Only these markets (spot, perp); series without a market are left out.",
             "symbols": "Only these instruments' symbols (series keep theirs).",
             "keys": "Only these series' keys (FRED ids, roots; instruments keep theirs)."}

    def decorate(command):
        for name in reversed(names):
            command = click.option(f"--{name}", f"filter_{name}", multiple=True, metavar="NAMES", help=helps[name])(command)
        return command
    return decorate


def _filter_of(command: str, **given):
    from marketdata_assets.plans import Filter

    return Filter.of(**{name.removeprefix("filter_"): values for name, values in given.items()})


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
@click.option("--symbol", help="Only this symbol.")
@_filter_options("venue", "market", "keys")
def summary(symbol: str | None, filter_venue, filter_market, filter_keys) -> None:
    """Rows and date range stored per series in the warehouse."""
    from marketdata_assets import app

    try:
        url, frame = app.summary(symbol, _filter_of("summary", filter_venue=filter_venue, filter_market=filter_market,
                                                    filter_keys=filter_keys))
    except app.AppError as exc:
        _fail("summary", str(exc))
    if frame.is_empty():
        click.echo(f"nothing stored in {url}")
        return
    click.echo(f"{'series':<40} {'rows':>10}  {'first (UTC)':<19}  {'last (UTC)':<19}")
    for row in frame.iter_rows(named=True):
        click.echo(
            f"{row['series']:<40} {row['rows']:>10}  {row['first_time']:%Y-%m-%d %H:%M}     {row['last_time']:%Y-%m-%d %H:%M}"
        )


@main.command()
@click.argument("selection")
@click.option("--from", "from_raw", metavar="DATE", help="First day (UTC) [each series' start].")
@click.option("--to", "to_raw", metavar="DATE", help="Last day, included [now].")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--path", type=click.Path(path_type=Path), help="A directory, or the file of one series [here].")
@click.option("--partitioned", is_flag=True, help="A Hive-partitioned Parquet tree (venue=/symbol=/year=).")
@_filter_options("venue", "market", "symbols", "keys")
def export(selection: str, from_raw: str | None, to_raw: str | None, fmt: str, path: Path | None,
           partitioned: bool, filter_venue, filter_market, filter_symbols, filter_keys) -> None:
    """Stored rows of the series SELECTION names (asset keys or patterns, comma-separated:
    binance_spot/klines_1m/BTCUSDT, binance_*/funding/*) to CSV or Parquet, a file a series."""
    from marketdata_assets import app

    try:
        written = app.export(selection, from_raw, to_raw, fmt, path, partitioned, _filter_of(
            "export", filter_venue=filter_venue, filter_market=filter_market, filter_symbols=filter_symbols,
            filter_keys=filter_keys))
    except app.AppError as exc:
        _fail("export", str(exc))
    for each in written:
        click.echo(f"{each.key}: {counted(each.rows, 'row')} to {each.path}" if each.rows
                   else f"{each.key}: no rows stored in the window, no file written")


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


def _fail(command: str, message: str) -> None:
    """One clear line on stderr and exit code 2: the command could not run as asked."""
    click.echo(f"marketdata {command}: {message}", err=True)
    sys.exit(2)


def _coverage(command: str, symbols: tuple[str, ...], dataset: str | None = "klines"):
    """app.coverage, or one line and exit 2."""
    from marketdata_assets import app

    try:
        return app.coverage(symbols, dataset)
    except app.AppError as exc:
        _fail(command, str(exc))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--dataset", metavar="DATASET", help="Only this dataset, by the name its assets carry (their `dataset` metadata).")
@click.option("--symbol", "symbols", multiple=True, help="Only this symbol (repeatable).")
@_filter_options("venue", "market", "keys")
@click.option("--fail-on-gaps", is_flag=True, help="Exit 1 if any asset has unexplained gaps or missing rows (for CI).")
@click.option("--html", "html_path", metavar="FILE", type=click.Path(dir_okay=False, writable=True),
              help="Also write the coverage picture (a self-contained page) to FILE.")
def report(fmt: str, dataset: str | None, symbols: tuple[str, ...], fail_on_gaps: bool, html_path: str | None,
           filter_venue, filter_market, filter_keys) -> None:
    """Coverage audit: one row per asset, from Dagster's partition status and the warehouse.

    Gaps are counted inside materialized partitions; known gaps are documented maintenance and
    windows `marketdata gaps verify` found empty.
    """
    import os

    from marketdata_assets.report import render

    if html_path and not os.path.isdir(os.path.dirname(os.path.abspath(html_path))):
        _fail("report", f"--html {html_path}: no such directory {os.path.dirname(os.path.abspath(html_path))}")
    found = _coverage("report", symbols, dataset)
    found.instance.dispose()
    for run in found.dead_runs:
        click.echo(f"marketdata report: {run.describe()}", err=True)
    items, others = found.klines, found.others
    narrowed = _filter_of("report", filter_venue=filter_venue, filter_market=filter_market, filter_keys=filter_keys)
    if narrowed is not None:
        from marketdata_assets.plans import about_series

        try:
            kept = narrowed.narrow([*items, *others], lambda item: about_series(
                item.catalog_series if hasattr(item, "catalog_series") else item.asset.series))
        except ValueError as exc:
            _fail("report", str(exc))
        items = [item for item in items if item in kept]
        others = [item for item in others if item in kept]
    click.echo(render(items, others, fmt))
    if html_path:
        from marketdata_assets.picture import render_html, rows_of

        now = dt.datetime.now(dt.UTC)
        rows = rows_of(items, others, now)
        try:
            with open(html_path, "w", encoding="utf-8") as out:
                out.write(render_html(rows, now))
        except OSError as exc:
            _fail("report", f"cannot write {html_path}: {exc.strerror}")
        click.echo(f"coverage picture of {counted(len(rows), 'asset')} written to {html_path}", err=True)
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
    from marketdata_assets.defs.location import build_definitions
    from marketdata_assets.defs.quality.checks import run_klines_checks, worst_states
    from marketdata_assets.defs.ingest.resources import resources_from
    from marketdata_assets.datasets.klines import DATASET as KLINES
    from marketdata_assets.verify import verify_gaps

    found = _coverage("gaps verify", symbols)
    settings, warehouse, instance, items = found.settings, found.warehouse, found.instance, found.klines
    pending = [item for item in items if item.gaps.unexplained]
    if not pending:
        instance.dispose()
        click.echo("no unexplained gaps")
        return
    upstreams = resources_from(settings)["upstreams"]
    verdicts = verify_gaps(
        pending, lambda item: KLINES.rest_source(item.catalog_series, upstreams), warehouse,
        report=lambda verdict: click.echo(verdict.describe()),
    )
    definitions = build_definitions(settings)
    for item in pending:
        gaps = [v.gap for v in verdicts if v.asset == item.key.to_user_string() and not v.error]
        if not gaps:
            continue
        first = item.partitions.get_partition_key_for_timestamp(gaps[0][0].timestamp())
        last = item.partitions.get_partition_key_for_timestamp((gaps[-1][1] - dt.timedelta(microseconds=1)).timestamp())
        evaluations = run_klines_checks(instance, definitions.resolve_assets_def(item.key), first, last)
        states = " ".join(f"{name}={state}" for name, state in worst_states(evaluations).items())
        click.echo(f"checked {item.key.to_user_string()} again over {first}...{last}: {states}")
    instance.dispose()
    failed = [v for v in verdicts if v.error]
    empty_bars = sum(v.empty_bars for v in verdicts)
    click.echo(
        f"{counted(len(verdicts), 'gap')} fetched again: {counted(sum(v.stored for v in verdicts), 'bar')} stored, "
        f"{empty_bars} bars verified empty, {sum(v.rejected for v in verdicts)} rejected, {len(failed)} failed"
    )
    if failed:
        sys.exit(1)


class _BackfillGroup(click.Group):
    """`marketdata backfill DATASET …` launches; `jobs` and `cancel` are its other commands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["launch", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BackfillGroup)
def backfill() -> None:
    """Launch, list and cancel backfills on the running Dagster webserver (MARKETDATA_DAGSTER_URL),
    so they show in its UI and its daemon runs them; or run one here with --local.

    \b
    marketdata backfill DATASET [--symbols BTCUSDT,ETHUSDT] [--from DATE] [--to DATE|now] [--wait|--local]
    marketdata backfill jobs [--format table|json]
    marketdata backfill cancel ID
    """


def _selection(command: str, dataset: str, symbols: tuple[str, ...], from_raw: str | None, to_raw: str | None,
               narrowed=None):
    """app.backfill_selection, or one line and exit 2."""
    from marketdata_assets import app

    try:
        return app.backfill_selection(dataset, symbols, from_raw, to_raw, narrowed)
    except app.AppError as exc:
        _fail(command, str(exc))


COST_TAG = "marketdata/estimated_cost_usd"


def _priced(command: str, settings, chosen, max_cost: float | None, echo) -> dict[str, str]:
    """Ask each upstream that bills by volume what `chosen` costs, say it with `echo`, and stop
    (exit 2, nothing sent but the questions) above `max_cost` USD (MARKETDATA_DATABENTO_MAX_COST
    when not given); the runs' tags recording the estimate otherwise."""
    from marketdata_assets import app

    try:
        costs = app.launch_costs(settings, chosen)
    except app.AppError as exc:
        _fail(command, str(exc))
    if not costs:
        return {}
    limit = settings.databento_max_cost if max_cost is None else max_cost
    total = sum(cost.usd for cost in costs)
    for cost in costs:
        echo(cost.describe())
    if total > limit:
        _fail(command, f"the estimated cost ${total:,.4f} is above the limit of ${limit:,.2f} (--max-cost, "
                       "MARKETDATA_DATABENTO_MAX_COST): nothing was fetched")
    return {COST_TAG: f"{total:.6f}"}


def _run_locally(command: str, settings, definitions, chosen, tags) -> None:
    """`--local`: the warehouse opened first (one line and exit 2 if it cannot be), then `chosen`
    run in this process into the instance of DAGSTER_HOME; exit 0 when every run succeeded, else 1."""
    from marketdata_assets.app import AppError, check_warehouse, local_instance

    try:
        check_warehouse(settings)
    except AppError as exc:
        _fail(command, str(exc))
    instance = local_instance()
    ok = _run_here(definitions, chosen, instance, tags)
    instance.dispose()
    sys.exit(0 if ok else 1)


def _run_here(definitions, chosen, instance, tags=None) -> bool:
    """Run `chosen` in this process with a progress bar over its partitions; print each outcome."""
    from marketdata_assets.backfills import run_here
    from marketdata_assets.run_health import fail_dead_runs

    for run in fail_dead_runs(instance):
        click.echo(run.describe(), err=True)
    total = sum(selection.size for selection in chosen)
    with click.progressbar(length=total, label=counted(total, "partition"), show_pos=True, file=sys.stderr) as bar:
        outcomes = run_here(definitions, chosen, instance, bar.update, tags)
    for outcome in outcomes:
        what = f"{outcome.selection.describe()} ({counted(outcome.selection.size, 'partition')})"
        if outcome.success:
            click.echo(f"done   {what} in {outcome.seconds:.1f} s, run {outcome.run_id}")
        else:
            click.echo(f"FAILED {what}, run {outcome.run_id}:")
            for error in outcome.errors:
                click.echo("  " + error.replace("\n", "\n  "))
            click.echo(f"  once fixed, run it again: {outcome.selection.again()}")
    return all(outcome.success for outcome in outcomes)


@backfill.command("launch")
@click.argument("dataset")
@click.option("--symbols", multiple=True, help="Only these symbols: comma-separated, or the option repeated.")
@click.option("--from", "from_raw", metavar="DATE", help="YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS' UTC [the listing].")
@click.option("--to", "to_raw", metavar="DATE|now", help="The last day (included), a moment, or now [now].")
@click.option("--wait", is_flag=True, help="Follow the backfill until it ends; exit 1 unless it succeeded.")
@click.option("--local", is_flag=True, help="Run it in this process (no webserver), with a progress bar.")
@click.option("--max-cost", type=click.FloatRange(min=0), metavar="USD",
              help="Refuse a backfill an upstream prices higher (Databento) [MARKETDATA_DATABENTO_MAX_COST, 5].")
@_filter_options("venue", "market", "keys")
def backfill_launch(dataset: str, symbols, from_raw, to_raw, wait: bool, local: bool, max_cost, filter_venue,
                    filter_market, filter_keys) -> None:
    """Backfill DATASET (a dataset, a key's dataset part such as klines_1m, or a group such as
    sentiment) over a date range.

    Prints the backfill's id; with --local, each run's outcome instead."""
    from marketdata_assets.backfills import DagsterApi, DagsterApiError

    settings, definitions, chosen = _selection("backfill", dataset, symbols, from_raw, to_raw, _filter_of(
        "backfill", filter_venue=filter_venue, filter_market=filter_market, filter_keys=filter_keys))
    priced = _priced("backfill", settings, chosen, max_cost, lambda line: click.echo(line, err=True))
    if local:
        _run_locally("backfill", settings, definitions, chosen, {"marketdata/trigger": "marketdata backfill --local",
                                                                 **priced})
    api = DagsterApi(settings.dagster_url)
    title = f"marketdata backfill {dataset}" + (f" {','.join(symbols)}" if symbols else "") + \
        f" {from_raw or 'listing'}..{to_raw or 'now'}"
    try:
        backfill_id = api.launch(chosen, title, priced)
        click.echo(backfill_id)
        if not wait:
            return
        info = api.wait(backfill_id, lambda i: click.echo(
            f"{i.status}: {i.done} of {i.total} partitions done, {i.failed} failed, {i.in_progress} in progress",
            err=True))
        if info.status in ("COMPLETED", "COMPLETED_SUCCESS"):
            return
        _explain_failure(api, info, chosen)
    except DagsterApiError as exc:
        click.echo(f"marketdata backfill: {exc}", err=True)
    sys.exit(1)


@backfill.command("plan")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Follow its backfills until they end; exit 1 unless each succeeded.")
@click.option("--local", is_flag=True, help="Run it in this process (no webserver), with a progress bar.")
@click.option("--dry-run", is_flag=True, help="Say what would run and what it would ask of each venue; run nothing.")
@click.option("--max-cost", type=click.FloatRange(min=0), metavar="USD",
              help="Refuse a plan an upstream prices higher (Databento) [MARKETDATA_DATABENTO_MAX_COST, 5].")
def backfill_plan(file: Path, wait: bool, local: bool, dry_run: bool, max_cost) -> None:
    """Backfill what the YAML plan FILE names: datasets, timeframes, start and end, venues,
    markets, symbols and keys (plans.py; the README has examples). One backfill per
    PartitionsDefinition; prints their ids (with --local, each run's outcome)."""
    from marketdata_assets.backfills import DagsterApi, DagsterApiError
    from marketdata_assets.catalog import CatalogError
    from marketdata_assets.defs.location import build_definitions
    from marketdata_assets.plans import PlanError, estimates, load_plan, resolve
    from marketdata_assets.settings import Settings, SettingsError

    try:
        plan = load_plan(file)
        settings = Settings.from_env()
        definitions = build_definitions(settings)
        planned = resolve(plan, definitions, dt.datetime.now(dt.UTC))
    except (PlanError, CatalogError, SettingsError) as exc:
        _fail("backfill plan", str(exc))
    echo = (lambda line: click.echo(line)) if dry_run else (lambda line: click.echo(line, err=True))
    echo(f"plan {file}: {counted(len(planned.specs), 'asset')}, {counted(planned.partitions, 'partition')} in "
         f"{counted(len(planned.chosen), 'backfill')}, {planned.start:%Y-%m-%d %H:%M} .. {planned.end:%Y-%m-%d %H:%M} UTC"
         if planned.start else f"plan {file}: {counted(len(planned.specs), 'asset')}, "
         f"{counted(planned.partitions, 'partition')} in {counted(len(planned.chosen), 'backfill')}, from each listing "
         f"to {planned.end:%Y-%m-%d %H:%M} UTC")
    for selection in planned.chosen:
        echo(f"  {selection.describe()} ({counted(selection.size, 'partition')})")
    for estimate in estimates(planned, settings):
        echo(f"  {estimate.venue}: {'' if estimate.exact else 'about '}{estimate.requests:,} requests, "
             f"weight {estimate.weight:,}")
    priced = _priced("backfill plan", settings, planned.chosen, max_cost, echo)
    if dry_run:
        click.echo("nothing was launched (--dry-run)")
        return
    tags = {"marketdata/trigger": f"marketdata backfill plan {file.name}", **priced}
    if local:
        _run_locally("backfill plan", settings, definitions, planned.chosen, tags)
    api = DagsterApi(settings.dagster_url)
    at_once = plan.concurrency or len(planned.chosen)
    failed = False
    try:
        for first in range(0, len(planned.chosen), at_once):
            batch = planned.chosen[first:first + at_once]
            ids = [api.launch([selection], f"plan {file.name}: {selection.describe()}", tags) for selection in batch]
            for backfill_id in ids:
                click.echo(backfill_id)
            if not wait:
                continue
            for backfill_id, selection in zip(ids, batch, strict=True):
                info = api.wait(backfill_id, lambda i: click.echo(
                    f"{i.id}: {i.status}: {i.done} of {i.total} partitions done, {i.failed} failed", err=True))
                if info.status not in ("COMPLETED", "COMPLETED_SUCCESS"):
                    _explain_failure(api, info, [selection])
                    failed = True
    except DagsterApiError as exc:
        click.echo(f"marketdata backfill plan: {exc}", err=True)
        sys.exit(1)
    sys.exit(1 if failed else 0)


def _explain_failure(api, info, chosen) -> None:
    """Why a backfill followed with --wait did not succeed: each failed run's reason and the
    partitions it left failed, then the command that runs them again."""
    from marketdata_assets.backfills import Selection

    failed, error = api.failed_runs(info.id)
    what = "was canceled" if info.status == "CANCELED" else "failed"
    click.echo(f"marketdata backfill: {info.id} {what}: {info.failed} of {info.total} partitions failed"
               + (f"; {error}" if error else ""), err=True)
    partitions_of = {key: selection.partitions for selection in chosen for key in selection.keys}
    again = []
    for run in failed:
        click.echo(f"run {run.run_id[:8]} ({', '.join(k.to_user_string() for k in run.keys)} "
                   f"{run.first}...{run.last}) failed:", err=True)
        for line in run.reason.splitlines():
            click.echo(f"  {line}", err=True)
        for key, spans in run.failed_partitions.items():
            if not spans:
                continue
            shown = ", ".join(first if first == last else f"{first}...{last}" for first, last in spans)
            click.echo(f"  failed partitions of {key.to_user_string()}: {shown}", err=True)
            if key in partitions_of:  # each span is a run of adjacent partitions: one command each
                again += [Selection((key,), partitions_of[key], first, last).again("--wait") for first, last in spans]
    if again:
        click.echo("once the cause is fixed, run them again:", err=True)
        for command in dict.fromkeys(again):
            click.echo(f"  {command}", err=True)


@backfill.command("jobs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--limit", default=20, show_default=True, help="The newest this many.")
def backfill_jobs(fmt: str, limit: int) -> None:
    """The backfills on the webserver, newest first: id, status, partitions done/failed/total,
    start time, assets."""
    import json

    from marketdata_assets.backfills import DagsterApi, DagsterApiError

    try:
        infos = DagsterApi(Settings.from_env().dagster_url).backfills(limit)
    except DagsterApiError as exc:
        click.echo(f"marketdata backfill jobs: {exc}", err=True)
        sys.exit(1)
    if fmt == "json":
        click.echo(json.dumps([info.as_json() for info in infos], indent=2))
        return
    if not infos:
        click.echo("no backfills")
        return
    click.echo(f"{'id':<10} {'status':<18} {'done':>6} {'failed':>6} {'total':>6}  {'started (UTC)':<16}  assets")
    for info in infos:
        assets = ", ".join(info.assets[:3]) + (f" and {len(info.assets) - 3} more" if len(info.assets) > 3 else "")
        click.echo(f"{info.id:<10} {info.status:<18} {info.done:>6} {info.failed:>6} {info.total:>6}  "
                   f"{info.started:%Y-%m-%d %H:%M}  {assets}")


@backfill.command("cancel")
@click.argument("backfill_id")
def backfill_cancel(backfill_id: str) -> None:
    """Cancel backfill BACKFILL_ID: no more of its runs start, the ones running are stopped, and
    windows already written stay in the warehouse."""
    from marketdata_assets.backfills import FINISHED, DagsterApi, DagsterApiError

    api = DagsterApi(Settings.from_env().dagster_url)
    try:
        info = api.backfill(backfill_id)
        if info is None:
            _fail("backfill cancel", f"no backfill {backfill_id} on {api.url}")
        assert info is not None
        if info.status in FINISHED:
            click.echo(f"{backfill_id} has ended already: {info.status}")
            return
        api.cancel(backfill_id)
    except DagsterApiError as exc:
        click.echo(f"marketdata backfill cancel: {exc}", err=True)
        sys.exit(1)
    click.echo(f"canceling {backfill_id}: no more of its runs start and the running ones are stopped "
               f"({info.done} of {info.total} partitions done so far stay)")


def run_seed(env, from_raw: str | None, to_raw: str | None, max_cost: float | None = None, narrowed=None) -> bool:
    """`marketdata seed` with the settings of `env`, printed as it goes; True when every run succeeded."""
    from marketdata_assets import app

    try:
        plan = app.plan_seed(env, from_raw, to_raw, narrowed)
    except app.AppError as exc:
        _fail("seed", str(exc))
    click.echo(f"seeding {plan.start:%Y-%m-%d %H:%M} .. {plan.end:%Y-%m-%d %H:%M} UTC into {redact(plan.settings.warehouse_url)}")
    for note in plan.notes:
        click.echo(note)
    if not plan.chosen:
        done = any(note.endswith("partitions are materialized already") for note in plan.notes)
        click.echo("nothing to fetch" + (": every partition is materialized already" if done else ""))
        plan.instance.dispose()
        return True
    priced = _priced("seed", plan.settings, plan.chosen, max_cost, click.echo)
    ok = _run_here(plan.definitions, plan.chosen, plan.instance, {"marketdata/trigger": "marketdata seed", **priced})
    plan.instance.dispose()
    return ok


@main.command()
@click.option("--from", "from_raw", envvar="FROM_DATE", metavar="DATE", help="First day [a year ago].")
@click.option("--to", "to_raw", envvar="TO_DATE", metavar="DATE", help="Last day, included [now].")
@click.option("--max-cost", type=click.FloatRange(min=0), metavar="USD",
              help="Refuse a seed an upstream prices higher (Databento) [MARKETDATA_DATABENTO_MAX_COST, 5].")
@_filter_options("venue", "market", "symbols", "keys")
def seed(from_raw: str | None, to_raw: str | None, max_cost: float | None, filter_venue, filter_market, filter_symbols,
         filter_keys) -> None:
    """Bootstrap: every dataset of the catalog over the last year, in this process.

    SKIP_<DATASET>=1 leaves a dataset out (SKIP_KLINES, SKIP_FUNDING, …), SKIP_<GROUP>=1 a
    group of them (SKIP_SENTIMENT). A re-run fetches only the partitions not materialized yet."""
    import os

    narrowed = _filter_of("seed", filter_venue=filter_venue, filter_market=filter_market, filter_symbols=filter_symbols,
                          filter_keys=filter_keys)
    sys.exit(0 if run_seed(os.environ, from_raw, to_raw, max_cost, narrowed) else 1)


@main.command()
@click.option("--from", "from_raw", envvar="FROM_DATE", metavar="DATE", help="First day [a year ago].")
@click.option("--to", "to_raw", envvar="TO_DATE", metavar="DATE", help="Last day, included [now].")
def demo(from_raw: str | None, to_raw: str | None) -> None:
    """`marketdata seed` against a local emulator, then what is stored."""
    from marketdata_assets.backfills import BackfillError, seed_window
    from marketdata_assets.demo import run_demo

    try:
        seed_window(from_raw, to_raw, dt.datetime.now(dt.UTC))
    except BackfillError as exc:
        _fail("demo", str(exc))
    sys.exit(0 if run_demo(from_raw, to_raw, run_seed) else 1)


if __name__ == "__main__":
    main()
