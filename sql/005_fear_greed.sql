-- The Crypto Fear & Greed Index (alternative.me), one value per UTC day. Same DDL for DuckDB and
-- PostgreSQL; columns match datasets/fear_greed.py's FEAR_GREED.
CREATE TABLE IF NOT EXISTS market_data.fear_greed (
    date                   DATE             NOT NULL,  -- the UTC day the value is for
    value                  SMALLINT         NOT NULL,  -- 0 (extreme fear) .. 100 (extreme greed)
    classification         TEXT             NOT NULL,  -- alternative.me's name for the value
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (date)
);
