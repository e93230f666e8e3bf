"""fleet_scale.py: what 10,000 bidders cost one pacer instance: tick, memory, Redis sync, auction log.

In process (no HTTP), with pacer's own classes: the controller tick, memory per bidder, a Redis fleet sync, and
the auction log per decision. Part of `make bench`; times things, asserts nothing.

    .venv/bin/python loadtest/fleet_scale.py [--bidders 10000] [--cpu 0] [--json]

The Redis figures need `redis-server` on PATH (started here on a free port, pinned to another core than this
process, no persistence). Medians of repeats; one line per figure, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pacer.auctionlog import AuctionLogWriter
from pacer.bidder_config import BidderConfig, config_to_json
from pacer.clock import ManualClock
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.fleet import Fleet
from pacer.periods import Daily, Flight
from pacer.service import load_bidders
from pacer.store.base import BidderRecord, WinRecord
from pacer.store.redis import GROUP, RedisStore

REPO = Path(__file__).resolve().parent.parent
BIDDERS = 10_000
TICKS = 20
WARM_TICKS = 15  # reach the steady state: wins arriving, reservations expiring, the TTL adapted
TICK_S = 0.1  # PACER_TICK_MS
RATE = 40_000  # bid requests per second the instance serves between ticks (about one core's worth)
WIN_SHARE = 0.05  # share of granted bids that win...
WIN_DELAY_S = 1.0  # ...notified this long after the grant (the reservation TTL adapts to it)
ZONES = ("America/New_York", "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles", "UTC")
RESERVATIONS = 100_000  # open reservations measured for bytes per reservation
SYNCS = 7
SYNC_S, LEASE_TTL_S, DEDUPE_S = 0.25, 3.0, 7 * 86400.0  # the service defaults (PACER_SYNC_MS, ...)
PUT_CONCURRENCY = 64
LOG_ROWS = 200_000  # PACER_LOG_FLUSH_ROWS: the writer thread's batch
LOG_BATCHES = 3
APPENDS = 1_000_000


def config(i: int, now: float) -> BidderConfig:
    """Half daily budgets in five zones, half flights of a week; all traffic-paced, all active."""
    period: Daily | Flight = (
        Daily(ZONES[i % len(ZONES)]) if i % 2 else Flight(now - 3600, now + 7 * 86400, ZONES[i % len(ZONES)])
    )
    return BidderConfig(
        budget_micros=random.Random(i).randrange(10**9, 10**11),
        period=period,
        pacing="traffic",
        max_bid_micros=None if i % 3 else 50_000,
    )


def engine(clock: ManualClock, bidders: int, leased: bool = False) -> Engine:
    curve = TrafficCurve.load(REPO / "models" / "prior" / "traffic.json")
    e = Engine(clock, EngineParams(tick_s=TICK_S), curve, rng=random.Random(1), leased=leased)
    for i in range(bidders):
        e.configure(f"b{i}", config(i, clock.now))
    return e


Grants = list[tuple[float, str, str]]  # (granted at, bidder_id, auction_id) of bids that will win


def traffic(e: Engine, clock: ManualClock, seconds: float, counter: Iterator[int], grants: Grants) -> None:
    """What the instance does between two ticks: decisions, and wins on some bids granted about a second ago."""
    n = int(RATE * seconds)
    step = seconds / n
    ids = list(e.bidders)
    for _ in range(n):
        k = next(counter)
        bidder = ids[k * 7919 % len(ids)]
        auction = f"a{k}"
        clock.now += step
        granted, _ = e.decide(bidder, auction, 2000)
        if granted and k % int(1 / WIN_SHARE) == 0:
            grants.append((clock.now, bidder, auction))
    due = 0
    while due < len(grants) and grants[due][0] <= clock.now - WIN_DELAY_S:
        _, bidder, auction = grants[due]
        e.win(bidder, auction, 1500)
        due += 1
    del grants[:due]


def tick_costs(bidders: int) -> dict[str, float]:
    clock = ManualClock(time.time())
    e = engine(clock, bidders)
    counter, grants = iter(range(10**12)), Grants()
    totals, steps = [], []
    for t in range(WARM_TICKS + TICKS):
        traffic(e, clock, TICK_S, counter, grants)
        gc.collect()
        started = last = time.thread_time()  # CPU time: a busy machine does not inflate it
        longest = 0.0
        for _ in e.tick_steps():
            now = time.thread_time()
            longest = max(longest, now - last)
            last = now
        now = time.thread_time()
        longest = max(longest, now - last)
        if t >= WARM_TICKS:
            totals.append(now - started)
            steps.append(longest)
    return {
        "tick_ms": statistics.median(totals) * 1e3,
        "tick_max_ms": max(totals) * 1e3,
        "step_max_ms": max(steps) * 1e3,
        "step_median_ms": statistics.median(steps) * 1e3,
        "open_reservations": sum(b.ledger.open_count for b in e.bidders.values()),
    }


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(bidders: int) -> dict[str, float]:
    """Bytes per configured bidder (engine state, ledger, controller arrays after a tick), and per open
    reservation. tracemalloc sees Python objects and numpy buffers; RSS is what the OS sees."""
    gc.collect()
    before = rss()
    clock = ManualClock(time.time())
    e = engine(clock, bidders)
    e.tick()
    gc.collect()
    rss_per = (rss() - before) / bidders
    del e
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    e = engine(clock, bidders)
    e.tick()
    gc.collect()
    per_bidder = (tracemalloc.get_traced_memory()[0] - base) / bidders
    base = tracemalloc.get_traced_memory()[0]
    ids = list(e.bidders)
    for k in range(RESERVATIONS):
        e.decide(ids[k % len(ids)], f"auction-{k:012d}", 2000)
    per_reservation = (tracemalloc.get_traced_memory()[0] - base) / RESERVATIONS
    tracemalloc.stop()
    return {"bytes_per_bidder": per_bidder, "rss_bytes_per_bidder": rss_per, "bytes_per_reservation": per_reservation}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[int]:
    port = free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [*pin, "redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:  # redis-server has no readiness signal: wait for its port
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("redis-server did not start")
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


class RoundTrips:
    """Counts what the client sends to Redis: one send per command or per pipeline (a round trip), and EVALSHAs."""

    def __init__(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.sends = 0
        self.evalsha = 0
        self._cls = AbstractConnection
        self._original: Callable[..., Any] = AbstractConnection.send_packed_command
        original = self._original
        counter = self

        async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.sends += 1
            parts = command if isinstance(command, list) else [command]
            counter.evalsha += sum(bytes(p).count(b"EVALSHA") for p in parts)
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]

    def reset(self) -> None:
        self.sends = self.evalsha = 0

    def close(self) -> None:
        self._cls.send_packed_command = self._original  # type: ignore[method-assign]


def lua_usec(port: int) -> int:
    """Microseconds Redis has spent running EVALSHA so far (INFO commandstats), on a connection of its own."""
    import redis

    client = redis.Redis(port=port)
    try:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
    finally:
        client.close()


class LoopProbe:
    """The longest the event loop went without running other tasks while the body ran (what a bid would wait)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._done = False

    async def _run(self) -> None:
        last = time.perf_counter()
        while not self._done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.longest, last = max(self.longest, now - last), now

    async def __aenter__(self) -> LoopProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done = True
        await self._task


