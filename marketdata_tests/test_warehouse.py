"""Both warehouses, DuckDB and PostgreSQL, held to the same behaviour: upserts by primary key in
one transaction, nothing lost by a shorter re-fetch, concurrent writer processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import threading

import polars as pl
import pytest

from marketdata_assets.emulator.candles import synthetic_candles
from marketdata_assets.schemas import KLINES
from marketdata_assets.warehouse import WarehouseError, open_warehouse


def klines_frame(symbol: str, first: dt.datetime, count: int, source: str = "rest", bump: float = 0.0) -> pl.DataFrame:
    start_ms = int(first.timestamp() * 1000)
    bars = synthetic_candles("spot", symbol, 60_000, [start_ms + i * 60_000 for i in range(count)])
    return pl.DataFrame(
        {
            "venue": ["binance"] * count,
            "market": ["spot"] * count,
            "symbol": [symbol] * count,
            "timeframe": ["1m"] * count,
            "open_time": pl.Series(bars.open_time).cast(pl.Datetime("ms", "UTC")),
            "open": bars.open,
            "high": bars.high + bump,
            "low": bars.low,
            "close": bars.close,
            "volume": bars.volume,
            "quote_volume": bars.quote_volume,
            "trades": bars.trades,
            "taker_buy_volume": bars.taker_buy_volume,
            "taker_buy_quote_volume": bars.taker_buy_quote_volume,
            "source": [source] * count,
            "ingested_at": [dt.datetime.now(dt.UTC)] * count,
        }
    ).cast(KLINES.schema)  # type: ignore[arg-type]


T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def stored(warehouse) -> pl.DataFrame:
    return warehouse.query("SELECT * FROM market_data.klines ORDER BY symbol, open_time")


def test_upsert_is_idempotent_and_keeps_the_canonical_schema(any_warehouse_url):
    warehouse = open_warehouse(any_warehouse_url)
    frame = klines_frame("BTCUSDT", T0, 500)
    assert warehouse.upsert(KLINES, frame) == 500
    assert warehouse.upsert(KLINES, frame) == 500
    rows = stored(warehouse)
    assert rows.schema == KLINES.schema
    assert rows.height == 500
    assert rows.drop("ingested_at").equals(frame.drop("ingested_at"))


def test_a_refetch_that_returned_less_loses_nothing_and_updates_what_it_has(any_warehouse_url):
    warehouse = open_warehouse(any_warehouse_url)
    warehouse.upsert(KLINES, klines_frame("BTCUSDT", T0, 100))
    warehouse.upsert(KLINES, klines_frame("BTCUSDT", T0 + dt.timedelta(minutes=10), 20, source="archive", bump=1.0))
    rows = stored(warehouse)
    assert rows.height == 100
    updated = rows.filter(pl.col("source") == "archive")
    assert updated.height == 20
    assert updated["open_time"].min() == T0 + dt.timedelta(minutes=10)
    original = klines_frame("BTCUSDT", T0, 100)
    assert (updated["high"] - original["high"][10:30]).to_list() == pytest.approx([1.0] * 20)


def test_duplicate_keys_within_one_frame_keep_the_last(any_warehouse_url):
    warehouse = open_warehouse(any_warehouse_url)
    frame = klines_frame("BTCUSDT", T0, 5)
    twice = pl.concat([frame, frame.with_columns(pl.lit("archive").alias("source"))])
    assert warehouse.upsert(KLINES, twice) == 5
    assert stored(warehouse)["source"].unique().to_list() == ["archive"]


def test_a_failed_write_leaves_nothing_behind(any_warehouse_url):
    warehouse = open_warehouse(any_warehouse_url)
    warehouse.upsert(KLINES, klines_frame("BTCUSDT", T0, 10))
    bad = klines_frame("ETHUSDT", T0, 10).with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("close")).alias("close")
    )
    with pytest.raises(Exception, match="(?i)NOT NULL|null value"):
        warehouse.upsert(KLINES, bad)
    assert stored(warehouse)["symbol"].unique().to_list() == ["BTCUSDT"]


def _writer(url: str, symbol: str, offset: int, rounds: int) -> None:
    warehouse = open_warehouse(url)
    for index in range(rounds):
        first = T0 + dt.timedelta(minutes=offset + index * 50)
        warehouse.upsert(KLINES, klines_frame(symbol, first, 400))


def test_concurrent_writer_processes_with_overlapping_windows_lose_nothing(any_warehouse_url):
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_writer, args=(any_warehouse_url, "BTCUSDT", 0, 12)),
        context.Process(target=_writer, args=(any_warehouse_url, "BTCUSDT", 25, 12)),
        context.Process(target=_writer, args=(any_warehouse_url, "ETHUSDT", 0, 12)),
    ]
    for process in writers:
        process.start()
    reader = open_warehouse(any_warehouse_url)
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    rows = stored(reader)
    btc = rows.filter(pl.col("symbol") == "BTCUSDT")
    # writer 1 covers minutes [0, 950), writer 2 [25, 975): the union, each once
    assert btc.height == 975
    assert btc["open_time"].is_unique().all()
    assert btc["open_time"].min() == T0 and btc["open_time"].max() == T0 + dt.timedelta(minutes=974)
    assert rows.filter(pl.col("symbol") == "ETHUSDT").height == 950


def test_threads_opening_a_duckdb_file_at_once_each_write(tmp_path):
    """DuckDB 2.0 builds a file's in-process instance on the first connect: two threads connecting
    at that moment got a half-built one ("python_arrow_scan does not exist", "Unique file handle
    conflict"); the ingest's two concurrent writes do exactly that on a fresh process."""
    warehouse = open_warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    stored(warehouse)  # the file and its schema exist
    for attempt in range(30):
        start = threading.Barrier(3)
        errors: list[str] = []

        frames = {symbol: klines_frame(symbol, dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=attempt), 10)
                  for symbol in ("AUSDT", "BUSDT")}

        def write(symbol: str) -> None:
            arrow = frames[symbol].to_arrow()
            start.wait()
            try:  # as upsert does, from the connect on
                with warehouse.connect() as con:
                    con.register("incoming", arrow)
                    con.execute(f"INSERT INTO market_data.klines SELECT {', '.join(KLINES.columns)} FROM incoming")
            except Exception as exc:  # the test reports every thread's failure, not the first
                errors.append(f"{exc.__class__.__name__}: {exc}")

        threads = [threading.Thread(target=write, args=(symbol,)) for symbol in frames]
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join()
        assert errors == [], errors
    assert stored(warehouse).height == 30 * 20


