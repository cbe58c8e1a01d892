"""Pure upstream clients: a window [start, end) in, a polars frame in the canonical schema out.
No Dagster here; rate limiting and retries live in `http`."""
