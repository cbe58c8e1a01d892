"""The Dagster code location: `dagster ... -m marketdata_assets.definitions`, from the environment."""

from marketdata_assets.defs.location import build_definitions

__all__ = ["build_definitions", "defs"]

defs = build_definitions()
