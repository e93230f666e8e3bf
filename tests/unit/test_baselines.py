"""Published pacing baselines (pacer/replay/baselines.py): direction and bounds of each law on hand-built tick
inputs, then each paced law closed-loop through the real engine over a simulated second-price market."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime

import numpy as np
import pytest

from pacer.bidder_config import BidderConfig
from pacer.clock import ManualClock
from pacer.controller import ControlLaw, ControlParams, TickInputs
from pacer.curves import ASAP, EVEN, FRONTLOAD, TRAFFIC
from pacer.engine import Engine, EngineParams
from pacer.periods import Daily, Flight
from pacer.replay.baselines import (
    BASELINES,
    Asap,
    Dual,
    Mystique,
    MystiqueParams,
    Pid,
    SlottedLaw,
    Throttle,
    ThrottleParams,
)

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
L = 3600.0  # period length of the hand-built inputs (s)
B = 1e6  # budget (micros)
EVEN_RATE = B / L
PACED = ("throttle", "pid", "dual", "mystique")


def inputs(
    n: int,
    spent: object,
    paid: object,
    mode: object = EVEN,
    active: object = True,
    budget: object = B,
    start: object = 0.0,
    end: object = L,
    **cols: object,
) -> TickInputs:
    """One tick's inputs for n slots; each argument (and any other column in `cols`) is a scalar or an array."""

    def col(v: object) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()

    given = {
        "active": np.broadcast_to(np.asarray(active, dtype=np.bool_), (n,)).copy(),
        "mode": np.broadcast_to(np.asarray(mode, dtype=np.int8), (n,)).copy(),
        "budget": col(budget),
        "spent": col(spent),
        "start": col(start),
        "end": col(end),
        "settled_spent": col(paid),
        **{k: col(v) for k, v in cols.items()},
    }
    # Every other per-slot column (reservations, traffic weights, counters) is zero: the baselines read none.
    return TickInputs(**{f.name: given.get(f.name, np.zeros(n)) for f in fields(TickInputs)})


def signal(law: ControlLaw, n: int) -> np.ndarray:
    """The expected share of a full bid's spend: participation times bid share."""
    return law.throttle[:n] * law.multiplier[:n]


class Feed:
    """Drives a law through ticks: every tick pays `rate * dt` per slot (`rate` may be a function of the
    current signal: a plant) and adds it to the cumulative spend. The first tick, at `t`, anchors the
    laws' intervals there."""

    def __init__(self, law: ControlLaw, n: int, t: float = 0.0, **kw: object) -> None:
        self.law, self.n, self.t, self.kw = law, n, t, kw
        self.spent = np.zeros(n)
        self.tick(0.0, 0.0)

    def tick(self, dt: float, rate: object) -> np.ndarray:
        self.t += dt
        r = rate(signal(self.law, self.n)) if callable(rate) else rate
        paid = np.broadcast_to(np.asarray(r, dtype=np.float64), (self.n,)) * dt
        self.spent = self.spent + paid
        self.law.update(self.t, dt, inputs(self.n, self.spent, paid, **self.kw))  # type: ignore[arg-type]
        return signal(self.law, self.n).copy()

    def run(self, seconds: float, rate: object, dts: Callable[[], float] = lambda: 1.0) -> list[np.ndarray]:
        """Tick for `seconds`; returns the signal after every tick."""
        until = self.t + seconds
        seen = []
        while self.t < until - 1e-9:
            seen.append(self.tick(min(dts(), until - self.t), rate))
        return seen


# --- the registry and the interface ------------------------------------------------------------------------


def test_registry_names_every_baseline_and_builds_them_as_replay_does() -> None:
    assert {"asap": Asap, "throttle": Throttle, "pid": Pid, "dual": Dual, "mystique": Mystique} == BASELINES
    for name, cls in BASELINES.items():
        law = cls(ControlParams())  # type: ignore[call-arg]  # replay passes the engine's ControlParams
        assert isinstance(law, ControlLaw) and law.name == name


@pytest.mark.parametrize("name", list(BASELINES))
def test_state_arrays_grow_and_reset(name: str) -> None:
    law = BASELINES[name](capacity=4)
    Feed(law, 4).run(180, 5 * EVEN_RATE)
    law.ensure(100)
    for attr, fill in law.STATE:
        arr = getattr(law, attr)
        assert arr.shape == (100,), attr
        assert np.array_equal(arr[4:], np.full(96, fill), equal_nan=True), attr
    law.reset(0)
    for attr, fill in law.STATE:
        assert np.array_equal(getattr(law, attr)[:1], [fill], equal_nan=True), attr
    assert law.throttle[0] == 1.0 and law.multiplier[0] == 1.0


