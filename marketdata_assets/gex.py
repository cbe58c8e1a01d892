"""Gamma exposure (GEX) of an option chain, in closed form (numpy): no Dagster, no HTTP.

Black-Scholes gamma of a European option on an underlying at S (Deribit quotes options on its
forward, so the rate r defaults to 0): Γ = e^(−qT)·φ(d1) / (S·σ·√T), d1 = (ln(S/K) + (r − q + σ²/2)·T) / (σ·√T),
σ the implied volatility as a fraction, T in years. Γ is the same for a call and a put.

GEX of one option line = Γ · open interest · S² · 0.01: the USD its dealers' hedge moves for a 1%
move of S (Deribit's contract multiplier is 1: open interest counts coins). The sign says who is
long: by default dealers are long the calls customers sold them and short the puts customers
bought (calls +, puts −); `dealers_short_calls` flips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

YEAR_SECONDS = 365.0 * 86_400
ONE_PERCENT = 0.01
PROFILE = (0.8, 1.2, 401)  # the spot profile: from 0.8 S to 1.2 S, in 401 steps


def bs_gamma(spot, strike, sigma, years, rate=0.0, dividend=0.0):
    """Black-Scholes gamma (per unit of the underlying); numpy arrays or scalars. Lines expired or
    without a volatility (T ≤ 0, σ ≤ 0) have gamma 0."""
    spot, strike, sigma, years = (np.asarray(v, dtype=float) for v in (spot, strike, sigma, years))
    live = (years > 0) & (sigma > 0) & (spot > 0) & (strike > 0)
    safe_t, safe_sigma = np.where(live, years, 1.0), np.where(live, sigma, 1.0)
    root_t = np.sqrt(safe_t)
    d1 = (np.log(np.where(live, spot / np.where(live, strike, 1.0), 1.0)) + (rate - dividend + safe_sigma**2 / 2) * safe_t) \
        / (safe_sigma * root_t)
    pdf = np.exp(-d1**2 / 2) / math.sqrt(2 * math.pi)
    return np.where(live, np.exp(-dividend * safe_t) * pdf / (np.where(live, spot, 1.0) * safe_sigma * root_t), 0.0)


def line_gex(spot, strike, sigma, years, open_interest, is_call, dealers_short_calls: bool = False):
    """Each line's signed GEX in USD per 1% move of `spot`."""
    sign = np.where(np.asarray(is_call), 1.0, -1.0) * (-1.0 if dealers_short_calls else 1.0)
    spot = np.asarray(spot, dtype=float)
    return sign * bs_gamma(spot, strike, sigma, years) * np.asarray(open_interest, dtype=float) * spot**2 * ONE_PERCENT


@dataclass(frozen=True)
class GexSummary:
    """A snapshot's totals: net GEX at spot, the spot where the net crosses zero (None if it does
    not between 0.8 S and 1.2 S), and the strikes with the largest call and put GEX."""

    spot: float
    net_gex: float
    zero_gamma: float | None
    call_wall: float | None
    put_wall: float | None


def chain_gex(chain: pl.DataFrame, dealers_short_calls: bool = False) -> pl.DataFrame:
    """GEX per expiry and strike of one snapshot's chain (columns expiry, strike, option_type
    'call'|'put', open_interest, mark_iv in percent, underlying_price, years): expiry, strike,
    call_gex, put_gex, net_gex (USD per 1% move)."""
    gex = line_gex(chain["underlying_price"].to_numpy(), chain["strike"].to_numpy(), chain["mark_iv"].to_numpy() / 100,
                   chain["years"].to_numpy(), chain["open_interest"].to_numpy(),
                   (chain["option_type"] == "call").to_numpy(), dealers_short_calls)
    lines = chain.select("expiry", "strike", "option_type").with_columns(gex=pl.Series(gex, dtype=pl.Float64))
    return lines.group_by("expiry", "strike").agg(
        call_gex=pl.col("gex").filter(pl.col("option_type") == "call").sum(),
        put_gex=pl.col("gex").filter(pl.col("option_type") == "put").sum(),
    ).with_columns(net_gex=pl.col("call_gex") + pl.col("put_gex")).sort("expiry", "strike")


def summary(chain: pl.DataFrame, spot: float, dealers_short_calls: bool = False) -> GexSummary:
    """The snapshot's totals (GexSummary), each line at its own underlying (forward) price. The
    zero-gamma level moves every underlying by the same factor over the profile (volatility and
    time held), interpolating where the net changes sign, and says it as `spot` times that factor."""
    strikes, sigma = chain["strike"].to_numpy(), chain["mark_iv"].to_numpy() / 100
    years, oi = chain["years"].to_numpy(), chain["open_interest"].to_numpy()
    forwards = chain["underlying_price"].to_numpy()
    calls = (chain["option_type"] == "call").to_numpy()
    net = float(line_gex(forwards, strikes, sigma, years, oi, calls, dealers_short_calls).sum())
    low, high, steps = PROFILE
    factors = np.linspace(low, high, steps)
    spots = factors * spot
    profile = np.array([line_gex(forwards * f, strikes, sigma, years, oi, calls, dealers_short_calls).sum()
                        for f in factors])
    zero = None
    crossings = np.flatnonzero(np.sign(profile[:-1]) * np.sign(profile[1:]) < 0)
    if crossings.size:
        i = crossings[np.argmin(np.abs(spots[crossings] - spot))]  # the crossing nearest the spot
        zero = float(spots[i] - profile[i] * (spots[i + 1] - spots[i]) / (profile[i + 1] - profile[i]))
    by_strike = chain_gex(chain, dealers_short_calls).group_by("strike").agg(pl.col("call_gex").sum(), pl.col("put_gex").sum())
    call_wall = by_strike.sort("call_gex", descending=True)["strike"][0] if by_strike.height else None
    put_wall = by_strike.sort(pl.col("put_gex").abs(), descending=True)["strike"][0] if by_strike.height else None
    return GexSummary(spot, net, zero, call_wall, put_wall)
