-- market_data.macro_as_of(series_id, day): each observation of the series as known on `day` (the
-- vintage with the latest realtime_start on or before it). datasets/macro.py's as_of() says the same.
CREATE OR REPLACE MACRO market_data.macro_as_of(wanted_series, known_on) AS TABLE
SELECT date, value, realtime_start FROM (
    SELECT date, value, realtime_start,
           row_number() OVER (PARTITION BY date ORDER BY realtime_start DESC) AS newest
    FROM market_data.macro_observations
    WHERE series_id = wanted_series AND realtime_start <= CAST(known_on AS DATE)) known
WHERE newest = 1 ORDER BY date;
