"""Controller: the law on a synthetic plant, vectorised over many bidders."""

from __future__ import annotations

import numpy as np

from pacer.controller import Controller, ControlParams, TickInputs
from pacer.curves import ASAP, EVEN


def inputs(n: int, mode: int, spent: float, granted: float, budget: float = 1e6) -> TickInputs:
    z = np.zeros(n)
    return TickInputs(
        active=np.ones(n, dtype=np.bool_), mode=np.full(n, mode, dtype=np.int8), budget=np.full(n, budget),
        spent=np.full(n, spent), reserved=z, holdback=z, start=z, end=np.full(n, 1000.0), weight_now=z,
        weight_ahead=z, weight_start=z, weight_end=z, granted=np.full(n, granted), settled_reserved=z,
        settled_spent=z, unmatched_spent=z,
    )


def test_asap_bids_in_full() -> None:
    ctl = Controller()
    ctl.update(500.0, 0.1, inputs(3, ASAP, spent=0.0, granted=1e9))
    assert np.all(ctl.multiplier[:3] == 1.0) and np.all(ctl.throttle[:3] == 1.0)


def test_overspending_shades_first_then_throttles() -> None:
    ctl = Controller(ControlParams(m_min=0.2))
    seen = []
    for _ in range(60):  # granting far above the plan every tick
        ctl.update(100.0, 0.1, inputs(1, EVEN, spent=100_000.0, granted=1e7))
        seen.append((ctl.multiplier[0], ctl.throttle[0]))
    assert any(m < 1.0 and p == 1.0 for m, p in seen)  # the multiplier moved before the throttle
    assert seen[-1][0] == 0.2 and seen[-1][1] < 0.1


def test_converges_on_a_plant_whose_spend_follows_the_multiplier() -> None:
    """Spend per tick = k * m^2: the loop finds m with spend on the even plan, for 1000 bidders at once."""
    n, budget, length, dt = 1000, 1e6, 1000.0, 0.5
    k = np.linspace(5_000, 50_000, n)  # very different markets
    ctl = Controller(ControlParams(conv_prior=1.0))
    spent = np.zeros(n)
    t = 0.0
    while t < length:
        grant = k * ctl.multiplier[:n] ** 2 * ctl.throttle[:n]
        spent += grant
        t += dt
        x = inputs(n, EVEN, 0.0, 0.0, budget)
        x.spent, x.granted, x.end = spent.copy(), grant, np.full(n, length)
        ctl.update(t, dt, x)
        if t == 500.0:
            assert np.all(np.abs(spent / budget - 0.5) < 0.05)
    assert np.all(np.abs(spent / budget - 1.0) < 0.03)
