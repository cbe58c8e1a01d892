-- Gamma exposure of Deribit's option chains: the raw chain of each snapshot, GEX per expiry and
-- strike, and a summary line per snapshot. Same DDL for DuckDB and PostgreSQL; columns match
-- datasets/gex.py's OPTION_CHAIN_SNAPSHOTS, GEX_SNAPSHOTS and GEX_SUMMARY.
CREATE TABLE IF NOT EXISTS market_data.option_chain_snapshots (
    snapshot_time          TIMESTAMPTZ      NOT NULL,  -- when Deribit answered
    currency               TEXT             NOT NULL,  -- BTC | ETH
    instrument_name        TEXT             NOT NULL,  -- BTC-27DEC24-100000-C
    expiry                 TIMESTAMPTZ      NOT NULL,  -- 08:00 UTC
    strike                 DOUBLE PRECISION NOT NULL,  -- USD
    option_type            TEXT             NOT NULL,  -- call | put
    open_interest          DOUBLE PRECISION NOT NULL,  -- coins
    mark_iv                DOUBLE PRECISION NOT NULL,  -- percent
    mark_price             DOUBLE PRECISION NOT NULL,  -- in the currency
    underlying_price       DOUBLE PRECISION NOT NULL,  -- USD, the expiry's forward
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (currency, instrument_name, snapshot_time)
);
CREATE TABLE IF NOT EXISTS market_data.gex_snapshots (
    snapshot_time          TIMESTAMPTZ      NOT NULL,
    currency               TEXT             NOT NULL,
    expiry                 TIMESTAMPTZ      NOT NULL,
    strike                 DOUBLE PRECISION NOT NULL,
    call_gex               DOUBLE PRECISION NOT NULL,  -- USD per 1% move of the underlying
    put_gex                DOUBLE PRECISION NOT NULL,
    net_gex                DOUBLE PRECISION NOT NULL,
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (currency, expiry, strike, snapshot_time)
);
CREATE TABLE IF NOT EXISTS market_data.gex_summary (
    snapshot_time          TIMESTAMPTZ      NOT NULL,
    currency               TEXT             NOT NULL,
    spot                   DOUBLE PRECISION NOT NULL,  -- the nearest expiry's underlying price, USD
    net_gex                DOUBLE PRECISION NOT NULL,  -- USD per 1% move
    zero_gamma             DOUBLE PRECISION,           -- where net GEX changes sign within 20% of spot, if it does
    call_wall              DOUBLE PRECISION,
    put_wall               DOUBLE PRECISION,
    lines                  BIGINT           NOT NULL,  -- option lines in the chain
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (currency, snapshot_time)
);
