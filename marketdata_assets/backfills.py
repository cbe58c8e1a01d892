"""Job control for `marketdata backfill` and `marketdata seed`: which partitions of which assets
a request means, launched as a backfill on the running webserver through Dagster's GraphQL API
(so it shows in the UI and the daemon runs it), or run in this process with a progress bar."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg
import httpx
from marketdata_assets.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    make_new_run_id,
)

from marketdata_assets.datasets import all_datasets, dataset as dataset_named, groups
from marketdata_assets.defs.operations import dataset_of
from marketdata_assets.defs.ingest.partitions import adjacent_runs, partitions_between
from marketdata_assets.run_health import process_tags


class BackfillError(Exception):
    """The request cannot be read (bad date, unknown dataset or symbol): one line, exit 2."""


class DagsterApiError(Exception):
    """The webserver could not be reached, or refused: one line, exit 1."""


def parse_moment(option: str, raw: str, now: dt.datetime, end_of_day: bool = False) -> dt.datetime:
    """`YYYY-MM-DD` (that day's 00:00 UTC, or the next day's with `end_of_day`: the day is
    included), `YYYY-MM-DD HH:MM:SS` (UTC) or `now`."""
    if raw.strip().lower() == "now":
        return now
    for layout in ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = dt.datetime.strptime(raw.strip(), layout).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        return moment + dt.timedelta(days=1) if end_of_day and layout == "%Y-%m-%d" else moment
    raise BackfillError(f"{option} {raw!r} is not a date: use YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' (UTC) or now")


def window(
    from_raw: str | None, to_raw: str | None, now: dt.datetime,
    names: tuple[str, str] = ("--from", "--to"), default_start: dt.datetime | None = None,
) -> tuple[dt.datetime | None, dt.datetime]:
    """[start, end) UTC of a from/to pair (`names` say which, in errors), end at most `now`;
    without a from, `default_start` (None: each asset's first partition)."""
    start = parse_moment(names[0], from_raw, now) if from_raw else default_start
    end = min(parse_moment(names[1], to_raw, now, end_of_day=True), now) if to_raw else now
    if start is not None and start >= now:
        raise BackfillError(f"{names[0]} {from_raw} is in the future")
    if start is not None and end <= start:
        raise BackfillError(f"{names[1]} {to_raw} is before {names[0]} {from_raw or f'{start:%Y-%m-%d}'}")
    return start, end


@dataclass(frozen=True)
class Selection:
    """Assets sharing a PartitionsDefinition, and the partitions [first, last] to run of them."""

    keys: tuple[dg.AssetKey, ...]
    partitions: dg.TimeWindowPartitionsDefinition
    first: str
    last: str

    @property
    def partition_keys(self) -> list[str]:
        return list(self.partitions.get_partition_keys_in_range(dg.PartitionKeyRange(self.first, self.last)))

    @property
    def size(self) -> int:
        return len(self.keys) * len(self.partition_keys)

    def describe(self) -> str:
        return f"{', '.join(k.to_user_string() for k in self.keys)} {self.first}...{self.last}"

    def again(self, how: str = "--local") -> str:
        """The command that runs this selection again: here (--local), or on the webserver (--wait)."""
        symbols = sorted({key.path[2] for key in self.keys if len(key.path) > 2})
        last_day = self.partitions.time_window_for_partition_key(self.last).end - dt.timedelta(days=1)
        return (f"marketdata backfill {self.keys[0].path[1]}" + (f" --symbols {','.join(symbols)}" if symbols else "")
                + f" --from {self.first} --to {min(last_day, dt.datetime.now(dt.UTC)):%Y-%m-%d} {how}")


def asset_names(spec: dg.AssetSpec) -> set[str]:
    """What `marketdata backfill` accepts for an asset: its dataset, the key's dataset part
    (klines_1m), and the dataset's group (sentiment)."""
    declared = dataset_named(dataset_of(spec))
    return {declared.name, spec.key.path[1], *([declared.group] if declared.group else [])}


def dataset_assets(definitions: dg.Definitions, dataset: str, symbols: Sequence[str]) -> list[dg.AssetSpec]:
    """The assets of `dataset` (a dataset, a key's dataset part such as klines_1h, or a group
    such as sentiment) for `symbols` (all when empty)."""
    specs = list(definitions.resolve_all_asset_specs())
    known = sorted(set().union(*(asset_names(s) for s in specs)))
    chosen = [s for s in specs if dataset in asset_names(s)]
    if not chosen:
        raise BackfillError(f"unknown dataset {dataset!r}: the catalog has {', '.join(known)}")
    if symbols:
        unknown = sorted(set(symbols) - {str(s.metadata.get("symbol")) for s in chosen})
        if unknown:
            raise BackfillError(f"no {dataset} asset for symbol {', '.join(unknown)} in the catalog")
        chosen = [s for s in chosen if s.metadata.get("symbol") in symbols]
    return chosen


def selections(
    specs: Iterable[dg.AssetSpec], wanted: Callable[[dg.AssetSpec], list[str]],
) -> list[Selection]:
    """One Selection per run of adjacent wanted partitions shared by assets of one PartitionsDefinition;
    the assets derived from others' rows after the rest (so a local seed runs their inputs first)."""
    groups: dict[tuple[bool, dg.TimeWindowPartitionsDefinition, str, str], list[dg.AssetKey]] = defaultdict(list)
    for spec in specs:
        partitions = spec.partitions_def
        assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
        for first, last in adjacent_runs(partitions, wanted(spec)):
            groups[(bool(spec.deps), partitions, first, last)].append(spec.key)
    return [
        Selection(tuple(sorted(keys, key=lambda k: k.path)), partitions, first, last)
        for (_, partitions, first, last), keys in sorted(
            groups.items(), key=lambda item: (item[0][0], item[0][1].start, item[0][2], item[1][0].path))
    ]


# --- the webserver's GraphQL API ------------------------------------------------------------------

_LAUNCH = """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
_BACKFILL_FIELDS = """id status title timestamp assetSelection { path }
  assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
    numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }"""
_LIST = """query ($limit: Int) { partitionBackfillsOrError(limit: $limit) {
  __typename ... on PartitionBackfills { results { %s } } ... on Error { message } } }""" % _BACKFILL_FIELDS
_ONE = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { %s } ... on Error { message } } }""" % _BACKFILL_FIELDS
_CANCEL = """mutation ($id: String!) { cancelPartitionBackfill(backfillId: $id) {
  __typename ... on CancelBackfillSuccess { backfillId } ... on Error { message } } }"""

FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
_RUNS = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { error { message } runs(limit: 1000) {
    runId status assetSelection { path } tags { key value } } } ... on Error { message } } }"""
_FAILURE = """query ($runId: ID!) { logsForRun(runId: $runId, limit: 10000) {
  __typename ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { error { message className cause { message className
      cause { message className cause { message className } } } } }
    ... on RunFailureEvent { message } } } ... on PythonError { message } } }"""
_PARTITIONS = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { assetPartitionStatuses { ... on TimePartitionStatuses { ranges { startKey endKey status } } } }
  ... on Error { message } } }"""
_RANGE_START, _RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass
class FailedRun:
    """A run of a backfill that failed and was not retried to success: what it ran, why it
    failed (the innermost error of its failed step), and the partitions it left failed."""

    run_id: str
    keys: list[dg.AssetKey]
    first: str
    last: str
    reason: str
    failed_partitions: dict[dg.AssetKey, list[tuple[str, str]]]  # (first, last) keys of each failed span


@dataclass
class BackfillInfo:
    """One backfill as `marketdata backfill jobs` lists it."""

    id: str
    status: str
    assets: list[str]
    done: int
    failed: int
    in_progress: int
    total: int
    started: dt.datetime
    title: str | None = None

    @classmethod
    def from_graphql(cls, raw: Mapping) -> BackfillInfo:
        counts = [c for c in (raw.get("assetBackfillData") or {}).get("assetBackfillStatuses", []) if c]
        return cls(
            id=raw["id"],
            status=raw["status"],
            assets=["/".join(a["path"]) for a in raw.get("assetSelection") or []],
            done=sum(c["numPartitionsMaterialized"] for c in counts),
            failed=sum(c["numPartitionsFailed"] for c in counts),
            in_progress=sum(c["numPartitionsInProgress"] for c in counts),
            total=sum(c["numPartitionsTargeted"] for c in counts),
            started=dt.datetime.fromtimestamp(raw["timestamp"], dt.UTC),
            title=raw.get("title"),
        )

    def as_json(self) -> dict:
        return {
            "id": self.id, "status": self.status, "assets": self.assets,
            "partitions": {"done": self.done, "failed": self.failed, "in_progress": self.in_progress,
                           "total": self.total},
            "started": self.started.isoformat(), "title": self.title,
        }


