-- Audit tables. Same DDL for DuckDB and PostgreSQL; columns match schemas.REJECTED_ROWS and
-- schemas.KNOWN_GAPS.

-- Upstream rows that failed validation at ingest: kept with the reason and the row as sent,
-- never written to their dataset's table.
CREATE TABLE IF NOT EXISTS market_data.rejected_rows (
    dataset                TEXT             NOT NULL,  -- 'klines'
    venue                  TEXT             NOT NULL,
    market                 TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    timeframe              TEXT             NOT NULL,
    open_time              TIMESTAMPTZ      NOT NULL,
    reason                 TEXT             NOT NULL,
    payload                TEXT             NOT NULL,  -- the row exactly as the upstream sent it
    origin                 TEXT             NOT NULL,  -- the request or archive file it came in
    source                 TEXT             NOT NULL,  -- 'rest' | 'archive'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (dataset, venue, market, symbol, timeframe, open_time)
);

-- Windows known to hold no bars at the exchange: documented maintenance (seeded from
-- maintenance.yaml) and windows `marketdata gaps verify` found empty on a second fetch.
-- symbol and timeframe '*' mean every symbol / timeframe of the venue's market.
CREATE TABLE IF NOT EXISTS market_data.known_gaps (
    venue                  TEXT             NOT NULL,
    market                 TEXT             NOT NULL,
    symbol                 TEXT             NOT NULL,
    timeframe              TEXT             NOT NULL,
    gap_start              TIMESTAMPTZ      NOT NULL,
    gap_end                TIMESTAMPTZ      NOT NULL,  -- half-open: [gap_start, gap_end)
    reason                 TEXT             NOT NULL,
    source                 TEXT             NOT NULL,  -- 'maintenance' | 'verified'
    ingested_at            TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (venue, market, symbol, timeframe, gap_start)
);
