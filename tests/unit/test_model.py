"""The pacer.model/1 artifact: fitted from a synthetic rollup, validated, and its spend per auction checked."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pacer.curves import SLOTS, TrafficCurve
from pacer.refit.model import FitOutcome, FitParams, ModelError, fit_bidders, spend_per_auction, validate
from pacer.refit.rolled import BINS_PER_E, DAY_MS, Columns, Rollup

F64 = npt.NDArray[np.float64]

PRIOR = TrafficCurve.load(Path(__file__).parents[2] / "models" / "prior" / "traffic.json")
MONDAY = 19_723  # 2024-01-01 as a UTC epoch day
DAYS = 7
MARKET = (2000.0, 0.6)  # lognormal market price: median micros, sigma
VALUES = (1800.0, 0.5)  # lognormal requested bids
FITTED_AT = 1_704_672_000.0  # 2024-01-08T00:00:00Z


def lognormal(median_sigma: tuple[float, float], n: int, rng: np.random.Generator) -> F64:
    return np.exp(math.log(median_sigma[0]) + median_sigma[1] * rng.standard_normal(n))


def binned(bidder: str, x: F64, **sums: F64) -> Columns:
    """Rows of one bidder in a binned rollup part: n per bin of x, plus the sum of each extra column per bin."""
    bins, inverse = np.unique(np.floor(np.log(x) * BINS_PER_E).astype(np.int64), return_inverse=True)
    cols: Columns = {"bidder": np.full(len(bins), bidder, dtype=object), "bin": bins}
    cols["n"] = np.bincount(inverse).astype(np.float64)
    for name, values in sums.items():
        cols[name] = np.bincount(inverse, weights=values)
    return cols


def concat(parts: list[Columns]) -> Columns:
    parts = [p for p in parts if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def traffic(bidder: str, per_day: float, rng: np.random.Generator) -> Columns:
    counts = rng.poisson(per_day * PRIOR.by_slot, size=(DAYS, SLOTS))
    day, slot = np.nonzero(counts)
    return {
        "bidder": np.full(len(day), bidder, dtype=object),
        "day": MONDAY + day,
        "slot": slot,
        "n": counts[day, slot].astype(np.float64),
        "rows": 2 * counts[day, slot],  # a decision and its outcome
    }


def make_rollup(seed: int = 3) -> Rollup:
    """'big': second-price auctions, every requested bid granted; 'no-bids': asks but never granted; 'tiny'."""
    rng = np.random.default_rng(seed)
    value = lognormal(VALUES, 50_000, rng)
    market = lognormal(MARKET, len(value), rng)
    won = market <= value
    quiet = lognormal(VALUES, 30_000, rng)
    return Rollup(
        traffic=concat([traffic("big", 50_000 / DAYS, rng), traffic("no-bids", 5_000, rng), traffic("tiny", 40, rng)]),
        price=binned("big", market[won], price_sum=market[won]),
        granted=binned("big", value, wins=won.astype(np.float64)),
        value=concat([binned("big", value), binned("no-bids", quiet)]),
        since_ms=MONDAY * DAY_MS,
        until_ms=(MONDAY + DAYS) * DAY_MS,
    )


@pytest.fixture(scope="module")
def outcomes() -> dict[str, FitOutcome]:
    return fit_bidders(make_rollup(), {"big": "America/New_York"}, PRIOR, FITTED_AT)


@pytest.fixture
def doc(outcomes: dict[str, FitOutcome]) -> dict[str, Any]:
    model = outcomes["big"].model
    assert model is not None
    return copy.deepcopy(model)


def test_fit_bidders_gives_valid_models(outcomes: dict[str, FitOutcome]) -> None:
    big = outcomes["big"]
    assert big.model is not None and big.reason is None
    text = json.dumps(big.model, allow_nan=False)  # plain JSON: no NaN, numpy types or tuples
    validate(json.loads(text))
    m = big.model
    assert (m["format"], m["bidder_id"], m["timezone"]) == ("pacer.model/1", "big", "America/New_York")
    assert (m["fitted_at"], m["since"], m["until"]) == ("2024-01-08T00:00:00Z", "2024-01-01T00:00:00Z", m["fitted_at"])
    assert m["data"]["days"] == 7.0 and m["data"]["decisions"] == m["rows"] / 2
    assert m["data"]["granted"] == 50_000 and m["data"]["wins"] > 0 and isinstance(m["data"]["spend_micros"], int)
    assert len(m["traffic_by_slot"]) == SLOTS and len(m["weekday_factor"]) == 7
    assert m["landscape"]["auction"] == "second" and m["fit_error"]["landscape_calibration"] < 0.05
    assert m["fit_error"]["traffic_cv"] == m["traffic"]["cv_error"]
    assert math.isclose(sum(m["value"]["share"]), 1.0)


def test_traffic_without_granted_bids_gets_a_curve_but_no_landscape(outcomes: dict[str, FitOutcome]) -> None:
    model = outcomes["no-bids"].model
    assert model is not None and model["landscape"] is None and model["value"] is not None
    with pytest.raises(ModelError, match="no landscape"):
        spend_per_auction(model, np.array([1.0]))


def test_too_little_data_is_rejected_with_what_was_seen(outcomes: dict[str, FitOutcome]) -> None:
    tiny = outcomes["tiny"]
    assert tiny.model is None
    assert tiny.reason == f"too little data: {tiny.summary['decisions']:.0f} decisions < 2000"
    assert tiny.summary["rows"] == 2 * tiny.summary["decisions"] and tiny.summary["days"] == 7.0


def test_an_unknown_auction_type_is_refused() -> None:
    with pytest.raises(ValueError, match="auction"):
        fit_bidders(make_rollup(), {}, PRIOR, FITTED_AT, auction="vickrey")


def test_too_few_days_are_rejected() -> None:
    rollup = make_rollup()
    out = fit_bidders(rollup, {}, PRIOR, FITTED_AT, FitParams(min_days=8.0))
    assert out["big"].model is None and out["big"].reason == "too little data: 7.00 days of exposure < 8"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["landscape"]["win_rate"].__setitem__(5, float("nan")), "NaN in landscape"),
        (lambda d: d.__setitem__("traffic_by_slot", [x * 1.01 for x in d["traffic_by_slot"]]), "not a distribution"),
        (lambda d: d["landscape"]["win_rate"].__setitem__(-1, 0.0), "non-decreasing"),
        (lambda d: d["landscape"]["avg_price_micros"].__setitem__(-1, 1e9), "at most the bid"),
        (lambda d: d["landscape"]["bid_micros"].reverse(), "ascending"),
        (lambda d: d["landscape"]["win_rate"].pop(), "landscape.win_rate: must have"),
        (lambda d: d["weekday_factor"].pop(), "must have 7 values"),
        (lambda d: d["weekday_factor"].__setitem__(0, 2.0), "mean 1"),
        (lambda d: d["value"]["share"].__setitem__(0, 0.5), "sum to 1"),
        (lambda d: d.__setitem__("format", "pacer.model/0"), "format"),
        (lambda d: d.__setitem__("fitted_at", "yesterday"), "RFC 3339"),
        (lambda d: d.__setitem__("value", None), "requested bids are needed"),
    ],
)
def test_validate_rejects_with_a_clear_reason(doc: dict[str, Any], mutate: Any, reason: str) -> None:
    validate(doc)
    mutate(doc)
    with pytest.raises(ModelError, match=reason):
        validate(doc)


def test_spend_per_auction_is_monotone_and_matches_monte_carlo(doc: dict[str, Any]) -> None:
    m = np.logspace(-2, 2, 400)
    spend = spend_per_auction(doc, m)
    assert spend.shape == m.shape and spend[0] == 0.0
    assert np.all(np.diff(spend) >= 0)
    rng = np.random.default_rng(11)
    value = lognormal(VALUES, 400_000, rng)
    market = lognormal(MARKET, len(value), rng)
    errors = {}
    for k in (0.6, 0.8, 1.0, 1.25, 1.6):
        truth = float(np.mean(market * (market <= k * value)))
        errors[k] = float(spend_per_auction(doc, np.array([k]))[0]) / truth - 1
    print("\nspend per auction vs Monte Carlo:", {k: f"{e:+.2%}" for k, e in errors.items()})
    assert max(abs(e) for e in errors.values()) <= 0.05
