"""Ledger: reservations, capture, release, expiry; the money invariant under any interleaving (hypothesis)."""

from __future__ import annotations

import gc

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pacer.ledger import Ledger


def test_reserve_capture_frees_the_rest() -> None:
    led = Ledger(budget=10_000)
    assert led.reserve("a", 3_000, now=0.0)
    assert (led.reserved, led.available) == (3_000, 7_000)
    cap = led.capture("a", 1_200, now=0.5)
    assert cap.matched and cap.delay == 0.5
    assert (led.spent, led.reserved, led.available) == (1_200, 0, 8_800)


def test_cannot_reserve_beyond_budget() -> None:
    led = Ledger(budget=1_000)
    assert led.reserve("a", 1_000, 0.0)
    assert not led.reserve("b", 1, 0.0)
    assert led.release("a") == 1_000
    assert led.reserve("b", 1, 0.0)


def test_repeated_request_for_an_auction_replaces_its_hold() -> None:
    led = Ledger(budget=1_000)
    assert led.reserve("a", 600, 0.0)
    assert led.reserve("a", 900, 0.0)
    assert led.reserved == 900
    assert not led.reserve("a", 1_001, 0.0)
    assert led.reserved == 900  # a refused replacement keeps the old hold


def test_expiry_frees_old_holds_and_a_late_win_is_still_charged_with_its_delay() -> None:
    led = Ledger(budget=10_000)
    led.reserve("old", 2_000, now=0.0)
    led.reserve("new", 1_000, now=5.0)
    assert led.expire(now=6.0, ttl=3.0, forget_after=60.0) == 2_000
    assert led.reserved == 1_000
    cap = led.capture("old", 1_500, now=7.0)
    assert not cap.matched and cap.delay == 7.0
    assert led.spent == 1_500 and led.uncovered == 1_500


def test_open_grants_are_invisible_to_the_garbage_collector() -> None:
    """Millions of open grants must not be traversed by every full collection (that was 300-500 ms pauses)."""
    led = Ledger(budget=10**12)
    for i in range(1000):
        led.reserve(f"a{i}", 1_000, now=float(i))
    led.expire(now=900.0, ttl=100.0, forget_after=1e9)
    led.capture("a950", 900, now=950.0)
    assert led.open_count == 198  # granted at 801..999, one of them won
    assert gc.get_referents(led) and not any(gc.is_tracked(x) for x in gc.get_referents(led) if isinstance(x, dict))


def test_expiry_frees_in_grant_order_whatever_was_settled_in_between() -> None:
    led = Ledger(budget=10**9)
    for i in range(100):
        led.reserve(f"a{i}", 10, now=float(i))
    for i in range(0, 100, 3):
        led.release(f"a{i}")
    assert led.expire(now=150.0, ttl=100.0, forget_after=1e9) == 10 * sum(1 for i in range(51) if i % 3)
    assert led.open_count == sum(1 for i in range(51, 100) if i % 3)
    cap = led.capture("a10", 10, now=151.0)  # expired, still remembered: its true delay
    assert not cap.matched and cap.delay == 141.0


def test_win_on_unknown_auction_is_charged_and_uses_up_the_holdback_first() -> None:
    led = Ledger(budget=10_000)
    led.hold_back(3_000, until=100.0)
    assert led.available == 7_000
    cap = led.capture("never-granted", 2_000, now=1.0)
    assert not cap.matched and cap.delay is None
    assert (led.spent, led.holdback, led.uncovered) == (2_000, 1_000, 0)
    led.expire(now=100.0, ttl=1.0, forget_after=1.0)
    assert led.holdback == 0


def test_renew_starts_a_new_period_and_carries_open_holds() -> None:
    led = Ledger(budget=5_000, spent=4_000)
    led.reserve("a", 500, 0.0)
    led.renew(budget=5_000, spent=0)
    assert (led.spent, led.reserved, led.available) == (0, 500, 4_500)


class LedgerMachine(RuleBasedStateMachine):
    """Any interleaving of grants, wins (some for unknown or expired auctions), losses and expiries."""

    def __init__(self) -> None:
        super().__init__()
        self.led = Ledger(budget=50_000)
        self.now = 0.0
        self.next_id = 0
        self.granted: dict[str, int] = {}
        self.charged = 0  # what the exchange billed

    @rule(micros=st.integers(1, 20_000))
    def bid(self, micros: int) -> None:
        aid = f"a{self.next_id}"
        self.next_id += 1
        before = self.led.available
        ok = self.led.reserve(aid, micros, self.now)
        assert ok == (micros <= before)
        if ok:
            self.granted[aid] = micros

    @precondition(lambda self: self.granted)
    @rule(data=st.data(), share=st.floats(0.0, 1.0))
    def win(self, data: st.DataObject, share: float) -> None:
        aid = data.draw(st.sampled_from(sorted(self.granted)))
        price = max(1, int(self.granted.pop(aid) * share))  # second price: never above the bid
        self.led.capture(aid, price, self.now)
        self.charged += price

    @precondition(lambda self: self.granted)
    @rule(data=st.data())
    def loss(self, data: st.DataObject) -> None:
        aid = data.draw(st.sampled_from(sorted(self.granted)))
        del self.granted[aid]
        self.led.release(aid)

    @rule(price=st.integers(1, 5_000))
    def unmatched_win(self, price: int) -> None:
        self.led.capture(f"unknown{self.next_id}", price, self.now)
        self.next_id += 1
        self.charged += price

    @rule(dt=st.floats(0.0, 5.0), ttl=st.floats(0.5, 10.0))
    def expire(self, dt: float, ttl: float) -> None:
        self.now += dt
        self.led.expire(self.now, ttl, forget_after=30.0)
        self.granted = {a: m for a, m in self.granted.items() if a in self.led._open}

    @invariant()
    def money_is_bounded_and_exact(self) -> None:
        led = self.led
        assert led.spent == self.charged  # every charged win counted exactly once
        assert led.reserved == sum(self.granted.values())
        assert led.spent + led.reserved + led.holdback <= led.budget + led.uncovered
        assert led.reserved >= 0 and led.holdback >= 0


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