def test_asap_bids_in_full_whatever_the_spend() -> None:
    law = Asap()
    for seen in Feed(law, 3).run(300, 50 * EVEN_RATE):
        assert np.all(seen == 1.0)


# --- direction of the response -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PACED)
def test_overspending_lowers_the_signal_and_underspending_raises_it(name: str) -> None:
    budgets = np.array([1e6, 5e6, 2e7])
    law = BASELINES[name]()
    feed = Feed(law, 3, budget=budgets)
    rng = np.random.default_rng(1)

    def irregular() -> float:
        return float(rng.uniform(0.4, 1.6))

    # Three minutes at 3x the even rate: ahead of the curve and spending faster than it.
    seen = feed.run(59.5, 3 * budgets / L, irregular)
    assert all(np.all(s == 1.0) for s in seen), "nothing changes before a whole interval has elapsed"
    feed.run(1.0, 3 * budgets / L)
    after_one = signal(law, 3)
    assert np.all(after_one < 1.0), after_one
    feed.run(120, 3 * budgets / L, irregular)
    low = signal(law, 3)
    assert np.all(low <= after_one), (after_one, low)
    # Then nothing for twenty minutes: behind the curve from minute 9 on, and not spending at all.
    feed.run(1200, 0.0, irregular)
    assert np.all(signal(law, 3) > low + 0.02), (low, signal(law, 3))


@pytest.mark.parametrize("name", PACED)
def test_asap_and_inactive_slots_bid_in_full(name: str) -> None:
    law = BASELINES[name]()
    modes = np.array([EVEN, ASAP, EVEN, FRONTLOAD], dtype=np.int8)
    active = np.array([True, True, False, True])
    feed = Feed(law, 4, mode=modes, active=active)
    for seen in feed.run(240, 4 * EVEN_RATE):
        assert seen[1] == 1.0 and seen[2] == 1.0
        assert law.throttle[1] == law.multiplier[1] == law.throttle[2] == law.multiplier[2] == 1.0
    assert seen[0] < 1.0 and seen[3] < 1.0
    # A paced slot that goes inactive (paused, exhausted) bids in full at once; so does one switched to ASAP.
    feed.kw = {
        "mode": np.array([ASAP, ASAP, EVEN, FRONTLOAD], dtype=np.int8),
        "active": np.array([True, True, False, False]),
    }
    feed.run(1, 4 * EVEN_RATE)
    assert np.all(law.throttle[:4] == 1.0) and np.all(law.multiplier[:4] == 1.0)


@pytest.mark.parametrize("name", PACED)
def test_signals_stay_in_the_unit_interval_and_only_the_first_n_slots_change(name: str) -> None:
    """Random modes, activity, tick spacing, spend bursts (zero to 100x the even rate) and period rollovers."""
    n, cap = 6, 16
    law = BASELINES[name](capacity=cap)
    for attr, _ in law.STATE:
        getattr(law, attr)[n:] = 7.0  # sentinels: update must not touch slots >= n
    rng = np.random.default_rng(5)
    modes = rng.choice([EVEN, FRONTLOAD, TRAFFIC, ASAP], n).astype(np.int8)
    start, end = np.zeros(n), np.full(n, L)
    spent = np.zeros(n)
    w_start, w_end = np.zeros(n), np.full(n, 10.0)
    t = 0.0
    for _ in range(3000):
        dt = float(rng.choice([0.05, 0.5, 1.0, 3.0, 17.0]))
        t += dt
        roll = t >= end
        if roll.any():  # daily-style rollover: a new period starts, spend drops to zero
            start, end = np.where(roll, end, start), np.where(roll, end + L, end)
            spent = np.where(roll, 0.0, spent)
        paid = rng.choice([0.0, 0.1, 1.0, 3.0, 100.0], n) * EVEN_RATE * dt
        spent = spent + paid
        x = inputs(n, spent, paid, mode=modes, active=rng.random(n) < 0.95, start=start, end=end)
        frac = np.clip((t - start) / (end - start), 0, 1)
        x.weight_start, x.weight_end = w_start, w_end
        x.weight_now, x.weight_ahead = 10 * frac**2, 10 * np.minimum(frac + 0.05, 1) ** 2
        law.update(t, dt, x)
        for arr in (law.throttle[:n], law.multiplier[:n]):
            assert np.all(np.isfinite(arr)) and np.all(arr >= 0.0) and np.all(arr <= 1.0)
        assert np.all(law.throttle[:n][modes == ASAP] == 1.0) and np.all(law.multiplier[:n][modes == ASAP] == 1.0)
    for attr, _ in law.STATE:
        assert np.all(getattr(law, attr)[n:] == 7.0), attr


