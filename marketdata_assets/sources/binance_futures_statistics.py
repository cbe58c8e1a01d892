"""Binance USD-M futures statistics, every 5 minutes: open interest (`OPEN_INTEREST`) and
the long/short ratios (`LONG_SHORT_RATIOS`).

Two sources, and neither holds everything:
- REST `/futures/data/{openInterestHist, globalLongShortAccountRatio, topLongShortAccountRatio,
  topLongShortPositionRatio, takerlongshortRatio}` keeps **only the last 30 days** (an older
  startTime is refused with -1130) and carries each ratio's long and short parts;
- the archive's daily `futures/um/daily/metrics/SYM/SYM-metrics-YYYY-MM-DD.zip` files hold the
  days before, from about December 2021, with the ratios alone (their parts are stored NULL).

`BinanceStatisticsSource` reads whole UTC days from REST from the first midnight inside REST's 30
days, and the days before from the archive, so the seam falls on a midnight and moves only once
a day. A day that neither holds is a failure naming the file it lacks; it never reads as empty.
Windows are half-open, [start, end), UTC; wire times are ms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.sources.binance import BINANCE_FUTURES
from marketdata_assets.sources.binance_archive import (
    ARCHIVE_SOURCE,
    BinanceArchiveClient,
    MetricsFile,
    read_zipped_csv,
)
from marketdata_assets.sources.errors import (
    MalformedResponse,
    NoSourceHolds,
    PieceFailure,
    UpstreamBanned,
    UpstreamError,
    UpstreamRejected,
    read_columns,
    same_symbol,
)
from marketdata_assets.sources.http import Clock, RateLimit, Sleep, UpstreamClient
from marketdata_assets.sources.protocol import RestAndArchive, SourceOutcome

# Open interest of perpetual futures: one snapshot every 5 minutes.
OPEN_INTEREST = TableSpec(
    name="open_interest",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "symbol": pl.String,
            "snapshot_time": UTC_TIME,  # on the 5-minute grid
            "open_interest": pl.Float64,  # contracts, in the base asset
            "open_interest_value": pl.Float64,  # in the quote asset
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "symbol", "snapshot_time"),
)

# Positioning of perpetual futures traders, one row per 5-minute snapshot and metric:
#   global_account       longs / shorts among all accounts     long/short_value: account shares
#   top_trader_account   the same among the top traders         account shares
#   top_trader_position  top traders' long / short positions    position shares
#   taker_volume         taker buy / sell volume                 buy and sell volume (base asset)
LONG_SHORT_METRICS = ("global_account", "top_trader_account", "top_trader_position", "taker_volume")
LONG_SHORT_RATIOS = TableSpec(
    name="long_short_ratios",
    schema=pl.Schema(
        {
            "venue": pl.String,
            "symbol": pl.String,
            "metric": pl.String,  # one of LONG_SHORT_METRICS
            "snapshot_time": UTC_TIME,  # on the 5-minute grid
            "ratio": pl.Float64,  # long / short (taker_volume: buy / sell)
            "long_value": pl.Float64,  # null where the source has none (Binance's archive)
            "short_value": pl.Float64,
            "source": pl.String,  # 'rest' | 'archive'
            "ingested_at": UTC_TIME,
        }
    ),
    primary_key=("venue", "symbol", "metric", "snapshot_time"),
    kept_when_null=("long_value", "short_value"),  # REST's detail outlives a re-read from the archive
)


SOURCE = "binance futures statistics"
PERIOD = "5m"
PERIOD_MS = 300_000
PAGE_LIMIT = 500  # the endpoints' maximum
REST_RETENTION = dt.timedelta(days=30)
# 1,000 requests per 5 minutes per IP, apart from the request-weight budget (Binance's docs).
REQUESTS_PER_WINDOW, REQUEST_WINDOW_S = 1000, 300

Dataset = Literal["open_interest", "long_short"]
STATISTIC_PATHS = {
    "open_interest": "/futures/data/openInterestHist",
    "global_account": "/futures/data/globalLongShortAccountRatio",
    "top_trader_account": "/futures/data/topLongShortAccountRatio",
    "top_trader_position": "/futures/data/topLongShortPositionRatio",
    "taker_volume": "/futures/data/takerlongshortRatio",
}
DATASET_STATISTICS: dict[str, tuple[str, ...]] = {"open_interest": ("open_interest",), "long_short": LONG_SHORT_METRICS}
TABLES = {"open_interest": OPEN_INTEREST, "long_short": LONG_SHORT_RATIOS}

METRICS_HEADER = (
    "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
)
# The archive's ratio columns, by metric (the common reading of Binance's column names).
_ARCHIVE_RATIO_COLUMNS = {
    "global_account": "count_long_short_ratio",
    "top_trader_account": "count_toptrader_long_short_ratio",
    "top_trader_position": "sum_toptrader_long_short_ratio",
    "taker_volume": "sum_taker_long_short_vol_ratio",
}
_DAY = dt.timedelta(days=1)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc(millis: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


def _timestamp(value: Any) -> int:
    """A wire timestamp in ms: a number in real answers, a string in Binance's docs."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"timestamp {value!r}")
    return int(value)


