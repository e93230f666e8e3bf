"""service.py: one running instance: the engine, its store, and the background loops that join them.

Operator changes are written to the store first and applied to the engine only once durable. The tick and the
snapshot loop run beside the hot path; nothing here is called per bid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from pacer.engine import BidderConfig, Engine
from pacer.metrics import HttpMetrics
from pacer.periods import parse_period, period_to_json, window_at
from pacer.store import BidderRecord, Store, StoreError

if TYPE_CHECKING:
    from pacer.fleet import Fleet

T = TypeVar("T")

log = logging.getLogger("pacer")

PRUNE_EVERY_S = 3600.0


def config_to_json(config: BidderConfig) -> dict[str, object]:
    return {
        "budget_micros": config.budget_micros,
        "period": period_to_json(config.period),
        "pacing": config.pacing,
        "max_bid_micros": config.max_bid_micros,
        "paused": config.paused,
    }


def config_from_json(doc: dict[str, object]) -> BidderConfig:
    budget, cap = doc["budget_micros"], doc.get("max_bid_micros")
    assert isinstance(budget, int) and (cap is None or isinstance(cap, int))
    return BidderConfig(
        budget_micros=budget,
        period=parse_period(doc["period"]),
        pacing=str(doc.get("pacing", "even")),
        max_bid_micros=cap,
        paused=bool(doc.get("paused", False)),
    )


async def load_bidders(engine: Engine, store: Store, records: list[BidderRecord], versions: dict[str, int]) -> None:
    """Configure each stored bidder the engine does not run yet, with its recorded spend in its current period
    (at start, and in a fleet for bidders created on other instances)."""
    now = engine.clock()
    configs = {r.bidder_id: config_from_json(r.config) for r in records}
    keys = [(r.bidder_id, window_at(configs[r.bidder_id].period, now).key) for r in records]
    spend = await store.load_spend(keys)
    for record, key in zip(records, keys, strict=True):
        if record.bidder_id not in engine.bidders:  # else configured here while the store was read
            engine.configure(record.bidder_id, configs[record.bidder_id], spend[key])
            versions[record.bidder_id] = record.version


class Service:
    def __init__(self, engine: Engine, store: Store, tick_s: float, sync_s: float, dedupe_s: float) -> None:
        self.engine = engine
        self.store = store
        self.fleet: Fleet | None = None  # set when the store is shared (Redis): leases instead of snapshots
        self.tick_s = tick_s
        self.sync_s = sync_s
        self.dedupe_s = dedupe_s
        self.versions: dict[str, int] = {}
        self.store_errors: Counter[str] = Counter()
        self.http = HttpMetrics()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # operator writes to one store+engine, in order
        self._sync_now = asyncio.Event()  # a lease ran short: sync at the next tick rather than wait
        self._short_seen = 0

    async def start(self) -> None:
        """Open the store, rebuild every bidder with its recorded spend, hold back pre-crash reservations."""
        await self.store.open()
        records = await self.store.load_bidders()
        await load_bidders(self.engine, self.store, records, self.versions)
        now = self.engine.clock()
        for bidder_id, (micros, until) in (await self.store.load_reserved()).items():
            bidder = self.engine.bidders.get(bidder_id)
            if bidder is not None and until > now and micros > 0:
                bidder.ledger.hold_back(micros, until)
        if self.fleet is not None:
            await self.fleet.sync()  # leases before the first bid
        self.engine.tick()
        log.info("loaded %d bidders", len(records))
        self._tasks = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self._sync_loop())]
        if self.fleet is not None:
            self._tasks.append(asyncio.create_task(self.fleet.relay()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StoreError):
            if self.fleet is not None:
                await self.fleet.sync(final=True)  # ship what is journaled, hand the leases back
            else:
                await self._snapshot()
        await self.store.close()

    # --- background loops -----------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # a periodic timer, not a stand-in for synchronisation
            if self.fleet is not None:
                self.fleet.check_lease()
                if self.engine.lease_short != self._short_seen:
                    self._short_seen = self.engine.lease_short
                    self._sync_now.set()
            for _ in self.engine.tick_steps():
                await asyncio.sleep(0)  # let waiting bids through between chunks

    async def _sync_loop(self) -> None:
        last_prune = 0.0
        while True:
            with contextlib.suppress(TimeoutError):  # the sync period, or earlier when a lease ran short
                await asyncio.wait_for(self._sync_now.wait(), self.sync_s)
            self._sync_now.clear()
            try:
                if self.fleet is not None:
                    async with self._lock:  # operator writes and config changes from the fleet apply in order
                        await self.fleet.sync()
                else:
                    await self._snapshot()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await self.store.prune(self.engine.clock() - self.dedupe_s)
                    last_prune = time.monotonic()
            except StoreError as exc:
                self.store_errors["sync"] += 1
                log.warning("store sync failed: %s", exc)

    async def _snapshot(self) -> None:
        """Write each bidder's open reservations and how long they may still be won (see Store.save_reserved)."""
        until = self.engine.clock() + self.engine.delays.ttl
        snapshot = {}
        for bidder_id, b in self.engine.bidders.items():
            ledger = b.ledger
            if ledger.reserved or ledger.holdback:
                snapshot[bidder_id] = (ledger.reserved + ledger.holdback, max(until, ledger.holdback_until))
        await self.store.save_reserved(snapshot)

    # --- operator operations ----------------------------------------------------------------------------------

    async def put(self, bidder_id: str, config: BidderConfig) -> bool:
        """Create or replace; True if created. Durable before it takes effect."""
        async with self._lock:
            created = bidder_id not in self.engine.bidders
            version = self.versions.get(bidder_id, 0) + 1
            record = BidderRecord(bidder_id, config_to_json(config), version, time.time())
            version = await self._write("put", self.store.put_bidder(record))
            key = window_at(config.period, self.engine.clock()).key
            spend = await self.store.load_spend([(bidder_id, key)])
            self.engine.configure(bidder_id, config, spend[bidder_id, key])
            self.versions[bidder_id] = version
            return created

    async def delete(self, bidder_id: str) -> None:
        async with self._lock:
            await self._write("delete", self.store.delete_bidder(bidder_id))
            self.engine.remove(bidder_id)
            self.versions.pop(bidder_id, None)

    async def restore(self, bidder_id: str, spent_micros: int) -> None:
        """Bring back a bidder whose state the fleet store lost, with the spend the operator states."""
        assert self.fleet is not None, "only a fleet store loses state"
        async with self._lock:
            bidder = self.engine.bidders[bidder_id]
            record = BidderRecord(bidder_id, config_to_json(bidder.config), 0, time.time())
            await self._write("restore", self.fleet.store.restore_bidder(record, bidder.window.key, spent_micros))
            await self.fleet.sync()  # take the restored state and a lease now

    async def _write(self, op: str, write: Awaitable[T]) -> T:
        try:
            return await write
        except StoreError:
            self.store_errors[op] += 1
            raise

