"""marketdata: historical market-data backfill and incremental updates on Dagster."""
