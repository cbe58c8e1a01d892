"""Dagster resources: the warehouse and the upstream clients, configured from Settings."""


import dagster as dg

from marketdata_assets.settings import Settings
from marketdata_assets.sources.binance import BinanceKlinesClient, Market
from marketdata_assets.warehouse import Warehouse, open_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse named by MARKETDATA_WAREHOUSE_URL."""

    url: str

    def open(self) -> Warehouse:
        return open_warehouse(self.url)


class BinanceResource(dg.ConfigurableResource):
    """Binance REST endpoints and the request-weight budgets to pace against."""

    spot_url: str
    futures_url: str
    spot_weight_limit: int = 6000
    futures_weight_limit: int = 2400
    max_concurrency: int = 10

    def klines_client(self, market: Market) -> BinanceKlinesClient:
        if market == "spot":
            return BinanceKlinesClient(
                "spot", self.spot_url, weight_limit=self.spot_weight_limit,
                max_concurrency=self.max_concurrency,
            )
        return BinanceKlinesClient(
            "perp", self.futures_url, weight_limit=self.futures_weight_limit,
            max_concurrency=self.max_concurrency,
        )


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "warehouse": WarehouseResource(url=settings.warehouse_url),
        "binance": BinanceResource(
            spot_url=settings.binance_spot_url,
            futures_url=settings.binance_futures_url,
            spot_weight_limit=settings.binance_spot_weight_limit,
            futures_weight_limit=settings.binance_futures_weight_limit,
            max_concurrency=settings.binance_max_concurrency,
        ),
    }
