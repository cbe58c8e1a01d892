-- Canonical klines table. Same DDL for DuckDB and PostgreSQL; columns match schemas.KLINES.
CREATE SCHEMA IF NOT EXISTS market_data;

CREATE TABLE IF NOT EXISTS market_data.klines (
    venue                  TEXT             NOT NULL,
    market                 TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    timeframe              TEXT             NOT NULL,
    open_time              TIMESTAMPTZ      NOT NULL,
    open                   DOUBLE PRECISION NOT NULL,
    high                   DOUBLE PRECISION NOT NULL,
    low                    DOUBLE PRECISION NOT NULL,
    close                  DOUBLE PRECISION NOT NULL,
    volume                 DOUBLE PRECISION NOT NULL,
    quote_volume           DOUBLE PRECISION NOT NULL,
    trades                 BIGINT,                     -- NULL where the venue does not count them (OKX, Bybit)
    taker_buy_volume       DOUBLE PRECISION,           -- NULL likewise
    taker_buy_quote_volume DOUBLE PRECISION,
    source                 TEXT             NOT NULL,
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, market, symbol, timeframe, open_time)
);
