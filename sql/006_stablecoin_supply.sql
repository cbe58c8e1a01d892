-- Stablecoin supply (DefiLlama), the circulating USD value of each peg per UTC day. Same DDL for
-- DuckDB and PostgreSQL; columns match datasets/stablecoin_supply.py's STABLECOIN_SUPPLY.
CREATE TABLE IF NOT EXISTS market_data.stablecoin_supply (
    date                   DATE             NOT NULL,  -- the UTC day of DefiLlama's point
    peg                    TEXT             NOT NULL,  -- peggedUSD, peggedEUR, …
    circulating_usd        DOUBLE PRECISION NOT NULL,  -- the peg's circulating supply, USD
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (peg, date)
);
