"""`marketdata`: the command line. `marketdata --help` lists the commands.

The group is here; its commands live by what they do: `read.py` (summary, export, report, gaps
verify), `launch.py` (backfill and its plans, jobs and cancel; seed and demo), `servers.py`
(emulator, metrics, stream); what they share is in `common.py`.
"""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """Historical market-data backfill and incremental updates on Dagster."""
    import os

    # Whatever DAGSTER_HOME's dagster.yaml says (a home made elsewhere may say nothing, which
    # Dagster reads as "on"), this command's runs upload no telemetry: Dagster uploads nothing
    # while the variable is set.
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


from marketdata_assets.cli import launch, read, servers  # noqa: E402,F401  (each registers its commands)
