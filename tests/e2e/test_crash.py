"""End to end: kill -9 `pacer serve` mid-flight while win notices are in flight, restart it on the same file and
port, re-send what was not acknowledged (and some of what was): spend must equal the exchange's unique charged
wins exactly. Run with -s to see the figures.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import PacerServer, put_bidder, whole_ms
from tests.e2e.exchange import Auctions, Exchange, Traffic

# Real-time flights judged by delivery: one at a time (an xdist group), as on a machine with nothing else to do
# but the rest of the suite on the other workers.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("realtime")]

FLIGHT_S = 20.0
LEAD_S = 1.0
KILL_AFTER_S = 3.0  # into the flight
KILL_GRACE_S = 2.0  # kill at the first 200 on /v1/events while win notices are in flight, or after this anyway
RESUME_S = 2.5  # traffic after the restart
RESEND_ACKED_SHARE = 0.25


async def test_kill_9_mid_flight_then_resend_counts_every_win_once(
    pacer_server: PacerServer, client: httpx.AsyncClient
) -> None:
    server = pacer_server
    t0 = time.time()
    start = whole_ms(t0 + LEAD_S)
    end = start + FLIGHT_S
    auctions = Auctions(Traffic(), seed=21, duration_s=end - t0)
    budget = int(0.25 * auctions.unpaced_spend(start - t0, end - t0))
    await put_bidder(client, server, "crash-1", budget, start, end, "even")
    exchange = Exchange(client, "crash-1", auctions, t0, status_headers=server.operator_headers())

    try:
        # --- phase 1: traffic, then SIGKILL right after an /v1/events got its 200 ------------------------------
        kill_at = start + KILL_AFTER_S
        killed = asyncio.Event()
        at_kill: dict[str, Any] = {}

        def on_events_ack(others_in_flight: int, wins_in_flight: int) -> None:
            now = time.time()
            if killed.is_set() or now < kill_at or (wins_in_flight == 0 and now < kill_at + KILL_GRACE_S):
                return
            server.kill()  # synchronously, in this very callback: nothing else has run since the 200
            killed.set()
            at_kill.update(t=now - start, posts=others_in_flight, wins=wins_in_flight)

        exchange.on_events_ack = on_events_ack
        runner = asyncio.create_task(exchange.run(until_s=end - t0))
        try:
            await asyncio.wait_for(killed.wait(), timeout=kill_at - time.time() + KILL_GRACE_S + 10)
            assert server.reap() == -signal.SIGKILL
            dropped = await exchange.halt()
            await asyncio.wait_for(runner, 10)
        finally:
            runner.cancel()
        unacked = exchange.unacked()
        failed = [a for a in unacked if a in exchange.failed_wins]
        acked_total = exchange.acked_total
        failed_total = sum(exchange.charged[a] for a in failed)
        print("\n=== kill -9 mid-flight ===")
        print(
            f"budget {budget}; killed at {at_kill['t']:.2f}s into the flight, right after a 200 on /v1/events, "
            f"with {at_kill['posts']} other /v1/events requests ({at_kill['wins']} win notices) in flight; "
            f"halt: {dropped}"
        )
        print(
            f"wins charged {len(exchange.charged)} ({exchange.charged_total} micros): acknowledged "
            f"{len(exchange.acked)} ({acked_total}), unacknowledged {len(unacked)} of which {len(failed)} "
            f"({failed_total} micros) were in requests that failed, {exchange.failed_event_posts} failed requests"
        )
        assert exchange.errors == []
        assert unacked, "the kill must leave win notices unacknowledged"

        # --- phase 2: restart on the same file and port; acknowledged wins survived ----------------------------
        server.start()
        await server.wait_ready()
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0, limits=limits) as fresh:
            exchange.client = fresh
            after_restart = await exchange.status()
            spent_before = after_restart["spent_micros"]
            print(
                f"after restart: spent {spent_before}, state {after_restart['state']}, "
                f"reserved {after_restart['reserved_micros']}"
            )
            # A 200 on /v1/events means durable; a failed request may or may not have been recorded.
            assert acked_total <= spent_before <= acked_total + failed_total

            # Re-send every unacknowledged win, and some acknowledged ones, shuffled together.
            rng = np.random.default_rng(22)
            acked = sorted(exchange.acked)
            picked = rng.choice(len(acked), size=max(1, int(RESEND_ACKED_SHARE * len(acked))), replace=False)
            again = [acked[k] for k in picked]
            resend = [*unacked, *again]
            rng.shuffle(resend)
            accepted, duplicates = await exchange.resend(resend)
            after_resend = (await exchange.status())["spent_micros"]
            print(
                f"re-sent {len(unacked)} unacknowledged + {len(again)} acknowledged wins: accepted {accepted}, "
                f"duplicates {duplicates}; spent {after_resend}, exchange's unique charged wins "
                f"{exchange.charged_total}"
            )
            assert accepted + duplicates == len(resend)
            assert duplicates >= len(again), "acknowledged wins must not count twice"
            # Exactly the failed-but-recorded wins are the extra duplicates; none iff nothing extra was recorded.
            assert (duplicates == len(again)) == (spent_before == acked_total)
            assert after_resend == exchange.charged_total
            assert after_resend <= budget

            # --- phase 3: traffic goes on after the restart ----------------------------------------------------
            skipped = exchange.skip_to_now()
            bids_before, dups_before = exchange.reasons["bid"], exchange.duplicates
            seconds_before = exchange.second_sends
            await exchange.run(until_s=exchange.now_s() + RESUME_S)
            await exchange.drain(10.0)
            final = await exchange.status()
            await exchange.close()
        print(
            f"resumed: skipped {skipped} auctions while down, then {exchange.reasons['bid'] - bids_before} bids; "
            f"final spent {final['spent_micros']} = {final['spent_micros'] / budget:.4f} of budget, target "
            f"{final['target_spent_micros'] / budget:.4f}; exchange's unique charged wins {exchange.charged_total}"
        )
        assert exchange.errors == []
        assert exchange.unacked() == []
        assert exchange.reasons["bid"] > bids_before, "the restarted service bids again"
        assert exchange.duplicates - dups_before == exchange.second_sends - seconds_before
        assert final["spent_micros"] == exchange.charged_total
        assert final["spent_micros"] <= budget
        assert server.stop() in (0, -signal.SIGTERM) and not server.escalated, server.log()
        assert server.stored_spend("crash-1") == exchange.charged_total
    finally:
        await exchange.close()
