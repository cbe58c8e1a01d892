-- Open interest and long/short ratios of perpetual futures, every 5 minutes. Same DDL for DuckDB
-- and PostgreSQL; columns match schemas.OPEN_INTEREST and schemas.LONG_SHORT_RATIOS.
CREATE TABLE IF NOT EXISTS market_data.open_interest (
    venue                  TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    snapshot_time          TIMESTAMPTZ      NOT NULL,  -- on the 5-minute grid, UTC
    open_interest          DOUBLE PRECISION NOT NULL,  -- base asset
    open_interest_value    DOUBLE PRECISION NOT NULL,  -- quote asset
    source                 TEXT             NOT NULL,  -- 'rest' | 'archive'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, symbol, snapshot_time)
);

CREATE TABLE IF NOT EXISTS market_data.long_short_ratios (
    venue                  TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    metric                 TEXT             NOT NULL,  -- global_account | top_trader_account | top_trader_position | taker_volume
    snapshot_time          TIMESTAMPTZ      NOT NULL,  -- on the 5-minute grid, UTC
    ratio                  DOUBLE PRECISION NOT NULL,  -- long / short (taker_volume: buy / sell)
    long_value             DOUBLE PRECISION,           -- account or position share, or buy volume (NULL from the archive)
    short_value            DOUBLE PRECISION,           -- account or position share, or sell volume (NULL from the archive)
    source                 TEXT             NOT NULL,  -- 'rest' | 'archive'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, symbol, metric, snapshot_time)
);
