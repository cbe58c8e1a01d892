"""Where rows land: schema `market_data`, DDL in sql/. Knows SQL; nothing of Dagster or HTTP."""

from marketdata_assets.warehouse.base import Warehouse, WarehouseError, open_warehouse

__all__ = ["Warehouse", "WarehouseError", "open_warehouse"]
