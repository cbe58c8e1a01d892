"""Open interest of Binance USD-M perpetuals every 5 minutes (`binance_perp/open_interest/<SYMBOL>`),
in market_data.open_interest."""

from marketdata_assets.datasets.futures_statistics import FuturesStatistic
from marketdata_assets.defs.checks import SNAPSHOT_CHECKS
from marketdata_assets.schemas import OPEN_INTEREST


class OpenInterest(FuturesStatistic):
    name = "open_interest"
    table = OPEN_INTEREST
    title = "Open interest (contracts and value)"
    position = 30
    checks = SNAPSHOT_CHECKS["open_interest"][:2]
    gap_check = SNAPSHOT_CHECKS["open_interest"][0]


DATASET = OpenInterest()
