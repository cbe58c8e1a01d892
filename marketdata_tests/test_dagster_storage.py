"""The instance dagster_instance.yaml names keeps Dagster's SQLite event log open instead of
reopening it for every event: same files, same answers, readable by Dagster's own storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from marketdata_assets.dagster_storage import SqliteEventLogStorage

REPO = Path(__file__).resolve().parents[1]
KEY = dg.AssetKey(["binance_spot", "klines_1m", "BTCUSDT"])

# A second process on the same home with Dagster's own storage (no instance_class): what it
# records, and what it reads of ours.
_DAGSTER_DEFAULT = """
import sys, dagster as dg
instance = dg.DagsterInstance.from_config(sys.argv[1])
key = dg.AssetKey(["binance_spot", "klines_1m", "BTCUSDT"])
assert type(instance.event_log_storage).__module__.startswith("dagster."), type(instance.event_log_storage)
print(",".join(sorted(instance.get_materialized_partitions(key))))
instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="2024-03-01"))
"""


def test_our_event_log_and_dagsters_read_and_write_the_same_home(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for home in (ours, theirs):
        home.mkdir()
    (ours / "dagster.yaml").write_text((REPO / "marketdata_assets" / "dagster_instance.yaml").read_text())
    (theirs / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(ours))
    try:
        assert isinstance(instance.event_log_storage, SqliteEventLogStorage)
        for month in ("2024-01-01", "2024-02-01"):
            instance.report_runless_asset_event(dg.AssetMaterialization(KEY, partition=month))
        # Dagster's own storage over the same files, in another process, while ours stays open
        for path in (ours / "history", ours / "schedules"):
            (theirs / path.name).symlink_to(path)
        seen = subprocess.run([sys.executable, "-c", _DAGSTER_DEFAULT, str(theirs)],
                              capture_output=True, text=True, timeout=120)
        assert seen.returncode == 0, seen.stderr[-2000:]
        assert seen.stdout.strip() == "2024-01-01,2024-02-01"
        # what the other process recorded, read through the engine ours kept open
        assert instance.get_materialized_partitions(KEY) == {"2024-01-01", "2024-02-01", "2024-03-01"}
        events = instance.fetch_materializations(KEY, limit=10).records
        assert [e.partition_key for e in events] == ["2024-03-01", "2024-02-01", "2024-01-01"]
    finally:
        instance.dispose()
