"""Controller: the law on synthetic plants, vectorised over many bidders."""

from __future__ import annotations

import numpy as np

from pacer.controller import Controller, ControlParams, TickInputs
from pacer.curves import ASAP, EVEN


def inputs(
    n: int, mode: int, spent: float, won: float = 0.0, wins: float = 0.0, budget: float = 1e6, end: float = 1000.0
) -> TickInputs:
    z = np.zeros(n)
    return TickInputs(
        active=np.ones(n, dtype=np.bool_),
        mode=np.full(n, mode, dtype=np.int8),
        budget=np.full(n, budget),
        spent=np.full(n, spent),
        reserved=z,
        holdback=z,
        start=z,
        end=np.full(n, end),
        weight_now=z,
        weight_ahead=z,
        weight_start=z,
        weight_end=z,
        settled_spent=np.full(n, won),
        unmatched_spent=z,
        wins=np.full(n, wins),
        seen=z,
    )


def test_asap_bids_in_full() -> None:
    ctl = Controller()
    ctl.update(500.0, 0.1, inputs(3, ASAP, spent=900_000.0, won=1e5, wins=10))
    assert np.all(ctl.multiplier[:3] == 1.0) and np.all(ctl.throttle[:3] == 1.0)


def test_ahead_of_the_curve_shades_first_then_throttles() -> None:
    """Spend far ahead of the even curve: the multiplier falls to m_min before participation drops."""
    ctl = Controller(ControlParams(m_min=0.2))
    seen = []
    for spent in np.linspace(110_000, 400_000, 60):  # 11% .. 40% spent at 10% of the period
        ctl.update(100.0, 0.1, inputs(1, EVEN, spent=spent))
        seen.append((ctl.multiplier[0], ctl.throttle[0]))
    assert any(m < 1.0 and p == 1.0 for m, p in seen)  # the multiplier moved before the throttle
    assert seen[-1][0] == 0.2 and seen[-1][1] < 0.1


def test_behind_the_curve_bids_in_full() -> None:
    ctl = Controller()
    ctl.u_i[0] = -2.0
    ctl.update(500.0, 0.1, inputs(1, EVEN, spent=100_000.0))  # 10% spent at half time
    assert ctl.multiplier[0] == 1.0 and ctl.throttle[0] == 1.0


def test_tick_rate_does_not_change_the_law() -> None:
    """The same plant ticked at 0.1 s and at 1 s ends in nearly the same place: gains are per second."""
    finals = []
    for dt in (0.1, 1.0):
        ctl = Controller()
        spent, t = 0.0, 0.0
        while t < 600.0:
            step = 4000.0 * ctl.multiplier[0] ** 2 * ctl.throttle[0] * dt  # unpaced: 4x the even rate
            spent += step
            t += dt
            ctl.update(t, dt, inputs(1, EVEN, spent=spent, won=step, wins=step / 100.0))
        finals.append((spent, ctl.multiplier[0]))
    assert abs(finals[0][0] - finals[1][0]) < 0.01 * 1e6
    assert abs(np.log(finals[0][1] / finals[1][1])) < 0.1


def test_converges_on_a_plant_whose_spend_follows_the_multiplier() -> None:
    """Spend per second = k * m^2: the loop finds each m that keeps spend on the even plan, 1000 bidders at
    once, and the multiplier settles (the integral learned it) instead of hunting."""
    n, budget, length, dt = 1000, 1e6, 1000.0, 0.5
    k = np.linspace(5_000, 50_000, n)  # very different markets: 5x to 50x the even rate unpaced
    ctl = Controller()
    spent = np.zeros(n)
    t = 0.0
    late = []
    while t < length:
        step = k * ctl.multiplier[:n] ** 2 * ctl.throttle[:n] * dt
        spent += step
        t += dt
        x = inputs(n, EVEN, 0.0, budget=budget, end=length)
        x.spent, x.settled_spent, x.wins = spent.copy(), step, step / 100.0
        ctl.update(t, dt, x)
        if t == 500.0:  # ahead by the start-up burst at full bids (up to 50x the plan), and catching up
            assert np.all(np.abs(spent / budget - 0.5) < 0.06)
        if t >= 800.0:
            late.append(ctl.multiplier[:n] * ctl.throttle[:n])
    assert np.all(np.abs(spent / budget - 1.0) < 0.03)
    steady = np.sqrt(1000.0 / k)  # k m^2 = budget / length
    late_signal = np.array(late)
    assert np.all(np.abs(np.log(late_signal.mean(axis=0) / steady)) < 0.15)
    assert np.all(late_signal.std(axis=0) / late_signal.mean(axis=0) < 0.05)
