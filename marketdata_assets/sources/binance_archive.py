"""Binance's bulk archive (data.binance.vision): monthly and daily kline files, verified.

Layout: `data/{spot|futures/um}/{monthly|daily}/klines/SYM/TF/SYM-TF-YYYY-MM[-DD].zip`, each zip
holding one CSV of the same base name, beside a `<zip>.CHECKSUM` in sha256sum format. Spot
files carry microsecond times from 2025-01-01 (milliseconds before); futures files gained a
header row around 2022. Both are detected per file. Files are read in memory: nothing touches
the disk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl
from isal import isal_zlib

from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.errors import MalformedResponse, UpstreamError
from marketdata_assets.sources.http import Sleep, UpstreamClient, Venue
from marketdata_assets.timeframes import Timeframe, next_month
from marketdata_assets.validation import split_invalid_klines

ARCHIVE_SOURCE = "binance archive"
# The archive is a file host: unmetered, plain error bodies, files missing are 404.
BINANCE_ARCHIVE = Venue("binance_archive", "binance_archive_url")
_MARKET_DIRS = {"spot": "spot", "perp": "futures/um"}
# Columns of a kline CSV, as the futures header names them; spot files have the same order.
_CSV_SCHEMA = pl.Schema(
    {
        "open_time": pl.Int64,
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
        "close_time": pl.Int64,
        "quote_volume": pl.Float64,
        "trades": pl.Int64,
        "taker_buy_volume": pl.Float64,
        "taker_buy_quote_volume": pl.Float64,
        "ignore": pl.String,
    }
)
# Open times above this are microseconds: 1e14 ms is the year 5138, 1e14 µs is 1973.
_MICROSECONDS_ABOVE = 10**14


class ArchiveChecksumMismatch(UpstreamError):
    """A file's sha256 did not match its `.CHECKSUM`, twice: its rows are not to be trusted."""


class ArchiveFileMissing(UpstreamError):
    """The archive has no such file (yet): HTTP 404 for the zip or its `.CHECKSUM`."""


@dataclass(frozen=True)
class ArchiveFile:
    """One archive kline file: a whole UTC month (`day` None) or one UTC day."""

    market: str
    symbol: str
    timeframe: str
    month: dt.date  # first day of the month
    day: dt.date | None = None

    @classmethod
    def monthly(cls, market: str, symbol: str, timeframe: str, month: dt.date) -> ArchiveFile:
        return cls(market, symbol, timeframe, month.replace(day=1))

    @classmethod
    def daily(cls, market: str, symbol: str, timeframe: str, day: dt.date) -> ArchiveFile:
        return cls(market, symbol, timeframe, day.replace(day=1), day)

    @property
    def name(self) -> str:
        period = f"{self.day:%Y-%m-%d}" if self.day else f"{self.month:%Y-%m}"
        return f"{self.symbol}-{self.timeframe}-{period}.zip"

    @property
    def path(self) -> str:
        frequency = "daily" if self.day else "monthly"
        return f"/data/{_MARKET_DIRS[self.market]}/{frequency}/klines/{self.symbol}/{self.timeframe}/{self.name}"

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        """The half-open UTC window the file covers."""
        if self.day:
            start = dt.datetime.combine(self.day, dt.time(), dt.UTC)
            return start, start + dt.timedelta(days=1)
        start = dt.datetime.combine(self.month, dt.time(), dt.UTC)
        return start, next_month(start)


@dataclass(frozen=True)
class FundingFile:
    """One month of a USD-M perpetual's `fundingRate` file in the archive."""

    symbol: str
    month: dt.date  # first day of the month

    @property
    def name(self) -> str:
        return f"{self.symbol}-fundingRate-{self.month:%Y-%m}.zip"

    @property
    def path(self) -> str:
        return f"/data/futures/um/monthly/fundingRate/{self.symbol}/{self.name}"

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.month, dt.time(), dt.UTC)
        return start, next_month(start)


@dataclass(frozen=True)
class MetricsFile:
    """One day of a USD-M perpetual's futures statistics (open interest, long/short ratios) in
    the archive: a row every 5 minutes."""

    symbol: str
    day: dt.date

    @property
    def name(self) -> str:
        return f"{self.symbol}-metrics-{self.day:%Y-%m-%d}.zip"

    @property
    def path(self) -> str:
        return f"/data/futures/um/daily/metrics/{self.symbol}/{self.name}"

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.day, dt.time(), dt.UTC)
        return start, start + dt.timedelta(days=1)


# Any file of the archive: a zip at `path`, named `name`, with a `.CHECKSUM` beside it.
AnyArchiveFile = ArchiveFile | FundingFile | MetricsFile


