"""The commands that launch runs: backfill (and its plans, jobs and cancel), seed and demo."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from marketdata_assets.settings import Settings, redact
from marketdata_assets.wording import counted

from marketdata_assets.cli import main
from marketdata_assets.cli.common import _fail, _filter_of, _filter_options


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

    narrowed = _filter_of(filter_venue=filter_venue, filter_market=filter_market, filter_keys=filter_keys)
    settings, definitions, chosen = _selection("backfill", dataset, symbols, from_raw, to_raw, narrowed)
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

    narrowed = _filter_of(filter_venue=filter_venue, filter_market=filter_market, filter_symbols=filter_symbols,
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


