"""IP bans outlive the run that earned them.

A ban is of our IP, so it binds every process: runs the daemon launches later, other runs going
on now, and the repair sensor, which would otherwise re-run the failed windows straight into the
ban (and lengthen it). A run hands the bans its process earned to the Dagster instance (the
key-value table Dagster keeps its daemons' cursors in); every run adopts those still running
before it sends anything, and the repair sensor waits for their end.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from marketdata_assets.sources.http import Bans

BANS_KEY = "marketdata/ip_bans"


def _running(instance: dg.DagsterInstance, now: dt.datetime) -> dict[str, dict[str, str]]:
    raw = instance.run_storage.get_cursor_values({BANS_KEY}).get(BANS_KEY)
    stored = json.loads(raw) if raw else {}
    return {host: ban for host, ban in stored.items() if dt.datetime.fromisoformat(ban["until"]) > now}


def adopt(instance: dg.DagsterInstance) -> None:
    """Bans any process stored that still run: no request of this process goes to those hosts."""
    for host, ban in _running(instance, dt.datetime.now(dt.UTC)).items():
        Bans.note(host, dt.datetime.fromisoformat(ban["until"]), f"{ban['detail']}; earned by run {ban['run'][:8]}")


def record(instance: dg.DagsterInstance, venue: str, run_id: str) -> None:
    """Store the bans this process earned that the instance does not know yet (or knows shorter)."""
    earned = Bans.all()
    if not earned:
        return
    stored = _running(instance, dt.datetime.now(dt.UTC))
    for host, (until, detail) in earned.items():
        known = stored.get(host)
        if known is None or dt.datetime.fromisoformat(known["until"]) < until:
            stored[host] = {"until": until.isoformat(), "detail": detail.split("; earned")[0], "venue": venue,
                            "run": run_id}
    instance.run_storage.set_cursor_values({BANS_KEY: json.dumps(stored, sort_keys=True)})


def banned_venues(instance: dg.DagsterInstance, now: dt.datetime) -> dict[str, str]:
    """venue -> why nothing may be sent to it now ("banned our IP until …")."""
    found: dict[str, tuple[dt.datetime, str]] = {}
    for host, ban in _running(instance, now).items():
        until = dt.datetime.fromisoformat(ban["until"])
        if ban["venue"] not in found or found[ban["venue"]][0] < until:
            found[ban["venue"]] = (until, f"{ban['venue']} ({host}) banned our IP until {until:%Y-%m-%d %H:%M:%S} UTC")
    return {venue: why for venue, (_, why) in found.items()}
