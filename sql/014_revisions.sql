-- Every version of a stored row an upsert replaced with other values (warehouse/base.py
-- revision_sql), written in the upsert's own transaction. Same DDL for DuckDB and PostgreSQL.
CREATE TABLE IF NOT EXISTS market_data.revisions (
    table_name  TEXT        NOT NULL,  -- klines, funding_rates, …
    series      TEXT        NOT NULL,  -- the key's values but the time, joined by '/': binance/spot/BTCUSDT/1m
    row_time    TIMESTAMPTZ NOT NULL,  -- the row's time (a day's midnight UTC for a date)
    row_key     TEXT        NOT NULL,  -- the primary key, JSON
    old_values  TEXT        NOT NULL,  -- the replaced row's other columns, JSON
    replaced_at TIMESTAMPTZ NOT NULL,
    run_id      TEXT,                  -- the Dagster run that replaced it (NULL outside one)
    PRIMARY KEY (table_name, series, row_time, replaced_at)
);
