"""service.py: one running instance: the engine, its store, and the background loops that join them.

Operator changes are written to the store first and applied to the engine only once durable. The tick and the
snapshot loop run beside the hot path; nothing here is called per bid.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pacer.auctionlog import AuctionLogWriter
from pacer.bidder_config import BidderConfig, config_from_json, config_to_json
from pacer.engine import Engine
from pacer.logs import current_loop
from pacer.metrics import LOOP_BUCKETS, Histogram, HttpMetrics
from pacer.periods import parse_rfc3339, window_at
from pacer.refit.job import publish
from pacer.store import BidderRecord, Store, StoreError, VersionConflict
from pacer.store.base import Snapshots, instance_id

if TYPE_CHECKING:
    from pacer.fleet import Fleet

T = TypeVar("T")

log = logging.getLogger("pacer")

PRUNE_EVERY_S = 3600.0
LOG_CHECK_S = 0.5  # how often the log writer looks at its buffer (it writes by size or age)
REFIT_LOCK = "refit"
REFIT_CHECK_S = 60.0  # how often an instance looks whether a refit is due
REJECTIONS_LOGGED = 20  # per refit, the first rejected bidders and why (all are in status)
BACKGROUND_NICE = 10
FREEZE_GROWTH, FREEZE_MIN = 0.1, 100  # freeze new long-lived objects again after this much bidder growth
RESTART_S = 0.1  # a background loop that raised starts again after this pause (never a busy loop)
ERROR_LOG_EVERY_S = 60.0  # a loop that keeps failing logs its traceback at most this often (all are counted)
TICK_STALE_TICKS, SYNC_STALE_SYNCS, STALE_MIN_S = 10, 2, 2.0  # /readyz: how old the last tick or write may be
CONFLICT_RETRIES = 3  # fleet: a write that met a newer version re-reads the bidder and tries again this often
LAG_PROBE_S = 0.1  # the event-loop lag probe's period
LOG_STOP_S = 5.0  # at shutdown, how long the auction log may take to write what it holds
SYNC_YIELD = 1000  # bidders configured between yields to bids (a bulk write of 10,000)


def background_priority(pid: int | None = None) -> None:
    """Lower this thread (or process `pid`) to nice 10: log writes and refits then take mostly the CPU that bids
    leave. At normal priority, on one core, the writer thread got ~4 ms time slices, each a stall of the event
    loop; at nice 19 it fell behind a saturated server (rows piled up); nice 10 leaves it ~10%. (Not SCHED_IDLE: a
    thread that holds the GIL must still get the CPU to hand it back.)"""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not permitted: stay as is
        os.setpriority(os.PRIO_PROCESS, pid or threading.get_native_id(), BACKGROUND_NICE)


class BidderNotFound(LookupError):
    """No such bidder (or it was deleted meanwhile)."""


class VersionMismatch(Exception):
    """The client's If-Match names another version than the bidder's current one."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"the bidder's version is {current}" if current is not None else "no such bidder")
        self.current = current


ANY_VERSION = -1  # If-Match: * (any current version, but the bidder must exist)


