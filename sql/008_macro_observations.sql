-- FRED series, every vintage (ALFRED). Same DDL for DuckDB and PostgreSQL; columns match
-- datasets/macro.py's MACRO_OBSERVATIONS. The as-of function is in sql/<dialect>/.
CREATE TABLE IF NOT EXISTS market_data.macro_observations (
    series_id              TEXT             NOT NULL,  -- FRED's id: DGS10, CPIAUCSL, …
    date                   DATE             NOT NULL,  -- the observation's date (its period's first day)
    value                  DOUBLE PRECISION,           -- NULL where FRED has '.'
    realtime_start         DATE             NOT NULL,  -- first day this value was FRED's
    realtime_end           DATE             NOT NULL,  -- last day it was (9999-12-31: still is)
    source                 TEXT             NOT NULL,  -- 'rest'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (series_id, realtime_start, date)
);

-- Each observation's newest vintage: the series as FRED shows it today.
CREATE OR REPLACE VIEW market_data.macro_latest AS
SELECT series_id, date, value, realtime_start FROM (
    SELECT series_id, date, value, realtime_start,
           row_number() OVER (PARTITION BY series_id, date ORDER BY realtime_start DESC) AS newest
    FROM market_data.macro_observations) vintages
WHERE newest = 1;