def _open_when_free(path: str, began: float, answer) -> None:
    """In another process: DuckDB's own connect (no waiting of ours), tried until the file is free."""
    import time

    import duckdb

    while True:
        try:
            with duckdb.connect(path, read_only=True) as con:
                answer.put((time.time() - began, con.execute("SELECT count(*) FROM market_data.klines").fetchone()[0]))
                return
        except duckdb.IOException:
            time.sleep(0.01)


def test_a_process_keeps_the_duckdb_file_only_while_it_uses_it(tmp_path):
    """Opening the file for each of an asset's queries cost ~20 ms and a checkpoint each, so a
    process keeps it open while its operations follow one another, and lets it go when idle and
    at least every few seconds when busy: another process waiting for the file gets it."""
    import queue
    import time

    path = tmp_path / "w.duckdb"
    warehouse = open_warehouse(f"duckdb:///{path}")
    warehouse.upsert(KLINES, klines_frame("BTCUSDT", T0, 100))
    context = multiprocessing.get_context("spawn")

    # idle: this process stays alive and asks nothing more; the file is free within a second or so
    answer = context.Queue()
    began = time.time()
    other = context.Process(target=_open_when_free, args=(str(path), began, answer))
    other.start()
    waited, rows = answer.get(timeout=60)
    other.join(timeout=60)
    assert rows == 100

    # busy: a stream of queries with no pause for 20 s; the other process still gets the file,
    # each of our queries waiting while it has it, and every query answered
    answer = context.Queue()
    other = context.Process(target=_open_when_free, args=(str(path), time.time(), answer))
    counts, began = [], time.monotonic()
    other.start()
    while time.monotonic() - began < 20:
        counts.append(stored(warehouse).height)
        with contextlib.suppress(queue.Empty):
            if answer.get_nowait()[1] == 100:
                break
    else:
        raise AssertionError(f"the other process did not get the file in 20 s of our {len(counts)} queries")
    other.join(timeout=60)
    assert set(counts) == {100} and len(counts) > 10


def test_bad_urls_and_the_ambiguous_file_name_are_refused(tmp_path):
    with pytest.raises(WarehouseError, match="is not a warehouse URL"):
        open_warehouse("sqlite:///x.db")
    with pytest.raises(WarehouseError, match="makes `market_data.klines` ambiguous"):
        open_warehouse(f"duckdb:///{tmp_path / 'market_data.duckdb'}")
    with pytest.raises(WarehouseError) as refused:
        open_warehouse("postgresql://me:secret@127.0.0.1:5432/no_such_database").query("SELECT 1")
    message = str(refused.value)
    assert message.startswith("PostgreSQL warehouse 127.0.0.1:5432/no_such_database: ")
    assert "no_such_database" in message and "secret" not in message