@dataclass(frozen=True)
class RefitSettings:
    every_s: float  # 0: never
    logs_url: str
    since: str
    engine: str
    spark_master: str | None
    timeout_s: float


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
    def __init__(
        self,
        engine: Engine,
        store: Store,
        tick_s: float,
        sync_s: float,
        dedupe_s: float,
        log: AuctionLogWriter | None = None,
        log_flush: tuple[float, int] = (10.0, 200_000),
        refit: RefitSettings | None = None,
        instance: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.instance = instance or instance_id()
        # One of the two is set (app.py): a fleet covers open reservations with leases, an instance alone on its
        # store with snapshots of them.
        self.fleet: Fleet | None = None
        self.snapshots: Snapshots | None = None
        self.log = log
        self.log_flush_s, self.log_flush_rows = log_flush
        self.refit = refit
        self.refits: Counter[str] = Counter()  # refit runs by result (metrics)
        self.model_errors = 0  # published models this instance refused (failed validation)
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
        self._frozen_bidders = 0
        self._background = ThreadPoolExecutor(1, "pacer-log", initializer=background_priority)
        self.background_errors: Counter[str] = Counter()  # exceptions the background loops survived, by loop
        self._error_logged: dict[str, float] = {}
        self.tick_seconds = Histogram(LOOP_BUCKETS)
        self.sync_seconds = Histogram(LOOP_BUCKETS)
        self.loop_lag = Histogram(LOOP_BUCKETS)
        self.ticked_at = time.monotonic()  # the last completed tick (readiness: the pacing loop is alive)
        self.synced_at = time.monotonic()  # the last sync that reached the store (a write: readiness)

    async def _in_background(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the low-priority log thread."""
        return await asyncio.get_running_loop().run_in_executor(self._background, fn, *args)

    async def start(self) -> None:
        """Open the store, rebuild every bidder with its recorded spend, hold back pre-crash reservations."""
        await self.store.open()
        records = await self.store.load_bidders()
        await load_bidders(self.engine, self.store, records, self.versions)
        now = self.engine.clock()
        held = await self.snapshots.load_reserved() if self.snapshots is not None else {}
        for bidder_id, (micros, until) in held.items():
            if until > now and micros > 0:
                self.engine.hold_back(bidder_id, micros, until)
        if self.fleet is not None:
            await self.fleet.sync()  # leases before the first bid
        await self.load_models()
        self.engine.tick()
        log.info("loaded %d bidders, %d fitted models", len(records), sum(1 for m in self.engine.models.values() if m))
        self._freeze_long_lived(force=True)
        self.ticked_at = self.synced_at = time.monotonic()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "tick": self._tick_loop,
            "sync": self._sync_loop,
            "lag": self._lag_probe,
        }
        if self.fleet is not None:
            loops["relay"] = self.fleet.relay
        if self.log is not None:
            loops["log"] = self._log_loop
        if self.refit is not None and self.refit.every_s > 0:
            loops["refit"] = self._refit_loop
        self._tasks = [asyncio.create_task(self._supervised(name, loop)) for name, loop in loops.items()]

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
        if self.log is not None:
            await self._flush_log_at_stop()
        self._background.shutdown(wait=False)  # a write stuck in a sink is abandoned (its rows are counted)
        await self.store.close()
        gc.unfreeze()

    async def _flush_log_at_stop(self) -> None:
        """Write what the auction log holds, retrying a failing sink for at most LOG_STOP_S; whatever is still
        unwritten then is counted as dropped and logged with its number (never lost silently)."""
        assert self.log is not None
        deadline = time.monotonic() + LOG_STOP_S
        written = False
        while not written and (left := deadline - time.monotonic()) > 0:
            try:
                written = await asyncio.wait_for(self._in_background(self.log.flush), left)
            except TimeoutError:
                break
            if not written:
                await asyncio.sleep(min(RESTART_S * 5, max(deadline - time.monotonic(), 0)))
        lost = self.log.abandon()
        if lost:
            log.error(
                "auction log: %d rows could not be written to %s at shutdown (%s); they are lost",
                lost,
                self.log.url,
                self.log.last_error or f"no answer within {LOG_STOP_S:.0f} s",
            )

    # --- background loops -----------------------------------------------------------------------------------

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for as long as the service runs: an exception is logged with its traceback
        (at most every ERROR_LOG_EVERY_S per loop), counted (pacer_background_errors_total{loop}), and the loop
        starts again. A loop that died silently would leave reservations unexpired and budgets unplanned while
        /readyz still said ready."""
        current_loop.set(name)  # this task's own context: its log records name the loop
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.background_errors[name] += 1
                now = time.monotonic()
                if now - self._error_logged.get(name, -math.inf) >= ERROR_LOG_EVERY_S:
                    self._error_logged[name] = now
                    log.exception(
                        "background loop %r failed (%d so far); it goes on", name, self.background_errors[name]
                    )
            await asyncio.sleep(RESTART_S)

    def stale(self) -> dict[str, str]:
        """What makes this instance unfit for traffic now, by part: a tick or a store write older than allowed,
        or a last store write that failed. Empty when ready."""
        now = time.monotonic()
        out: dict[str, str] = {}
        tick_age = now - self.ticked_at
        if tick_age > max(STALE_MIN_S, TICK_STALE_TICKS * self.tick_s):
            out["tick"] = f"no completed tick for {tick_age:.1f} s"
        sync_age = now - self.synced_at
        if sync_age > max(STALE_MIN_S, SYNC_STALE_SYNCS * self.sync_s):
            out["sync"] = f"no sync reached the store for {sync_age:.1f} s"
        error = self.store.write_error
        if error is not None:
            out["store_write"] = f"the last store write failed: {error}"
        return out

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # a periodic timer, not a stand-in for synchronisation
            if self.fleet is not None:
                self.fleet.check_lease()
                if self.engine.lease_short != self._short_seen:
                    self._short_seen = self.engine.lease_short
                    self._sync_now.set()
            started = time.monotonic()
            for _ in self.engine.tick_steps():
                await asyncio.sleep(0)  # let waiting bids through between chunks
            self.ticked_at = time.monotonic()
            self.tick_seconds.observe(self.ticked_at - started)

    async def _lag_probe(self) -> None:
        """How late the event loop runs a timer: every stall of the bid path (a long tick step, a collection, a
        blocking call) shows as lag."""
        while True:
            due = time.monotonic() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)  # a periodic probe: the lateness is the measurement
            self.loop_lag.observe(max(0.0, time.monotonic() - due))

    async def _sync_loop(self) -> None:
        last_prune = 0.0
        while True:
            with contextlib.suppress(TimeoutError):  # the sync period, or earlier when a lease ran short
                await asyncio.wait_for(self._sync_now.wait(), self.sync_s)
            self._sync_now.clear()
            started = time.monotonic()
            try:
                if self.fleet is not None:
                    async with self._lock:  # operator writes and config changes from the fleet apply in order
                        await self.fleet.sync()
                    await self.store.probe_write()  # readiness: the write_error of a store no event wrote to
                else:
                    await self._snapshot()
                self.synced_at = time.monotonic()
                self.sync_seconds.observe(self.synced_at - started)
                await self.load_models()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await self.store.prune(self.engine.clock() - self.dedupe_s)
                    last_prune = time.monotonic()
                self._freeze_long_lived()
            except StoreError as exc:
                self.store_errors["sync"] += 1
                log.warning("store sync failed: %s", exc)

    def _freeze_long_lived(self, force: bool = False) -> None:
        """Keep what lives as long as the process (start-up objects, then bidders, which die by refcount, not in
        cycles) out of full garbage collections, which walk every tracked object: at 10,000 bidders each took
        30-40 ms of the event loop, 3-9 ms frozen. Again whenever the bidder count grew by FREEZE_GROWTH (one
        collection each time, before freezing, so no garbage is frozen)."""
        n = len(self.engine.bidders)
        if force or n - self._frozen_bidders >= max(FREEZE_MIN, FREEZE_GROWTH * self._frozen_bidders):
            gc.collect()
            gc.freeze()
            self._frozen_bidders = n

    async def load_models(self) -> None:
        """Take the models published since the last look (one cheap query when nothing changed)."""
        for record in await self.store.load_models(self.engine.model_seq):
            try:
                self.engine.apply_model(record)
            except ValueError as exc:  # ModelError: whoever published it, a bad model is not used
                self.model_errors += 1
                log.error("model v%d of bidder %r refused: %s", record.version, record.bidder_id, exc)
            self.engine.model_seq = max(self.engine.model_seq, record.seq)

    async def _log_loop(self) -> None:
        """Write the auction log by size or age, in a thread: the event loop never waits on the sink."""
        assert self.log is not None
        last = time.monotonic()
        while True:
            await asyncio.sleep(LOG_CHECK_S)  # a periodic check, not a stand-in for synchronisation
            if self.log.pending < self.log_flush_rows and time.monotonic() - last < self.log_flush_s:
                continue
            last = time.monotonic()
            await self._in_background(self.log.write, self.log.take())  # rows that fail wait in the writer

    def last_refit_at(self) -> float:
        """When the fleet last published a refit (epoch s; 0: never), from the fit statuses it published."""
        stamps = (parse_rfc3339(f.get("at")) for f in self.engine.fits.values())
        return max((t.timestamp() for t in stamps if t is not None), default=0.0)

    async def _refit_loop(self) -> None:
        """A refit is due when the fleet's last one is older than the period: so a restart (or a fleet of them)
        neither postpones it nor repeats it, and a failing one is retried once per period by each instance."""
        assert self.refit is not None
        every = self.refit.every_s
        tried = 0.0
        while True:
            await asyncio.sleep(min(every, REFIT_CHECK_S))  # a periodic check, not a stand-in for synchronisation
            now = time.time()
            if now - max(self.last_refit_at(), tried) < every:
                continue
            tried = now
            try:
                self.refits[await self.refit_once()] += 1
            except StoreError as exc:
                self.refits["store_error"] += 1
                log.warning("refit: store unavailable: %s", exc)

    async def refit_once(self) -> str:
        """Run one refit if this instance gets the fleet's refit lock: `pacer refit` in a subprocess (the rollup
        and the fit never compete with bids for this process's CPU and memory), then publish what it found.
        Returns the result: "ok", "busy" (another instance holds the lock), "failed" or "timeout"."""
        refit = self.refit
        assert refit is not None
        lock_ttl = refit.timeout_s + 60.0
        if not await self.store.try_lock(REFIT_LOCK, self.instance, lock_ttl):
            return "busy"
        try:
            with tempfile.TemporaryDirectory(prefix="pacer-refit-") as tmp:
                zones = Path(tmp) / "timezones.json"
                zones.write_text(json.dumps({b: x.timezone for b, x in self.engine.bidders.items()}))
                out = Path(tmp) / "report.json"
                command = [
                    sys.executable,
                    "-m",
                    "pacer.cli",
                    "refit",
                    "--logs",
                    refit.logs_url,
                    "--since",
                    refit.since,
                    "--engine",
                    refit.engine,
                    "--timezones",
                    str(zones),
                    "--report",
                    str(out),
                    "--no-publish",
                    *(["--spark-master", refit.spark_master] if refit.spark_master else []),
                ]
                proc = await asyncio.create_subprocess_exec(
                    *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                background_priority(proc.pid)  # its threads (DuckDB's) inherit it
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), refit.timeout_s)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    log.error("refit: stopped after %.0f s (PACER_REFIT_TIMEOUT_S)", refit.timeout_s)
                    return "timeout"
                if proc.returncode != 0:
                    log.error("refit failed (exit %s): %s", proc.returncode, err.decode(errors="replace")[-2000:])
                    return "failed"
                rows = json.loads(out.read_text())
            await publish(self.store, rows)
            rejected = [r for r in rows if r["model"] is None]
            log.info("refit: %d bidders fitted, %d rejected", len(rows) - len(rejected), len(rejected))
            for r in rejected[:REJECTIONS_LOGGED]:  # every reason is in the bidder's status (model.last_fit)
                log.info(
                    "refit: bidder %r keeps its model: %s",
                    r["bidder_id"],
                    r["fit"]["reason"],
                    extra={"bidder": r["bidder_id"]},
                )
            await self.load_models()
            return "ok"
        finally:
            with contextlib.suppress(StoreError):
                await self.store.unlock(REFIT_LOCK, self.instance)

    async def _snapshot(self) -> None:
        """Write each bidder's open reservations and how long they may still be won (see Snapshots.save_reserved;
        it also probes the store's writes)."""
        if self.snapshots is None:
            return
        until = self.engine.clock() + self.engine.delays.ttl
        snapshot = {}
        for b in self.engine.holding():  # not every bidder: a sync's cost follows the bidders with money out
            ledger = b.ledger
            snapshot[b.bidder_id] = (ledger.reserved + ledger.holdback, max(until, ledger.holdback_until))
        await self.snapshots.save_reserved(snapshot)

    # --- operator operations ----------------------------------------------------------------------------------
    # Each is one read-modify-write under the service's lock, so concurrent operator requests apply in order and
    # none undoes another (a budget PATCH racing a pause, a PATCH racing a DELETE). In a fleet the store checks
    # the version too (another instance may have written since): on a conflict the bidder is re-read and the
    # change applied again to what is current.

    def version(self, bidder_id: str) -> int | None:
        """The configuration version this instance runs (the ETag), None for an unknown bidder."""
        return self.versions.get(bidder_id) if bidder_id in self.engine.bidders else None

    def _check(self, bidder_id: str, expect: int | None) -> None:
        if expect is None:
            return
        current = self.version(bidder_id)
        if current is None or (expect != ANY_VERSION and expect != current):
            raise VersionMismatch(current)

    async def update(
        self, bidder_id: str, change: Callable[[BidderConfig | None], BidderConfig], expect: int | None = None
    ) -> bool:
        """Write `change(current config or None)` as the bidder's config; True if that created it. `change` raises
        BidderNotFound where the bidder must exist; `expect` is the version the client saw (If-Match; ANY_VERSION
        for `*`), else VersionMismatch. Durable before it takes effect."""
        async with self._lock:
            return await self._update(bidder_id, change, expect)

    async def _update(
        self, bidder_id: str, change: Callable[[BidderConfig | None], BidderConfig], expect: int | None
    ) -> bool:
        for _ in range(CONFLICT_RETRIES):
            self._check(bidder_id, expect)
            bidder = self.engine.bidders.get(bidder_id)
            config = change(bidder.config if bidder is not None else None)
            try:
                version = await self._write("put", self.store.put_bidder(self._record(bidder_id, config)))
            except VersionConflict:
                await self._reread(bidder_id)
                continue
            await self._run(bidder_id, config, version)
            return bidder is None
        raise StoreError(f"bidder {bidder_id!r} kept changing on other instances; retry")

    def _record(self, bidder_id: str, config: BidderConfig) -> BidderRecord:
        """The stored form of `config` as the next version of what this instance runs (version 1: a new bidder)."""
        known = self.versions.get(bidder_id, 0) if bidder_id in self.engine.bidders else 0
        return BidderRecord(bidder_id, config_to_json(config), known + 1, time.time())

    async def update_many(self, changes: dict[str, Callable[[BidderConfig | None], BidderConfig]]) -> int:
        """`update` for many bidders (bulk PUT): one store write for them all (a transaction on the embedded store,
        a round trip per chunk on Redis), one read of their spend, then each runs here. Returns how many it created.
        A bidder another instance changed meanwhile is re-read and written alone, as `update` does."""
        async with self._lock:
            configs = {
                b: change(self.engine.bidders[b].config if b in self.engine.bidders else None)
                for b, change in changes.items()
            }
            new = {b for b in configs if b not in self.engine.bidders}
            records = [self._record(b, config) for b, config in configs.items()]
            results = await self._write("put", self.store.put_bidders(records))
            written = {r.bidder_id: v for r, v in zip(records, results, strict=True) if isinstance(v, int)}
            now = self.engine.clock()
            keys = {b: window_at(configs[b].period, now).key for b in written}
            spend = await self.store.load_spend([(b, key) for b, key in keys.items()])
            for n, (bidder_id, version) in enumerate(written.items()):
                if n and n % SYNC_YIELD == 0:
                    await asyncio.sleep(0)  # bids go on between chunks of a big batch
                self.engine.configure(bidder_id, configs[bidder_id], spend[bidder_id, keys[bidder_id]])
                self.versions[bidder_id] = version
            for record, result in zip(records, results, strict=True):
                if isinstance(result, VersionConflict):
                    await self._reread(record.bidder_id)
                    await self._update(record.bidder_id, changes[record.bidder_id], None)
                elif not isinstance(result, int):
                    raise result  # the fleet store lost this bidder: restore it first (409)
            return sum(1 for b in new if b in self.engine.bidders)

    async def delete(self, bidder_id: str, expect: int | None = None) -> None:
        async with self._lock:
            for _ in range(CONFLICT_RETRIES):
                self._check(bidder_id, expect)
                if bidder_id not in self.engine.bidders:
                    raise BidderNotFound(bidder_id)
                try:
                    await self._write("delete", self.store.delete_bidder(bidder_id, self.versions.get(bidder_id, 0)))
                except VersionConflict:
                    await self._reread(bidder_id)
                    continue
                self.engine.remove(bidder_id)
                self.versions.pop(bidder_id, None)
                return
            raise StoreError(f"bidder {bidder_id!r} kept changing on other instances; retry")

    async def _reread(self, bidder_id: str) -> None:
        """Another instance wrote this bidder: take its current config (or its deletion) now."""
        (record,) = await self.store.load_configs([bidder_id])
        if record is None:
            self.engine.remove(bidder_id)
            self.versions.pop(bidder_id, None)
            return
        await self._run(bidder_id, config_from_json(record.config), record.version)

    async def _run(self, bidder_id: str, config: BidderConfig, version: int) -> None:
        """Run this stored config (version) here, with the spend recorded in its current period."""
        key = window_at(config.period, self.engine.clock()).key
        spend = await self.store.load_spend([(bidder_id, key)])
        self.engine.configure(bidder_id, config, spend[bidder_id, key])
        self.versions[bidder_id] = version

    async def restore(self, bidder_id: str, spent_micros: int) -> None:
        """Bring back a bidder whose state the fleet store lost, with the spend the operator states."""
        assert self.fleet is not None, "only a fleet store loses state"
        async with self._lock:
            bidder = self.engine.bidders.get(bidder_id)
            if bidder is None:
                raise BidderNotFound(bidder_id)
            record = BidderRecord(bidder_id, config_to_json(bidder.config), 0, time.time())
            await self._write("restore", self.fleet.store.restore_bidder(record, bidder.window.key, spent_micros))
            await self.fleet.sync()  # take the restored state and a lease now

    async def _write(self, op: str, write: Awaitable[T]) -> T:
        try:
            return await write
        except StoreError:
            self.store_errors[op] += 1
            raise