# --- update interval, irregular ticks, rollover --------------------------------------------------------------


def test_throttle_applies_the_papers_ratio_once_per_interval_whatever_the_tick_spacing() -> None:
    """p <- p * planned rate of the next slot / actual rate of the last; the plan re-allocates what is left."""
    law = Throttle(cfg=ThrottleParams(interval=60.0))
    rng = np.random.default_rng(2)
    feed = Feed(law, 1)
    seen = feed.run(59.0, 2 * EVEN_RATE, lambda: float(rng.uniform(0.2, 2.9)))
    assert all(s[0] == 1.0 for s in seen)
    feed.tick(1.7, 2 * EVEN_RATE)  # this tick closes the interval at t = 60.7 s
    t, spent = feed.t, float(feed.spent[0])
    expected = (B - spent) / (L - t) / (2 * EVEN_RATE)  # even curve: next_rate = remaining / time left
    assert law.throttle[0] == pytest.approx(expected, rel=1e-9)
    assert law.multiplier[0] == 1.0
    # On plan from here: the ratio is ~1 and p holds (the spend rate is what the re-plan asks for).
    p = law.throttle[0]
    feed.run(61.0, p * 2 * EVEN_RATE)
    assert law.throttle[0] == pytest.approx(p, rel=0.05)
    # A slot with no spend at all raises p by the bounded factor, not by infinity.
    p = law.throttle[0]
    feed.run(61.0, 0.0)
    assert law.throttle[0] == pytest.approx(min(1.0, p * ThrottleParams().max_up))


def test_throttle_plans_the_next_slot_on_each_bidders_own_curve() -> None:
    """Same spend, same budget; the traffic bidder's curve says the next minute carries 3x the average traffic,
    so its planned spend for the next slot, and so its participation, is 3x the even bidder's."""
    law = Throttle()
    spent = np.zeros(2)
    for t in np.arange(61.0):  # the tick at 0 anchors the interval, the one at 60 closes it
        dt = 1.0 if t else 0.0
        paid = np.full(2, 4 * EVEN_RATE * dt)
        spent += paid
        now_w = 100.0 * t / L  # on the even pace so far...
        x = inputs(
            2,
            spent,
            paid,
            mode=np.array([EVEN, TRAFFIC]),
            weight_start=0.0,
            weight_end=100.0,
            weight_now=now_w,
            weight_ahead=now_w + 3 * 100.0 * 60 / L,
        )  # ...then 3x for a minute
        law.update(float(t), dt, x)
    assert law.throttle[0] == pytest.approx((B - spent[0]) / (L - 60.0) / (4 * EVEN_RATE))
    assert law.throttle[1] == pytest.approx(3 * law.throttle[0])


@pytest.mark.parametrize("name", PACED)
def test_the_signal_moves_once_per_interval_and_does_not_depend_on_the_tick_spacing(name: str) -> None:
    """A plant whose full-bid spend is 2.5x the even rate, ticked every 1 s or at 0.1-4 s at random."""
    rng = np.random.default_rng(3)

    def plant(sig: np.ndarray) -> np.ndarray:
        return 2.5 * EVEN_RATE * sig

    results = []
    for dts in (lambda: 1.0, lambda: float(rng.uniform(0.1, 4.0))):
        law = BASELINES[name]()
        feed = Feed(law, 1)
        changes, last, last_change_t = 0, 1.0, 0.0
        while feed.t < 1200:
            (s,) = feed.tick(dts(), plant)
            if s != last:
                assert feed.t - last_change_t >= 60.0 - 1e-6, "stepped before its interval elapsed"
                changes, last, last_change_t = changes + 1, float(s), feed.t
        assert 1 <= changes <= 20
        results.append(last)
    assert results[0] == pytest.approx(results[1], abs=0.05)


