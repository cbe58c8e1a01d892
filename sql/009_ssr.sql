-- The stablecoin supply ratio, derived from market_caps and stablecoin_supply per UTC day. Same DDL
-- for DuckDB and PostgreSQL; columns match datasets/ssr.py's SSR.
CREATE TABLE IF NOT EXISTS market_data.ssr (
    date                   DATE             NOT NULL,  -- the UTC day
    asset                  TEXT             NOT NULL,  -- BTC
    ssr                    DOUBLE PRECISION NOT NULL,  -- market_cap_usd / stablecoin_supply_usd
    market_cap_usd         DOUBLE PRECISION NOT NULL,  -- the numerator, as stored in market_caps
    stablecoin_supply_usd  DOUBLE PRECISION NOT NULL,  -- every peg's circulating USD that day
    source                 TEXT             NOT NULL,  -- 'derived'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (asset, date)
);
