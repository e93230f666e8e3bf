"""Pacing quality in virtual time: the real engine and controller over a simulated second-price market.

One bidder, Poisson auctions, lognormal values and competing bids, win notices after a random delay, no loss
notices at all (the hardest case for reservations). Bounds are generous; the figures are in the benchmark.
"""

from __future__ import annotations

import heapq
import math
import random
from pathlib import Path

import numpy as np
import pytest

from pacer.bidder_config import BidderConfig
from pacer.clock import ManualClock
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.periods import Flight

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC: the prior's morning ramp, so `traffic` differs from `even`
PRIOR = TrafficCurve.load(Path(__file__).resolve().parents[2] / "models" / "prior" / "traffic.json")


def simulate(mode: str, share: float, length: float = 3600.0, rate: float = 20.0, seed: int = 3) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    clock = ManualClock(T0)
    eng = Engine(clock, EngineParams(tick_s=0.5), PRIOR, rng=random.Random(seed))
    n = int(rate * length)
    times = np.sort(rng.uniform(0, length, n)) + T0
    values = rng.lognormal(math.log(2000), 0.5, n).astype(int) + 1
    market = rng.lognormal(math.log(2000), 0.5, n).astype(int) + 1
    budget = int(market[values >= market].sum() * share)
    eng.configure("b", BidderConfig(budget, Flight(T0, T0 + length), mode))
    notices: list[tuple[float, str, int]] = []
    worst_gap, next_tick, next_check = 0.0, T0, T0 + length / 20
    half_spent = 0
    for t, v, m, i in zip(times, values, market, range(n), strict=True):
        while notices and notices[0][0] <= t:
            clock.now, aid, price = heapq.heappop(notices)
            eng.win("b", aid, price)
        while next_tick <= t:
            clock.now = next_tick
            eng.tick()
            next_tick += 0.5
        if t >= next_check:
            spent = eng.bidders["b"].ledger.spent
            target = eng.status("b")["target_spent_micros"]  # type: ignore[index]
            worst_gap = max(worst_gap, abs(spent - target) / budget)  # type: ignore[operator]
            next_check += length / 20
        if not half_spent and t >= T0 + length / 2:
            half_spent = eng.bidders["b"].ledger.spent
        clock.now = float(t)
        granted, _ = eng.decide("b", str(i), int(v))
        if granted and granted >= m:
            heapq.heappush(notices, (float(t) + rng.exponential(1.0), str(i), int(m)))
    for when, aid, price in sorted(notices):
        clock.now = when
        eng.win("b", aid, price)
    spent = eng.bidders["b"].ledger.spent
    return {"delivery": spent / budget, "worst_gap": worst_gap, "half": half_spent / budget, "budget": budget}


@pytest.mark.parametrize("mode", ["even", "frontload", "traffic"])
@pytest.mark.parametrize("share", [0.05, 0.5])
def test_paced_modes_deliver_fully_smoothly_and_never_overspend(mode: str, share: float) -> None:
    r = simulate(mode, share)
    assert 0.98 <= r["delivery"] <= 1.0, r
    assert r["worst_gap"] <= 0.05, r


def test_frontload_is_ahead_of_even_at_half_time() -> None:
    assert simulate("frontload", 0.3)["half"] > simulate("even", 0.3)["half"] + 0.05


def test_asap_spends_early_and_stops_at_the_budget() -> None:
    r = simulate("asap", 0.1)
    assert r["half"] == pytest.approx(1.0, abs=0.02) and r["delivery"] <= 1.0


def test_traffic_pacing_follows_the_diurnal_prior_not_the_clock() -> None:
    """Six morning hours: the prior rises ~1.7x, so by half time the traffic target is well below half."""
    length = 6 * 3600.0
    weights = PRIOR.weight(np.array([T0, T0 + length / 2, T0 + length]))
    expected_half = (weights[1] - weights[0]) / (weights[2] - weights[0])
    assert expected_half < 0.46
    r = simulate("traffic", 0.3, length=length, rate=4.0)
    assert abs(r["half"] - expected_half) < 0.03, (r, expected_half)
    assert 0.98 <= r["delivery"] <= 1.0, r
