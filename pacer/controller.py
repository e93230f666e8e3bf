"""controller.py: the control law. Every tick, for all bidders at once, turn (target curve, committed spend)
into a bid multiplier and a participation probability.

Vectorised numpy; no I/O, no per-bidder Python loops. Tick-rate invariant: every gain is per second.

The law, per bidder with period [start, end), budget B and target curve F:
- committed = spent + holdback + in-flight spend. Reserved money is not spent money: most open reservations
  of an exchange without loss notices are dead losses waiting to expire. By Little's law the spend still in
  flight is the recent spend rate times the mean win-notice delay (at most what is reserved).
- The error is how far committed spend is from the curve, in units of the spend the curve plans over the next
  horizon H (5% of the period, at most 15 min): e = (committed - B F(t)) / (B (F(t+H) - F(t))). The unit is
  never less than a few typical wins, so a bidder that wins rarely is not jerked around by each win.
- PI control of the log bid multiplier: u = u_I - k_P e, du_I/dt = -k_P e / (4 H). Cumulative spend is the
  integral of the spend rate, so the plant is an integrator and P alone is stable; the slow integral finds the
  steady multiplier (the Lagrange multiplier of the budget, as in Balseiro & Gur's dual pacing), so once on
  the curve the bid stays put, which is what buys the most value: the hindsight optimum bids one constant
  fraction of value. Noise enters through the cumulative error only, never through a noisy rate estimate.
- u maps to the bid first, participation last: multiplier m = e^u down to `m_min`; only below that does the
  throttle p fall. Shading buys the cheapest impressions; random skipping buys average ones.
- Feed-forward, for a bidder with a fitted model (pacer/fitted.py): the model's bid landscape says what one
  auction costs on average at each multiplier, S(m), and its traffic curve with the observed auction level says
  how many auctions the next horizon brings. The multiplier that makes (auctions x S(m)) meet the planned spend
  is u_ff; then u = u_ff + u_I - k_P e, and the integral only learns what the model gets wrong. Without a model
  u_ff = 0 and u_I starts at log(m_start).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacer.curves import ASAP, progress

F64 = npt.NDArray[np.float64]
FF_GRID = np.geomspace(0.05, 1.0, 24)  # the multipliers at which a model's spend per auction is tabulated


@dataclass(frozen=True, slots=True)
class ControlParams:
    m_min: float = 0.05  # lowest bid multiplier before throttling starts
    m_start: float = 0.3  # a new bidder starts here: behind the curve costs only time (the P term catches up
    # within minutes, cheapest impressions first), ahead of it buys the dearest impressions of the period
    p_min: float = 1e-4  # lowest participation probability (keeps a trickle of feedback)
    horizon_frac: float = 0.05  # the error's horizon H as a share of the period...
    horizon_min: float = 1.0  # ...but at least this (s)
    horizon_max: float = 900.0  # ...and at most this (s)
    k_p: float = 1.5  # change of log multiplier per horizon of error (tuned on the replay benchmark)
    integral_horizons: float = 4.0  # integral time, in horizons (damping: > 1 / (elasticity * k_p))
    error_wins: float = 8.0  # the error's unit is at least this many typical wins
    error_clip: float = 1.5  # |e| fed to the integral is at most this
    burst_cap: float = 3.0  # ahead of the curve at more than this times its rate: the burst guard acts
    rate_tau: float = 60.0  # (s) time constant of the spend-rate average used for in-flight spend
    price_alpha: float = 0.05  # weight of each tick's mean win price in the typical-win estimate
    level_tau: float = 1800.0  # (s) memory of the observed auction level (auctions per unit of curve weight)
    level_prior_weight: float = 0.02  # the fitted level counts as this much curve weight (~30 min) of observation


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
    settled_spent: F64  # win prices of those resolved by a win
    unmatched_spent: F64  # win prices with no open reservation (late, unknown auction)
    wins: F64  # wins charged since the last tick (matched or not)
    seen: F64  # auctions the bidder asked about since the last tick


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

    def reset(self, slot: int, mode: int = ASAP) -> None:
        """A new bidder (maybe in a reused slot) starts from the initial state (full bids)."""
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
    STATE = (
        ("u_i", 0.0),
        ("rate", 0.0),
        ("price", 0.0),
        ("error", 0.0),
        ("u_ff", 0.0),
        ("ff_on", 0.0),
        ("ff_rebase", 0.0),
        ("lvl_num", 0.0),
        ("lvl_den", 0.0),
        ("w_last", np.nan),
        *ControlLaw.STATE,
    )

    def __init__(self, params: ControlParams | None = None, capacity: int = 1024) -> None:
        super().__init__(params, capacity)
        self.u_i: F64  # integral part of the log multiplier
        self.rate: F64  # recent spend rate (micros/s)
        self.price: F64  # typical win price (micros); 0 until a win
        self.error: F64  # last error e, for status and plots
        self.u_ff: F64  # feed-forward part of the log multiplier (0 without a model)
        self.ff_on: F64  # 1 where the bidder has a model with a landscape
        self.ff_rebase: F64  # 1 where a running bidder just got one (u_i is rebased once so u does not jump)
        self.lvl_num: F64  # decayed auctions seen...
        self.lvl_den: F64  # ...over decayed curve weight elapsed: the auction level
        self.w_last: F64  # curve weight at the last tick
        self.ff_spend = np.zeros((capacity, FF_GRID.shape[0]))  # spend per auction at each FF_GRID multiplier

    def ensure(self, capacity: int) -> None:
        have = self.ff_spend.shape[0]
        super().ensure(capacity)
        new = self.throttle.shape[0]
        if new > have:
            grown = np.zeros((new, FF_GRID.shape[0]))
            grown[:have] = self.ff_spend
            self.ff_spend = grown

    def reset(self, slot: int, mode: int = ASAP) -> None:
        super().reset(slot, mode)
        self.ff_spend[slot] = 0.0
        if mode != ASAP:
            self.u_i[slot] = np.log(self.params.m_start)
            self.multiplier[slot] = self.params.m_start

    def set_feedforward(self, slot: int, spend: F64 | None, level: float, fresh: bool) -> None:
        """Install (or, with spend None, remove) a model's spend-per-auction table and auction level. A fresh
        bidder starts its integral at 0 (the model knows the multiplier); a running one keeps its current bid:
        its integral is rebased at the next tick."""
        was_on = bool(self.ff_on[slot])
        self.lvl_den[slot] = self.params.level_prior_weight
        self.lvl_num[slot] = level * self.params.level_prior_weight
        if spend is None:
            if was_on:
                self.u_i[slot] += self.u_ff[slot]
            self.ff_on[slot] = self.u_ff[slot] = 0.0
            return
        self.ff_spend[slot] = spend
        self.ff_on[slot] = 1.0
        if fresh:
            self.u_i[slot] = self.u_ff[slot] = 0.0
        elif not was_on:
            self.ff_rebase[slot] = 1.0

    def feedforward(self, dt: float, x: TickInputs, f_now: F64, f_ahead: F64) -> F64:
        """u_ff: the log multiplier at which the auctions expected over the horizon cost the planned spend."""
        p = self.params
        n = x.budget.shape[0]
        sl = slice(0, n)
        dw = x.weight_now - self.w_last[sl]
        dw = np.where(np.isfinite(dw) & (dw >= 0), dw, 0.0)
        decay = np.exp(-dt / p.level_tau)
        self.lvl_num[sl] = self.lvl_num[sl] * decay + x.seen
        self.lvl_den[sl] = self.lvl_den[sl] * decay + dw
        self.w_last[sl] = x.weight_now
        level = self.lvl_num[sl] / np.maximum(self.lvl_den[sl], 1e-12)
        auctions = level * np.maximum(x.weight_ahead - x.weight_now, 0.0)
        out = np.zeros(n)
        on = np.flatnonzero(self.ff_on[sl] > 0)  # only bidders with a fitted landscape have a feed-forward
        if not len(on):
            return out
        need = (x.budget * np.maximum(f_ahead - f_now, 0.0) / np.maximum(auctions, 1e-9))[on]
        table = self.ff_spend[on]
        log_s = np.log(np.maximum(table, 1e-12))
        log_need = np.log(np.maximum(need, 1e-12))
        log_m = np.log(FF_GRID)
        k = np.clip((table < need[:, None]).sum(axis=1), 1, FF_GRID.shape[0] - 1)
        rows = np.arange(len(on))
        lo, hi = log_s[rows, k - 1], log_s[rows, k]
        t = np.clip((log_need - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        u = log_m[k - 1] + t * (log_m[k] - log_m[k - 1])
        u = np.where(need >= table[:, -1], 0.0, u)  # more than full bids buy: bid in full
        # Cheaper than the lowest multiplier buys: participate in that share of auctions.
        u = np.where(need <= table[:, 0], log_m[0] + log_need - log_s[:, 0], u)
        out[on] = np.clip(u, np.log(p.m_min) + np.log(p.p_min), 0.0)
        return out

    def update(self, now: float, dt: float, x: TickInputs, inflight_s: float = 0.0) -> None:
        """Advance every active bidder's state by one tick of `dt` seconds; `inflight_s` is the mean delay
        between a grant and its win notice."""
        p = self.params
        n = x.budget.shape[0]
        sl = slice(0, n)
        dt = max(dt, 1e-6)

        spend = x.settled_spent + x.unmatched_spent
        rate = self.rate[sl] + (1.0 - np.exp(-dt / p.rate_tau)) * (spend / dt - self.rate[sl])
        won = x.wins > 0
        tick_price = spend / np.maximum(x.wins, 1.0)
        price = np.where(
            won & (self.price[sl] > 0),
            self.price[sl] + p.price_alpha * (tick_price - self.price[sl]),
            np.where(won, tick_price, self.price[sl]),
        )
        committed = x.spent + x.holdback + np.minimum(rate * inflight_s, x.reserved)

        horizon = self.horizon(x.start, x.end)
        f_now = progress(x.mode, np.full(n, now), x.start, x.end, x.weight_now, x.weight_start, x.weight_end)
        f_ahead = progress(
            x.mode, np.minimum(now + horizon, x.end), x.start, x.end, x.weight_ahead, x.weight_start, x.weight_end
        )
        # The horizon's planned spend, as if the curve went on at its current pace past the end of the period.
        planned = (
            x.budget * np.maximum(f_ahead - f_now, 0.0) * horizon / np.maximum(np.minimum(horizon, x.end - now), dt)
        )
        unit = np.maximum(np.maximum(planned, p.error_wins * price), 1e-3 * x.budget + 1e-9)
        error = (committed - x.budget * f_now) / unit
        # The integral learns the steady multiplier only while the gap is not closing within two horizons at the
        # current rate (anti-windup): waiting for the curve after a burst, or catching up after a stall, is the
        # P term's job and teaches it nothing; a gap that stays open is the integral's.
        planned_rate = planned / horizon
        closing = np.sign(error) * (planned_rate - rate) * 2.0 * horizon >= np.abs(error) * unit
        clipped = np.clip(error, -p.error_clip, p.error_clip)
        u_ff = self.feedforward(dt, x, f_now, f_ahead)
        rebase = self.ff_rebase[sl] > 0
        u_i = self.u_i[sl] - np.where(rebase, u_ff, 0.0)
        self.ff_rebase[sl] = 0.0
        u_i = u_i - np.where(closing, 0.0, p.k_p * clipped * dt / (p.integral_horizons * horizon))
        cap_rate = np.maximum(p.burst_cap * planned_rate, 1e-12)
        burst = (error > 1.0) & (rate > cap_rate)
        u_i -= np.where(burst, np.log(np.maximum(rate, 1e-12) / cap_rate) * dt / p.rate_tau, 0.0)
        floor = np.log(p.m_min) + np.log(p.p_min)
        u_i = np.clip(u_i, floor - u_ff, -u_ff)  # u_ff + u_i stays a bid within [m_min p_min, 1]: no windup
        u = np.clip(u_ff + u_i - p.k_p * error, floor, 0.0)

        paced = x.active & (x.mode != ASAP)
        active = x.active
        self.rate[sl] = np.where(active, rate, self.rate[sl])
        self.price[sl] = np.where(active, price, self.price[sl])
        self.error[sl] = np.where(paced, error, 0.0)
        self.u_i[sl] = np.where(paced, u_i, self.u_i[sl])
        self.u_ff[sl] = u_ff
        log_m_min = np.log(p.m_min)
        self.multiplier[sl] = np.where(paced, np.exp(np.maximum(u, log_m_min)), 1.0)
        self.throttle[sl] = np.where(paced, np.exp(np.minimum(u - log_m_min, 0.0)), 1.0)