def _stamp(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col("snapshot_time").cast(pl.Datetime("ms", "UTC")),
        source=pl.lit(source),
        ingested_at=pl.lit(dt.datetime.now(dt.UTC)),
    )


def _ascending(times: list[int], where: str) -> None:
    if any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise MalformedResponse(where, "rows are not in strictly ascending timestamp order")


def parse_open_interest_rows(rows: Any, symbol: str) -> pl.DataFrame:
    """`[{"symbol","sumOpenInterest","sumOpenInterestValue","timestamp"}, …]` to OPEN_INTEREST;
    MalformedResponse naming the first bad row otherwise."""
    where = f"{SOURCE} {symbol} open interest"

    def read(row: Any) -> tuple:
        same_symbol(row, "symbol", symbol)
        return _timestamp(row["timestamp"]), float(row["sumOpenInterest"]), float(row["sumOpenInterestValue"])

    times, amounts, values = read_columns(rows, where, "open-interest", read, 3)
    _ascending(times, where)
    frame = pl.DataFrame(
        {"venue": "binance", "symbol": symbol, "snapshot_time": times, "open_interest": amounts, "open_interest_value": values},
        schema_overrides={"snapshot_time": pl.Int64, "open_interest": pl.Float64, "open_interest_value": pl.Float64},
    ) if times else pl.DataFrame(schema={"venue": pl.String, "symbol": pl.String, "snapshot_time": pl.Int64,
                                          "open_interest": pl.Float64, "open_interest_value": pl.Float64})
    return _stamp(frame, "rest").cast(OPEN_INTEREST.schema).select(OPEN_INTEREST.columns)  # type: ignore[arg-type]


def parse_ratio_rows(rows: Any, symbol: str, metric: str) -> pl.DataFrame:
    """A long/short endpoint's rows to LONG_SHORT_RATIOS: `{"longShortRatio","longAccount",
    "shortAccount","timestamp"}`, or for taker_volume `{"buySellRatio","buyVol","sellVol","timestamp"}`."""
    where = f"{SOURCE} {symbol} {metric}"
    fields = ("buySellRatio", "buyVol", "sellVol") if metric == "taker_volume" else ("longShortRatio", "longAccount", "shortAccount")

    def read(row: Any) -> tuple:
        if "symbol" in row:  # the taker rows carry none
            same_symbol(row, "symbol", symbol)
        return (_timestamp(row["timestamp"]), *(float(row[name]) for name in fields))

    times, ratios, longs, shorts = read_columns(rows, where, metric, read, 4)
    _ascending(times, where)
    frame = pl.DataFrame(
        {"snapshot_time": pl.Series(times, dtype=pl.Int64), "ratio": pl.Series(ratios, dtype=pl.Float64),
         "long_value": pl.Series(longs, dtype=pl.Float64), "short_value": pl.Series(shorts, dtype=pl.Float64)}
    ).with_columns(venue=pl.lit("binance"), symbol=pl.lit(symbol), metric=pl.lit(metric))
    return _stamp(frame, "rest").select(LONG_SHORT_RATIOS.columns).cast(LONG_SHORT_RATIOS.schema)  # type: ignore[arg-type]


