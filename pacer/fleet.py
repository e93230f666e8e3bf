"""fleet.py: one instance's part in a fleet sharing budgets through Redis: every sync it ships its new wins,
learns the fleet's spend and configuration, and renews each bidder's lease. Never on the hot path.

A lease is what this instance may commit beyond the fleet's spend until the next sync. Redis grants it so that
spent + all live leases <= budget; the ledger's `limit` (fleet spend + lease) caps what `decide` reserves. It is
sized from this instance's own recent spend rate, so busy instances hold more and idle ones give theirs back.
If Redis stops answering, the instance spends what it holds and nothing more: past `lease_ttl_s` after the last
successful sync it grants nothing until a sync succeeds again (Redis keeps the lease a reservation TTL longer,
so wins on bids granted under it are still covered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from pacer.bidder_config import config_from_json
from pacer.engine import Bidder, Engine
from pacer.service import load_bidders
from pacer.store.base import StoreError, WinRecord
from pacer.store.redis import Counted, LeaseReply, LeaseRequest, RedisStore

log = logging.getLogger("pacer")

RELAY_S = 0.02  # how often notices for other instances' reservations are relayed
RESUBSCRIBE_S = 1.0  # wait before listening again after the connection dropped
GROWTH = 2.0  # a lease is twice the recent spend over the horizon: room to double each sync when demand grows
RATE_SMOOTHING = 0.5  # weight of the newest sync interval in the spend-rate average
SYNC_CHUNK = 1000  # bidders built or applied between yields to bids (10,000 in one go held the loop 30-70 ms)
INFLIGHT_SHARE = 0.05  # grants allowed while a sync is in flight: 5% of the horizon's demand (~50 ms of it)


class Fleet:
    """Leases, fleet spend and configuration changes for every bidder of one instance."""

    def __init__(
        self, engine: Engine, store: RedisStore, versions: dict[str, int], sync_s: float, lease_ttl_s: float
    ) -> None:
        self.engine = engine
        self.store = store
        self.versions = versions  # shared with Service: the config version this instance runs, per bidder
        self.sync_s = sync_s
        self.lease_ttl_s = lease_ttl_s
        self.horizon_s = max(2 * sync_s, 1.0)  # a lease should last until the sync after next
        self.lease_until = 0.0  # monotonic: past this the leases are void here (Redis may have given them away)
        self.revoked = False
        self.seq = -1  # the registry's change counter as last seen
        self.synced_at = 0.0  # wall clock of the last successful sync
        self.syncs = 0
        self.failures = 0
        self.last_sync_s = 0.0
        self.fleet_leased = 0
        self.duplicates = 0  # wins another instance had already counted
        self._rate: dict[str, float] = {}  # bidder -> recent spend rate here, micros/s
        self._known_spent: dict[str, tuple[str, int]] = {}  # bidder -> (period, fleet spend) at the last sync
        self._incarnation: dict[str, int] = {}
        self._limits: dict[str, int] = {}  # each bidder's limit before the sync in flight lowered it
        self._last = time.monotonic()
        # Wins this instance got counted in Redis (record_wins) and charged, but the last applied sync's fleet spend
        # may not hold: bidder -> [(spend version, period, micros)]; and the spend version of that fleet spend.
        self._recent: dict[str, list[tuple[int, str, int]]] = {}
        self._spend_seen: dict[str, int] = {}
        store.on_counted = self._counted

    @property
    def age_s(self) -> float:
        """Seconds since the last successful sync (inf before the first)."""
        return time.time() - self.synced_at if self.synced_at else float("inf")

    @property
    def lost(self) -> list[str]:
        return sorted(b.bidder_id for b in self.engine.bidders.values() if b.lost)

    async def relay(self) -> None:
        """Round-robin load balancers send most notices to an instance that did not grant the bid. Relay them, so
        the granting instance frees the reservation within milliseconds instead of holding it (and the lease it
        uses) until it expires. Best effort both ways: expiry remains the fallback."""
        await asyncio.gather(self._publish_loop(), self._listen_loop())

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(RELAY_S)  # a periodic timer: batches the notices of many requests
            notices, self.engine.foreign = self.engine.foreign, []
            if notices:
                with contextlib.suppress(StoreError):
                    await self.store.publish_settled(notices)

    async def _listen_loop(self) -> None:
        while True:
            try:
                async for notices in self.store.settled():
                    for bidder_id, auction_id, won in notices:
                        self.engine.settled_elsewhere(bidder_id, auction_id, won)
            except StoreError:
                await asyncio.sleep(RESUBSCRIBE_S)  # Redis is down; the sync loop says so

    def check_lease(self) -> None:
        """Called every tick: once the leases have lapsed without a sync, stop committing anything new."""
        if not self.revoked and time.monotonic() > self.lease_until:
            self.revoked = True
            for b in self.engine.bidders.values():
                b.ledger.limit = b.ledger.spent
            log.warning(
                "no sync with the fleet store for %.1f s: leases lapsed, granting nothing until it is back",
                self.lease_ttl_s,
            )

    async def sync(self, final: bool = False) -> None:
        """One sync: raises StoreError if Redis did not answer (the wins stay queued for the next one). The final
        one, at shutdown, hands every lease back."""
        started = time.monotonic()
        if not final:
            try:  # a dead sibling's acknowledged wins count within one sync, not when some process restarts
                await self.store.adopt_orphans()
            except StoreError as exc:  # the folder, not Redis: the sync goes on (what is left waits)
                log.warning("journal folder: cannot look for dead processes' journals: %s", exc)
        wins = self.store.take_pending()
        by_bidder: dict[str, list[WinRecord]] = defaultdict(list)
        for w in wins:
            by_bidder[w.bidder_id].append(w)
        dt = max(started - self._last, 1e-3)
        self._last = started
        bidders = list(self.engine.bidders.values())
        requests: list[LeaseRequest] = []
        try:
            for lo in range(0, len(bidders), SYNC_CHUNK):
                if lo:
                    await asyncio.sleep(0)  # bids go on between chunks (a chunk's limits are already lowered)
                requests += [
                    self._request(b, by_bidder.pop(b.bidder_id, []), dt, final) for b in bidders[lo : lo + SYNC_CHUNK]
                ]
            # Wins for bidders this instance does not run (deleted, or not discovered yet) still count in Redis.
            requests += [LeaseRequest(bidder_id, -1, ws[0].period_key, 0, 0, ws) for bidder_id, ws in by_bidder.items()]
            replies, seq = await self.store.sync(requests, int(self.lease_ttl_s * 1000))
        except BaseException:
            self.store.untake(wins)
            self.failures += 1
            for bidder in bidders:  # no new lease: the old one stands (until it lapses, see check_lease)
                if bidder.bidder_id in self._limits and not self.revoked:
                    bidder.ledger.limit = self._limits[bidder.bidder_id]
            raise
        finally:
            self._limits = {}
        unshipped: list[WinRecord] = []
        fleet = 0
        for lo in range(0, len(requests), SYNC_CHUNK):
            if lo:
                await asyncio.sleep(0)  # bids go on between chunks; wins journaled meanwhile are in `since`
            since = self._unsynced_spend()
            for request, reply in zip(requests[lo : lo + SYNC_CHUNK], replies[lo : lo + SYNC_CHUNK], strict=True):
                if reply.status == "lost" and request.known_version >= 0:
                    unshipped += request.wins  # kept until an operator restores the bidder
                elif reply.status == "lost" and request.wins:
                    log.warning(
                        "dropped %d wins for bidder %r: no such bidder in the fleet store, here or in Redis",
                        len(request.wins),
                        request.bidder_id,
                        extra={"bidder": request.bidder_id},
                    )
                else:
                    self.duplicates += len(reply.duplicates)
                running = self.engine.bidders.get(request.bidder_id)
                if running is not None and request.known_version >= 0:
                    self._apply(running, request, reply, since.get(request.bidder_id, 0))
                    fleet += reply.fleet_leased_micros
        self.store.untake(unshipped)
        kept = set(unshipped)
        await self.store.shipped([w for w in wins if w not in kept])
        self.lease_until = started + self.lease_ttl_s
        self.revoked = False
        if seq != self.seq:
            await self._discover()
            self.seq = seq
        self.fleet_leased = fleet
        self.syncs += 1
        self.synced_at = time.time()
        self.last_sync_s = time.monotonic() - started

    def _request(self, bidder: Bidder, wins: list[WinRecord], dt: float, final: bool) -> LeaseRequest:
        ledger = bidder.ledger
        key = bidder.window.key
        shipped = sum(w.price_micros for w in wins if w.period_key == key)
        rate = self._rate.get(bidder.bidder_id, 0.0)
        rate += RATE_SMOOTHING * (shipped / dt - rate)
        self._rate[bidder.bidder_id] = rate
        now = self.engine.clock()
        h = self.horizon_s
        starting = now + h >= bidder.window.start and now < bidder.ends_at
        want = ledger.reserved  # what is out in the market stays covered, also when handing the rest back
        short, bidder.short = bidder.short, 0
        if starting and not bidder.config.paused and not bidder.lost and not final:
            # Never less than the whole fleet's even share of what is left over the horizon (a bidder new to this
            # instance, or quiet so far, can bid at once), nor than the bids refused for want of lease.
            left = max(0, ledger.budget - ledger.spent)
            even = left * h / max(bidder.window.end - max(now, bidder.window.start), h)
            want += int(max(GROWTH * rate * h, even, short))
        hold_ms = int(self.engine.delays.ttl * 1000)
        # Redis may shrink the lease below the old one: so until the reply lands this instance grants at most a
        # small in-flight allowance beyond what it has out, and the new lease covers both (the floor).
        floor = ledger.reserved
        if ledger.limit is not None and not final:
            headroom = max(0, ledger.limit - ledger.spent - ledger.reserved)
            floor += min(headroom, int((want - ledger.reserved) * INFLIGHT_SHARE))
            self._limits[bidder.bidder_id] = ledger.limit
            ledger.limit = min(ledger.limit, ledger.spent + floor)
        return LeaseRequest(
            bidder.bidder_id,
            self.versions.get(bidder.bidder_id, 0),
            key,
            want,
            hold_ms,
            wins,
            floor_micros=floor,
            check=ledger.elsewhere(),
        )

    def _counted(self, counted: list[Counted]) -> None:
        """Redis counted these wins, and the caller charges them to the ledgers right after this returns. A sync's
        fleet spend read before them (its spend version is lower) lacks them: they are kept to add to it. One read
        after them (its reply came back first) holds them already: taken off here, so the charge adds them once."""
        for c in counted:
            bidder = self.engine.bidders.get(c.bidder_id)
            micros = c.micros_by_period.get(bidder.window.key, 0) if bidder is not None else 0
            if bidder is None or not micros:
                continue  # another period's spend: the ledger's period has it from its next sync
            if c.spend_version > self._spend_seen.get(c.bidder_id, 0):
                self._recent.setdefault(c.bidder_id, []).append((c.spend_version, bidder.window.key, micros))
            else:
                bidder.ledger.spent -= micros
                self.engine.touch(bidder)

    def _unsynced_spend(self) -> dict[str, int]:
        """Spend journaled here while the sync was in flight: Redis has not seen it, the ledger has."""
        out: dict[str, int] = defaultdict(int)
        for w in self.store.pending():
            bidder = self.engine.bidders.get(w.bidder_id)
            if bidder is not None and w.period_key == bidder.window.key:
                out[w.bidder_id] += w.price_micros
        return out

    def _apply(self, bidder: Bidder, request: LeaseRequest, reply: LeaseReply, unsynced: int) -> None:
        bidder_id = bidder.bidder_id
        if reply.status == "deleted":
            self.engine.remove(bidder_id)
            for state in (
                self.versions,
                self._rate,
                self._incarnation,
                self._known_spent,
                self._recent,
                self._spend_seen,
            ):
                state.pop(bidder_id, None)
            return
        known_inc = self._incarnation.get(bidder_id)
        restored = known_inc is not None and reply.status == "ok" and reply.incarnation != known_inc
        period, known = self._known_spent.get(bidder_id, (request.period_key, 0))
        went_back = not restored and period == request.period_key and reply.spent_micros < known
        if reply.status == "lost" or went_back:
            self._lose(
                bidder,
                "no state in Redis"
                if reply.status == "lost"
                else f"spend went back from {known} to {reply.spent_micros}",
            )
            return
        self._incarnation[bidder_id] = reply.incarnation
        if bidder.lost or restored:
            bidder.lost = False
            self.engine.touch(bidder)
            log.warning(
                "bidder %s: state restored in Redis (spent %d): granting again",
                bidder_id,
                reply.spent_micros,
                extra={"bidder": bidder_id},
            )
        if reply.config is not None and reply.version != self.versions.get(bidder_id):
            bidder = self.engine.configure(bidder_id, config_from_json(reply.config), reply.spent_micros)
            self.versions[bidder_id] = reply.version
            if bidder.window.key != request.period_key:
                return  # the new config starts another period: its lease comes with the next sync
        self._known_spent[bidder_id] = (request.period_key, reply.spent_micros)
        ledger = bidder.ledger
        if bidder.window.key == request.period_key:
            recent = [
                r for r in self._recent.pop(bidder_id, []) if r[0] > reply.spend_version and r[1] == request.period_key
            ]
            if recent:
                self._recent[bidder_id] = recent
            self._spend_seen[bidder_id] = reply.spend_version
            spent = reply.spent_micros + sum(r[2] for r in recent) + unsynced
            if spent != ledger.spent:  # the fleet spent more (or less than this instance thought): re-plan it
                ledger.spent = spent
                self.engine.touch(bidder)
            ledger.limit = reply.spent_micros + reply.lease_micros
            for i in reply.counted:  # won elsewhere and now in the fleet's spend: the reservation's money is spent
                ledger.release(request.check[i])
            if reply.counted:
                self.engine.touch(bidder)

    def _lose(self, bidder: Bidder, why: str) -> None:
        if not bidder.lost:
            log.error(
                "bidder %s: the fleet store lost its spend (%s): granting nothing until an operator restores "
                "it (POST /v1/bidders/%s/restore)",
                bidder.bidder_id,
                why,
                bidder.bidder_id,
                extra={"bidder": bidder.bidder_id},
            )
        bidder.lost = True
        bidder.ledger.limit = 0
        self.engine.touch(bidder)

    async def _discover(self) -> None:
        """Bidders created on other instances: configure them (no lease until the next sync)."""
        ids = [b for b in await self.store.bidder_ids() if b not in self.engine.bidders]
        new = [r for r in await self.store.load_configs(ids) if r is not None] if ids else []
        if new:  # configs are read for the new ones only: every operator write anywhere moves the registry
            await load_bidders(self.engine, self.store, new, self.versions)
