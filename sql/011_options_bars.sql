-- Daily bars of options on CME Globex futures from Databento (GLBX.MDP3, parent symbols ES.OPT),
-- each with its contract. Same DDL for DuckDB and PostgreSQL; columns match
-- datasets/options_ohlcv_1d.py's OPTIONS_BARS.
CREATE TABLE IF NOT EXISTS market_data.options_bars (
    dataset                TEXT             NOT NULL,  -- Databento's dataset: GLBX.MDP3
    parent                 TEXT             NOT NULL,  -- the parent symbol: ES.OPT
    ts_event               TIMESTAMPTZ      NOT NULL,  -- the bar's UTC day
    instrument_id          BIGINT           NOT NULL,  -- Databento's id of the option
    raw_symbol             TEXT             NOT NULL,  -- the option: ESM4 C5200
    underlying             TEXT             NOT NULL,  -- its future: ESM4
    expiration             TIMESTAMPTZ      NOT NULL,
    strike                 DOUBLE PRECISION NOT NULL,  -- in the future's price units
    option_type            TEXT             NOT NULL,  -- C | P
    open                   DOUBLE PRECISION NOT NULL,  -- premium
    high                   DOUBLE PRECISION NOT NULL,
    low                    DOUBLE PRECISION NOT NULL,
    close                  DOUBLE PRECISION NOT NULL,
    volume                 BIGINT           NOT NULL,  -- contracts
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (dataset, parent, instrument_id, ts_event)
);
