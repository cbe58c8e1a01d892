"""Long/short ratios of Binance USD-M perpetuals every 5 minutes, one row per snapshot and metric:
all accounts, top-trader accounts and positions, taker buy/sell volume
(`binance_perp/long_short/<SYMBOL>`), in market_data.long_short_ratios."""

from marketdata_assets.datasets.futures_statistics import FuturesStatistic
from marketdata_assets.sources.binance_futures_statistics import LONG_SHORT_METRICS, LONG_SHORT_RATIOS


class LongShort(FuturesStatistic):
    name = "long_short"
    table = LONG_SHORT_RATIOS
    title = "Long/short ratios (all accounts, top-trader accounts and positions, taker buy/sell volume)"
    position = 40
    checks = ("long_short_cadence", "ratios_positive")
    gap_check = "long_short_cadence"
    series_names = LONG_SHORT_METRICS
    series_sql = "metric"
    broken_sql = "ratio <= 0 OR long_value < 0 OR short_value < 0"
    rule = "every ratio > 0, and its long and short parts (where REST gave them) ≥ 0"
    what = "each of the four long/short metrics"
    rest_holds = " (with each ratio's long and short parts)"
    archive_holds = " (ratios only)"


DATASET = LongShort()