@pytest.mark.parametrize("name", PACED)
def test_daily_rollover_where_spend_drops_to_zero_restarts_the_interval(name: str) -> None:
    law = BASELINES[name]()
    assert isinstance(law, SlottedLaw)
    day = 86400.0
    rates = np.array([3.0, 0.2]) * B / day
    feed = Feed(law, 2, t=day - 630, start=0.0, end=day)
    feed.spent[:] = 0.97 * B
    feed.run(630, rates)  # ten intervals and half of one: the old period's last interval is cut short
    assert np.all(law.acc[:2] > 0)
    # Midnight: a new period whose spend starts from zero. The rollover tick's spend is not counted in the new
    # interval (it may belong to the old period), and the interval starts at the rollover.
    feed.kw = {"start": day, "end": 2 * day}
    feed.spent[:] = 0.0
    feed.tick(1.0, 1e3 * B / day)
    assert np.all(np.isfinite(signal(law, 2)))
    assert np.all(law.t_last[:2] == feed.t) and np.all(law.acc[:2] == 0.0) and np.all(law.start0[:2] == day)
    seen = feed.run(600, rates)
    assert all(np.all((s >= 0) & (s <= 1)) for s in seen)
    assert seen[-1][0] < seen[-1][1]  # the overspender is held lower than the underspender in the new day too


def test_pid_new_period_keeps_the_bid_level_and_drops_the_derivative() -> None:
    law = Pid()
    feed = Feed(law, 1, start=0.0, end=L)
    feed.t = L - 300
    feed.spent[:] = 0.9 * B
    feed.run(300, 3 * EVEN_RATE)
    integral = law.integral[0]
    assert integral < 0 and not math.isnan(law.e_prev[0])
    feed.kw = {"start": L, "end": 2 * L}
    feed.spent[:] = 0.0
    feed.run(1, 0.0)
    assert law.integral[0] == integral and math.isnan(law.e_prev[0])


# --- Mystique specifics --------------------------------------------------------------------------------------


def test_mystique_moves_at_most_0_025_per_minute() -> None:
    n = 5
    law = Mystique()
    rng = np.random.default_rng(4)
    feed = Feed(law, n)
    last = law.ps[:n].copy()
    for _ in range(50):  # 50 minutes of random spend rates, from nothing to 5x the even rate
        feed.run(60.0, rng.choice([0.0, 0.5, 1.0, 2.0, 5.0], n) * EVEN_RATE)
        ps = law.ps[:n].copy()
        assert np.all(np.abs(ps - last) <= 0.025 + 1e-12), ps - last
        assert np.all(ps >= 1e-4) and np.all(ps <= 1.0)
        last = ps


def test_mystique_runaway_train_stops_bidding_and_releases() -> None:
    law = Mystique()
    feed = Feed(law, 2)
    feed.run(120, EVEN_RATE)  # on the curve for two minutes
    assert np.all(law.throttle[:2] == 1.0)
    # Slot 0 goes 20x the curve's slope while ahead of it; slot 1 goes 10x: fast, but not a runaway train.
    feed.run(60, np.array([20.0, 10.0]) * EVEN_RATE)
    assert law.throttle[0] == 0.0 and law.throttle[1] == 1.0
    resume = law.multiplier[0]
    assert 0 < resume <= 1.0
    # Stopped, it spends nothing: the next minute it bids again, a step below the last positive signal.
    feed.run(60, np.array([0.0, 1.0]) * EVEN_RATE)
    assert law.throttle[0] == 1.0
    assert resume - 0.025 - 1e-12 <= law.multiplier[0] < resume


def test_mystique_runaway_needs_to_be_ahead_of_the_curve() -> None:
    law = Mystique()
    feed = Feed(law, 1, t=1800.0)  # half time with only 10% spent: far behind
    feed.spent[:] = 0.1 * B
    feed.run(60, 20 * EVEN_RATE)
    assert law.throttle[0] == 1.0


def test_mystique_ends_at_and_restarts_from_the_average_signal() -> None:
    law = Mystique(cfg=MystiqueParams())
    feed = Feed(law, 1)
    feed.run(L - 150, 1.02 * EVEN_RATE)  # a little ahead all along: ps walks down
    ps = law.ps[0]
    average = law.ps_sum[0] / law.ps_count[0]
    assert ps < average < 1.0
    feed.run(61, 1.02 * EVEN_RATE)  # within the last three minutes: the period's average signal
    assert law.ps[0] == pytest.approx(average, rel=0.05)
    average = law.ps_sum[0] / law.ps_count[0]
    feed.kw = {"start": L, "end": 2 * L}
    feed.spent[:] = 0.0
    feed.run(1, 0.0)  # the next period starts from the average
    assert law.ps[0] == pytest.approx(average) and law.ps_count[0] == 0


# --- closed loop through the real engine ---------------------------------------------------------------------