def test_a_postgresql_key_stored_between_the_probe_and_the_copy_is_updated_not_refused(postgres_url):
    """A fresh range is COPYed straight into the table; should another writer commit one of its
    keys meanwhile, the window is upserted instead: no error, every row once, the newer values."""
    import concurrent.futures
    import time

    import psycopg2

    warehouse = open_warehouse(postgres_url)
    warehouse.query("SELECT 1")  # the schema in place
    frame = klines_frame("BTCUSDT", T0, 500, bump=1.0)
    other = klines_frame("BTCUSDT", T0 + dt.timedelta(minutes=100), 1)
    admin = psycopg2.connect(postgres_url)
    try:
        with admin.cursor() as cur, concurrent.futures.ThreadPoolExecutor(1) as pool:
            # the other writer's row, not yet committed: the probe cannot see it, the COPY waits on it
            cur.execute("INSERT INTO market_data.klines SELECT venue, market, symbol, timeframe, open_time, "
                        "open, high, low, close, volume, quote_volume, trades, taker_buy_volume, "
                        "taker_buy_quote_volume, source, ingested_at FROM (VALUES (%s, %s, %s, %s, %s::timestamptz, "
                        "1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, 1.0, 1.0, 'rest', now())) AS v(venue, market, symbol, "
                        "timeframe, open_time, open, high, low, close, volume, quote_volume, trades, "
                        "taker_buy_volume, taker_buy_quote_volume, source, ingested_at)",
                        ["binance", "spot", "BTCUSDT", "1m", other["open_time"][0]])
            writing = pool.submit(warehouse.upsert, KLINES, frame)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                cur.execute("SELECT pg_stat_clear_snapshot()")
                cur.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
                waiting = [query for (query,) in cur.fetchall()]
                if waiting:
                    break
                time.sleep(0.02)
            assert waiting and waiting[0].startswith("COPY market_data.klines "), waiting
            admin.commit()
            assert writing.result(timeout=60) == 500
    finally:
        admin.close()
    rows = stored(warehouse)
    assert rows.height == 500 and rows["open_time"].is_unique().all()
    assert rows["high"].to_list() == frame["high"].to_list()  # the later writer's values, the other row's too