@dataclass
class DagsterApi:
    """The Dagster webserver at `url` (e.g. http://127.0.0.1:3000)."""

    url: str
    timeout_s: float = 60.0

    def _ask(self, query: str, variables: dict, field_name: str) -> dict:
        try:
            response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables},
                                  timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise DagsterApiError(
                f"no Dagster webserver at {self.url} ({exc.__class__.__name__}): start one (`make dev`), "
                "point MARKETDATA_DAGSTER_URL at yours, or run here with --local"
            ) from None
        if response.status_code != 200:
            raise DagsterApiError(f"{self.url}/graphql answered HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise DagsterApiError(f"{self.url}/graphql: {body['errors'][0].get('message')}")
        answer = body["data"][field_name]
        if "message" in answer and answer.get("__typename", "").endswith("Error"):
            raise DagsterApiError(f"{answer['__typename']}: {answer['message'].strip().splitlines()[0]}")
        return answer

    def launch(self, chosen: Sequence[Selection], title: str, tags: Mapping[str, str] | None = None) -> str:
        """Launch `chosen` as one backfill; `tags` are added to its runs' (the trigger's is)."""
        params = {
            "partitionsByAssets": [
                {"assetKey": {"path": key.path}, "partitions": {"range": {"start": s.first, "end": s.last}}}
                for s in chosen for key in s.keys
            ],
            "title": title,
            "tags": [{"key": key, "value": value}
                     for key, value in {"marketdata/trigger": "marketdata backfill", **(tags or {})}.items()],
        }
        return self._ask(_LAUNCH, {"params": params}, "launchPartitionBackfill")["backfillId"]

    def backfills(self, limit: int = 20) -> list[BackfillInfo]:
        answer = self._ask(_LIST, {"limit": limit}, "partitionBackfillsOrError")
        return [BackfillInfo.from_graphql(raw) for raw in answer["results"]]

    def backfill(self, backfill_id: str) -> BackfillInfo | None:
        try:
            return BackfillInfo.from_graphql(self._ask(_ONE, {"id": backfill_id}, "partitionBackfillOrError"))
        except DagsterApiError as exc:
            if str(exc).startswith("BackfillNotFoundError"):
                return None
            raise

    def cancel(self, backfill_id: str) -> None:
        self._ask(_CANCEL, {"id": backfill_id}, "cancelPartitionBackfill")

    def failed_runs(self, backfill_id: str) -> tuple[list[FailedRun], str | None]:
        """The backfill's runs that ended failed (the newest try of each range), and the
        backfill's own error, if the daemon recorded one."""
        answer = self._ask(_RUNS, {"id": backfill_id}, "partitionBackfillOrError")
        newest: dict[tuple, dict] = {}
        for run in answer["runs"]:  # newest first; a retried run's tries share its range
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            keys = tuple("/".join(a["path"]) for a in run["assetSelection"] or [])
            newest.setdefault((keys, tags.get(_RANGE_START), tags.get(_RANGE_END), tags.get("dagster/partition")),
                              run | {"tags": tags})
        failed = []
        for (keys, first, last, single), run in newest.items():
            if run["status"] != "FAILURE":
                continue
            first, last = first or single or "", last or single or ""
            asset_keys = [dg.AssetKey.from_user_string(key) for key in keys]
            failed.append(FailedRun(
                run["runId"], asset_keys, first, last, self._reason(run["runId"]),
                {key: self._failed_partitions(key, first, last) for key in asset_keys},
            ))
        error = (answer.get("error") or {}).get("message")
        return failed, error.strip().splitlines()[0] if error else None

    def _reason(self, run_id: str) -> str:
        answer = self._ask(_FAILURE, {"runId": run_id}, "logsForRun")
        reasons = []
        for event in answer.get("events", []):
            if event["__typename"] == "ExecutionStepFailureEvent" and event.get("error"):
                error = event["error"]
                while error.get("cause"):
                    error = error["cause"]
                reasons.append(_as_cause(error["message"], error.get("className")))
        if not reasons:
            reasons = [event["message"] for event in answer.get("events", []) if event["__typename"] == "RunFailureEvent"]
        return "\n".join(reasons) or "no reason recorded"

    def _failed_partitions(self, key: dg.AssetKey, first: str, last: str) -> list[tuple[str, str]]:
        """The partitions of `key` in [first, last] whose status is failed."""
        answer = self._ask(_PARTITIONS, {"key": {"path": key.path}}, "assetNodeOrError")
        ranges = (answer.get("assetPartitionStatuses") or {}).get("ranges") or []
        return [(max(span["startKey"], first), min(span["endKey"], last)) for span in ranges
                if span["status"] == "FAILED" and span["startKey"] <= last and span["endKey"] >= first]

    def wait(self, backfill_id: str, report: Callable[[BackfillInfo], None], poll_s: float = 2.0) -> BackfillInfo:
        last = None
        while True:
            info = self.backfill(backfill_id)
            assert info is not None
            state = (info.status, info.done, info.failed, info.in_progress)
            if state != last:
                report(info)
                last = state
            if info.status in FINISHED:
                return info
            time.sleep(poll_s)


# --- runs in this process ---------------------------------------------------------------------------


@dataclass
class LocalOutcome:
    selection: Selection
    run_id: str
    success: bool
    seconds: float
    errors: list[str] = field(default_factory=list)


# The run's events are in the instance (and the UI); the terminal gets warnings, and the outcomes.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_here(
    definitions: dg.Definitions, chosen: Sequence[Selection], instance: dg.DagsterInstance,
    progress: Callable[[int], None], tags: Mapping[str, str] | None = None,
) -> list[LocalOutcome]:
    """One range run per Selection, in this process, recorded in `instance` as any run is.
    `progress(n)` hears of each n partitions materialized as they are recorded."""
    outcomes = []
    for selection in chosen:
        job = definitions.resolve_implicit_job_def_def_for_assets(list(selection.keys))
        assert job is not None
        run_id = make_new_run_id()
        finished = threading.Event()
        watcher = threading.Thread(target=_watch, args=(instance, run_id, progress, finished), daemon=True)
        watcher.start()
        began = time.perf_counter()
        try:
            result = job.execute_in_process(
                instance=instance,
                asset_selection=list(selection.keys),
                run_id=run_id,
                run_config=QUIET,
                raise_on_error=False,
                tags={ASSET_PARTITION_RANGE_START_TAG: selection.first, ASSET_PARTITION_RANGE_END_TAG: selection.last,
                      **process_tags(run_id), **(tags or {})},
            )
        finally:
            finished.set()
            watcher.join()
        errors = [
            failure_cause(event.step_failure_data.error)
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_failure_data.error
        ]
        outcomes.append(LocalOutcome(selection, run_id, result.success, time.perf_counter() - began, errors))
    return outcomes


