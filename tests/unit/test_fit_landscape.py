"""Bid landscape on a known lognormal market: censoring handled (KM), first price by isotonic regression."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from pacer.refit.landscape import fit_landscape, isotonic, price_overlap
from pacer.refit.rolled import BINS_PER_E, Columns

F64 = npt.NDArray[np.float64]

MARKET = (2000.0, 0.6)  # lognormal market price M: median micros, sigma
BIDS = (1800.0, 0.5)  # lognormal granted bids
AUCTIONS = 50_000


def lognormal(median_sigma: tuple[float, float], n: int, rng: np.random.Generator) -> F64:
    median, sigma = median_sigma
    return np.exp(math.log(median) + sigma * rng.standard_normal(n))


def normal_cdf(z: F64) -> F64:
    return np.asarray([0.5 * (1 + math.erf(x / math.sqrt(2))) for x in z])


def market_cdf(b: F64) -> F64:
    return normal_cdf((np.log(b) - math.log(MARKET[0])) / MARKET[1])


def market_mean_below(b: F64) -> F64:
    """E[M | M <= b] of the lognormal market."""
    mu, s = math.log(MARKET[0]), MARKET[1]
    return math.exp(mu + s * s / 2) * normal_cdf((np.log(b) - mu - s * s) / s) / market_cdf(b)


def bins(x: F64) -> npt.NDArray[np.int64]:
    return np.floor(np.log(x) * BINS_PER_E).astype(np.int64)


def rollup_parts(bid: F64, market: F64, first_price: bool) -> tuple[Columns, Columns]:
    """rollup.price and rollup.granted of one bidder, as the rollup SQL would bin them."""
    won = market <= bid
    paid = bid[won] if first_price else market[won]
    p_bins, p_inv = np.unique(bins(paid), return_inverse=True)
    g_bins, g_inv = np.unique(bins(bid), return_inverse=True)
    price = {"bin": p_bins, "n": np.bincount(p_inv).astype(np.float64), "price_sum": np.bincount(p_inv, weights=paid)}
    granted = {
        "bin": g_bins,
        "n": np.bincount(g_inv).astype(np.float64),
        "wins": np.bincount(g_inv, weights=won.astype(np.float64)),
    }
    return price, granted


def sample(seed: int = 7) -> tuple[F64, F64]:
    rng = np.random.default_rng(seed)
    return lognormal(BIDS, AUCTIONS, rng), lognormal(MARKET, AUCTIONS, rng)


def central(grid: npt.NDArray[np.int64], bid: F64) -> npt.NDArray[np.bool_]:
    lo, hi = np.percentile(bid, [5, 95])
    return (grid >= lo) & (grid <= hi)


def test_second_price_kaplan_meier_recovers_the_market_and_wins_alone_do_not() -> None:
    bid, market = sample()
    price, granted = rollup_parts(bid, market, first_price=False)
    land = fit_landscape(price, granted)
    assert land is not None and land.auction == "second"
    grid = land.bid_micros.astype(np.float64)
    mid = central(land.bid_micros, bid)
    win_error = np.abs(land.win_rate[mid] - market_cdf(grid[mid])).max()
    price_error = np.abs(land.avg_price_micros[mid] / market_mean_below(grid[mid]) - 1).max()
    won_prices = np.sort(market[market <= bid])
    wins_only = np.searchsorted(won_prices, grid[mid], side="right") / len(won_prices)
    wins_only_error = np.abs(wins_only - market_cdf(grid[mid])).max()
    print(
        f"\nsecond price: KM max |W - truth| {win_error:.4f}, max price error {price_error:.2%}, "
        f"wins-only {wins_only_error:.3f}, calibration {land.calibration_error:.4f}, {len(grid)} points"
    )
    assert win_error <= 0.03
    assert price_error <= 0.05
    assert wins_only_error > 0.03  # a fit that ignores the losses fails the same bound


def test_first_price_isotonic_recovers_the_market() -> None:
    bid, market = sample()
    price, granted = rollup_parts(bid, market, first_price=True)
    land = fit_landscape(price, granted)
    assert land is not None and land.auction == "first"
    grid = land.bid_micros.astype(np.float64)
    mid = central(land.bid_micros, bid)
    error = np.abs(land.win_rate[mid] - market_cdf(grid[mid])).max()
    print(f"\nfirst price: isotonic max |W - truth| {error:.4f}, calibration {land.calibration_error:.4f}")
    assert error <= 0.04
    assert np.all(np.diff(land.win_rate) >= 0)  # raw win fractions are not: the isotonic fit is
    assert np.abs(land.avg_price_micros - grid).max() <= 0.5  # pays its bid (the grid is rounded to whole micros)


def test_auction_type_is_detected_and_can_be_overridden() -> None:
    bid, market = sample()
    second = rollup_parts(bid, market, first_price=False)
    first = rollup_parts(bid, market, first_price=True)
    assert price_overlap(*first) == pytest.approx(1.0)
    assert price_overlap(*second) < 0.9
    forced = fit_landscape(*second, auction="first")
    assert forced is not None and forced.auction == "first"
    with pytest.raises(ValueError, match="auction"):
        fit_landscape(*second, auction="vickrey")


def test_grid_shape() -> None:
    bid, market = sample()
    land = fit_landscape(*rollup_parts(bid, market, first_price=False))
    assert land is not None
    assert len(land.bid_micros) <= 64 and land.bid_micros.dtype == np.int64
    assert np.all(np.diff(land.bid_micros) > 0) and land.bid_micros[0] > 0
    assert np.all(np.diff(land.win_rate) >= 0) and land.win_rate[0] == 0.0 and land.win_rate[-1] <= 1.0
    assert np.all(land.avg_price_micros <= land.bid_micros + 1.0) and np.all(land.avg_price_micros > 0)
    assert land.calibration_error < 0.02


def test_never_won_or_never_granted_gives_no_landscape() -> None:
    granted = {"bin": np.array([150, 151]), "n": np.array([10.0, 12.0]), "wins": np.array([0.0, 0.0])}
    assert fit_landscape({}, granted) is None
    assert fit_landscape({}, {}) is None


def test_isotonic_pools_adjacent_violators() -> None:
    got = isotonic(np.array([0.1, 0.5, 0.3, 0.2, 0.9]), np.array([1.0, 1.0, 1.0, 2.0, 1.0]))
    assert np.allclose(got, [0.1, 0.3, 0.3, 0.3, 0.9])
