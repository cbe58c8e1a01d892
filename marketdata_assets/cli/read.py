"""The commands that read what is stored: summary, export, report, gaps verify."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from marketdata_assets.wording import counted

from marketdata_assets.cli import main
from marketdata_assets.cli.common import _fail, _filter_of, _filter_options


@main.command()
@click.option("--symbol", help="Only this symbol.")
@_filter_options("venue", "market", "keys")
def summary(symbol: str | None, filter_venue, filter_market, filter_keys) -> None:
    """Rows and date range stored per series in the warehouse."""
    from marketdata_assets import app

    try:
        url, frame = app.summary(symbol, _filter_of(filter_venue=filter_venue, filter_market=filter_market,
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
        narrowed = _filter_of(filter_venue=filter_venue, filter_market=filter_market, filter_symbols=filter_symbols,
                              filter_keys=filter_keys)
        written = app.export(selection, from_raw, to_raw, fmt, path, partitioned, narrowed)
    except app.AppError as exc:
        _fail("export", str(exc))
    for each in written:
        click.echo(f"{each.key}: {counted(each.rows, 'row')} to {each.path}" if each.rows
                   else f"{each.key}: no rows stored in the window, no file written")


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
    narrowed = _filter_of(filter_venue=filter_venue, filter_market=filter_market, filter_keys=filter_keys)
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