_ARCHIVE_SCHEMA = {
    "create_time": pl.String,
    "symbol": pl.String,
    "sum_open_interest": pl.Float64,
    "sum_open_interest_value": pl.Float64,
    **{column: pl.Float64 for column in _ARCHIVE_RATIO_COLUMNS.values()},
}


def parse_metrics_archive(csv: bytes, file: MetricsFile) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A day's metrics CSV (header `METRICS_HEADER`, `create_time` as `YYYY-MM-DD HH:MM:SS` UTC) to
    (OPEN_INTEREST, LONG_SHORT_RATIOS) frames with source 'archive'. Empty cells are left out, not
    stored as zero; a row outside the file's day, off the 5-minute grid or out of order is a lie."""
    header = csv.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if header != METRICS_HEADER:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: expected the header {METRICS_HEADER!r}, got {header[:200]!r}")
    try:
        raw = pl.read_csv(io.BytesIO(csv), schema=_ARCHIVE_SCHEMA, truncate_ragged_lines=False)
        times = raw["create_time"].str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC", strict=True)
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: unreadable metrics CSV: {str(exc)[:300]}") from None
    start, end = file.window
    millis = times.dt.epoch("ms")
    bad = times.is_null() | (times < start) | (times >= end) | (millis % PERIOD_MS != 0) | (raw["symbol"] != file.symbol)
    if bad.any():
        index = int(bad.arg_true()[0])
        raise MalformedResponse(
            ARCHIVE_SOURCE, f"{file.path}: row {index} ({raw['create_time'][index]}, {raw['symbol'][index]}) is not a "
            f"5-minute {file.symbol} snapshot of {file.day}",
        )
    _ascending(millis.to_list(), f"{ARCHIVE_SOURCE} {file.path}")
    raw = raw.with_columns(snapshot_time=times)
    open_interest = _stamp(
        raw.filter(pl.col("sum_open_interest").is_not_null() & pl.col("sum_open_interest_value").is_not_null()).select(
            pl.lit("binance").alias("venue"), pl.lit(file.symbol).alias("symbol"), "snapshot_time",
            pl.col("sum_open_interest").alias("open_interest"), pl.col("sum_open_interest_value").alias("open_interest_value"),
        ),
        "archive",
    ).select(OPEN_INTEREST.columns).cast(OPEN_INTEREST.schema)  # type: ignore[arg-type]
    ratios = pl.concat([
        raw.filter(pl.col(column).is_not_null()).select(
            pl.lit("binance").alias("venue"), pl.lit(file.symbol).alias("symbol"), pl.lit(metric).alias("metric"),
            "snapshot_time", pl.col(column).alias("ratio"),
            pl.lit(None, pl.Float64).alias("long_value"), pl.lit(None, pl.Float64).alias("short_value"),
        )
        for metric, column in _ARCHIVE_RATIO_COLUMNS.items()
    ])
    ratios = _stamp(ratios, "archive").select(LONG_SHORT_RATIOS.columns).cast(LONG_SHORT_RATIOS.schema)  # type: ignore[arg-type]
    return open_interest, ratios


# The statistics endpoints on the USD-M host, counted in requests: their answers report no weight.
STATISTICS_HOST = dataclasses.replace(BINANCE_FUTURES, used_weight_header=None)


