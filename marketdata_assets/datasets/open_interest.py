"""Open interest of Binance USD-M perpetuals every 5 minutes (`binance_perp/open_interest/<SYMBOL>`),
in market_data.open_interest: `open_interest` in the base asset, `open_interest_value` in the quote."""

from marketdata_assets.datasets.futures_statistics import FuturesStatistic
from marketdata_assets.sources.binance_futures_statistics import OPEN_INTEREST


class OpenInterest(FuturesStatistic):
    name = "open_interest"
    table = OPEN_INTEREST
    title = "Open interest (contracts and value)"
    position = 30
    checks = ("open_interest_cadence", "open_interest_non_negative")
    gap_check = "open_interest_cadence"
    series_names = ("open_interest",)
    series_sql = "'open_interest'"
    broken_sql = "open_interest < 0 OR open_interest_value < 0"
    rule = "open interest and its value ≥ 0"
    what = "open interest"


DATASET = OpenInterest()
