"""The Binance archive fast path against the archive emulator on loopback: layout, checksums,
format detection, source choice and fallbacks, and rows identical to REST."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import tempfile
import zipfile

import httpx
import polars as pl
import pytest

from marketdata_assets.emulator import EmulatorConfig, EmulatorServer
from marketdata_assets.emulator.config import ArchiveFaults
from marketdata_assets.ingest import ingest_klines
from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient, fetch_klines
from marketdata_assets.sources.binance_archive import (
    ArchiveChecksumMismatch,
    ArchiveFile,
    ArchiveFileMissing,
    BinanceArchiveClient,
    parse_archive_klines,
    parse_checksum,
    read_zipped_csv,
)
from marketdata_assets.sources.binance_klines import BinanceKlinesSource, plan_pieces
from marketdata_assets.sources.errors import MalformedResponse
from marketdata_assets.timeframes import timeframe
from marketdata_assets.warehouse.duckdb import DuckDBWarehouse
from marketdata_tests.conftest import utc

M1 = timeframe("1m")


def download(url: str, file: ArchiveFile) -> tuple[httpx.Response, httpx.Response]:
    with httpx.Client(base_url=url) as client:
        return client.get(file.path), client.get(file.path + ".CHECKSUM")


def source(url: str, mode: str = "auto", clock=None) -> BinanceKlinesSource:
    options = {"clock": clock} if clock else {}
    return BinanceKlinesSource(
        BinanceKlinesClient("spot", url, **options), BinanceArchiveClient(url, backoff_base_s=0.01), mode, **options
    )


def archive_frame(url: str, file: ArchiveFile, tf=M1) -> pl.DataFrame:
    async def run():
        async with BinanceArchiveClient(url) as client:
            return await client.klines(file, tf)

    return asyncio.run(run())


def test_the_emulator_serves_the_archive_layout_with_sha256sum_checksums(emulator):
    file = ArchiveFile.monthly("spot", "BTCUSDT", "1m", dt.date(2024, 2, 1))
    assert file.path == "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"
    zipped, checksum = download(emulator.url, file)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    assert checksum.text == f"{hashlib.sha256(zipped.content).hexdigest()}  BTCUSDT-1m-2024-02.zip\n"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.namelist() == ["BTCUSDT-1m-2024-02.csv"]
        lines = archive.read("BTCUSDT-1m-2024-02.csv").decode().splitlines()
    assert len(lines) == 29 * 1440
    first = lines[0].split(",")
    assert first[0] == "1706745600000" and first[6] == "1706745659999" and len(first) == 12
    # the same decimal strings as the REST answer for that minute
    rest = httpx.get(emulator.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m",
                                                               "startTime": 1706745600000, "limit": 1}).json()
    assert first[1:6] == rest[0][1:6] and first[7:11] == [str(v) for v in rest[0][7:11]]


def test_the_emulator_builds_a_file_once_while_its_cache_holds_it():
    """A month of 1m is about 1.7 MB zipped: a 2 MB cache holds one of them, 1 GB all three."""
    months = [ArchiveFile.monthly("spot", "BTCUSDT", "1m", dt.date(2024, month, 1)) for month in (1, 2, 1)]
    for cache_mb, built in ((2, 3), (1024, 2)):
        with EmulatorServer(EmulatorConfig(archive_cache_mb=cache_mb)) as emu:
            first = [download(emu.url, file)[0].content for file in months]
            assert first[0] == first[2]  # rebuilt or not, the same bytes
            assert httpx.get(emu.url + "/emulator/stats").json()["archive"]["answers"]["built"] == built


def test_spot_files_switch_to_microseconds_in_2025_and_futures_files_gain_a_header(emulator):
    def first_line(file: ArchiveFile) -> str:
        zipped, _ = download(emulator.url, file)
        return read_zipped_csv(zipped.content, file).split(b"\n", 1)[0].decode()

    assert first_line(ArchiveFile.daily("spot", "BTCUSDT", "1m", dt.date(2024, 12, 31))).startswith("1735603200000,")
    assert first_line(ArchiveFile.daily("spot", "BTCUSDT", "1m", dt.date(2025, 1, 1))).startswith("1735689600000000,")
    assert first_line(ArchiveFile.monthly("perp", "BTCUSDT", "1m", dt.date(2021, 12, 1))).startswith("1638316800000,")
    assert first_line(ArchiveFile.monthly("perp", "BTCUSDT", "1m", dt.date(2022, 1, 1))).startswith("open_time,open,")


def test_unpublished_and_unknown_files_get_s3s_404(emulator):
    today = dt.datetime.now(dt.UTC).date()
    for file in (
        ArchiveFile.daily("spot", "BTCUSDT", "1m", today),  # appears tomorrow
        ArchiveFile.monthly("spot", "BTCUSDT", "1m", today.replace(day=1)),  # appears next month
        ArchiveFile.monthly("spot", "NOPEUSDT", "1m", dt.date(2024, 1, 1)),
        ArchiveFile.monthly("spot", "SOLUSDT", "1m", dt.date(2019, 1, 1)),  # before its listing
    ):
        zipped, checksum = download(emulator.url, file)
        assert zipped.status_code == checksum.status_code == 404
        assert "<Code>NoSuchKey</Code>" in zipped.text


@pytest.mark.parametrize(
    ("market", "start", "end"),
    [
        ("spot", utc(2024, 12, 30), utc(2025, 1, 3)),  # across the switch to µs
        ("perp", utc(2021, 12, 30), utc(2022, 1, 2)),  # across the arrival of the header row
        ("perp", utc(2019, 9, 8), utc(2019, 9, 10)),  # the listing day, mid-bar
    ],
)
def test_archive_and_rest_give_identical_rows_except_source(emulator, market, start, end):
    async def from_archive():
        rest = BinanceKlinesClient(market, emulator.url)
        async with BinanceKlinesSource(rest, BinanceArchiveClient(emulator.url), "archive") as src:
            return [f async for f in src.frames("BTCUSDT", "1m", start, end, 10_000)]

    archived = pl.concat(asyncio.run(from_archive())).sort("open_time")
    rested = fetch_klines(market, emulator.url, "BTCUSDT", "1m", start, end).frame
    assert archived.height == rested.height > 0
    assert set(archived["source"]) == {"archive"} and set(rested["source"]) == {"rest"}
    assert archived.drop("source", "ingested_at").equals(rested.drop("source", "ingested_at"))


def test_the_plan_reads_whole_past_months_then_past_days_then_today_over_rest():
    now = utc(2024, 3, 5, 12, 30)
    pieces = plan_pieces("spot", "BTCUSDT", M1, utc(2024, 1, 30, 6), utc(2024, 3, 6), now, "auto")
    assert [(p.file.name if p.file else "REST", p.start, p.end) for p in pieces] == [
        ("BTCUSDT-1m-2024-01-30.zip", utc(2024, 1, 30, 6), utc(2024, 1, 31)),  # part of January
        ("BTCUSDT-1m-2024-01-31.zip", utc(2024, 1, 31), utc(2024, 2, 1)),
        ("BTCUSDT-1m-2024-02.zip", utc(2024, 2, 1), utc(2024, 3, 1)),
        ("BTCUSDT-1m-2024-03-01.zip", utc(2024, 3, 1), utc(2024, 3, 2)),
        ("BTCUSDT-1m-2024-03-02.zip", utc(2024, 3, 2), utc(2024, 3, 3)),
        ("BTCUSDT-1m-2024-03-03.zip", utc(2024, 3, 3), utc(2024, 3, 4)),
        ("BTCUSDT-1m-2024-03-04.zip", utc(2024, 3, 4), utc(2024, 3, 5)),
        ("REST", utc(2024, 3, 5), utc(2024, 3, 6)),
    ]
    assert [(p.file, p.start, p.end) for p in plan_pieces("spot", "BTCUSDT", M1, utc(2024, 1, 15), utc(2024, 3, 6), now, "rest")] == [
        (None, utc(2024, 1, 15), utc(2024, 3, 6))
    ]


def test_auto_reads_the_month_in_progress_from_daily_files_and_today_from_rest(tmp_path):
    frozen = utc(2024, 3, 5, 12, 30, 30).timestamp()
    clock = lambda: frozen  # noqa: E731 - client and emulator agree on "now"
    with EmulatorServer(clock=clock) as emu:
        warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
        report = ingest_klines(source(emu.url, clock=clock), warehouse, "BTCUSDT", "1m", utc(2024, 3, 1), utc(2024, 4, 1))
        assert emu.archive.answers["zip"] == 4  # March 1st to 4th
    counts = dict(warehouse.query("SELECT source, count(*) FROM market_data.klines GROUP BY 1").iter_rows())
    assert counts == {"archive": 4 * 1440, "rest": 12 * 60 + 30}  # every minute closed by 12:30:30
    assert report.last_open_time == utc(2024, 3, 5, 12, 29)
    assert report.source["archive_files"] == 4 and report.source["rows_from_rest"] == 750


def test_a_missing_month_falls_back_to_its_days_and_missing_days_to_rest(tmp_path):
    faults = ArchiveFaults(missing=("BTCUSDT-1m-2024-01.zip", "BTCUSDT-1m-2024-01-1[0-2].zip"))
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as emu:
        warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
        report = ingest_klines(source(emu.url), warehouse, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 2, 1))
        expected = fetch_klines("spot", emu.url, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 2, 1)).frame
    rows = warehouse.query("SELECT * FROM market_data.klines ORDER BY open_time")
    assert rows.drop("source", "ingested_at").equals(expected.drop("source", "ingested_at"))
    by_source = rows.group_by("source").agg(pl.len(), pl.col("open_time").min().alias("first"),
                                            pl.col("open_time").max().alias("last")).sort("source")
    assert by_source.rows() == [
        ("archive", 28 * 1440, utc(2024, 1, 1), utc(2024, 1, 31, 23, 59)),
        ("rest", 3 * 1440, utc(2024, 1, 10), utc(2024, 1, 12, 23, 59)),
    ]
    assert report.source["archive_files"] == 28
    assert "BTCUSDT-1m-2024-01.zip" in report.source["archive_missing"]


def test_archive_only_fails_the_window_of_a_missing_file_naming_it(tmp_path):
    faults = ArchiveFaults(missing=("BTCUSDT-1m-2024-02.zip",))
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as emu:
        warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
        report = ingest_klines(source(emu.url, "archive"), warehouse, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 3, 1))
    (failure,) = report.failures
    assert (failure.start, failure.end) == (utc(2024, 2, 1), utc(2024, 3, 1))
    assert isinstance(failure.error, ArchiveFileMissing)
    message = failure.describe()
    assert "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip (or its .CHECKSUM) is not in the archive" in message
    assert "'auto' does" in message
    # January's file was there and is stored; nothing of February is
    stored = warehouse.query("SELECT min(open_time) AS a, max(open_time) AS b, count(*) AS n FROM market_data.klines")
    assert stored.row(0) == (utc(2024, 1, 1), utc(2024, 1, 31, 23, 59), 31 * 1440)


def test_archive_only_refuses_today_which_only_rest_has(emulator, tmp_path):
    today = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC)
    report = ingest_klines(source(emulator.url, "archive"), DuckDBWarehouse(tmp_path / "w.duckdb"), "BTCUSDT",
                           "1m", today, today + dt.timedelta(days=1))
    (failure,) = report.failures
    assert isinstance(failure.error, ArchiveFileMissing) and "is not archived yet" in str(failure.error)
    assert report.rows_written == 0


def test_a_checksum_mismatch_is_downloaded_again_and_then_passes(tmp_path):
    faults = ArchiveFaults(corrupt=("BTCUSDT-1m-2024-01.zip",), corrupt_once=True)
    with EmulatorServer(EmulatorConfig(archive_faults=faults)) as emu:
        warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
        report = ingest_klines(source(emu.url), warehouse, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 2, 1))
        assert emu.archive.answers["corrupt"] == 1 and emu.archive.answers["zip"] == 2
    assert report.rows_written == 31 * 1440 and report.source["archive_redownloads"] == 1


def test_a_file_corrupt_twice_fails_its_window_and_nothing_unverified_is_written(tmp_path):
    faults = ArchiveFaults(corrupt=("BTCUSDT-1m-2024-01-02.zip",))
    now = utc(2024, 1, 20, 6).timestamp()
    with EmulatorServer(EmulatorConfig(archive_faults=faults), clock=lambda: now) as emu:
        warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
        report = ingest_klines(source(emu.url, clock=lambda: now), warehouse, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2024, 1, 4))
    (failure,) = report.failures
    assert (failure.start, failure.end) == (utc(2024, 1, 2), utc(2024, 1, 3))
    assert isinstance(failure.error, ArchiveChecksumMismatch)
    message = str(failure.error)
    assert message.startswith("binance archive: /data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip: sha256 ")
    assert "on two downloads; nothing from this file is written" in message
    days = warehouse.query("SELECT date_trunc('day', open_time) AS day, count(*) AS n FROM market_data.klines "
                           "GROUP BY ALL ORDER BY day")
    assert days.rows() == [(utc(2024, 1, 1), 1440), (utc(2024, 1, 3), 1440)]


def test_files_are_read_in_memory_leaving_no_temporary_files(emulator, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    report = ingest_klines(source(emulator.url), warehouse, "ETHUSDT", "1m", utc(2023, 1, 1), utc(2023, 3, 1))
    assert report.rows_written == (31 + 28) * 1440
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp", "w.duckdb"]


def test_a_year_streams_through_in_bounded_write_batches(emulator, tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    report = ingest_klines(source(emulator.url), warehouse, "BNBUSDT", "1m", utc(2022, 1, 1), utc(2023, 1, 1),
                           bars_per_write=100_000)
    assert report.rows_written == 365 * 1440
    assert report.largest_write <= 100_000  # about two months at a time, never the year
    assert report.write_windows >= 365 * 1440 // 100_000
    stored = warehouse.query("SELECT count(*) AS n, count(DISTINCT open_time) AS d FROM market_data.klines")
    assert stored.row(0) == (365 * 1440, 365 * 1440)


def test_malformed_archive_rows_are_named_by_file_and_row():
    file = ArchiveFile.daily("spot", "BTCUSDT", "1m", dt.date(2024, 1, 2))
    good = "1704153600000,1,2,0.5,1.5,10,1704153659999,15,3,4,6,0\n"
    with pytest.raises(MalformedResponse, match=r"BTCUSDT-1m-2024-01-02.zip: row 1: close_time 1704153719998"):
        parse_archive_klines((good + "1704153660000,1,2,0.5,1.5,10,1704153719998,15,3,4,6,0\n").encode(), file, M1)
    with pytest.raises(MalformedResponse, match=r"row 0: open_time 1704067200000 \(ms\) is not a 1m bar inside"):
        parse_archive_klines(b"1704067200000,1,2,0.5,1.5,10,1704067259999,15,3,4,6,0\n", file, M1)
    with pytest.raises(MalformedResponse, match="unreadable kline CSV"):
        parse_archive_klines((good + "1704153660000,1,two,0.5,1.5,10,1704153719999,15,3,4,6,0\n").encode(), file, M1)
    with pytest.raises(MalformedResponse, match="not `<sha256>  BTCUSDT-1m-2024-01-02.zip`"):
        parse_checksum(b"abc  BTCUSDT-1m-2024-01-02.zip", file)
    with pytest.raises(MalformedResponse, match="is not a readable zip"):
        read_zipped_csv(b"PK\x03\x04 not really", file)
    # a header row and µs times are both read
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
    frame = parse_archive_klines((header + "1704153600000000,1,2,0.5,1.5,10,1704153659999999,15,3,4,6,0\n").encode(), file, M1)
    assert frame.row(0, named=True)["open_time"] == utc(2024, 1, 2) and frame["trades"][0] == 3


def test_the_archive_client_reads_a_file_it_verified(emulator):
    frame = archive_frame(emulator.url, ArchiveFile.monthly("perp", "ETHUSDT", "1h", dt.date(2023, 6, 1)), timeframe("1h"))
    assert frame.height == 30 * 24 and set(frame["market"]) == {"perp"}
    assert frame["open_time"].min() == utc(2023, 6, 1) and frame["open_time"].max() == utc(2023, 6, 30, 23)
    assert archive_frame(emulator.url, ArchiveFile.monthly("perp", "ETHUSDT", "1h", dt.date(2019, 1, 1)), timeframe("1h")) is None