def parse_checksum(text: bytes, file: AnyArchiveFile) -> str:
    """The sha256 hex digest from a `.CHECKSUM` (`<hex>  <zip name>`); MalformedResponse otherwise."""
    parts = text.decode("ascii", errors="replace").split()
    if len(parts) != 2 or len(parts[0]) != 64 or parts[1].lstrip("*") != file.name:
        raise MalformedResponse(
            ARCHIVE_SOURCE, f"{file.path}.CHECKSUM is not `<sha256>  {file.name}`: {text[:120]!r}"
        )
    try:
        int(parts[0], 16)
    except ValueError:
        raise MalformedResponse(
            ARCHIVE_SOURCE, f"{file.path}.CHECKSUM holds no sha256 hex digest: {parts[0]!r}"
        ) from None
    return parts[0].lower()


def read_zipped_csv(content: bytes, file: AnyArchiveFile) -> bytes:
    """The one CSV inside a verified archive zip, inflated in memory (ISA-L: ~2x zlib's speed)."""
    expected = file.name.removesuffix(".zip") + ".csv"
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            members = archive.infolist()
        names = [m.filename for m in members]
        if names != [expected]:
            raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path} should hold only {expected}, holds {names}")
        member = members[0]
        if member.compress_type == zipfile.ZIP_STORED:
            return _member_bytes(content, member)
        if member.compress_type != zipfile.ZIP_DEFLATED:
            raise MalformedResponse(
                ARCHIVE_SOURCE, f"{file.path}: {expected} uses zip method {member.compress_type}, not deflate"
            )
        csv = isal_zlib.decompress(_member_bytes(content, member), wbits=-15)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, isal_zlib.error, struct.error, OSError) as exc:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path} is not a readable zip: {exc}") from None
    if len(csv) != member.file_size or isal_zlib.crc32(csv) != member.CRC:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{file.path}: {expected} fails its zip size or CRC check")
    return csv


