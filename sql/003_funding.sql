-- Funding rates of perpetual futures. Same DDL for DuckDB and PostgreSQL; columns match
-- schemas.FUNDING_RATES. funding_time is the exact settlement time the venue reports (it jitters
-- by a few ms around the 8-hour marks).
CREATE TABLE IF NOT EXISTS market_data.funding_rates (
    venue                  TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    funding_time           TIMESTAMPTZ      NOT NULL,
    funding_rate           DOUBLE PRECISION NOT NULL,
    mark_price             DOUBLE PRECISION,           -- NULL where the source has none (Binance's archive)
    source                 TEXT             NOT NULL,  -- 'rest' | 'archive'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, symbol, funding_time)
);