class BinanceStatisticsClient(UpstreamClient):
    """The futures statistics over REST, 500 rows (about 41 hours) a request, several at once,
    paced to 1,000 requests per 5 minutes."""

    def __init__(
        self, base_url: str, *, max_concurrency: int = 5, max_attempts: int = 5, backoff_base_s: float = 0.5,
        clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
    ):
        self.rejected = []
        # Its own budget, counted in requests; these answers carry no weight header.
        self._http = STATISTICS_HOST.http(
            SOURCE, base_url, RateLimit(REQUESTS_PER_WINDOW, REQUEST_WINDOW_S, "/futures/data"),
            max_concurrency=max_concurrency, max_attempts=max_attempts, backoff_base_s=backoff_base_s,
            clock=clock, sleep=sleep,
        )

    async def fetch(self, statistic: str, symbol: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
        """Every 5-minute row of `statistic` (a key of STATISTIC_PATHS) in [start, end), ascending."""
        span = PAGE_LIMIT * PERIOD_MS
        # Each request asks for at most `limit` rows, so how the endpoint picks among more does not matter.
        pages = [(lo, min(lo + span, _ms(end))) for lo in range(_ms(start), _ms(end), span)]
        frames = await asyncio.gather(*(self._page(statistic, symbol, lo, hi) for lo, hi in pages))
        table = OPEN_INTEREST if statistic == "open_interest" else LONG_SHORT_RATIOS
        return pl.concat(frames) if frames else table.empty_frame()

    async def _page(self, statistic: str, symbol: str, lo: int, hi: int) -> pl.DataFrame:
        params = {"symbol": symbol, "period": PERIOD, "startTime": lo, "endTime": hi - 1, "limit": PAGE_LIMIT}
        rows, _ = await self._http.get_json(STATISTIC_PATHS[statistic], params, 1)
        if statistic == "open_interest":
            frame = parse_open_interest_rows(rows, symbol)
        else:
            frame = parse_ratio_rows(rows, symbol, statistic)
        if frame.height:
            first, last = (_ms(frame["snapshot_time"][i]) for i in (0, -1))
            if first < lo or last >= hi:
                raise MalformedResponse(f"{SOURCE} {symbol} {statistic}", f"asked for [{lo}, {hi}) ms, got {first} to {last}")
        return frame


@dataclass
class StatisticsFetch:
    """What a window gave: its rows, the days no source could give, and where rows came from."""

    frame: pl.DataFrame
    failures: list[PieceFailure] = field(default_factory=list)
    rows_by_source: dict[str, int] = field(default_factory=lambda: {"archive": 0, "rest": 0})
    archive_files: int = 0
    before_listing: list[dt.date] = field(default_factory=list)  # leading days with no file, in the listing window


def rest_from(now: dt.datetime) -> dt.datetime:
    """The first UTC midnight inside REST's 30 days (with a minute to spare for clock offsets)."""
    edge = now - REST_RETENTION + dt.timedelta(minutes=1)
    midnight = edge.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == edge else midnight + _DAY


class BinanceStatisticsSource(RestAndArchive):
    """Open interest or long/short ratios for a window: REST from `rest_from(now)`, the archive's
    daily files before it. Days that cannot be read are `failures` of the fetch, the rest is read."""

    def __init__(
        self, rest: BinanceStatisticsClient, archive: BinanceArchiveClient, clock: Clock = time.time, *,
        dataset: Dataset | None = None, listing_window_end: dt.datetime | None = None,
    ):
        self.rest = rest
        self.archive = archive
        self._clock = clock
        # What `read` (the source protocol) reads: one dataset, and the end of its listing window.
        self.dataset = dataset
        self.listing_window_end = listing_window_end
        self._fetched: list[StatisticsFetch] = []

    async def read(self, series: Any, start: dt.datetime, end: dt.datetime) -> AsyncIterator[pl.DataFrame]:
        assert self.dataset is not None, "read() needs the source built for one dataset"
        fetched = await self.fetch(self.dataset, series.symbol, start, end, self.listing_window_end)
        self._fetched.append(fetched)
        yield fetched.frame

    def outcome(self) -> SourceOutcome:
        outcome = SourceOutcome(requests=self.rest.stats.requests, rows_by_source={"archive": 0, "rest": 0})
        for fetched in self._fetched:
            outcome.failures += fetched.failures
            for origin, rows in fetched.rows_by_source.items():
                outcome.rows_by_source[origin] += rows
        outcome.metadata = {
            "rows_from_archive": outcome.rows_by_source["archive"],
            "archive_files": sum(f.archive_files for f in self._fetched),
            "rows_from_rest": outcome.rows_by_source["rest"],
            "days_before_listing": sum(len(f.before_listing) for f in self._fetched),
        }
        return outcome

    async def fetch(
        self, dataset: Dataset, symbol: str, start: dt.datetime, end: dt.datetime, listing_window_end: dt.datetime | None = None
    ) -> StatisticsFetch:
        """The rows of `dataset` in [start, end) (UTC midnights). Days before `listing_window_end`
        that precede the first day the archive holds are before the listing: skipped, not failed."""
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        seam = rest_from(now)
        result = StatisticsFetch(TABLES[dataset].empty_frame())
        parts = []
        rest_start, rest_end = max(start, seam), min(end, now)
        if rest_start < rest_end:
            for statistic in DATASET_STATISTICS[dataset]:
                frame = await self.rest.fetch(statistic, symbol, rest_start, rest_end)
                parts.append(frame)
                result.rows_by_source["rest"] += frame.height
        days = [start + i * _DAY for i in range((min(end, seam) - start) // _DAY)] if start < seam else []
        outcomes = await asyncio.gather(*(self._archive_day(dataset, symbol, day.date(), seam) for day in days))
        leading: list[PieceFailure] = []  # days with no file before the first day with one
        for outcome in outcomes:
            if isinstance(outcome, pl.DataFrame):
                result.archive_files += 1
                result.rows_by_source["archive"] += outcome.height
                parts.append(outcome)
            elif result.archive_files == 0 and isinstance(outcome.error, NoSourceHolds):
                leading.append(outcome)
            else:
                result.failures.append(outcome)
        listed_later = result.archive_files > 0 or result.rows_by_source["rest"] > 0
        for failure in leading:
            if listed_later and listing_window_end is not None and failure.end <= listing_window_end:
                result.before_listing.append(failure.start.date())
            else:
                result.failures.append(failure)
        result.failures = _merged(sorted(result.failures, key=lambda f: f.start), symbol, seam)
        if parts:
            result.frame = pl.concat(parts)
        return result

    def _missing(self, symbol: str, day: dt.date, seam: dt.datetime) -> NoSourceHolds:
        return NoSourceHolds(
            SOURCE, f"no source holds {day}: the archive has no {MetricsFile(symbol, day).name} and REST "
            f"keeps only the last 30 days (from {seam:%Y-%m-%d %H:%M} UTC)",
        )

    async def _archive_day(self, dataset: Dataset, symbol: str, day: dt.date, seam: dt.datetime) -> pl.DataFrame | PieceFailure:
        file = MetricsFile(symbol, day)
        window = file.window
        try:
            content = await self.archive.verified(file)
            if content is None:
                return PieceFailure(*window, self._missing(symbol, day, seam))
            open_interest, ratios = parse_metrics_archive(read_zipped_csv(content, file), file)
        except (UpstreamRejected, UpstreamBanned):
            raise
        except UpstreamError as exc:
            return PieceFailure(*window, exc)
        return open_interest if dataset == "open_interest" else ratios


def _merged(failures: list[PieceFailure], symbol: str, seam: dt.datetime) -> list[PieceFailure]:
    """Consecutive days that no source holds as one failure: `2021-11-01 to 2021-11-30`."""
    merged: list[PieceFailure] = []
    for failure in failures:
        last = merged[-1] if merged else None
        if last is None or last.end != failure.start or not (
            isinstance(last.error, NoSourceHolds) and isinstance(failure.error, NoSourceHolds)
        ):
            merged.append(failure)
            continue
        first_day, last_day = last.start.date(), failure.start.date()
        error = NoSourceHolds(
            SOURCE, f"no source holds {first_day} to {last_day}: the archive has no files "
            f"{MetricsFile(symbol, first_day).name} to {MetricsFile(symbol, last_day).name} and REST keeps only "
            f"the last 30 days (from {seam:%Y-%m-%d %H:%M} UTC)",
        )
        merged[-1] = PieceFailure(last.start, failure.end, error)
    return merged
