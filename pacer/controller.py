"""controller.py: the control law. Every tick, for all bidders at once, turn (target curve, committed spend,
recent spend rate) into a bid multiplier and a participation probability.

Vectorised numpy; no I/O, no per-bidder Python loops.

The law, per bidder with period [start, end) and budget B:
- committed = spent + holdback + in-flight spend. Reserved money is not spent money: most open reservations
  of an exchange without loss notices are dead losses waiting to expire. By Little's law the spend still in
  flight is the expected spend rate times the mean win-notice delay (at most what is reserved); the expected
  spend of a grant is its micros times `conv`, the share of reserved micros that recently became spend.
- Re-plan: aim to be on the target curve one horizon H ahead: desired rate = (B * F(t + H) - committed) / H,
  at most `burst_cap` times the curve's own rate (no end-of-period burst to spend a backlog at once).
- Dual step in log space (Balseiro & Gur's adaptive pacing, multiplicative form): u += gain * log(desired /
  observed), bounded per tick. `observed` is the expected spend rate of the grants of the last ticks.
- u maps to the bid first, participation last: multiplier m = e^u down to `m_min`; only below that does the
  throttle p fall. Shading buys the cheapest impressions; random skipping buys average ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacer.curves import ASAP, progress

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ControlParams:
    m_min: float = 0.05  # lowest bid multiplier before throttling starts
    p_min: float = 1e-4  # lowest participation probability (keeps a trickle of feedback)
    horizon_frac: float = 0.05  # catch-up horizon H as a share of the period...
    horizon_min: float = 1.0  # ...but at least this (s)
    horizon_max: float = 900.0  # ...and at most this (s)
    burst_cap: float = 3.0  # desired rate <= burst_cap * the curve's rate
    rate_tau_frac: float = 0.01  # time constant of the observed-rate average, as a share of the period
    rate_tau_min: float = 0.2  # (s)
    rate_tau_max: float = 60.0  # (s)
    gain: float = 0.3  # dual step size on log(desired / observed)
    max_step: float = 0.4  # |du| per tick (e^0.4 = x1.5)
    conv_prior: float = 0.3  # share of reserved micros expected to become spend before any settles
    conv_tau: float = 60.0  # (s) memory of the conversion estimate


@dataclass(slots=True)
class TickInputs:
    """Per-bidder arrays for one tick (length n; inactive slots are masked out)."""

    active: npt.NDArray[np.bool_]
    mode: npt.NDArray[np.int8]
    budget: F64
    spent: F64
    reserved: F64
    holdback: F64
    start: F64
    end: F64
    weight_now: F64  # traffic weight at local now (TRAFFIC bidders)
    weight_ahead: F64  # ... at local now + horizon
    weight_start: F64
    weight_end: F64
    granted: F64  # micros granted (reserved) since the last tick
    settled_reserved: F64  # reservation micros resolved since the last tick (win, loss, expiry)
    settled_spent: F64  # win prices of those resolved by a win
    unmatched_spent: F64  # win prices with no open reservation (late, unknown auction)


class ControlLaw:
    """Per-bidder control state in arrays indexed by slot, and the two signals the hot path reads: `throttle`
    (participation probability) and `multiplier` (share of the requested bid). The engine calls `update` once
    per tick; a law sets both arrays for the active slots. pacer's own law is `Controller`; the published
    baselines that replay compares it with (pacer/replay/baselines.py) are other subclasses."""

    name = "base"
    STATE: tuple[tuple[str, float], ...] = (("throttle", 1.0), ("multiplier", 1.0))

    def __init__(self, params: ControlParams | None = None, capacity: int = 1024) -> None:
        self.params = params or ControlParams()
        for attr, fill in self.STATE:
            setattr(self, attr, np.full(capacity, fill))
        self.throttle: F64
        self.multiplier: F64

    def ensure(self, capacity: int) -> None:
        """Grow the arrays to hold `capacity` slots (amortised doubling)."""
        have = self.throttle.shape[0]
        if capacity <= have:
            return
        new = max(capacity, 2 * have)
        for attr, fill in self.STATE:
            grown = np.full(new, fill)
            grown[:have] = getattr(self, attr)
            setattr(self, attr, grown)

    def reset(self, slot: int) -> None:
        """A new bidder in a reused slot starts from the initial state (full bids)."""
        for attr, fill in self.STATE:
            getattr(self, attr)[slot] = fill

    def horizon(self, start: F64, end: F64) -> F64:
        p = self.params
        return np.clip(p.horizon_frac * (end - start), p.horizon_min, p.horizon_max)

    def update(self, now: float, dt: float, x: TickInputs, inflight_s: float = 0.0) -> None:
        raise NotImplementedError


class Controller(ControlLaw):
    """pacer's control law (see the module docstring)."""

    name = "pacer"
    STATE = (("u", 0.0), ("rate", 0.0), ("conv_num", 0.0), ("conv_den", 0.0), *ControlLaw.STATE)

    def __init__(self, params: ControlParams | None = None, capacity: int = 1024) -> None:
        super().__init__(params, capacity)
        self.u: F64
        self.rate: F64
        self.conv_num: F64
        self.conv_den: F64

    def conversion(self, n: int) -> F64:
        """Share of reserved micros that recently became spend; the prior until a reservation settles."""
        den = self.conv_den[:n]
        return np.where(den > 0, self.conv_num[:n] / np.maximum(den, 1e-12), self.params.conv_prior)

    def update(self, now: float, dt: float, x: TickInputs, inflight_s: float = 0.0) -> None:
        """Advance every active bidder's state by one tick of `dt` seconds; `inflight_s` is the mean delay
        between a grant and its win notice."""
        p = self.params
        n = x.budget.shape[0]
        sl = slice(0, n)
        dt = max(dt, 1e-6)

        decay = np.exp(-dt / p.conv_tau)
        self.conv_num[sl] = self.conv_num[sl] * decay + x.settled_spent
        self.conv_den[sl] = self.conv_den[sl] * decay + x.settled_reserved
        conv = self.conversion(n)

        length = np.maximum(x.end - x.start, 1e-6)
        horizon = self.horizon(x.start, x.end)
        left = np.maximum(x.end - now, dt)
        ahead = np.minimum(horizon, left)
        f_now = progress(x.mode, np.full(n, now), x.start, x.end, x.weight_now, x.weight_start, x.weight_end)
        f_ahead = progress(x.mode, np.minimum(now + ahead, x.end), x.start, x.end,
                           x.weight_ahead, x.weight_start, x.weight_end)
        curve_rate = x.budget * np.maximum(f_ahead - f_now, 0.0) / ahead
        # A floor of a small share of the even rate keeps log() finite and lets a stalled bidder recover.
        floor = np.maximum(1e-3 * x.budget / length, 1e-9)
        tau = np.clip(p.rate_tau_frac * length, p.rate_tau_min, p.rate_tau_max)
        alpha = 1.0 - np.exp(-dt / tau)
        spend_signal = (x.granted * conv + x.unmatched_spent) / dt
        rate = self.rate[sl] + alpha * (spend_signal - self.rate[sl])
        committed = x.spent + x.holdback + np.minimum(rate * inflight_s, x.reserved)
        desired = np.maximum(x.budget * f_ahead - committed, 0.0) / ahead
        desired = np.minimum(desired, p.burst_cap * curve_rate + floor) + floor
        step = np.clip(p.gain * np.log(desired / (rate + floor)), -p.max_step, p.max_step)
        log_m_min = np.log(p.m_min)
        u = np.clip(self.u[sl] + step, log_m_min + np.log(p.p_min), 0.0)

        paced = x.active & (x.mode != ASAP)
        self.rate[sl] = np.where(x.active, rate, self.rate[sl])
        self.u[sl] = np.where(paced, u, self.u[sl])
        self.multiplier[sl] = np.where(paced, np.exp(np.maximum(self.u[sl], log_m_min)), 1.0)
        self.throttle[sl] = np.where(paced, np.exp(np.minimum(self.u[sl] - log_m_min, 0.0)), 1.0)
