"""End to end: a real `pacer serve` process paces one bidder through a 20 s flight of simulated exchange traffic.

Money is checked exactly against the exchange's own ledger; pacing against the even curve, once a second.
Run with -s to see the measured figures.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import PacerServer, put_bidder, whole_ms
from tests.e2e.exchange import Auctions, Exchange, Sample, Traffic

# Real-time flights judged by delivery: one at a time (an xdist group), as on a machine with nothing else to do
# but the rest of the suite on the other workers.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("realtime")]

FLIGHT_S = 20.0
LEAD_S = 1.0  # the flight starts this long after the bidder is created
TAIL_S = 0.5  # the exchange keeps offering auctions this long after the flight ended
DRAIN_TIMEOUT_S = 10.0
EXHAUSTED_SHARE = 0.99


@dataclass
class Run:
    exchange: Exchange
    budget: int
    unpaced: int
    start: float
    end: float
    final: dict[str, object]
    seconds: float

    @property
    def spent(self) -> int:
        spent = self.final["spent_micros"]
        assert isinstance(spent, int)
        return spent


async def fly(
    server: PacerServer, client: httpx.AsyncClient, bidder_id: str, pacing: str, budget_share: float, seed: int
) -> Run:
    """Create the bidder, drive the exchange from creation until TAIL_S after the flight ended, wait until every
    notice has been answered, and return the final status."""
    began = time.monotonic()
    t0 = time.time()
    start = whole_ms(t0 + LEAD_S)
    end = start + FLIGHT_S
    offer_until = end + TAIL_S - t0
    auctions = Auctions(Traffic(), seed, duration_s=offer_until)
    unpaced = auctions.unpaced_spend(start - t0, end - t0)
    budget = int(budget_share * unpaced)
    created = await put_bidder(client, server, bidder_id, budget, start, end, pacing)
    assert created["state"] == "scheduled" and created["spent_micros"] == 0
    exchange = Exchange(client, bidder_id, auctions, t0, status_headers=server.operator_headers())
    recorder = asyncio.create_task(exchange.record(start, end))
    try:
        await exchange.run(until_s=offer_until)
        await exchange.drain(DRAIN_TIMEOUT_S)
        final = await exchange.status()
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        await exchange.close()
    return Run(exchange, budget, unpaced, start, end, final, time.monotonic() - began)


def report(title: str, run: Run) -> None:
    ex = run.exchange
    print(f"\n=== {title} ===")
    print(f"auctions offered {ex.offered}, decisions {dict(ex.reasons)}")
    print(f"unpaced spend {run.unpaced}, budget {run.budget} ({run.budget / run.unpaced:.1%} of unpaced)")
    print(
        f"spent (service) {run.spent}, charged (exchange, unique wins) {ex.charged_total}, "
        f"delivery {run.spent / run.budget:.4f}, overspend {max(0, run.spent - run.budget)}"
    )
    print(
        f"wins {len(ex.charged)}, win notices {ex.win_notices} (second sends {ex.second_sends}), "
        f"loss notices {ex.loss_notices}, service counted accepted {ex.accepted} duplicates {ex.duplicates}"
    )
    print(f"final state {run.final['state']}, reserved {run.final['reserved_micros']}, run {run.seconds:.1f}s")
    print(" t(s)  elapsed  spent/B  target/B  ideal/B   dev/B  reserved/B  multiplier throttle state")
    for s in ex.samples:
        print(
            f"{s.at - run.start:5.1f}  {s.elapsed:7.3f}  {s.spent / run.budget:7.4f}  {s.target / run.budget:8.4f}"
            f"  {s.elapsed:7.4f}  {deviation(s, run.budget):+7.4f}  {s.reserved / run.budget:10.4f}"
            f"  {s.multiplier:10.4f} {s.throttle:8.4f} {s.state}"
        )
    print("decisions by second of the flight (arrival time):")
    for second, counts in outcomes_by_second(run).items():
        print(f"  {second:3d}: {dict(counts)}")


def outcomes_by_second(run: Run) -> dict[int, Counter[str]]:
    """Decisions bucketed by the second of the flight their auction arrived in (negative: before the start)."""
    ex = run.exchange
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for i, outcome in ex.decisions:
        out[math.floor(ex.t0 + float(ex.auctions.arrival[i]) - run.start)][outcome] += 1
    return dict(sorted(out.items()))


def deviation(s: Sample, budget: int) -> float:
    """(spent - budget * elapsed share of the flight) / budget."""
    return (s.spent - budget * s.elapsed) / budget


def check_exact_accounting(run: Run) -> None:
    ex = run.exchange
    assert ex.errors == []
    assert ex.unacked() == [], "every win notice must have been acknowledged"
    assert ex.duplicates == ex.second_sends, "each win sent twice counts once"
    assert run.spent == ex.charged_total, "the service's spend must equal the exchange's unique charged wins"


async def test_even_pacing_follows_the_curve_and_spends_the_budget(
    pacer_server: PacerServer, client: httpx.AsyncClient
) -> None:
    run = await fly(pacer_server, client, "even-1", "even", budget_share=0.25, seed=11)
    report("even pacing, budget 25% of unpaced", run)
    ex = run.exchange
    worst = max(ex.samples, key=lambda s: abs(deviation(s, run.budget)))
    delivery = run.spent / run.budget
    print(
        f"delivery {delivery:.4f}; max |deviation| {abs(deviation(worst, run.budget)):.4f} of budget "
        f"at {worst.at - run.start:.1f}s (elapsed {worst.elapsed:.3f}); samples {len(ex.samples)}"
    )

    check_exact_accounting(run)
    assert run.spent <= run.budget, "zero overspend"
    assert delivery >= 0.97
    assert len([s for s in ex.samples if 0 < s.elapsed < 1]) >= FLIGHT_S - 2, "a sample every second"
    assert abs(deviation(worst, run.budget)) <= 0.10, f"off the even curve at {worst}"
    assert ex.reasons["not_active"] > 0, "auctions before the start and after the end are refused"
    assert run.final["state"] == "ended"

    # What the service acknowledged is what the file holds (after a clean SIGTERM shutdown).
    assert pacer_server.stop() in (0, -signal.SIGTERM) and not pacer_server.escalated, pacer_server.log()
    assert pacer_server.stored_spend("even-1") == ex.charged_total


async def test_asap_exhausts_early_without_overspend(pacer_server: PacerServer, client: httpx.AsyncClient) -> None:
    run = await fly(pacer_server, client, "asap-1", "asap", budget_share=0.10, seed=12)
    report("asap pacing, budget 10% of unpaced", run)
    ex = run.exchange
    # Second price: a win pays less than the bid reserved for it, so the last micros of a budget are rarely spent
    # exactly; "exhausted" here is "99% spent" (state "exhausted" needs spent == budget to the micro).
    spent_out = [s for s in ex.samples if s.state == "exhausted" or s.spent >= EXHAUSTED_SHARE * run.budget]
    first = spent_out[0] if spent_out else None
    after = [
        outcome
        for i, outcome in ex.decisions
        if first is not None and ex.t0 + ex.auctions.arrival[i] > first.at and outcome != "not_active"
    ]
    bid_share_after = after.count("bid") / max(1, len(after))
    print(
        f"first sample with >= {EXHAUSTED_SHARE:.0%} spent: "
        f"{'never' if first is None else f'{first.at - run.start:.1f}s, elapsed {first.elapsed:.3f}'}; "
        f"states seen {sorted({s.state for s in ex.samples})}; remaining at the end {run.budget - run.spent}; "
        f"after that sample {after.count('bid')} of {len(after)} auctions got a (residual) bid"
    )

    check_exact_accounting(run)
    assert run.spent <= run.budget, "zero overspend"
    assert first is not None, "the bidder never ran out of budget"
    assert first.elapsed < 0.5, f"exhausted only at {first.elapsed:.2f} of the flight"
    assert bid_share_after <= 0.10, "once the budget is gone the bidder stops bidding but for the last micros"
    assert run.final["state"] == "ended"
