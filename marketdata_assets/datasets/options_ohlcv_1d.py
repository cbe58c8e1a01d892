"""Daily bars of options on CME Globex futures from Databento: `databento_glbx/options_ohlcv_1d/<ROOT>`,
every option on the root's futures (parent symbol `ROOT.OPT`) that traded on a UTC day, with its
contract from Databento's definition schema (raw symbol, underlying future, expiration, strike,
call or put), in market_data.options_bars.

Catalog: `series: [{source: databento_glbx, dataset: options_ohlcv_1d, keys: [ES, CL], start_date: …}]`.
Monthly partitions, a month a request. The checks are the futures bars' (futures_bars.py): the
sessions check asks for an option bar of the root on every Globex day (WARN: a root's options can
pass a day without a trade).
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl

from marketdata_assets.catalog import Series
from marketdata_assets.datasets.base import Bounds
from marketdata_assets.datasets.futures_bars import GLBX, SOURCE, FuturesBars
from marketdata_assets.schemas import UTC_TIME, TableSpec
from marketdata_assets.settings import Settings
from marketdata_assets.sources.databento import OPTIONS_1D, DatabentoOptionsSource
from marketdata_assets.warehouse import Warehouse

OPTIONS_BARS = TableSpec(
    name="options_bars",
    schema=pl.Schema({
        "dataset": pl.String,  # Databento's dataset: GLBX.MDP3
        "parent": pl.String,  # the parent symbol: ES.OPT
        "ts_event": UTC_TIME,  # the bar's UTC day
        "instrument_id": pl.Int64,  # Databento's id of the option
        "raw_symbol": pl.String,  # the option: ESM4 C5200
        "underlying": pl.String,  # its future: ESM4
        "expiration": UTC_TIME,
        "strike": pl.Float64,  # in the future's price units
        "option_type": pl.String,  # C | P
        "open": pl.Float64,  # premium
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Int64,  # contracts
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("dataset", "parent", "instrument_id", "ts_event"),
)


class OptionsOhlcv1d(FuturesBars):
    name = "options_ohlcv_1d"
    title = "Daily bars of CME Globex options on futures (Databento ohlcv-1d, parent symbology)"
    table = OPTIONS_BARS
    schema = OPTIONS_1D
    stype_in = "parent"  # ES.OPT: every option on the root's futures
    position = 72
    cron = "0 2 * * *"
    missing_severity = dg.AssetCheckSeverity.WARN  # a root's options may pass a day without a trade

    def validate_entry(self, keys: tuple[str, ...], options: Any) -> None:
        if "roll" in options:
            raise ValueError(f"roll: {self.name} reads every option of the root, not a continuous contract")
        super().validate_entry(keys, options)

    def symbol(self, series: Series) -> str:
        return f"{series.key}.OPT"

    def describe_series(self, series: Series, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        return (f"{self.title}: every option of {self.symbol(series)} ({GLBX}) that traded, with its strike, expiry "
                f"and type, in {self.table.qualified_name}; monthly UTC partitions from {partitions.start:%Y-%m-%d}, "
                "the one in progress included.")

    def open_source(self, series: Series, upstreams: Any, bounds: Bounds, warehouse: Warehouse) -> DatabentoOptionsSource:
        return DatabentoOptionsSource(upstreams.url("databento_url"), Settings.from_env().databento_api_key,
                                      self.schema, OPTIONS_BARS, self.name)

    def row_filter(self, series: Series, alias: str = "") -> tuple[str, list[Any]]:
        return f"{alias}dataset = ? AND {alias}parent = ?", [GLBX, self.symbol(series)]

    def summary_sql(self, symbol: str | None) -> tuple[str, list[Any]]:
        return (f"SELECT '{SOURCE}/{self.name}/' || split_part(parent, '.', 1) AS series, count(*) AS rows, "
                f"min(ts_event) AS first_time, max(ts_event) AS last_time FROM {self.table.qualified_name} "
                "WHERE (CAST(? AS TEXT) IS NULL OR split_part(parent, '.', 1) = ?) GROUP BY 1", [symbol, symbol])


DATASET = OptionsOhlcv1d()
