"""Fitted models in the engine: each bidder paces by its own curve, and its bid starts where the landscape says
the plan is met (feed-forward); a model that does not validate is refused and changes nothing."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import numpy as np
import pytest

from pacer.bidder_config import BidderConfig
from pacer.clock import ManualClock
from pacer.controller import ControlParams
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.periods import Daily
from pacer.refit.model import ModelError, fit_bidders, spend_per_auction
from pacer.store import ModelRecord
from tests.unit.test_model import FITTED_AT, MARKET, PRIOR, VALUES, make_rollup

T0 = 1_704_690_000.0  # 2024-01-08T05:00:00Z: midnight in New York, where the model's bidder lives
HOURS = 1.0  # the first hour: where a bidder without a model is still searching for its multiplier
DAILY = BidderConfig(2_000_000, Daily("America/New_York"), pacing="traffic")


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    doc = fit_bidders(make_rollup(), {"big": "America/New_York"}, PRIOR, FITTED_AT)["big"].model
    assert doc is not None and doc["landscape"] is not None
    return doc


def record(doc: dict[str, Any], version: int = 1, seq: int = 1) -> ModelRecord:
    return ModelRecord("big", version, doc, {"ok": True}, seq)


def engine(clock: ManualClock) -> Engine:
    return Engine(clock, EngineParams(tick_s=1.0, control=ControlParams()), PRIOR, rng=random.Random(3))


def test_a_model_gives_the_bidder_its_own_curve_and_status(model: dict[str, Any]) -> None:
    eng = engine(ManualClock(T0))
    eng.configure("other", DAILY)
    eng.configure("big", DAILY)
    assert eng.status("big")["model"]["source"] == "prior"  # type: ignore[index]
    eng.apply_model(record(model))
    bidder = eng.bidders["big"]
    assert bidder.curve_row != 0 and eng.bidders["other"].curve_row == 0
    status = eng.status("big")["model"]  # type: ignore[index]
    assert (status["source"], status["version"], status["fitted_at"]) == ("fitted", 1, model["fitted_at"])
    fitted = TrafficCurve(model["traffic_by_slot"], model["weekday_factor"])
    noon = np.array([T0 + 12 * 3600.0])
    local_noon = noon - 5 * 3600.0  # New York in January
    day = fitted.weight(np.array([T0 - 5 * 3600.0, T0 + 19 * 3600.0]))
    expected = (fitted.weight(local_noon) - day[0]) / (day[1] - day[0])
    assert eng.target(bidder, noon)[0] == pytest.approx(expected[0], rel=1e-9)
    assert eng.target(eng.bidders["other"], noon)[0] != pytest.approx(expected[0], rel=1e-3)
    row = bidder.curve_row
    eng.remove("big")
    eng.configure("later", DAILY)
    assert eng.bidders["later"].curve_row == 0  # a model belongs to its bidder, the row was only released
    eng.configure("big", DAILY)
    assert eng.bidders["big"].curve_row == row  # a bidder configured again gets its model again


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["traffic_by_slot"].__setitem__(0, math.nan),
        lambda d: d["landscape"]["win_rate"].reverse(),
        lambda d: d.__setitem__("traffic_by_slot", d["traffic_by_slot"][:100]),
    ],
)
def test_a_bad_model_is_refused_and_the_good_one_stays(model: dict[str, Any], break_it: Any) -> None:
    eng = engine(ManualClock(T0))
    eng.configure("big", DAILY)
    eng.apply_model(record(model))
    bad = copy.deepcopy(model)
    break_it(bad)
    with pytest.raises(ModelError):
        eng.apply_model(record(bad, version=2, seq=2))
    assert eng.bidders["big"].model is not None and eng.bidders["big"].model.version == 1


def test_feedforward_bids_the_multiplier_that_meets_the_plan(model: dict[str, Any]) -> None:
    """First tick, nothing observed yet: the multiplier m solves S(m) x (auctions the model expects today) = the
    daily budget, S being the model's spend per auction. Without a model the bidder starts at m_start."""
    clock = ManualClock(T0)
    eng = engine(clock)
    eng.configure("big", DAILY)
    eng.configure("plain", DAILY)
    eng.apply_model(record(model))
    clock.advance(1.0)
    eng.tick()
    day_auctions = model["data"]["decisions"] / model["data"]["days"]  # an average day (weight 1)...
    fitted = TrafficCurve(model["traffic_by_slot"], model["weekday_factor"])
    local = np.array([T0 - 5 * 3600.0, T0 + 19 * 3600.0])
    day_auctions *= float(np.diff(fitted.weight(local))[0])  # ...times this Monday's weekday factor
    need = DAILY.budget_micros / day_auctions
    lo, hi = 1e-3, 1.0
    for _ in range(60):  # bisection on the monotone S(m)
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if spend_per_auction(model, np.array([mid]))[0] < need else (lo, mid)
    big = eng.bidders["big"]
    assert big.throttle == 1.0
    assert big.multiplier == pytest.approx(lo, rel=0.02)
    assert eng.bidders["plain"].multiplier == pytest.approx(ControlParams().m_start, rel=0.05)


def run_day(eng: Engine, clock: ManualClock, model: dict[str, Any], hours: float, seed: int) -> int:
    """Auctions at the model's rate and shape, lognormal values and market, second price, wins notified at once."""
    rng = np.random.default_rng(seed)
    fitted = TrafficCurve(model["traffic_by_slot"], model["weekday_factor"])
    per_day = model["data"]["decisions"] / model["data"]["days"]
    spent = 0
    for second in range(int(hours * 3600)):
        local = np.array([clock.now - 5 * 3600.0, clock.now + 1.0 - 5 * 3600.0])
        rate = per_day * float(np.diff(fitted.weight(local))[0])
        for i in range(rng.poisson(rate)):
            value = int(math.exp(math.log(VALUES[0]) + VALUES[1] * rng.standard_normal()))
            market = int(math.exp(math.log(MARKET[0]) + MARKET[1] * rng.standard_normal()))
            granted, _ = eng.decide("big", f"{second}-{i}", value)
            if granted >= market:
                eng.win("big", f"{second}-{i}", market)
                spent += market
        clock.advance(1.0)
        eng.tick()
    return spent


def test_feedforward_is_on_plan_from_the_first_hour(model: dict[str, Any]) -> None:
    """In the first hour of its day, a bidder with a model spends within 12% of the plan, closer than one without
    a model, which starts from m_start and has to find its multiplier by feedback (measured: 0.92 vs 0.82)."""
    results = {}
    for label, doc in (("fitted", model), ("prior", None)):
        clock = ManualClock(T0)
        eng = engine(clock)
        eng.configure("big", DAILY)
        if doc is not None:
            eng.apply_model(record(doc))
        spent = run_day(eng, clock, model, HOURS, seed=11)
        plan = DAILY.budget_micros * float(eng.target(eng.bidders["big"], np.array([clock.now]))[0])
        results[label] = spent / plan
    print(f"\nspend / plan after {HOURS} h: {results}")
    assert abs(results["fitted"] - 1.0) <= 0.12
    assert abs(results["fitted"] - 1.0) < abs(results["prior"] - 1.0)
