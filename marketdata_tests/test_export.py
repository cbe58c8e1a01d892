"""`marketdata export`: a year of 1m bars out to CSV, Parquet and a Hive tree, read back equal to
the warehouse's rows; funding beside them; bad input refused in one line before a file is written
(issue 22, export)."""

from __future__ import annotations

import polars as pl

from marketdata_assets.ingest import ingest_klines
from marketdata_assets.schemas import KLINES
from marketdata_assets.sources.funding import FUNDING_RATES, funding_frame
from marketdata_assets.warehouse.duckdb import DuckDBWarehouse
from marketdata_tests.conftest import utc, write_catalog
from marketdata_tests.test_archive import source
from marketdata_tests.test_cli import marketdata_here

BTC_1M = "binance_spot/klines_1m/BTCUSDT"


def stored(warehouse, table, where: str = "TRUE") -> pl.DataFrame:
    return warehouse.query(f"SELECT {', '.join(table.columns)} FROM {table.qualified_name} WHERE {where} "
                           "ORDER BY ALL").cast(dict(table.schema))


def test_a_year_of_bars_exports_to_csv_parquet_and_a_hive_tree_equal_to_the_warehouse(emulator, tmp_path):
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    ingest_klines(source(emulator.url), warehouse, "BTCUSDT", "1m", utc(2024, 1, 1), utc(2025, 1, 1))
    settlements = [int(utc(2024, 12, 31, hour).timestamp() * 1000) for hour in (0, 8, 16)]
    warehouse.upsert(FUNDING_RATES, funding_frame("binance", "BTCUSDT", settlements, [0.0001, -0.0002, 0.00015]))
    catalog = write_catalog(tmp_path / "catalog.yaml", [
        {"venue": "binance", "market": "spot", "symbol": "BTCUSDT", "timeframes": ["1m", "1h"]},
        {"venue": "binance", "market": "perp", "symbol": "BTCUSDT", "datasets": ["funding"]},
    ], start_date="2024-01-01")
    env = {"MARKETDATA_WAREHOUSE_URL": url, "MARKETDATA_CATALOG": str(catalog)}
    bars = stored(warehouse, KLINES)
    assert bars.height == 366 * 1440

    # CSV, named as other downloaders name it, times in ISO 8601 UTC: the same rows read back
    out = marketdata_here("export", BTC_1M, "--from", "2024-01-01", "--to", "2024-12-31", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    csv = tmp_path / "Binance-BTCUSDT-1m-2024-01-01_2024-12-31.csv"
    assert out.stdout.splitlines() == [f"{BTC_1M}: 527040 rows to {csv}"]
    assert csv.read_text().splitlines()[1].startswith("binance,spot,BTCUSDT,1m,2024-01-01T00:00:00Z,")
    assert pl.read_csv(csv, try_parse_dates=True).cast(dict(KLINES.schema)).equals(bars)

    # Parquet of the bars and the funding, into a directory; then a Hive tree of both tables
    out = marketdata_here("export", f"{BTC_1M},binance_perp/funding/*", "--format", "parquet", "--path",
                          str(tmp_path / "files"), "--to", "2024-12-31", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert pl.read_parquet(tmp_path / "files" / "Binance-BTCUSDT-1m-2024-01-01_2024-12-31.parquet").equals(bars)
    funding = pl.read_parquet(tmp_path / "files" / "Binance-BTCUSDT-PERP-funding-2024-01-01_2024-12-31.parquet")
    assert funding.equals(stored(warehouse, FUNDING_RATES))
    out = marketdata_here("export", "binance_*/*/BTCUSDT", "--format", "parquet", "--partitioned", "--path",
                          str(tmp_path / "lake"), "--to", "2024-12-31", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{BTC_1M}: 527040 rows to {tmp_path / 'lake' / 'klines'}",
        "binance_spot/klines_1h/BTCUSDT: no rows stored in the window, no file written",
        f"binance_perp/funding/BTCUSDT: 3 rows to {tmp_path / 'lake' / 'funding_rates'}"]
    assert sorted(p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet")) == [
        "funding_rates/venue=binance/symbol=BTCUSDT/year=2024/Binance-BTCUSDT-PERP-funding-2024-01-01_2024-12-31.parquet",
        "klines/venue=binance/symbol=BTCUSDT/year=2024/Binance-BTCUSDT-1m-2024-01-01_2024-12-31.parquet"]
    lake = pl.scan_parquet(tmp_path / "lake" / "klines" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert lake.select(KLINES.columns).cast(dict(KLINES.schema)).sort(pl.all()).equals(bars)
    assert not list(tmp_path.rglob(".marketdata-export-*"))  # no staging left behind

    # Refused in one line, exit 2, nothing written
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, said in (
        (["binance_spot/klines_1m/DOGEUSDT"], "no asset of the catalog matches 'binance_spot/klines_1m/DOGEUSDT'"),
        ([BTC_1M, "--from", "2024-02-30"], "--from '2024-02-30' is not a date"),
        ([BTC_1M, "--path", str(csv / "x")], f"--path {csv / 'x'}: {csv} is a file, not a directory"),
        ([BTC_1M, "--partitioned"], "--partitioned writes a Parquet tree: use --format parquet"),
        (["binance_*/*/BTCUSDT", "--path", str(tmp_path / "one.csv")], f"--path {tmp_path / 'one.csv'} names one "
         "file, but 3 series are chosen: give a directory"),
    ):
        refused = marketdata_here("export", *args, cwd=tmp_path, env=env)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        assert refused.stderr.strip().splitlines() == [f"marketdata export: {refused.stderr.split(': ', 1)[1].strip()}"]
        assert said in refused.stderr, refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
