-- Market capitalization per asset and UTC day (blockchain.com charts: BTC). Same DDL for DuckDB and
-- PostgreSQL; columns match datasets/market_cap.py's MARKET_CAPS.
CREATE TABLE IF NOT EXISTS market_data.market_caps (
    date                   DATE             NOT NULL,  -- the UTC day of the point
    asset                  TEXT             NOT NULL,  -- BTC
    market_cap_usd         DOUBLE PRECISION NOT NULL,  -- USD
    supply                 DOUBLE PRECISION,           -- coins in circulation that day
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (asset, date)
);
