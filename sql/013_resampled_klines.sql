-- Bars resampled from the stored 1m klines (datasets/resampled.py). Same DDL for DuckDB and
-- PostgreSQL; columns match datasets/resampled.py's RESAMPLED_KLINES: klines' own, and how many
-- 1m bars each was built from.
CREATE TABLE IF NOT EXISTS market_data.resampled_klines (
    venue                  TEXT             NOT NULL,
    market                 TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    timeframe              TEXT             NOT NULL,  -- the coarser one: 5m, 1h, 4h, 1d, …
    open_time              TIMESTAMPTZ      NOT NULL,
    open                   DOUBLE PRECISION NOT NULL,  -- the first minute's open
    high                   DOUBLE PRECISION NOT NULL,
    low                    DOUBLE PRECISION NOT NULL,
    close                  DOUBLE PRECISION NOT NULL,  -- the last minute's close
    volume                 DOUBLE PRECISION NOT NULL,
    quote_volume           DOUBLE PRECISION NOT NULL,
    trades                 BIGINT,                     -- NULL where the minutes have none (OKX, Bybit)
    taker_buy_volume       DOUBLE PRECISION,
    taker_buy_quote_volume DOUBLE PRECISION,
    minutes                INTEGER          NOT NULL,  -- 1m bars put together (fewer inside a known gap)
    source                 TEXT             NOT NULL,  -- 'resampled'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, market, symbol, timeframe, open_time)
);
