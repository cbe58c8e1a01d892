"""Daily operations through Dagster's test contexts: the incremental schedules against a real
instance and the emulator, and the repair sensor's bounded, backed-off re-runs. The real
daemon runs them in test_deployment.py."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

from marketdata_assets.definitions import build_definitions
from marketdata_assets.defs.operations.repair import (
    REPAIR_ATTEMPTS,
    REPAIR_RUNS_PER_TICK,
    RepairState,
    plan_repairs,
)
from marketdata_assets.defs.operations.schedules import IncrementalJob
from marketdata_assets.warehouse import open_warehouse
from marketdata_tests.conftest import with_settings, write_catalog
from marketdata_tests.test_assets import MATERIALIZED

BTC, ETH = dg.AssetKey(["binance_spot", "klines_1h", "BTCUSDT"]), dg.AssetKey(["binance_spot", "klines_1h", "ETHUSDT"])


def record_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, at: dt.datetime) -> None:
    """What a run at `at` leaves in the instance: a materialization of `partition`, then."""
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key=key, partition=partition)),
            job_name=RUNLESS_JOB_NAME,
        ),
        run_id=RUNLESS_RUN_ID,
        timestamp=at.timestamp(),
    )


def month_key(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-01")


def months_back(moment: dt.datetime, n: int) -> dt.datetime:
    year, month = divmod(moment.year * 12 + moment.month - 1 - n, 12)
    return moment.replace(year=year, month=month + 1, day=15)


@pytest.fixture
def two_symbols(settings, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": symbol, "timeframes": ["1h"], "start_date": "2024-01-01"}
        for symbol in ("BTCUSDT", "ETHUSDT")
    ])
    return with_settings(settings, catalog_path=catalog)


def evaluate(definitions: dg.Definitions, name: str, instance: dg.DagsterInstance, capsys):
    """The tick's data, and the lines it logged (the tick log in the UI)."""
    capsys.readouterr()
    data = definitions.resolve_schedule_def(name).evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime.now(dt.UTC))
    )
    return data, tick_log(capsys)


def repair_tick(definitions: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None, capsys):
    """One evaluation of the gap-repair sensor: its data (requests, cursor) and its tick log."""
    capsys.readouterr()
    data = definitions.resolve_sensor_def("gap_repair").evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions)
    )
    return data, tick_log(capsys)


def tick_log(capsys) -> list[str]:
    return [line.split(" - INFO - ", 1)[1] for line in capsys.readouterr().err.splitlines() if " - INFO - " in line]


def test_the_incremental_schedule_runs_the_newest_closed_day_and_catches_up_what_a_stopped_daemon_missed(
    two_symbols, capsys,
):
    definitions = build_definitions(two_symbols)
    (schedule,) = [s for s in definitions.schedules if s.name.startswith("klines_")]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("10 0 * * *", "UTC")
    sensor = definitions.resolve_sensor_def("gap_repair")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    now = dt.datetime.now(dt.UTC)
    newest_closed_day = now - dt.timedelta(days=1)
    with dg.instance_for_test() as instance:
        # ETHUSDT was kept by a daemon that stopped mid-month three months ago.
        stopped = months_back(now, 3)
        record_materialization(instance, ETH, month_key(stopped), stopped)

        data, log = evaluate(definitions, schedule.name, instance, capsys)
        requests = {tuple(r.asset_selection): r.tags for r in data.run_requests}
        # A fresh BTCUSDT: the month of the newest closed day, through the month in progress.
        assert requests[(BTC,)]["dagster/asset_partition_range_start"] == month_key(newest_closed_day)
        assert requests[(BTC,)]["dagster/asset_partition_range_end"] == month_key(now)
        # ETHUSDT: every month since the stop, the one it stopped in included.
        assert requests[(ETH,)]["dagster/asset_partition_range_start"] == month_key(stopped)
        assert requests[(ETH,)]["dagster/asset_partition_range_end"] == month_key(now)
        assert f"{ETH.to_user_string()}: last materialized {stopped:%Y-%m-%d %H:%M} UTC; runs " \
               f"{month_key(stopped)}...{month_key(now)} (4 partitions)" in log
        assert any(line.startswith(f"{BTC.to_user_string()}: never materialized; runs") for line in log)

        # Run what it asked for, as the daemon would: the rows land and the partitions record.
        job = definitions.resolve_job_def(schedule.job_name)
        for request in data.run_requests:
            result = job.execute_in_process(
                instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False,
            )
            assert result.success
        stored = open_warehouse(two_symbols.warehouse_url).query(
            "SELECT symbol, max(open_time) AS newest, min(open_time) AS oldest FROM market_data.klines GROUP BY 1 ORDER BY 1"
        ).rows(named=True)
        last_closed_hour = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
        assert [row["symbol"] for row in stored] == ["BTCUSDT", "ETHUSDT"]
        for row in stored:
            assert row["newest"] in (last_closed_hour, last_closed_hour + dt.timedelta(hours=1))  # the hour may close meanwhile
        assert stored[1]["oldest"] == stopped.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        eth = definitions.resolve_assets_def(ETH)
        assert set(instance.get_status_by_partition(
            ETH, [month_key(months_back(now, n)) for n in range(4)], eth.partitions_def
        ).values()) == {MATERIALIZED}

        # The next day's tick: the month in progress again, nothing before it.
        data, log = evaluate(definitions, schedule.name, instance, capsys)
        assert {(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                for r in data.run_requests} == {(month_key(now), month_key(now))}
        assert [tuple(r.asset_selection) for r in data.run_requests] == [(BTC, ETH)]

        # The month in progress run by hand while the daemon was down across the 1st: the month
        # before, last read before it closed, is read again too.
        last_month = months_back(now, 1)
        record_materialization(instance, BTC, month_key(last_month), last_month)
        record_materialization(instance, BTC, month_key(now), now)
        data, log = evaluate(definitions, schedule.name, instance, capsys)
        assert {tuple(r.asset_selection): (r.tags["dagster/asset_partition_range_start"],
                                           r.tags["dagster/asset_partition_range_end"]) for r in data.run_requests} \
            == {(BTC,): (month_key(last_month), month_key(now)), (ETH,): (month_key(now), month_key(now))}

        # While a run of the job is in flight, the tick waits for it instead of piling on.
        run = instance.create_run_for_job(job, run_id=None, tags={}, status=dg.DagsterRunStatus.STARTED)
        data, log = evaluate(definitions, schedule.name, instance, capsys)
        assert not data.run_requests
        assert f"klines_daily: run {run.run_id} is still STARTED; the next tick picks up what it leaves" in log


def test_a_bad_schedule_cron_setting_is_named(two_symbols):
    from marketdata_assets.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="MARKETDATA_SCHEDULE_CRON='every day' is not a cron expression"):
        Settings.from_env({"MARKETDATA_SCHEDULE_CRON": "every day"})
    assert build_definitions(with_settings(two_symbols, schedule_cron="*/5 * * * *")).schedules[0].cron_schedule == "*/5 * * * *"


