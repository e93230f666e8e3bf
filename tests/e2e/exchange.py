"""exchange.py: a simulated ad exchange that drives a real `pacer serve` over HTTP (end-to-end tests).

One bidder, second-price auctions. Auctions arrive as a Poisson process; each has the bidder's value v (what it
asks to bid) and the highest competing bid m, both lognormal. Every `batch_interval_s` of wall time the
auctions that have arrived are sent as one POST /v1/bids; a granted bid b wins if b >= m and pays m. Win notices
go to POST /v1/events after a random delay (some twice), loss notices for most lost grants. The exchange keeps
its own ledger of what it charged and which win notices the service acknowledged (a 200 on /v1/events means
durable), and samples the bidder's status every second.

All randomness is drawn up front from one seeded numpy RNG (`Auctions`), so the spend of unpaced bidding on the
very same traffic is known before the run and a budget can be sized from it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

MAX_BATCH = 1000  # the service takes at most 1000 bids or events per request


@dataclass(frozen=True, slots=True)
class Traffic:
    rate_per_s: float = 300.0
    value_median: float = 2000.0  # micros; v ~ lognormal(ln median, sigma)
    value_sigma: float = 0.5
    competing_median: float = 2000.0  # micros; m ~ lognormal(ln median, sigma)
    competing_sigma: float = 0.5
    win_delay_s: tuple[float, float] = (0.05, 0.15)  # uniform; loss notices take the same delay
    duplicate_share: float = 0.10  # wins whose notice is sent twice...
    duplicate_extra_s: tuple[float, float] = (0.1, 0.4)  # ...the second this much after the first
    loss_report_share: float = 0.80  # lost grants that get a loss notice (the rest expire in the service)
    batch_interval_s: float = 0.02


class Auctions:
    """The whole auction stream of a run, drawn up front: offsets in seconds from the exchange's t0."""

    def __init__(self, traffic: Traffic, seed: int, duration_s: float) -> None:
        rng = np.random.default_rng(seed)
        n = int(rng.poisson(traffic.rate_per_s * duration_s))
        # Given their count, the points of a Poisson process on [0, T) are uniform and independent.
        self.arrival = np.sort(rng.uniform(0.0, duration_s, n))
        self.value = _micros(rng.lognormal(np.log(traffic.value_median), traffic.value_sigma, n))
        self.competing = _micros(rng.lognormal(np.log(traffic.competing_median), traffic.competing_sigma, n))
        self.delay = rng.uniform(*traffic.win_delay_s, n)
        self.duplicate = rng.random(n) < traffic.duplicate_share
        self.duplicate_extra = rng.uniform(*traffic.duplicate_extra_s, n)
        self.report_loss = rng.random(n) < traffic.loss_report_share
        self.traffic = traffic
        self.duration_s = duration_s

    def __len__(self) -> int:
        return len(self.arrival)

    def unpaced_spend(self, start_s: float, end_s: float) -> int:
        """What bidding the full value in every auction arriving in [start_s, end_s) would spend."""
        inside = (self.arrival >= start_s) & (self.arrival < end_s)
        won = inside & (self.value >= self.competing)
        return int(self.competing[won].sum())