def closed_loop(
    law: ControlLaw, seed: int = 7, length: float = 3600.0, rate: float = 10.0, share: float = 0.2
) -> dict[str, float]:
    """One even-paced bidder over a second-price market: Poisson auctions, lognormal values and competing bids,
    a win when the granted bid reaches the competing bid, charged at once; the engine ticks every 1 s."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate * length))
    times = (np.sort(rng.uniform(0, length, n)) + T0).tolist()
    values = rng.lognormal(math.log(2000), 0.5, n).astype(int) + 1
    market = rng.lognormal(math.log(2000), 0.5, n).astype(int) + 1
    budget = int(market[values >= market].sum() * share)  # a share of what it would spend unpaced
    clock = ManualClock(T0)
    engine = Engine(clock, EngineParams(), controller=law, rng=random.Random(seed))
    engine.configure("b", BidderConfig(budget, Flight(T0, T0 + length), "even"))
    ledger = engine.bidders["b"].ledger
    next_tick, half = T0 + 1.0, -1.0
    for i, (t, v, m) in enumerate(zip(times, values.tolist(), market.tolist(), strict=True)):
        while next_tick <= t:
            clock.now = next_tick
            engine.tick()
            if half < 0 and next_tick >= T0 + length / 2:
                half = ledger.spent / budget
            assert ledger.spent <= budget
            next_tick += 1.0
        clock.now = t
        granted, _ = engine.decide("b", str(i), v)
        if granted and granted >= m:
            engine.win("b", str(i), m)
    return {"delivery": ledger.spent / budget, "half": half}


@pytest.mark.parametrize(
    "make",
    [
        Throttle,
        Pid,
        Dual,
        # Mystique's constants are per iteration of a 1440-minute day (a step of at most 0.025 a minute: 40
        # minutes to cross the signal's range). This one-hour flight stands for a day compressed 24x, so its
        # minute becomes 2.5 s; with 60 s iterations it overspends the first quarter hour and runs dry early.
        lambda: Mystique(cfg=MystiqueParams(interval=3600.0 / 1440)),
    ],
    ids=["throttle", "pid", "dual", "mystique"],
)
def test_closed_loop_delivers_the_budget_on_the_curve_and_never_overspends(make: Callable[[], ControlLaw]) -> None:
    r = closed_loop(make())
    assert 0.9 <= r["delivery"] <= 1.0, r
    assert 0.3 <= r["half"] <= 0.7, r


def test_closed_loop_asap_spends_out_early() -> None:
    r = closed_loop(Asap())
    assert r["delivery"] <= 1.0 and r["half"] >= 0.99, r


@pytest.mark.parametrize("name", PACED)
def test_through_the_engine_a_daily_budget_rolls_over_at_midnight(name: str) -> None:
    """Irregular ticks across UTC midnight, a budget whose even rate is a third of the unpaced spend: the law
    paces the end of one day, the ledger renews at midnight, and the next day is paced again."""
    midnight = datetime(2027, 1, 16, tzinfo=UTC).timestamp()
    rng = np.random.default_rng(9)
    rate = 3.0  # auctions per second

    def auction() -> tuple[int, int]:
        return int(rng.lognormal(math.log(20_000), 0.3)), int(rng.lognormal(math.log(18_000), 0.3))

    sample = np.array([auction() for _ in range(20_000)])
    unpaced_rate = rate * float(np.mean(sample[:, 1] * (sample[:, 0] >= sample[:, 1])))  # micros/s
    budget = int(unpaced_rate / 3 * 86400)
    clock = ManualClock(midnight - 900)
    law = BASELINES[name]()
    engine = Engine(clock, EngineParams(), controller=law, rng=random.Random(1))
    engine.configure("b", BidderConfig(budget, Daily("UTC"), "even"))
    bidder = engine.bidders["b"]
    spent_before, aid = -1, 0
    while clock.now < midnight + 900:
        clock.advance(float(rng.uniform(0.3, 2.5)))
        if spent_before < 0 and clock.now >= midnight:
            spent_before = bidder.ledger.spent
        engine.tick()
        assert 0.0 <= bidder.throttle <= 1.0 and 0.0 <= bidder.multiplier <= 1.0
        for _ in range(int(rng.poisson(rate * 1.4))):
            aid += 1
            value, market = auction()
            granted, _ = engine.decide("b", str(aid), value)
            if granted and granted >= market:
                engine.win("b", str(aid), market)
    assert isinstance(law, SlottedLaw)
    assert bidder.window.start == midnight and law.start0[bidder.slot] == midnight
    after = bidder.ledger.spent / (unpaced_rate * 900)  # the new day's spend, per unpaced quarter hour
    assert 0 < spent_before < budget and 0.05 < after < 1.0, (spent_before, after)
    assert bidder.throttle * bidder.multiplier < 1.0  # still pacing in the new day