def _member_bytes(content: bytes, member: zipfile.ZipInfo) -> bytes:
    """A member's stored bytes: after its local header (30 bytes, then name and extra field)."""
    offset = member.header_offset
    if content[offset : offset + 4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local file header at offset {offset}")
    name_length, extra_length = struct.unpack("<HH", content[offset + 26 : offset + 30])
    start = offset + 30 + name_length + extra_length
    return content[start : start + member.compress_size]


def parse_archive_klines(
    csv: bytes, file: ArchiveFile, tf: Timeframe, ingested_at: dt.datetime | None = None
) -> pl.DataFrame:
    """A kline CSV from the archive to a frame in `schemas.KLINES`, with source 'archive'.

    Detects the header row and the time unit (ms or µs) of this file; raises MalformedResponse
    naming the file and row when a row breaks the format or lies outside the file's window.
    """
    where = f"{file.path}"
    if not csv.strip():
        return KLINES.empty_frame()
    has_header = _has_header(csv)
    try:
        raw = pl.read_csv(
            csv,
            has_header=False,
            skip_rows=1 if has_header else 0,
            schema=_CSV_SCHEMA,
            truncate_ragged_lines=False,
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise MalformedResponse(ARCHIVE_SOURCE, f"{where}: unreadable kline CSV: {str(exc)[:300]}") from None
    if raw.is_empty():
        return KLINES.empty_frame()
    nulls = raw.drop("ignore").null_count().row(0, named=True)
    broken = [name for name, count in nulls.items() if count]
    if broken:
        index = int(raw[broken[0]].is_null().arg_true()[0])
        raise MalformedResponse(ARCHIVE_SOURCE, f"{where}: row {index} has no value for {broken[0]}")
    scale = 1000 if raw["open_time"][0] > _MICROSECONDS_ABOVE else 1
    unit = "µs" if scale == 1000 else "ms"
    span = tf.millis * scale
    _reject_first(
        (raw["close_time"] - raw["open_time"]) != span - 1,
        lambda i: f"{where}: row {i}: close_time {raw['close_time'][i]} is not open_time "
        f"{raw['open_time'][i]} + {tf.name} - 1 ({unit}, as the first row reads)",
    )
    start, end = file.window
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    open_ms = raw["open_time"] // scale
    _reject_first(
        (open_ms < start_ms) | (open_ms >= end_ms) | (open_ms % tf.millis != 0),
        lambda i: f"{where}: row {i}: open_time {raw['open_time'][i]} ({unit}) is not a "
        f"{tf.name} bar inside the file's window [{start:%Y-%m-%d}, {end:%Y-%m-%d})",
    )
    if not open_ms.is_sorted() or open_ms.n_unique() != len(open_ms):
        raise MalformedResponse(ARCHIVE_SOURCE, f"{where}: rows are not in strictly ascending open_time")
    stamp = ingested_at or dt.datetime.now(dt.UTC)
    return raw.select(
        pl.lit("binance").alias("venue"),
        pl.lit(file.market).alias("market"),
        pl.lit(file.symbol).alias("symbol"),
        pl.lit(tf.name).alias("timeframe"),
        (pl.col("open_time") // scale).cast(pl.Datetime("ms", "UTC")).alias("open_time"),
        *(pl.col(c) for c in ("open", "high", "low", "close", "volume", "quote_volume", "trades")),
        pl.col("taker_buy_volume"),
        pl.col("taker_buy_quote_volume"),
        pl.lit("archive").alias("source"),
        pl.lit(stamp).alias("ingested_at"),
    ).cast(KLINES.schema)  # type: ignore[arg-type]


def _has_header(csv: bytes) -> bool:
    return not csv[:1].isdigit()


def _csv_rows(csv: bytes, indices: Sequence[int]) -> list[str]:
    """Data rows `indices` of a kline CSV, as written (the header, if any, is not row 0)."""
    lines = csv.decode("utf-8", errors="replace").splitlines()
    offset = 1 if _has_header(csv) else 0
    return [lines[i + offset] for i in indices]


def _reject_first(bad: pl.Series, message: Callable[[int], str]) -> None:
    """Raise MalformedResponse with `message(i)` for the first row `i` flagged in `bad`."""
    if bad.any():
        raise MalformedResponse(ARCHIVE_SOURCE, message(int(bad.arg_true()[0])))


@dataclass
class ArchiveStats:
    """Files read from the archive, their compressed bytes, and checksum re-downloads."""

    files: int = 0
    missing: list[str] = field(default_factory=list)
    compressed_bytes: int = 0
    redownloads: int = 0


class BinanceArchiveClient(UpstreamClient):
    """Downloads, verifies and parses archive kline files, several at a time.

    Use as `async with BinanceArchiveClient(...) as archive: await archive.klines(file, tf)`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_concurrency: int = 8,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        timeout_s: float = 120.0,
        sleep: Sleep = asyncio.sleep,
    ):
        self._http = BINANCE_ARCHIVE.http(
            ARCHIVE_SOURCE, base_url, None, max_concurrency=max_concurrency, max_attempts=max_attempts,
            backoff_base_s=backoff_base_s, timeout_s=timeout_s, sleep=sleep,
        )
        self.archive_stats = ArchiveStats()
        self.rejected = []
        # One file decoded at a time: polars parses each CSV on every core already, and rival
        # decodes only make its thread pool and the writer's fight over the same cores.
        self._decoding = asyncio.Semaphore(1)

    async def klines(self, file: ArchiveFile, tf: Timeframe) -> pl.DataFrame | None:
        """The file's valid bars, verified against its `.CHECKSUM`; None if the archive lacks
        either. Rows that break a validation rule go to `self.rejected`.

        A sha256 mismatch is downloaded once more; a second mismatch raises
        ArchiveChecksumMismatch naming the file. Nothing unverified is ever returned.
        """
        content = await self._verified_content(file)
        if content is None:
            return None
        async with self._decoding:
            frame, rejected = await asyncio.to_thread(_decode, content, file, tf)
        if rejected.height:
            self.rejected.append(rejected)
        return frame

    async def verified(self, file: AnyArchiveFile) -> bytes | None:
        """A file's zip bytes, checked against its `.CHECKSUM`; None if the archive lacks either."""
        return await self._verified_content(file)

    async def _verified_content(self, file: AnyArchiveFile) -> bytes | None:
        digests: list[tuple[str, str]] = []
        for _ in range(2):
            content, checksum = await asyncio.gather(
                self._http.get_bytes(file.path, missing_ok=True),
                self._http.get_bytes(file.path + ".CHECKSUM", missing_ok=True),
            )
            if content is None or checksum is None:
                self.archive_stats.missing.append(file.name if content is None else file.name + ".CHECKSUM")
                return None
            expected = parse_checksum(checksum, file)
            actual = await asyncio.to_thread(_sha256, content)
            if actual == expected:
                self.archive_stats.files += 1
                self.archive_stats.compressed_bytes += len(content)
                return content
            digests.append((actual, expected))
            self.archive_stats.redownloads += 1
        raise ArchiveChecksumMismatch(
            ARCHIVE_SOURCE,
            f"{file.path}: sha256 {digests[-1][0]} does not match its .CHECKSUM "
            f"{digests[-1][1]}, on two downloads; nothing from this file is written",
        )


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _decode(content: bytes, file: ArchiveFile, tf: Timeframe) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid bars, rejected rows) of a verified zip."""
    csv = read_zipped_csv(content, file)
    frame = parse_archive_klines(csv, file, tf)
    return split_invalid_klines(frame, lambda indices: _csv_rows(csv, indices), file.path)
