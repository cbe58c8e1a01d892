"""Gamma exposure: the textbook's gamma, and a chain's GEX against an independent implementation
written here (pure Python, nothing imported from the project's math)."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from marketdata_assets.gex import bs_gamma, chain_gex, summary


def test_gamma_is_hulls_worked_example():
    # Hull, Options, Futures and Other Derivatives: S = 49, K = 50, r = 5%, σ = 20%, T = 20 weeks: Γ = 0.066
    assert bs_gamma(49.0, 50.0, 0.20, 20 / 52, rate=0.05) == pytest.approx(0.066, abs=5e-4)
    # at the money, no rate, a year, 100% volatility: φ(0.5) / (S σ √T)
    assert bs_gamma(100.0, 100.0, 1.0, 1.0) == pytest.approx(math.exp(-0.125) / math.sqrt(2 * math.pi) / 100, rel=1e-12)
    assert bs_gamma(100.0, 100.0, 0.5, 0.0) == 0.0  # expired


def independent_gex(spot: float, strike: float, iv_percent: float, years: float, oi: float, call: bool) -> float:
    sigma = iv_percent / 100
    d1 = (math.log(spot / strike) + sigma * sigma / 2 * years) / (sigma * math.sqrt(years))
    gamma = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi) / (spot * sigma * math.sqrt(years))
    return (1 if call else -1) * gamma * oi * spot * spot / 100


CHAIN = [  # expiry, strike, type, open interest (coins), mark_iv (%), years to expiry
    ("2025-01-31", 90_000.0, "call", 120.5, 52.1, 0.05),
    ("2025-01-31", 90_000.0, "put", 300.0, 55.0, 0.05),
    ("2025-01-31", 100_000.0, "call", 800.0, 49.5, 0.05),
    ("2025-01-31", 100_000.0, "put", 410.0, 50.2, 0.05),
    ("2025-03-28", 110_000.0, "call", 950.0, 47.0, 0.21),
    ("2025-03-28", 80_000.0, "put", 640.0, 61.3, 0.21),
]
SPOT = 97_250.0


def chain_frame() -> pl.DataFrame:
    return pl.DataFrame(
        [(dt.date.fromisoformat(e), k, t, oi, iv, SPOT, y) for e, k, t, oi, iv, y in CHAIN], orient="row",
        schema=["expiry", "strike", "option_type", "open_interest", "mark_iv", "underlying_price", "years"])


def test_a_chains_gex_per_strike_matches_an_independent_implementation():
    found = {(row["expiry"], row["strike"]): row for row in chain_gex(chain_frame()).iter_rows(named=True)}
    for expiry, strike in {(e, k) for e, k, *_ in CHAIN}:
        lines = [c for c in CHAIN if (c[0], c[1]) == (expiry, strike)]
        calls = sum(independent_gex(SPOT, k, iv, y, oi, True) for _, k, t, oi, iv, y in lines if t == "call")
        puts = sum(independent_gex(SPOT, k, iv, y, oi, False) for _, k, t, oi, iv, y in lines if t == "put")
        row = found[dt.date.fromisoformat(expiry), strike]
        assert row["call_gex"] == pytest.approx(calls, rel=1e-9, abs=1e-9)
        assert row["put_gex"] == pytest.approx(puts, rel=1e-9, abs=1e-9)
        assert row["net_gex"] == pytest.approx(calls + puts, rel=1e-9, abs=1e-9)
    flipped = chain_gex(chain_frame(), dealers_short_calls=True)
    assert flipped["net_gex"].to_list() == pytest.approx([-v for v in chain_gex(chain_frame())["net_gex"].to_list()])


def test_the_summary_finds_the_walls_and_where_net_gamma_crosses_zero():
    total = summary(chain_frame(), SPOT)
    expected = sum(independent_gex(SPOT, k, iv, y, oi, t == "call") for _, k, t, oi, iv, y in CHAIN)
    assert total.net_gex == pytest.approx(expected, rel=1e-9)
    by_strike: dict[float, list[float]] = {}
    for _, k, t, oi, iv, y in CHAIN:
        by_strike.setdefault(k, [0.0, 0.0])[t == "put"] += independent_gex(SPOT, k, iv, y, oi, t == "call")
    assert total.call_wall == max(by_strike, key=lambda k: by_strike[k][0])
    assert total.put_wall == max(by_strike, key=lambda k: abs(by_strike[k][1]))
    # at the zero-gamma level the chain re-priced there nets to (nearly) nothing, and the sign flips across it
    assert total.zero_gamma is not None and 0.8 * SPOT < total.zero_gamma < 1.2 * SPOT
    at = lambda s: sum(independent_gex(s, k, iv, y, oi, t == "call") for _, k, t, oi, iv, y in CHAIN)  # noqa: E731
    assert at(total.zero_gamma * 0.995) * at(total.zero_gamma * 1.005) < 0
    assert abs(at(total.zero_gamma)) < 0.01 * max(abs(at(0.8 * SPOT)), abs(at(1.2 * SPOT)))