def test_repairs_are_bounded_backed_off_and_capped_per_tick():
    partitions = dg.MonthlyPartitionsDefinition("2024-01-01", end_offset=1)
    job = IncrementalJob("klines", partitions, (BTC, ETH), "klines_daily")
    job_of = {BTC.to_user_string(): job, ETH.to_user_string(): job}
    btc = BTC.to_user_string()
    failed = {f"{btc}|2024-02-01": "its latest run failed", f"{btc}|2024-03-01": "its latest run failed",
              f"{btc}|2024-06-01": "its latest run failed"}
    state, now = RepairState(gaps={f"{ETH.to_user_string()}|2024-01-01": "gap_count found 2 unexplained gaps"}), 1e9

    # Found now: nothing is re-run for 15 minutes (a transient fault gets time to pass), as the README says.
    plan = plan_repairs(state, failed, set(), now, job_of, "t0")
    assert not plan.requests
    assert f"{btc}|2024-06-01: its latest run failed; re-run 1 of 3 waits until " \
           f"{dt.datetime.fromtimestamp(now + 15 * 60, dt.UTC):%Y-%m-%d %H:%M} UTC" in plan.decisions
    assert not plan_repairs(state, failed, set(), now + 14 * 60, job_of, "t0b").requests
    now += 15 * 60
    plan = plan_repairs(state, failed, set(), now, job_of, "t1")
    # adjacent failed months share one run; each window is attempt 1
    assert sorted((r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                  for r in plan.requests) == [("2024-01-01", "2024-01-01"), ("2024-02-01", "2024-03-01"),
                                              ("2024-06-01", "2024-06-01")]
    assert f"{btc} 2024-02-01...2024-03-01: its latest run failed; re-run 1 of {REPAIR_ATTEMPTS}" in plan.decisions

    # Still failing a minute later: nothing is asked until an hour after the re-run.
    state = RepairState.from_cursor(state.to_cursor())
    plan = plan_repairs(state, failed, set(), now + 60, job_of, "t2")
    assert not plan.requests
    assert f"{btc}|2024-06-01: its latest run failed; re-run 2 of 3 waits until " \
           f"{dt.datetime.fromtimestamp(now + 3600, dt.UTC):%Y-%m-%d %H:%M} UTC" in plan.decisions
    # Nor while a run of the asset is in progress.
    assert not plan_repairs(state, failed, {btc, ETH.to_user_string()}, now + 10**6, job_of, "t3").requests

    # After each wait (1 hour, then 4 hours), one more attempt, then it gives up and says what to do.
    clock = now
    for attempt, wait_s in ((2, 3600), (3, 4 * 3600)):
        assert not plan_repairs(state, failed, set(), clock + wait_s - 60, job_of, f"early{attempt}").requests
        clock += wait_s
        plan = plan_repairs(state, failed, set(), clock, job_of, f"t{attempt}")
        assert {r.tags["marketdata/repair_attempt"] for r in plan.requests} == {str(attempt)}
    plan = plan_repairs(state, failed, set(), clock + 10**6, job_of, "t9")
    assert not plan.requests
    assert f"{btc}|2024-06-01: its latest run failed after 3 re-runs; giving up. Fix the cause and run it again " \
           "(`marketdata backfill`), or record windows the venue has no data for (`marketdata gaps verify`)" in plan.decisions

    # Once the windows are whole (the runs succeed, the gap check passes), their entries go, saying so.
    state.gaps.clear()
    plan = plan_repairs(state, {}, set(), clock + 10**6, job_of, "t10")
    assert f"{btc}|2024-06-01: nothing left to repair (3 re-runs requested)" in plan.decisions
    assert not state.attempts

    # A venue that is down for many windows gets a trickle of runs, not a storm.
    many = {f"{btc}|2024-{m:02d}-01": "its latest run failed" for m in range(1, 13, 2)}
    crowd = RepairState()
    plan_repairs(crowd, many, set(), now, job_of, "t11")
    plan = plan_repairs(crowd, many, set(), now + 15 * 60, job_of, "t12")
    assert len(plan.requests) == REPAIR_RUNS_PER_TICK
    assert f"{btc} 2024-11-01...2024-11-01: due, but {REPAIR_RUNS_PER_TICK} repair runs were requested this tick " \
           "already; the next tick asks again" in plan.decisions
