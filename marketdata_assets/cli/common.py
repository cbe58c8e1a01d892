"""What the commands share: one-line failures, the instrument filter's options."""

from __future__ import annotations

import sys

import click


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


def _filter_of(**given):
    """The plans.Filter of the given --venue, --market, --symbols and --keys (None: none given)."""
    from marketdata_assets.plans import Filter

    return Filter.of(**{name.removeprefix("filter_"): values for name, values in given.items()})


def _fail(command: str, message: str) -> None:
    """One clear line on stderr and exit code 2: the command could not run as asked."""
    click.echo(f"marketdata {command}: {message}", err=True)
    sys.exit(2)