def _micros(x: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.rint(x)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Sample:
    """The service's status of the bidder at one instant, with the share of the flight elapsed by then."""

    at: float  # epoch s
    elapsed: float  # share of the flight elapsed, in [0, 1]
    spent: int
    reserved: int
    target: int
    state: str
    throttle: float
    multiplier: float


class Exchange:
    """Drives one bidder. `client` must have the service as base_url (the exchange never closes it);
    `status_headers` carry the operator token for GET /v1/bidders/{id}.

    Given several clients (a fleet), every request goes to the next one in turn, as a round-robin load balancer
    would send it; one that fails to connect is taken out of the rotation and the request goes to the next."""

    def __init__(
        self,
        client: httpx.AsyncClient | list[httpx.AsyncClient],
        bidder_id: str,
        auctions: Auctions,
        t0: float,
        status_headers: dict[str, str] | None = None,
        max_event_posts: int = 4,
    ) -> None:
        self.clients = list(client) if isinstance(client, list) else [client]
        self._turn = 0
        self.status_headers = status_headers or {}
        self.bidder_id = bidder_id
        self.auctions = auctions
        self.t0 = t0
        self.traffic = auctions.traffic
        # The exchange's own ledger.
        self.charged: dict[str, int] = {}  # auction_id -> price charged (each auction is won at most once)
        self.acked: set[str] = set()  # auction_ids of wins whose notice got a 200 from /v1/events
        self.failed_wins: set[str] = set()  # wins sent in an /v1/events request that got no answer
        # Tallies.
        self.offered = 0
        self.reasons: Counter[str] = Counter()
        self.granted_micros = 0
        self.win_notices = 0  # win events sent, first and second sends
        self.second_sends = 0
        self.loss_notices = 0
        self.accepted = 0  # as answered by /v1/events
        self.duplicates = 0
        self.failed_event_posts = 0
        self.failovers = 0  # instances taken out of the rotation
        self.errors: list[str] = []  # anything a correct service should never do
        self.samples: list[Sample] = []
        self.decisions: list[tuple[int, str]] = []  # (auction index, "bid" or the reason for no bid)
        # Called after every 200 on /v1/events with how many other /v1/events requests are still in flight, and
        # how many win notices those carry.
        self.on_events_ack: Callable[[int, int], None] | None = None
        self.wins_in_flight = 0
        self._next = 0  # next auction to offer
        self._sends: Counter[str] = Counter()  # win notices sent per auction
        self._halted = False
        self._loop = asyncio.get_running_loop()
        self._timers: set[asyncio.TimerHandle] = set()
        self._outbox: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._posts: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_event_posts)
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request to the next instance in turn; with several, a dead one is dropped and the next tried."""
        while True:
            client = self.clients[self._turn % len(self.clients)]
            self._turn += 1
            try:
                return await client.request(method, path, **kwargs)
            except httpx.TransportError:
                if len(self.clients) == 1:
                    raise
                if client in self.clients:
                    self.clients.remove(client)
                    self.failovers += 1

    # --- the ledger ------------------------------------------------------------------------------------------

    @property
    def charged_total(self) -> int:
        return sum(self.charged.values())

    @property
    def acked_total(self) -> int:
        return sum(self.charged[a] for a in self.acked)

    def unacked(self) -> list[str]:
        return [a for a in self.charged if a not in self.acked]

    # --- bids ------------------------------------------------------------------------------------------------

    def now_s(self) -> float:
        return time.time() - self.t0

    def skip_to_now(self) -> int:
        """Drop the auctions that arrived while nobody was bidding (e.g. while the service was down)."""
        first = int(np.searchsorted(self.auctions.arrival, self.now_s(), side="right"))
        skipped = max(0, first - self._next)
        self._next = max(self._next, first)
        return skipped

    async def run(self, until_s: float) -> None:
        """Offer every auction arriving before `until_s` (offset from t0), a batch per interval of wall time.
        Returns early if the service stops answering (the exchange then has no bid in those auctions)."""
        interval = self.traffic.batch_interval_s
        arrival = self.auctions.arrival
        self._halted = False
        while not self._halted:
            now = self.now_s()
            stop = int(np.searchsorted(arrival, min(now, until_s), side="right"))
            while self._next < stop and not self._halted:
                chunk = range(self._next, min(stop, self._next + MAX_BATCH))
                self._next = chunk.stop
                if not await self._bid(chunk):
                    return
            if now >= until_s:
                return
            # The exchange's clock: wake at the next batch boundary (a periodic timer, not synchronisation).
            await asyncio.sleep(max(0.0, interval - (self.now_s() - now)))

    async def _bid(self, chunk: range) -> bool:
        a = self.auctions
        requests = [{"bidder_id": self.bidder_id, "auction_id": _aid(i), "bid_micros": int(a.value[i])} for i in chunk]
        try:
            response = await self._send("POST", "/v1/bids", json={"requests": requests})
        except httpx.TransportError:
            self._halted = True
            return False
        if response.status_code != 200:
            self.errors.append(f"/v1/bids -> {response.status_code} {response.text[:200]}")
            return True
        decisions = response.json()["decisions"]
        if len(decisions) != len(chunk):
            self.errors.append(f"/v1/bids: {len(decisions)} decisions for {len(chunk)} requests")
            return True
        self.offered += len(chunk)
        for i, d in zip(chunk, decisions, strict=True):
            self._settle(i, d)
        return True

    def _settle(self, i: int, decision: dict[str, Any]) -> None:
        a = self.auctions
        aid = _aid(i)
        if decision.get("auction_id") != aid:
            self.errors.append(f"decision for {decision.get('auction_id')!r} in the place of {aid!r}")
            return
        outcome = "bid" if decision["bid"] else decision["reason"]
        self.reasons[outcome] += 1
        self.decisions.append((i, outcome))
        if not decision["bid"]:
            return
        bid = decision["bid_micros"]
        if not 1 <= bid <= a.value[i]:
            self.errors.append(f"{aid}: granted {bid} for a request of {a.value[i]}")
        self.granted_micros += bid
        delay = float(a.delay[i])
        if bid >= a.competing[i]:  # second price: the winner pays the highest competing bid
            price = int(a.competing[i])
            self.charged[aid] = price
            win = {"type": "win", "bidder_id": self.bidder_id, "auction_id": aid, "price_micros": price}
            self._schedule(delay, win)
            if a.duplicate[i]:
                self._schedule(delay + float(a.duplicate_extra[i]), win)
        elif a.report_loss[i]:
            self._schedule(delay, {"type": "loss", "bidder_id": self.bidder_id, "auction_id": aid})

    # --- events ----------------------------------------------------------------------------------------------

    def _schedule(self, delay: float, event: dict[str, Any]) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(event)

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)
        self._idle.clear()

    def _enqueue(self, event: dict[str, Any]) -> None:
        self._outbox.append(event)
        self._wake.set()
        self._idle.clear()

    def _check_idle(self) -> None:
        if not self._timers and not self._outbox and not self._posts:
            self._idle.set()

    async def _flush_loop(self) -> None:
        """Send what is due as soon as a request slot is free: batches grow by themselves under load."""
        while True:
            await self._slots.acquire()
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            events, self._outbox = self._outbox[:MAX_BATCH], self._outbox[MAX_BATCH:]
            task = asyncio.create_task(self._post_events(events))
            self._posts.add(task)
            task.add_done_callback(self._post_done)

    def _post_done(self, task: asyncio.Task[None]) -> None:
        self._posts.discard(task)
        self._slots.release()
        self._check_idle()

    async def _post_events(self, events: list[dict[str, Any]]) -> None:
        wins = [e["auction_id"] for e in events if e["type"] == "win"]
        for aid in wins:
            self.win_notices += 1
            self._sends[aid] += 1
            if self._sends[aid] > 1:
                self.second_sends += 1
        self.loss_notices += len(events) - len(wins)
        self.wins_in_flight += len(wins)
        try:
            response = await self._send("POST", "/v1/events", json={"events": events})
        except httpx.TransportError:
            self.failed_event_posts += 1
            self.failed_wins.update(wins)
            return
        finally:
            self.wins_in_flight -= len(wins)
        if response.status_code != 200:
            self.errors.append(f"/v1/events -> {response.status_code} {response.text[:200]}")
            self.failed_wins.update(wins)
            return
        body = response.json()
        if body["accepted"] + body["duplicates"] != len(events):
            self.errors.append(f"/v1/events answered {body} for {len(events)} events")
        self.accepted += body["accepted"]
        self.duplicates += body["duplicates"]
        self.acked.update(wins)
        if self.on_events_ack is not None:
            self.on_events_ack(len(self._posts) - 1, self.wins_in_flight)

    async def drain(self, timeout: float) -> None:
        """Wait until every scheduled notice has been sent and answered (call after `run` returned)."""
        self._check_idle()
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def resend(self, auction_ids: Iterable[str]) -> tuple[int, int]:
        """Send win notices again for these auctions, in order; every request must get a 200.
        Returns (accepted, duplicates) as the service counted them."""
        ids = list(auction_ids)
        accepted = duplicates = 0
        for k in range(0, len(ids), MAX_BATCH):
            events = [
                {"type": "win", "bidder_id": self.bidder_id, "auction_id": a, "price_micros": self.charged[a]}
                for a in ids[k : k + MAX_BATCH]
            ]
            response = await self._send("POST", "/v1/events", json={"events": events})
            response.raise_for_status()
            body = response.json()
            accepted += body["accepted"]
            duplicates += body["duplicates"]
            self.acked.update(e["auction_id"] for e in events)
        return accepted, duplicates

    async def halt(self) -> dict[str, int]:
        """The service is gone: stop bidding, drop the notices not sent yet (they stay unacknowledged) and wait
        for the requests in flight to fail or answer. Returns what was dropped, for the record."""
        self._halted = True
        dropped_timers = len(self._timers)
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        dropped_outbox = len(self._outbox)
        self._outbox.clear()
        in_flight = len(self._posts)
        await asyncio.gather(*self._posts, return_exceptions=True)
        self._check_idle()
        return {"dropped_timers": dropped_timers, "dropped_outbox": dropped_outbox, "posts_in_flight": in_flight}

    async def close(self) -> None:
        self._halted = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._flusher.cancel()
        await asyncio.gather(self._flusher, *self._posts, return_exceptions=True)

    # --- status ----------------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        response = await self._send("GET", f"/v1/bidders/{self.bidder_id}", headers=self.status_headers)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def record(self, start: float, end: float, every_s: float = 1.0) -> None:
        """Sample the bidder's status every `every_s` of wall time until cancelled."""
        while True:
            at = time.time()
            try:
                s = await self.status()
            except httpx.HTTPError:
                pass  # the service is down (crash test): no sample
            else:
                elapsed = min(max((at - start) / (end - start), 0.0), 1.0)
                self.samples.append(
                    Sample(
                        at,
                        elapsed,
                        s["spent_micros"],
                        s["reserved_micros"],
                        s["target_spent_micros"],
                        s["state"],
                        s["throttle"],
                        s["multiplier"],
                    )
                )
            await asyncio.sleep(max(0.0, every_s - (time.time() - at)))  # a periodic timer


def _aid(i: int) -> str:
    return f"auc-{i:07d}"
