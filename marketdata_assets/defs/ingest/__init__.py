"""Ingest: the one asset body, its partitions and pools, and the resources it runs with."""
