"""landscape.py: a bidder's bid landscape, win probability W(b) and expected price paid C(b) = E[price | win at
bid b], from the rollup's binned wins and granted bids. Pure numpy; no I/O.

A lost bid b only says the market price M (the best competing bid) was above b, so wins alone would describe
the market only where we happened to win, biased low. Second price: the win price is M, losses are
right-censored at the bid, and the Kaplan–Meier estimator gives P(M <= b). First price: the price is our own bid,
M is never seen, only whether M <= b (current-status data), and the NPMLE of P(M <= b) is the isotonic
regression of the win fraction on the bid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pacer.refit.rolled import BINS_PER_E, Columns

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Real = npt.NDArray[np.floating[Any] | np.integer[Any]]

MAX_POINTS = 64  # grid points per landscape: at 20 bins per e, 64 points span e^3.2 (25x) bin by bin
# A loss in bin i says M > its bid, which lies somewhere inside bin i. Plain KM's tie rule (events before
# censorings) keeps it at risk for all of bin i's events and so overstates P(M > b): by 0.016 at the 5%-wide bins
# on a lognormal market. Counting it at risk for half the bin (the actuarial life table) leaves 0.0005.
CENSORED_AT_RISK = 0.5
FIRST_PRICE_OVERLAP = 0.9  # share of win weight whose price bin holds as many wins as its granted bin
SECOND, FIRST = "second", "first"


@dataclass(frozen=True)
class Landscape:
    auction: str  # "second" or "first"
    bid_micros: I64  # ascending grid
    win_rate: F64  # W at each grid bid: non-decreasing, in [0, 1]
    avg_price_micros: F64  # C at each grid bid, <= bid; where W = 0 it is the bid's own limit
    calibration_error: float  # granted-weighted mean |W(bin mid) - observed win fraction of the bin|


def _col(part: Columns, key: str, dtype: type[np.generic] = np.float64) -> npt.NDArray[Any]:
    return np.asarray(part.get(key, ()), dtype=dtype)


def price_overlap(price: Columns, granted: Columns) -> float:
    """Share of the win weight that sits in a price bin holding as many wins as the same granted bin. In first
    price each win's price is its granted bid, so the two histograms coincide (1.0); in second price the price is
    below the bid and the histograms are shifted apart."""
    p_bin, g_bin = _col(price, "bin", np.int64), _col(granted, "bin", np.int64)
    wins = _col(granted, "wins")
    if len(p_bin) == 0 or len(g_bin) == 0 or wins.sum() <= 0:
        return 0.0
    lo = int(min(p_bin.min(), g_bin.min()))
    n = int(max(p_bin.max(), g_bin.max())) - lo + 1
    paid = np.bincount(p_bin - lo, weights=_col(price, "n"), minlength=n)
    won = np.bincount(g_bin - lo, weights=wins, minlength=n)
    return float(np.minimum(paid, won).sum() / wins.sum())


def fit_landscape(
    price: Columns, granted: Columns, auction: str | None = None, max_points: int = MAX_POINTS
) -> Landscape | None:
    """One bidder's landscape from its rows of rollup.price and rollup.granted; None when it has never won (then
    nothing bounds the market from above). `auction` overrides detection by price_overlap."""
    if auction is None:
        auction = FIRST if price_overlap(price, granted) >= FIRST_PRICE_OVERLAP else SECOND
    if auction not in (FIRST, SECOND):
        raise ValueError(f"auction must be {FIRST!r} or {SECOND!r}, not {auction!r}")
    g_bin, g_n, g_wins = _col(granted, "bin", np.int64), _col(granted, "n"), _col(granted, "wins")
    if len(g_bin) == 0 or g_wins.sum() <= 0:
        return None
    if auction == FIRST:
        bids, win, avg = _first_price(g_bin, g_n, g_wins)
    else:
        p_bin, p_n = _col(price, "bin", np.int64), _col(price, "n")
        if p_n.sum() <= 0:
            return None
        bids, win, avg = _kaplan_meier(p_bin, p_n, _col(price, "price_sum"), g_bin, g_n, g_wins)
    keep = _thin(len(bids), max_points)
    bids, win, avg = bids[keep], win[keep], avg[keep]
    micros = np.round(bids).astype(np.int64)
    unique = np.flatnonzero(np.diff(micros, append=np.iinfo(np.int64).max) > 0)  # tiny bids round alike: keep last
    micros, win, avg = micros[unique], win[unique], avg[unique]
    return Landscape(auction, micros, win, avg, _calibration(micros, win, g_bin, g_n, g_wins))


def _kaplan_meier(p_bin: I64, p_n: F64, p_sum: F64, g_bin: I64, g_n: F64, g_wins: F64) -> tuple[F64, F64, F64]:
    """KM on bins: events = wins at their price bin, censored = losses at their granted bin, events before
    censorings within a bin, a bin's losses at risk for CENSORED_AT_RISK of its events. Grid: the low edge of the
    first price bin (W = 0) and the high edge of every bin from there to the last with data."""
    lo = int(min(p_bin.min(), g_bin.min()))
    n_bins = int(max(p_bin.max(), g_bin.max())) - lo + 1
    events = np.bincount(p_bin - lo, weights=p_n, minlength=n_bins)
    paid = np.bincount(p_bin - lo, weights=p_sum, minlength=n_bins)
    lost = np.maximum(
        np.bincount(g_bin - lo, weights=g_n, minlength=n_bins)
        - np.bincount(g_bin - lo, weights=g_wins, minlength=n_bins),
        0.0,
    )
    at_risk = np.cumsum((events + lost)[::-1])[::-1] - (1.0 - CENSORED_AT_RISK) * lost
    hazard = np.divide(events, at_risk, out=np.zeros(n_bins), where=at_risk > 0)
    survival = np.cumprod(1.0 - hazard)
    mass = -np.diff(survival, prepend=1.0)
    mean_price = np.divide(paid, events, out=np.zeros(n_bins), where=events > 0)
    partial = np.cumsum(mass * mean_price)  # E[M; M <= high edge]
    start = int(np.flatnonzero(events > 0)[0])
    win = 1.0 - survival[start:]
    low, high = np.exp((np.arange(n_bins) + lo) / BINS_PER_E), np.exp((np.arange(n_bins) + lo + 1) / BINS_PER_E)
    avg = np.divide(partial[start:], win, out=high[start:].copy(), where=win > 0)
    return (
        np.concatenate([[low[start]], high[start:]]),
        np.concatenate([[0.0], win]),
        np.concatenate([[low[start]], np.minimum(avg, high[start:])]),  # min: round-off only
    )


def _first_price(g_bin: I64, g_n: F64, g_wins: F64) -> tuple[F64, F64, F64]:
    """Isotonic win fraction over granted bins, at each bin's geometric mid; the price paid is the bid."""
    bins, inverse = np.unique(g_bin, return_inverse=True)
    n = np.bincount(inverse, weights=g_n)
    wins = np.bincount(inverse, weights=g_wins)
    ok = n > 0
    bins, n, wins = bins[ok], n[ok], wins[ok]
    mids = np.exp((bins + 0.5) / BINS_PER_E)
    return mids, np.clip(isotonic(wins / n, n), 0.0, 1.0), mids


def isotonic(y: Real, w: Real) -> F64:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        values.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v, wt, sz = values.pop(), weights.pop(), sizes.pop()
            total = weights[-1] + wt
            values[-1] = (values[-1] * weights[-1] + v * wt) / total if total > 0 else values[-1]
            weights[-1] = total
            sizes[-1] += sz
    return np.repeat(np.asarray(values), sizes)


def _thin(n: int, max_points: int) -> I64:
    """At most max_points indices, evenly spread (bins are log-spaced, so the grid stays log-spaced), ends kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def _calibration(grid: I64, win: F64, g_bin: I64, g_n: F64, g_wins: F64) -> float:
    """W at each granted bin's mid, interpolated in log-bid as the controller reads it (0 below the grid, the top
    value above), against the bin's observed win fraction."""
    ok = g_n > 0
    if not ok.any():
        return 0.0
    predicted = np.interp((g_bin[ok] + 0.5) / BINS_PER_E, np.log(grid.astype(np.float64)), win, left=0.0)
    return float(np.average(np.abs(predicted - g_wins[ok] / g_n[ok]), weights=g_n[ok]))
