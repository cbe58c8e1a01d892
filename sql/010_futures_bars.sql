-- CME Globex bars from Databento (GLBX.MDP3), one row per continuous symbol, timeframe and bar.
-- Same DDL for DuckDB and PostgreSQL; columns match datasets/futures_bars.py's FUTURES_BARS.
CREATE TABLE IF NOT EXISTS market_data.futures_bars (
    dataset                TEXT             NOT NULL,  -- Databento's dataset: GLBX.MDP3
    symbol                 TEXT             NOT NULL,  -- the continuous symbol: ES.c.0
    timeframe              TEXT             NOT NULL,  -- 1d (UTC days) | 1h
    ts_event               TIMESTAMPTZ      NOT NULL,  -- the bar's start
    open                   DOUBLE PRECISION NOT NULL,  -- unadjusted prices of the contract it mapped to
    high                   DOUBLE PRECISION NOT NULL,
    low                    DOUBLE PRECISION NOT NULL,
    close                  DOUBLE PRECISION NOT NULL,
    volume                 BIGINT           NOT NULL,  -- contracts traded
    instrument_id          BIGINT           NOT NULL,  -- Databento's id of that contract
    raw_symbol             TEXT,                       -- that contract: ESH4 (NULL if the answer did not define it)
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (dataset, symbol, timeframe, ts_event)
);