def failure_cause(error) -> str:
    """What a step failure says once Dagster's wrapping is peeled off: the innermost error, as
    `ClassName: message` (Dagster's own says only "Error occurred while executing op …:")."""
    while error.cause is not None:
        error = error.cause
    return _as_cause(error.message, error.cls_name)


def _as_cause(message: str, class_name: str | None) -> str:
    """`ClassName: text` from an error message that starts with the class's qualified name."""
    message = message.strip()
    qualified, _, text = message.partition(": ")
    if class_name and qualified.endswith(class_name) and text:
        return f"{class_name}: {text}"
    return message


def _watch(instance: dg.DagsterInstance, run_id: str, progress: Callable[[int], None], finished: threading.Event):
    """Report materializations of `run_id` as they are recorded, until `finished`, then the rest.

    Each poll reads only the records after the last one seen: a run of 1,500 assets records
    45,000 materializations, and reading them all twice a second made every asset of a long run
    slower than the one before."""
    cursor = None
    while True:
        done = finished.wait(0.5)
        while True:
            found = instance.get_records_for_run(run_id, cursor=cursor, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                 limit=10_000)
            if found.records:
                progress(len(found.records))
                cursor = found.cursor
            if not found.has_more:
                break
        if done:
            return


# --- seed ---------------------------------------------------------------------------------------------

