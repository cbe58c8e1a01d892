"""Settings: real public endpoints by default, the environment overrides, bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketdata_assets.settings import Settings, SettingsError


def test_defaults_are_the_real_endpoints_and_the_embedded_warehouse():
    settings = Settings.from_env({})
    assert settings.warehouse_url == "duckdb:///.marketdata/warehouse.duckdb"
    assert settings.binance_spot_url == "https://api.binance.com"
    assert settings.binance_futures_url == "https://fapi.binance.com"
    assert settings.binance_archive_url == "https://data.binance.vision"
    assert settings.catalog_path is None
    assert (settings.binance_spot_weight_limit, settings.binance_futures_weight_limit) == (6000, 2400)
    assert settings.klines_source == "auto"


def test_environment_overrides():
    settings = Settings.from_env({
        "MARKETDATA_WAREHOUSE_URL": "duckdb:////data/w.duckdb",
        "MARKETDATA_CATALOG": "/etc/marketdata/catalog.yaml",
        "MARKETDATA_BINANCE_SPOT_URL": "http://127.0.0.1:8900",
        "MARKETDATA_BINANCE_FUTURES_URL": "http://127.0.0.1:8901",
        "MARKETDATA_BINANCE_SPOT_WEIGHT_LIMIT": "3000",
        "MARKETDATA_BINANCE_ARCHIVE_URL": "http://127.0.0.1:8902",
        "MARKETDATA_KLINES_SOURCE": "rest",
        "FRED_API_KEY": "s3cret-fred-key",
    })
    assert settings.warehouse_url == "duckdb:////data/w.duckdb"
    assert settings.catalog_path == Path("/etc/marketdata/catalog.yaml")
    assert settings.binance_spot_url == "http://127.0.0.1:8900"
    assert settings.binance_futures_url == "http://127.0.0.1:8901"
    assert settings.binance_spot_weight_limit == 3000
    assert settings.binance_archive_url == "http://127.0.0.1:8902" and settings.klines_source == "rest"
    assert settings.fred_api_key == "s3cret-fred-key" and "s3cret" not in repr(settings)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MARKETDATA_BINANCE_MAX_CONCURRENCY", "lots", "='lots' is not a whole number"),
    ("MARKETDATA_BINANCE_MAX_CONCURRENCY", "0", "=0 must be at least 1"),
    ("MARKETDATA_OKX_HISTORY_CANDLES_PER_2S", "0", "=0 must be at least 1"),
    ("MARKETDATA_CROSS_VENUE_MAX_DIFFERENCE", "1%", "='1%' is not a share (0.01 is 1%)"),
    ("MARKETDATA_CROSS_VENUE_MAX_DIFFERENCE", "1", "=1 must be a share above 0 and below 1 (0.01 is 1%)"),
    ("MARKETDATA_DATABENTO_MAX_COST", "-1", "=-1 must be an amount of USD, 0 or more"),
])
def test_bad_numbers_name_the_variable(variable, value, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == variable + message


def test_the_venue_settings_default_to_the_venues_own_figures():
    settings = Settings.from_env({})
    assert (settings.okx_history_candles_per_2s, settings.okx_candles_per_2s) == (20, 40)
    assert settings.cross_venue_max_difference == 0.01
    assert Settings.from_env({"MARKETDATA_CROSS_VENUE_MAX_DIFFERENCE": "0.002"}).cross_venue_max_difference == 0.002


def test_an_unknown_klines_source_is_named():
    with pytest.raises(SettingsError, match="MARKETDATA_KLINES_SOURCE='s3' is not one of auto, archive, rest"):
        Settings.from_env({"MARKETDATA_KLINES_SOURCE": "s3"})


def test_urls_are_redacted_before_they_are_shown():
    from marketdata_assets.settings import redact

    assert redact("postgresql://postgres:S3cret@db.internal:5432/md") == "postgresql://postgres:***@db.internal:5432/md"
    assert redact("postgresql://postgres@db/md?sslmode=require&password=S3cret") == \
        "postgresql://postgres@db/md?sslmode=require&password=***"
    assert redact("https://api.stlouisfed.org/fred?series_id=DGS10&api_key=abc123") == \
        "https://api.stlouisfed.org/fred?series_id=DGS10&api_key=***"
    for plain in ("duckdb:///.marketdata/warehouse.duckdb", "duckdb:////tmp/w.duckdb", "postgresql://u@h/db"):
        assert redact(plain) == plain
