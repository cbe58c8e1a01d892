"""Dagster definitions, knowing Dagster and not wire formats, by what they do: ingest (the one
asset body, partitions, resources), quality (checks) and operations (schedules and the repair
sensor). What differs per dataset is declared in datasets/."""
