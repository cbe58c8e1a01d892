"""Long/short ratios of Binance USD-M perpetuals every 5 minutes: all accounts, top-trader accounts
and positions, taker buy/sell volume (`binance_perp/long_short/<SYMBOL>`), in
market_data.long_short_ratios."""

from marketdata_assets.datasets.futures_statistics import FuturesStatistic
from marketdata_assets.defs.checks import SNAPSHOT_CHECKS
from marketdata_assets.schemas import LONG_SHORT_RATIOS


class LongShort(FuturesStatistic):
    name = "long_short"
    table = LONG_SHORT_RATIOS
    title = "Long/short ratios"
    position = 40
    checks = SNAPSHOT_CHECKS["long_short"][:2]
    gap_check = SNAPSHOT_CHECKS["long_short"][0]


DATASET = LongShort()
