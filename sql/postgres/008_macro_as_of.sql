-- market_data.macro_as_of(series_id, day): each observation of the series as known on `day` (the
-- vintage with the latest realtime_start on or before it). datasets/macro.py's as_of() says the same.
CREATE OR REPLACE FUNCTION market_data.macro_as_of(wanted_series TEXT, known_on DATE)
RETURNS TABLE (date DATE, value DOUBLE PRECISION, realtime_start DATE) LANGUAGE sql STABLE AS $$
SELECT o.date, o.value, o.realtime_start FROM (
    SELECT m.date, m.value, m.realtime_start,
           row_number() OVER (PARTITION BY m.date ORDER BY m.realtime_start DESC) AS newest
    FROM market_data.macro_observations m
    WHERE m.series_id = wanted_series AND m.realtime_start <= known_on) o
WHERE o.newest = 1 ORDER BY o.date
$$;
