"""Gamma exposure of Deribit's option chains (issue 20, in progress): the tables a snapshot fills.

A snapshot keeps the raw chain (market_data.option_chain_snapshots), so GEX can be recomputed
later under other assumptions. The asset (`deribit/gex/<CURRENCY>`, hourly partitions, only the
hour in progress can be captured) is not declared yet: this module holds no DATASET.
"""

from __future__ import annotations

import polars as pl

from marketdata_assets.schemas import UTC_TIME, TableSpec

OPTION_CHAIN_SNAPSHOTS = TableSpec(
    name="option_chain_snapshots",
    schema=pl.Schema({
        "snapshot_time": UTC_TIME,  # when Deribit answered (its creation_timestamp)
        "currency": pl.String,  # BTC | ETH
        "instrument_name": pl.String,  # BTC-27DEC24-100000-C
        "expiry": UTC_TIME,  # 08:00 UTC
        "strike": pl.Float64,  # USD
        "option_type": pl.String,  # call | put
        "open_interest": pl.Float64,  # coins (Deribit's contract multiplier is 1)
        "mark_iv": pl.Float64,  # percent
        "mark_price": pl.Float64,  # in the currency
        "underlying_price": pl.Float64,  # USD: the expiry's forward
        "source": pl.String,  # 'rest'
        "ingested_at": UTC_TIME,
    }),
    primary_key=("currency", "instrument_name", "snapshot_time"),
)