def _terminate_writes(url: str, times: int, write):
    """Start `write()` while market_data.klines is locked, so it waits inside its transaction,
    then terminate the backend of that write and of its next `times - 1` attempts with
    `pg_terminate_backend`, as a server restart or an administrator would. (the future of
    `write()`, what each terminated backend was running)."""
    import time

    import psycopg2

    admin = psycopg2.connect(url)
    caught: dict[int, str] = {}
    try:
        with admin.cursor() as cur:
            cur.execute("LOCK TABLE market_data.klines IN ACCESS EXCLUSIVE MODE")
            writing = write()
            deadline = time.monotonic() + 30
            while len(caught) < times and time.monotonic() < deadline:
                cur.execute("SELECT pg_stat_clear_snapshot()")  # the view is a snapshot per transaction
                cur.execute("SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
                for pid, query in cur.fetchall():
                    if pid not in caught:
                        cur.execute("SELECT pg_terminate_backend(%s)", [pid])
                        caught[pid] = query
                time.sleep(0.02)
            assert len(caught) == times, caught
        admin.rollback()  # the lock goes: a next attempt proceeds
        return writing, list(caught.values())
    finally:
        admin.close()


def test_a_postgresql_connection_lost_mid_write_is_written_again_once_then_fails_naming_the_cause(postgres_url):
    import concurrent.futures

    warehouse = open_warehouse(postgres_url)
    first = klines_frame("BTCUSDT", T0, 500)
    warehouse.upsert(KLINES, first)
    later = klines_frame("BTCUSDT", T0 + dt.timedelta(minutes=250), 500, bump=1.0)  # 250 stored, 250 new
    third = klines_frame("BTCUSDT", T0 + dt.timedelta(minutes=600), 400, bump=2.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # lost once: written again on a new connection, every row once
        writing, caught = _terminate_writes(postgres_url, 1, lambda: pool.submit(warehouse.upsert, KLINES, later))
        assert writing.result(timeout=60) == 500
        rows = stored(warehouse)
        assert rows.height == 750 and rows["open_time"].is_unique().all()
        assert rows["high"].to_list() == first["high"][:250].to_list() + later["high"].to_list()
        # lost twice: the write fails naming the server's reason, and nothing of it is visible
        writing, more = _terminate_writes(postgres_url, 2, lambda: pool.submit(warehouse.upsert, KLINES, third))
        with pytest.raises(WarehouseError) as failed:
            writing.result(timeout=60)
    assert all("market_data.klines" in query for query in caught + more), caught + more
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"PostgreSQL warehouse 127.0.0.1:5432/{postgres_url.rsplit('/', 1)[1]}: writing 400 rows "
                              "to market_data.klines failed (and again on a new connection), nothing of them written: ")
    # the server's reason as the client saw it, not the rollback's "connection already closed"
    assert ("terminating connection due to administrator command" in message
            or "server closed the connection unexpectedly" in message), message
    assert "already closed" not in message
    assert stored(warehouse).equals(rows)


def test_postgresql_binary_and_csv_copies_store_the_same_rows(postgres_url):
    """A batch of one series goes in COPY's binary format, one of several (or with a NULL) as CSV:
    both read back as written, dates, small integers and microseconds included."""
    from marketdata_assets.datasets.fear_greed import FEAR_GREED
    from marketdata_assets.warehouse.postgres import binary_copy

    warehouse = open_warehouse(postgres_url)
    one = klines_frame("BTCUSDT", T0, 300).with_columns(  # microseconds survive the trip
        pl.col("ingested_at").dt.offset_by("123456us"))
    several = pl.concat([klines_frame("ETHUSDT", T0, 5), klines_frame("SOLUSDT", T0, 5)])
    assert binary_copy(one, warehouse._column_types(KLINES)) is not None
    assert binary_copy(several, warehouse._column_types(KLINES)) is None
    for frame in (one, several):
        assert warehouse.upsert(KLINES, frame) == frame.height
    stored_rows = stored(warehouse)
    assert stored_rows.equals(pl.concat([one, several]))  # BTCUSDT, ETHUSDT, SOLUSDT
    days = pl.DataFrame({
        "date": [dt.date(1999, 12, 31), dt.date(2000, 1, 1), dt.date(2024, 2, 29)],
        "value": [20, 25, 30], "classification": ["Fear"] * 3, "source": ["rest"] * 3,
        "ingested_at": [T0] * 3,
    }).cast(FEAR_GREED.schema)  # type: ignore[arg-type]
    assert binary_copy(days, warehouse._column_types(FEAR_GREED)) is not None
    warehouse.upsert(FEAR_GREED, days)
    assert warehouse.query("SELECT * FROM market_data.fear_greed ORDER BY date").equals(days)


def test_a_klines_table_made_before_okx_and_bybit_takes_bars_without_trade_counts(any_warehouse_url, tmp_path):
    """A warehouse whose klines table was made when trades and taker volumes were NOT NULL: opened
    now, it stores a venue's bars that have none (as NULL, never invented), and keeps Binance's."""
    old = """CREATE SCHEMA IF NOT EXISTS market_data;
    CREATE TABLE market_data.klines (venue TEXT NOT NULL, market TEXT NOT NULL, symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL, open_time TIMESTAMPTZ NOT NULL, open DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL, close DOUBLE PRECISION NOT NULL,
    volume DOUBLE PRECISION NOT NULL, quote_volume DOUBLE PRECISION NOT NULL, trades BIGINT NOT NULL,
    taker_buy_volume DOUBLE PRECISION NOT NULL, taker_buy_quote_volume DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL, ingested_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (venue, market, symbol, timeframe, open_time))"""
    if any_warehouse_url.startswith("duckdb"):
        import duckdb

        with duckdb.connect(any_warehouse_url.removeprefix("duckdb:///")) as con:
            con.execute(old)
    else:
        import psycopg2

        with contextlib.closing(psycopg2.connect(any_warehouse_url)) as con, con.cursor() as cur:
            cur.execute(old)
            con.commit()
    warehouse = open_warehouse(any_warehouse_url)
    binance = klines_frame("BTCUSDT", T0, 3)
    okx = binance.with_columns(venue=pl.lit("okx"), symbol=pl.lit("BTC-USDT"), trades=None, taker_buy_volume=None,
                               taker_buy_quote_volume=None).cast(KLINES.schema)
    assert warehouse.upsert(KLINES, binance) == 3 and warehouse.upsert(KLINES, okx) == 3
    rows = warehouse.query("SELECT venue, count(trades) AS counted, count(*) AS n FROM market_data.klines GROUP BY 1 "
                           "ORDER BY 1")
    assert rows.rows() == [("binance", 3, 3), ("okx", 0, 3)]
    from marketdata_assets.validation import KLINE_BREAKS_A_RULE

    assert warehouse.query(f"SELECT count(*) AS n FROM market_data.klines WHERE {KLINE_BREAKS_A_RULE}")["n"][0] == 0