async def redis_sync(bidders: int, port: int) -> dict[str, float]:
    """The sync path the service runs (Fleet.sync -> RedisStore.sync), 10k bidders put through the store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", Path(tmp) / "journal")
        await store.open()
        counter = RoundTrips()
        try:
            clock = ManualClock(time.time())
            gate = asyncio.Semaphore(PUT_CONCURRENCY)

            async def put(i: int) -> None:
                async with gate:
                    await store.put_bidder(BidderRecord(f"b{i}", config_to_json(config(i, clock.now)), 1, clock.now))

            started = time.perf_counter()
            await asyncio.gather(*(put(i) for i in range(bidders)))
            put_s = time.perf_counter() - started
            e = Engine(
                clock, EngineParams(tick_s=TICK_S), TrafficCurve.load(REPO / "models/prior/traffic.json"), leased=True
            )
            versions: dict[str, int] = {}
            await load_bidders(e, store, await store.load_bidders(), versions)
            gc.collect()
            gc.freeze()  # as the service does with long-lived objects (Service._freeze_long_lived)
            fleet = Fleet(e, store, versions, SYNC_S, LEASE_TTL_S, DEDUPE_S)
            e.tick()
            counter.reset()
            started = time.perf_counter()
            await fleet.sync()  # the first one also reads the registry (discovery)
            first_ms, first_trips = (time.perf_counter() - started) * 1e3, counter.sends
            plain, cpu, trips, evals, blocks = [], [], [], [], []
            lua_before = lua_usec(port)
            for _ in range(SYNCS):
                clock.advance(SYNC_S)
                counter.reset()
                started, started_cpu = time.perf_counter(), time.thread_time()
                await fleet.sync()
                plain.append((time.perf_counter() - started) * 1e3)
                cpu.append((time.thread_time() - started_cpu) * 1e3)
                trips.append(counter.sends)
                evals.append(counter.evalsha)
            lua_ms = (lua_usec(port) - lua_before) / SYNCS / 1e3
            for _ in range(3):  # apart from the timed ones: the probe spins on the loop while Redis works
                clock.advance(SYNC_S)
                probe = LoopProbe()
                async with probe:
                    await fleet.sync()
                blocks.append(probe.longest * 1e3)
            with_wins = []
            for s in range(3):
                clock.advance(SYNC_S)
                wins = [WinRecord(f"b{i}", f"w{s}-{i}", 1500, e.period_key(f"b{i}"), clock.now) for i in range(bidders)]
                await store.record_wins(wins)  # the journal commit is the event route's cost, not the sync's
                started = time.perf_counter()
                await fleet.sync()
                with_wins.append((time.perf_counter() - started) * 1e3)
        finally:
            gc.unfreeze()
            counter.close()
            await store.close()
    return {
        "put_s": put_s,
        "sync_first_ms": first_ms,
        "sync_first_round_trips": first_trips,
        "sync_ms": statistics.median(plain),
        "sync_cpu_ms": statistics.median(cpu),
        "sync_round_trips": statistics.median(trips),
        "sync_evalsha": statistics.median(evals),
        "sync_lua_ms": lua_ms,
        "sync_with_wins_ms": statistics.median(with_wins),
        "sync_longest_block_ms": max(blocks),
    }


def auction_log() -> dict[str, float]:
    """The hot-path append per decision, and the writer thread's cost per row in 200k-row batches."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = AuctionLogWriter(tmp, "bench")
        now = time.time()
        append = timeit.repeat(
            lambda: writer.decision(now, "b17", "r1t1-1234567", 2000, 2000, None), number=APPENDS, repeat=3
        )
        writer.take()
        append_us = min(append) / APPENDS * 1e6
        table_us, write_wall, write_cpu = [], [], []
        for n in range(LOG_BATCHES):
            for k in range(LOG_ROWS):
                writer.decision(
                    now + k * 1e-5, f"b{k % 200}", f"r{n}t1-{k}", 2000, 2000 if k % 4 else 0, None if k % 4 else "paced"
                )
            started, cpu, held = time.perf_counter(), time.process_time(), time.thread_time()
            batch = writer.take()
            table = writer.table(batch)
            table_us.append((time.thread_time() - held) / LOG_ROWS * 1e6)
            del table
            assert writer.write(batch)
            write_wall.append((time.perf_counter() - started) / LOG_ROWS * 1e6)
            write_cpu.append((time.process_time() - cpu) / LOG_ROWS * 1e6)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet"))
    return {
        "append_us": append_us,
        "write_us_per_row": statistics.median(write_wall),
        "write_cpu_us_per_row": statistics.median(write_cpu),
        "table_us_per_row": statistics.median(table_us),
        "bytes_per_row": size / (LOG_ROWS * LOG_BATCHES),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bidders", type=int, default=BIDDERS)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core (Redis to another)")
    parser.add_argument("--json", action="store_true", help="one JSON object (figures and lines) on stdout")
    args = parser.parse_args()
    redis_cpu = None
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
        others = sorted(set(range(os.cpu_count() or 1)) - {args.cpu})
        redis_cpu = others[0] if others else None
    n = args.bidders
    out: dict[str, Any] = {"bidders": n}
    out |= memory(n)  # first: a fresh process shows the clearest RSS growth
    out |= tick_costs(n)
    if shutil.which("redis-server"):
        with redis_server(redis_cpu) as port:
            out |= asyncio.run(redis_sync(n, port))
    out |= auction_log()
    lines = [
        f"controller tick over {n:,} active bidders (half daily in 5 zones, half flights, traffic pacing, "
        f"{RATE // 1000}k bids/s between ticks, {out['open_reservations']:,} open reservations): median "
        f"{out['tick_ms']:.1f} ms of CPU (max {out['tick_max_ms']:.1f} ms) over {TICKS} ticks; longest step between "
        f"yields (Engine.tick_steps) {out['step_max_ms']:.1f} ms, median of the ticks' longest "
        f"{out['step_median_ms']:.1f} ms",
        f"memory per bidder: {out['bytes_per_bidder']:,.0f} bytes (tracemalloc: engine, ledger, controller arrays), "
        f"{out['rss_bytes_per_bidder']:,.0f} bytes of RSS; each open reservation {out['bytes_per_reservation']:,.0f} "
        "bytes",
    ]
    if "sync_ms" in out:
        lines.append(
            f"Redis sync of {n:,} bidders (Fleet.sync -> RedisStore.sync, {GROUP} bidders per Lua call): median "
            f"{out['sync_ms']:.1f} ms in {out['sync_round_trips']:.0f} round trip(s) carrying "
            f"{out['sync_evalsha']:.0f} EVALSHA ({out['sync_lua_ms']:.0f} ms of it running Lua in Redis, "
            f"{out['sync_cpu_ms']:.0f} ms of this process's CPU on its event loop, in blocks of at most "
            f"{out['sync_longest_block_ms']:.1f} ms between yields to bids); with a "
            f"win per bidder to ship {out['sync_with_wins_ms']:.1f} ms; "
            f"first sync (with discovery) {out['sync_first_ms']:.0f} ms in {out['sync_first_round_trips']} round "
            f"trips; putting the {n:,} bidders took {out['put_s']:.1f} s"
        )
    else:
        lines.append("Redis sync: not measured (redis-server not on PATH)")
    lines.append(
        f"auction log: {out['append_us']:.2f} us per decision on the hot path (append); the writer "
        f"{out['write_us_per_row']:.2f} us per row wall, {out['write_cpu_us_per_row']:.2f} us CPU, in "
        f"{LOG_ROWS // 1000}k-row batches, on its own low-priority thread (of which {out['table_us_per_row']:.2f} us "
        f"wrapping the buffers as Arrow arrays); {out['bytes_per_row']:.1f} bytes per row on disk (bench ids)"
    )
    out["lines"] = lines
    if args.json:
        print(json.dumps(out))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
