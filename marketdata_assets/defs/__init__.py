"""Dagster definitions: asset factories, resources, checks and automation. Knows Dagster, not wire formats."""
