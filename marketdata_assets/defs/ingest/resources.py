"""Dagster resources: the warehouse and the upstreams, configured from Settings. Every asset takes
these two; its dataset opens its source from `upstreams` (datasets/<name>.py, `open_source`)."""

import dagster as dg

from marketdata_assets.ingest import DEFAULT_ROWS_PER_WRITE
from marketdata_assets.settings import ENDPOINT_DEFAULTS, Settings
from marketdata_assets.sources.binance import BINANCE_FUTURES, BINANCE_SPOT
from marketdata_assets.sources.binance_klines_rest import BinanceKlinesClient, Market
from marketdata_assets.warehouse import Warehouse, open_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse named by MARKETDATA_WAREHOUSE_URL, written `rows_per_write` rows a transaction."""

    url: str
    rows_per_write: int = DEFAULT_ROWS_PER_WRITE

    def open(self) -> Warehouse:
        return open_warehouse(self.url)


class UpstreamsResource(dg.ConfigurableResource):
    """Every upstream's base URL, by its setting's name (`binance_spot_url`, `fear_greed_url`, …),
    Binance's request-weight budgets and OKX's candle request budgets to pace against, and where
    Binance klines come from by default (auto | archive | rest)."""

    urls: dict[str, str]
    binance_spot_weight_limit: int = 6000
    binance_futures_weight_limit: int = 2400
    binance_max_concurrency: int = 10
    klines_source: str = "auto"
    okx_history_candles_per_2s: int = 20
    okx_candles_per_2s: int = 40

    def url(self, setting: str) -> str:
        return self.urls[setting]

    def klines_client(self, market: Market) -> BinanceKlinesClient:
        """Binance klines REST of `market`, paced to its weight budget."""
        spot = market == "spot"
        return BinanceKlinesClient(
            market, self.url((BINANCE_SPOT if spot else BINANCE_FUTURES).url_setting),
            weight_limit=self.binance_spot_weight_limit if spot else self.binance_futures_weight_limit,
            max_concurrency=self.binance_max_concurrency,
        )


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "warehouse": WarehouseResource(
            url=dg.EnvVar("MARKETDATA_WAREHOUSE_URL") if settings.warehouse_url_in_environment else settings.warehouse_url,
            rows_per_write=settings.rows_per_write,
        ),
        "upstreams": UpstreamsResource(
            urls={name: getattr(settings, name) for name in ENDPOINT_DEFAULTS},
            binance_spot_weight_limit=settings.binance_spot_weight_limit,
            binance_futures_weight_limit=settings.binance_futures_weight_limit,
            binance_max_concurrency=settings.binance_max_concurrency,
            klines_source=settings.klines_source,
            okx_history_candles_per_2s=settings.okx_history_candles_per_2s,
            okx_candles_per_2s=settings.okx_candles_per_2s,
        ),
    }
