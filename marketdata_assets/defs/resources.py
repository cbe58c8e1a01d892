"""Dagster resources: the warehouse and the upstream clients, configured from Settings."""


import dagster as dg

from marketdata_assets.settings import ENDPOINT_DEFAULTS, Settings
from marketdata_assets.sources.binance import BinanceKlinesClient, Market
from marketdata_assets.sources.binance_archive import BinanceArchiveClient
from marketdata_assets.sources.binance_funding import BinanceFundingClient, BinanceFundingSource
from marketdata_assets.sources.binance_klines import BinanceKlinesSource, SourceMode
from marketdata_assets.sources.binance_metrics import BinanceMetricsSource, BinanceStatsClient
from marketdata_assets.sources.bybit import BybitFundingSource
from marketdata_assets.sources.okx import OkxFundingSource
from marketdata_assets.warehouse import Warehouse, open_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse named by MARKETDATA_WAREHOUSE_URL."""

    url: str

    def open(self) -> Warehouse:
        return open_warehouse(self.url)


class BinanceResource(dg.ConfigurableResource):
    """Binance REST endpoints, the archive, the request-weight budgets to pace against, and
    where klines come from by default (auto | archive | rest)."""

    spot_url: str
    futures_url: str
    archive_url: str
    spot_weight_limit: int = 6000
    futures_weight_limit: int = 2400
    max_concurrency: int = 10
    klines_source: str = "auto"

    def klines_source_for(self, market: Market, mode: SourceMode | None = None) -> BinanceKlinesSource:
        """Klines of `market` from the archive and/or REST; `mode` None takes the setting."""
        mode = mode or self.klines_source  # type: ignore[assignment]
        archive = BinanceArchiveClient(self.archive_url) if mode != "rest" else None
        return BinanceKlinesSource(self.klines_client(market), archive, mode)  # type: ignore[arg-type]

    def funding_source(self) -> BinanceFundingSource:
        """USD-M funding rates: the archive's monthly files, REST for the rest."""
        return BinanceFundingSource(
            BinanceFundingClient(self.futures_url, weight_limit=self.futures_weight_limit),
            BinanceArchiveClient(self.archive_url),
        )

    def metrics_source(self) -> BinanceMetricsSource:
        """USD-M open interest and long/short ratios: REST for its last 30 days, the archive's
        daily metrics files before."""
        return BinanceMetricsSource(BinanceStatsClient(self.futures_url), BinanceArchiveClient(self.archive_url))

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


class OkxResource(dg.ConfigurableResource):
    """OKX's public REST API."""

    url: str

    def funding_source(self) -> OkxFundingSource:
        return OkxFundingSource(self.url)


class BybitResource(dg.ConfigurableResource):
    """Bybit's public REST API."""

    url: str

    def funding_source(self) -> BybitFundingSource:
        return BybitFundingSource(self.url)


class UpstreamsResource(dg.ConfigurableResource):
    """The base URL of every upstream, by its setting's name (`fear_greed_url`, …): a dataset's
    source takes its own from here."""

    urls: dict[str, str]

    def url(self, setting: str) -> str:
        return self.urls[setting]


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "warehouse": WarehouseResource(url=settings.warehouse_url),
        "upstreams": UpstreamsResource(urls={name: getattr(settings, name) for name in ENDPOINT_DEFAULTS}),
        "binance": BinanceResource(
            spot_url=settings.binance_spot_url,
            futures_url=settings.binance_futures_url,
            archive_url=settings.binance_archive_url,
            klines_source=settings.klines_source,
            spot_weight_limit=settings.binance_spot_weight_limit,
            futures_weight_limit=settings.binance_futures_weight_limit,
            max_concurrency=settings.binance_max_concurrency,
        ),
        "okx": OkxResource(url=settings.okx_url),
        "bybit": BybitResource(url=settings.bybit_url),
    }
