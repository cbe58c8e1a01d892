"""Binance's two REST hosts as venues: spot (api.binance.com) and USD-M futures (fapi.binance.com).
Every answer reports the weight used this minute; errors are `{"code","msg"}` bodies; past the
limit comes 429 with Retry-After, and carrying on earns 418, an IP ban."""

from __future__ import annotations

import httpx

from marketdata_assets.sources.http import Venue

USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


def binance_error_detail(response: httpx.Response) -> tuple[str, int | None]:
    """`code -1121: Invalid symbol.` from Binance's `{"code": ..., "msg": ...}` error body."""
    try:
        body = response.json()
        return f"code {body['code']}: {body['msg']}", int(body["code"])
    except (ValueError, KeyError, TypeError):
        return (response.text[:200] or response.reason_phrase), None


BINANCE_SPOT = Venue("binance_spot", "binance_spot_url", error_detail=binance_error_detail,
                     used_weight_header=USED_WEIGHT_HEADER)
BINANCE_FUTURES = Venue("binance_futures", "binance_futures_url", error_detail=binance_error_detail,
                        used_weight_header=USED_WEIGHT_HEADER)
