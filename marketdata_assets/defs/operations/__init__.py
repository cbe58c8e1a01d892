"""Daily operations: the incremental schedules (schedules.py) and the gap-repair sensor
(repair.py), both on by default."""

from collections.abc import Sequence

import dagster as dg

from marketdata_assets.defs.operations.repair import gap_repair_sensor
from marketdata_assets.defs.operations.schedules import dataset_of, incremental_jobs, incremental_schedule

__all__ = ["automation", "dataset_of"]


def automation(assets: Sequence[dg.AssetsDefinition], cron: str | None = None):
    """(jobs, schedules, sensors) for `assets`: a daily incremental per job, and the repair sensor."""
    jobs = incremental_jobs(assets)
    return (
        [job.job for job in jobs],
        [incremental_schedule(job, cron) for job in jobs],
        [gap_repair_sensor(jobs, {spec.key.to_user_string(): str(spec.metadata["venue"]) for a in assets for spec in a.specs})]
        if jobs else [],
    )