SEED_DAYS = 365


def seed_window(from_raw: str | None, to_raw: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a seed: FROM_DATE (a year ago by default) to TO_DATE's end (now by default)."""
    start, end = window(from_raw, to_raw, now, ("FROM_DATE", "TO_DATE"), now - dt.timedelta(days=SEED_DAYS))
    assert start is not None
    return start, end


def skipped_datasets(env: Mapping[str, str]) -> list[str]:
    """Datasets and groups a SKIP_<NAME>=1 (true, yes) leaves out, e.g. SKIP_FUNDING=1, SKIP_SENTIMENT=1."""
    names = [d.name for d in all_datasets()] + list(groups())
    return [name for name in names if env.get(f"SKIP_{name.upper()}", "").strip().lower() in ("1", "true", "yes")]


def plan_seed(
    definitions: dg.Definitions, instance: dg.DagsterInstance, start: dt.datetime, end: dt.datetime,
    now: dt.datetime, skip: Sequence[str], unmet: Mapping[str, str] | None = None,
    keep: Callable[[list[dg.AssetSpec]], list[dg.AssetSpec]] | None = None,
) -> tuple[list[Selection], list[str]]:
    """The partitions overlapping [start, end) of every dataset not skipped (nor `unmet`: dataset ->
    the requirement it lacks) that are not yet materialized, as Selections, and what the plan left
    out and why, one line each."""
    unmet = unmet or {}
    notes = [f"skipping {name} (SKIP_{name.upper()}=1)" for name in skip]
    skipped = set(skip) | {name for group, names in groups().items() if group in skip for name in names}
    every = list(definitions.resolve_all_asset_specs())
    kept = {dataset_of(s) for s in every}
    notes += [f"skipping {name}: {why}" for name, why in unmet.items() if name not in skipped and name in kept]
    skipped |= set(unmet)
    specs = [s for s in every if dataset_of(s) not in skipped]
    if keep is not None:  # --venue, --market, --symbols, --keys
        specs = keep(specs)
    wanted: dict[dg.AssetKey, list[str]] = {}
    already = total = 0
    for spec in specs:
        partitions = spec.partitions_def
        assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
        keys = partitions_between(partitions, start, end, now)
        kept = dataset_named(dataset_of(spec)).retention(str(spec.metadata.get("venue")))
        if kept is not None:
            reachable = [k for k in keys if partitions.time_window_for_partition_key(k).start >= now - kept]
            if len(reachable) < len(keys):
                kept_text = (f"keeps about {kept.days} days" if kept >= dt.timedelta(days=1)
                             else "serves only what stands now")
                notes.append(f"{spec.key.to_user_string()}: {spec.metadata.get('venue')} {kept_text}, "
                             f"so {len(reachable)} of its {len(keys)} partitions are asked for")
            keys = reachable
        materialized = instance.get_materialized_partitions(spec.key)
        wanted[spec.key] = [k for k in keys if k not in materialized]
        already += len(keys) - len(wanted[spec.key])
        total += len(keys)
    if already == total and total:
        notes.append(f"all {total} partitions are materialized already")
    elif already:
        notes.append(f"{already} of {total} partitions are materialized already: fetching only the other "
                     f"{total - already}")
    return selections(specs, lambda spec: wanted[spec.key]), notes
