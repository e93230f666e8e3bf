"""RedisStore against real redis-server processes: fleet-wide win dedupe, leases, operator writes, lost data,
the local journal, scripts flushed by a restart, and Redis Cluster.

Each RedisStore object plays one instance (its own journal folder); several on one Redis are a fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacer.store.base import BidderRecord, StoreError, VersionConflict, WinRecord
from pacer.store.redis import BidderLost, LeaseReply, LeaseRequest, RedisStore
from tests.redis_server import RedisCluster, RedisServer
from tests.store_contract import StoreContract, StoreFactory

PERIOD = "flight:1000"
TTL_MS = 60_000
Opener = Callable[..., Awaitable[RedisStore]]


def record(bidder_id: str, budget: int, known: int = 0, paused: bool = False) -> BidderRecord:
    config: dict[str, object] = {"budget_micros": budget, "period": {"type": "flight"}, "paused": paused}
    return BidderRecord(bidder_id, config, known + 1, 1700000000.5)


def win(auction_id: str, price: int, bidder_id: str = "b1", period: str = PERIOD) -> WinRecord:
    return WinRecord(bidder_id, auction_id, price, period, time.time())


def ask(bidder_id: str, want: int, wins: list[WinRecord] | None = None, known: int = 1) -> LeaseRequest:
    return LeaseRequest(bidder_id, known, PERIOD, want, 0, wins or [])


async def sync_one(store: RedisStore, request: LeaseRequest, ttl_ms: int = TTL_MS) -> LeaseReply:
    replies, _ = await store.sync([request], ttl_ms)
    return replies[0]


def state(server: RedisServer | RedisCluster, bidder_id: str = "b1") -> dict[str, str]:
    client = (
        redis_sync.RedisCluster.from_url(server.url)
        if isinstance(server, RedisCluster)
        else redis_sync.Redis.from_url(server.url)
    )
    try:
        raw = client.hgetall(f"pacer:{{{bidder_id}}}:b")
        return {k.decode(): v.decode() for k, v in raw.items()}
    finally:
        client.close()


def live_leases(h: dict[str, str]) -> int:
    return sum(int(v) for k, v in h.items() if k.startswith("l:"))


@pytest.fixture
async def open_store(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Opener]:
    """Open an instance: a RedisStore with its own journal folder (`name`), on the test's Redis by default."""
    stores: list[RedisStore] = []

    async def opener(name: str = "i0", url: str | None = None) -> RedisStore:
        store = RedisStore.from_url(url or redis_server.url, tmp_path / name)
        await store.open()
        stores.append(store)
        return store

    yield opener
    for s in stores:
        await s.close()


class TestRedisStore(StoreContract):
    """The Store contract (tests/store_contract.py), as for SQLite: each factory call is another instance on the
    same Redis (and the same journal folder, so a reopened one gets its journal back)."""

    @pytest.fixture
    async def store_factory(self, tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[StoreFactory]:
        opened: list[RedisStore] = []

        async def make() -> RedisStore:
            store = RedisStore.from_url(redis_server.url, tmp_path / "journal")
            await store.open()
            opened.append(store)
            return store

        self.redis_server = redis_server
        yield make
        for store in opened:
            await store.close()

    @contextlib.asynccontextmanager
    async def write_fault(self, store: RedisStore) -> AsyncIterator[None]:  # type: ignore[override]
        """Redis is down and the journal the store falls back on refuses writes. After it, one sync: a fleet
        instance finds Redis back at its next sync."""
        import sqlite3

        def deny(action: int, *_: object) -> int:
            writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
            return sqlite3.SQLITE_DENY if action in writes else sqlite3.SQLITE_OK

        journal = store._journal_store()
        self.redis_server.stop()
        await journal._on_thread(lambda: journal._db().set_authorizer(deny))
        try:
            yield
        finally:
            self.redis_server.start()
            await journal._on_thread(lambda: journal._db().set_authorizer(None))
            await store.sync([], TTL_MS)


# --- configuration ----------------------------------------------------------------------------------------------


async def test_put_load_versions_and_delete(open_store: Opener) -> None:
    a, b = await open_store("a"), await open_store("b")
    assert await a.put_bidder(record("b1", 5_000)) == 1
    assert await b.put_bidder(record("b1", 6_000, known=1)) == 2  # versions are fleet-wide
    [loaded] = await a.load_bidders()
    assert (loaded.bidder_id, loaded.version, loaded.config["budget_micros"]) == ("b1", 2, 6_000)
    await a.delete_bidder("b1")
    assert await b.load_bidders() == []
    reply = await sync_one(b, ask("b1", 100))
    assert reply.status == "deleted" and reply.lease_micros == 0


async def test_bulk_put_writes_each_with_its_version_check_and_announces_them_once(
    open_store: Opener, redis_server: RedisServer
) -> None:
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 5_000))
    await b.put_bidder(record("b1", 6_000, known=1))  # a still knows version 1
    client = redis_sync.Redis.from_url(redis_server.url)
    seq = int(client.get("pacer:{registry}:seq") or 0)
    results = await a.put_bidders([record(f"n{i}", 1_000) for i in range(2_500)] + [record("b1", 7_000, known=1)])
    assert results[:2_500] == [1] * 2_500, "each new bidder at version 1"
    assert isinstance(results[-1], VersionConflict), "b1 is at 2: nothing written for it"
    assert int(client.get("pacer:{registry}:seq")) == seq + 3, "one announcement per round trip of 1,000"
    client.close()
    assert len(await b.load_bidders()) == 2_501
    [b1] = await b.load_configs(["b1"])
    assert b1 is not None and b1.config["budget_micros"] == 6_000


async def test_config_change_reaches_other_instances_at_their_sync(open_store: Opener) -> None:
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 5_000))
    first = await sync_one(b, ask("b1", 100, known=1))
    assert first.config is None, "same version: no config shipped"
    await a.put_bidder(record("b1", 7_000, known=1, paused=True))
    second = await sync_one(b, ask("b1", 100, known=1))
    assert second.version == 2 and second.config is not None and second.config["budget_micros"] == 7_000
    assert second.lease_micros == 0, "a paused bidder gets no lease"


# --- wins -------------------------------------------------------------------------------------------------------


async def test_win_counted_once_across_instances_and_retries(open_store: Opener) -> None:
    """Issue 13: the answer is the fleet's truth. A win is counted in Redis before record_wins returns, so a retry
    that reaches another instance is a duplicate there, and nothing waits in a journal."""
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 10_000))
    assert await a.record_wins([win("x", 700), win("y", 300)]) == [True, True]
    assert await b.load_spend([("b1", PERIOD)]) == {("b1", PERIOD): 1_000}, "counted before the answer"
    assert await b.record_wins([win("x", 700)]) == [False], "the same win at another instance"
    assert await a.record_wins([win("x", 700)]) == [False]
    assert a.pending() == b.pending() == []
    reply = await sync_one(b, ask("b1", 0))
    assert (reply.spent_micros, reply.duplicates) == (1_000, [])


async def test_concurrent_events_at_several_instances_count_overlapping_wins_once(open_store: Opener) -> None:
    stores = [await open_store(f"i{n}") for n in range(4)]
    await stores[0].put_bidder(record("b1", 10**9))
    wins = [win(f"a{k}", 1 + k) for k in range(200)]
    # Every instance got an overlapping half of the notices, in batches of 10, all at once.
    calls = [s.record_wins(wins[lo : lo + 10]) for n, s in enumerate(stores) for lo in range(n * 33, n * 33 + 100, 10)]
    answers = await asyncio.gather(*calls)
    seen = {w.auction_id for n in range(4) for w in wins[n * 33 : n * 33 + 100]}
    expected = sum(w.price_micros for w in wins if w.auction_id in seen)
    assert sum(sum(a) for a in answers) == len(seen), "each win new at exactly one instance"
    assert await stores[0].load_spend([("b1", PERIOD)]) == {("b1", PERIOD): expected}


async def test_concurrent_callers_share_round_trips(open_store: Opener) -> None:
    """Group commit: callers that arrive while a round trip is out go together in the next one."""
    s = await open_store()
    await s.put_bidder(record("b1", 10**9))
    trips = 0
    run = s._run_script

    async def counting(*args: object, **kw: object) -> list[object]:
        nonlocal trips
        trips += 1
        return await run(*args, **kw)  # type: ignore[arg-type]

    s._run_script = counting  # type: ignore[method-assign]
    answers = await asyncio.gather(*(s.record_wins([win(f"a{k}", 1), win("same", 1)]) for k in range(100)))
    assert trips < 100 / 2, f"{trips} round trips for 100 concurrent callers"
    assert sum(a[0] for a in answers) == 100 and sum(a[1] for a in answers) == 1, "'same' is new once"


async def test_money_keeps_every_digit(open_store: Opener, redis_server: RedisServer) -> None:
    """Lua formats numbers with 14 significant digits; budgets, spend and leases must not lose any."""
    s = await open_store()
    budget = 10**15 - 7
    await s.put_bidder(record("b1", budget))
    reply = await sync_one(s, ask("b1", budget, [win("x", 123_456_789_011)]))
    assert reply.spent_micros == 123_456_789_011
    assert reply.lease_micros == budget - 123_456_789_011, "all that is left, to the micro"
    h = state(redis_server)
    assert h["bud"] == str(budget) and int(h[f"s:{PERIOD}"]) == 123_456_789_011
    assert int(h[f"l:{s.instance}"]) == budget - 123_456_789_011


# --- leases -----------------------------------------------------------------------------------------------------


async def test_leases_never_exceed_what_is_left(open_store: Opener) -> None:
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 1_000))
    assert (await sync_one(a, ask("b1", 600))).lease_micros == 600
    # b asks for 600 too: short, so each gets its share of what is left, and never more than is free.
    rb = await sync_one(b, ask("b1", 600))
    assert rb.lease_micros == 400 and rb.fleet_leased_micros == 1_000
    # a reports 500 spent and asks again: its lease is renewed out of what is left.
    ra = await sync_one(a, ask("b1", 600, [win("x", 500)]))
    assert ra.spent_micros == 500
    assert ra.lease_micros == 100, "spent 500 + b's 400 + a's new lease <= 1000"


async def test_idle_instance_returns_its_lease(open_store: Opener) -> None:
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 1_000))
    await sync_one(a, ask("b1", 900))
    assert (await sync_one(b, ask("b1", 900))).lease_micros == 100
    assert (await sync_one(a, ask("b1", 0))).lease_micros == 0  # a went idle
    assert (await sync_one(b, ask("b1", 900))).lease_micros == 900


async def test_dead_instance_lease_returns_after_its_ttl(open_store: Opener, redis_server: RedisServer) -> None:
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 1_000))
    await sync_one(a, LeaseRequest("b1", 1, PERIOD, 800, 200, []), ttl_ms=300)  # a then dies: no more syncs
    assert (await sync_one(b, ask("b1", 1_000))).lease_micros == 200
    # Expiry is on Redis's clock: wait until a's lease (ttl 300 ms + hold 200 ms) has lapsed there.
    expires = int(state(redis_server)[f"e:{a.instance}"])
    client = redis_sync.Redis.from_url(redis_server.url)
    while True:
        seconds, micros = client.time()
        if seconds * 1000 + micros // 1000 > expires:
            break
        await asyncio.sleep(0.05)  # a clock in another process: a bounded wait for it to pass a time
    client.close()
    assert (await sync_one(b, ask("b1", 1_000))).lease_micros == 1_000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 400), st.floats(0, 1)), min_size=1, max_size=40),
    budget=st.integers(1, 2_000),
)
async def test_property_spent_plus_leases_never_above_budget(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    steps: list[tuple[int, int, float]],
    budget: int,
) -> None:
    """Three instances each spend some of what they hold, then sync, in any order: spent + live leases stays
    within the budget, and spent is exactly the sum of the wins."""
    folder = tmp_path_factory.mktemp("prop")
    stores = [RedisStore.from_url(redis_server.url, folder / f"i{n}") for n in range(3)]
    bidder = f"p{folder.name}"
    for s in stores:
        await s.open()
    try:
        await stores[0].put_bidder(record(bidder, budget))
        held = [0, 0, 0]
        total = 0
        for k, (n, want, use) in enumerate(steps):
            price = int(held[n] * use)  # an instance spends only what its lease covers (the ledger's promise)
            wins = [win(f"w{k}", price, bidder)] if price > 0 else []
            total += price
            reply = await sync_one(stores[n], LeaseRequest(bidder, 1, PERIOD, want, 0, wins))
            held[n] = reply.lease_micros
            h = state(redis_server, bidder)
            assert int(h.get(f"s:{PERIOD}", 0)) == total == reply.spent_micros
            assert total + live_leases(h) <= budget
    finally:
        for s in stores:
            await s.close()


# --- lost data and restore --------------------------------------------------------------------------------------


async def test_lost_state_is_reported_not_reset(open_store: Opener, redis_server: RedisServer) -> None:
    s = await open_store()
    await s.put_bidder(record("b1", 1_000))
    await sync_one(s, ask("b1", 100, [win("x", 300)]))
    redis_server.kill()
    redis_server.wipe()
    redis_server.start()
    # Scripts were flushed with the data: the store reloads them by itself.
    reply = await sync_one(s, ask("b1", 100, [win("y", 50)]))
    assert reply.status == "lost" and reply.lease_micros == 0
    assert state(redis_server) == {}, "nothing written for a lost bidder: spend is not restarted at zero"
    with pytest.raises(BidderLost):
        await s.put_bidder(record("b1", 1_000, known=1))
    version = await s.restore_bidder(record("b1", 1_000), PERIOD, 300)
    after = await sync_one(s, ask("b1", 100, [win("y", 50)], known=version))
    assert (after.status, after.spent_micros, after.lease_micros) == ("ok", 350, 100)
    assert after.incarnation != 0


async def test_scripts_reload_after_script_flush(open_store: Opener, redis_server: RedisServer) -> None:
    s = await open_store()
    await s.put_bidder(record("b1", 1_000))
    redis_sync.Redis.from_url(redis_server.url).script_flush()
    assert (await sync_one(s, ask("b1", 100))).lease_micros == 100
    await s.put_bidder(record("b1", 2_000, known=1))


async def test_every_call_survives_a_restart_that_left_stale_pooled_connections(
    open_store: Opener, redis_server: RedisServer
) -> None:
    """redis-py retries single commands on a stale connection but not pipelines: each pipelined call must."""
    s = await open_store()
    await s.put_bidder(record("b1", 1_000))
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: s.load_configs(["b1"]),
        lambda: s.load_spend([("b1", PERIOD)]),
        lambda: s.put_bidder(record("b2", 1_000)),  # its announce is a pipeline
        lambda: s.restore_bidder(record("b1", 1_000), PERIOD, 0),
        lambda: s.sync([ask("b1", 10)], TTL_MS),
    ]
    for call in calls:
        await asyncio.gather(*(s.load_configs(["b1"]) for _ in range(4)))  # several pooled connections
        redis_server.stop()
        redis_server.start()
        await call()


async def test_redis_down_is_a_store_error_fast(open_store: Opener, redis_server: RedisServer) -> None:
    s = await open_store()
    await s.put_bidder(record("b1", 1_000))
    assert await s.record_wins([win("x", 10)]) == [True]
    redis_server.stop()
    with pytest.raises(StoreError):
        await s.sync([ask("b1", 100)], TTL_MS)
    assert await s.ping() is False
    started = time.monotonic()
    assert await s.record_wins([win("y", 20)]) == [True], "events still journal while Redis is down"
    assert await s.record_wins([win("y", 20), win("z", 5)]) == [False, True], "queued once"
    assert time.monotonic() - started < 2.0, "a failed write marks Redis unreachable: no wait on it per event"
    assert [w.auction_id for w in s.pending()] == ["y", "z"]
    redis_server.start()
    reply = await sync_one(s, ask("b1", 100, s.take_pending()))
    assert reply.spent_micros == 35 and s.reachable
    assert await s.record_wins([win("z", 5), win("w", 1)]) == [False, True], "Redis decides again"


async def test_notices_are_relayed_to_the_other_instances(open_store: Opener) -> None:
    a, b = await open_store("a"), await open_store("b")
    received: list[list[tuple[str, str, bool]]] = []

    async def listen() -> None:
        async for notices in b.settled():
            received.append(notices)
            return

    task = asyncio.create_task(listen())
    deadline = asyncio.get_running_loop().time() + 5.0
    while not task.done():  # publish until b's subscription is up: pub/sub keeps nothing for late subscribers
        await a.publish_settled([("b1", "auction-9", True), ("b1", "auction-10", False)])
        await asyncio.wait({task}, timeout=0.02)
        assert asyncio.get_running_loop().time() < deadline
    assert received == [[("b1", "auction-9", True), ("b1", "auction-10", False)]]


async def test_a_lease_never_shrinks_below_the_open_reservations(open_store: Opener, redis_server: RedisServer) -> None:
    """Short of budget, leases are shared in proportion to demand, but never below what an instance has already
    granted to the market: those reservations may all win."""
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 1000))
    assert (await sync_one(a, ask("b1", 600))).lease_micros == 600
    assert (await sync_one(b, ask("b1", 1000))).lease_micros == 400  # what is left
    held = LeaseRequest("b1", 1, PERIOD, 900, 0, [], floor_micros=600)  # a has 600 reserved and wants more
    assert (await sync_one(a, held)).lease_micros == 600  # its share (473) would not cover its reservations
    assert live_leases(state(redis_server)) == 1000  # the invariant holds: spent 0 + leases <= budget


async def test_wins_charged_elsewhere_are_reported_once_counted(open_store: Opener) -> None:
    """The instance that granted a bid won at another one keeps its reservation until Redis has counted the win."""
    a, b = await open_store("a"), await open_store("b")
    await a.put_bidder(record("b1", 10_000))
    check = LeaseRequest("b1", 1, PERIOD, 100, 0, [], floor_micros=100, check=["x", "y"])
    assert (await sync_one(a, check)).counted == []  # b has not shipped x yet
    await b.record_wins([win("x", 70)])
    reply = await sync_one(a, check)
    assert reply.counted == [0] and reply.spent_micros == 70


# --- journal ----------------------------------------------------------------------------------------------------


async def test_unsynced_wins_survive_a_restart_and_orphans_are_adopted(
    tmp_path: Path, open_store: Opener, redis_server: RedisServer
) -> None:
    folder = tmp_path / "shared"
    first = RedisStore.from_url(redis_server.url, folder)
    await first.open()
    await first.put_bidder(record("b1", 10_000))
    redis_server.stop()  # an outage: the wins are acknowledged from the journal
    await first.record_wins([win("x", 40), win("y", 2)])
    redis_server.start()
    second = RedisStore.from_url(redis_server.url, folder)
    await second.open()  # first is alive: second takes the next journal and adopts nothing
    assert second.pending() == []
    await first.close()  # first "dies" with two unshipped wins
    third = RedisStore.from_url(redis_server.url, folder)
    await third.open()  # gets first's journal back (the lowest free one)
    assert sorted(w.auction_id for w in third.pending()) == ["x", "y"]
    await third.close()
    await second.close()
    fourth = RedisStore.from_url(redis_server.url, folder)
    await fourth.open()
    try:
        assert sorted(w.auction_id for w in fourth.pending()) == ["x", "y"]
        reply = await sync_one(fourth, ask("b1", 0, fourth.take_pending()))
        assert reply.spent_micros == 42
    finally:
        await fourth.close()


# --- Redis Cluster ----------------------------------------------------------------------------------------------


async def test_cluster_sync_across_slots(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    stores = [RedisStore.from_url(redis_cluster.url, tmp_path / f"c{n}") for n in range(2)]
    for s in stores:
        await s.open()
    try:
        assert all(s.cluster for s in stores)
        ids = [f"bidder-{k}" for k in range(30)]  # spread over all three masters
        for bidder_id in ids:
            await stores[0].put_bidder(record(bidder_id, 1_000))
        assert sorted(r.bidder_id for r in await stores[1].load_bidders()) == sorted(ids)
        for s in stores:
            await s.record_wins([win("same", 10, b) for b in ids] + [win(f"own-{s.instance}", 5, b) for b in ids])
        results = [await s.sync(_per_bidder(s, ids), TTL_MS) for s in stores]
        last, _ = results[-1]
        assert [r.spent_micros for r in last] == [20] * len(ids), "10 once + 5 from each instance"
        assert all(r.lease_micros == 100 for r in last)
        assert state(redis_cluster, "bidder-7")[f"s:{PERIOD}"] == "20"
    finally:
        for s in stores:
            await s.close()


def _per_bidder(store: RedisStore, ids: list[str]) -> list[LeaseRequest]:
    pending = store.take_pending()
    return [ask(b, 100, [w for w in pending if w.bidder_id == b]) for b in ids]


async def test_overspend_bound_is_the_leases_of_instances_that_died_unsynced(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The documented worst case during an outage (README, "The fleet overspend bound"): N instances cut
    off from Redis spend their whole lease, acknowledge the wins from their journals and die before a sync gets
    through; their leases lapse and a survivor spends everything that is left; then their journals are replayed.
    Overspend = the leases they held <= N x L_max."""
    budget, lease, ttl_ms = 100_000, 10_000, 300
    dead = [RedisStore.from_url(redis_server.url, tmp_path / f"dead{n}") for n in range(3)]
    survivor = RedisStore.from_url(redis_server.url, tmp_path / "survivor")
    for s in (*dead, survivor):
        await s.open()
    await survivor.put_bidder(record("b1", budget))
    held = []
    for n, s in enumerate(dead):
        held.append((await sync_one(s, ask("b1", lease), ttl_ms=ttl_ms)).lease_micros)
        s.reachable = False  # as after a failed write: this instance is cut off from Redis
        await s.record_wins([win(f"d{n}", held[-1])])  # spends it all; the 200 went out, then kill -9
        await s.close()
    assert held == [lease] * 3
    # Until the dead leases lapse on Redis's clock, the survivor can have only what nobody holds.
    first = await sync_one(survivor, ask("b1", budget))
    assert first.lease_micros == budget - sum(held)
    # Redis's clock passing every dead lease's expiry (they lapse one by one: on a loaded machine the first
    # non-zero answer may free only one of them): wait, with a deadline, until all of what they held is free.
    deadline = time.monotonic() + 20.0
    while (second := await sync_one(survivor, ask("b1", budget, [win("s0", first.lease_micros)]))).lease_micros < sum(
        held
    ):
        assert time.monotonic() < deadline, f"dead leases not lapsed: lease {second.lease_micros} of {sum(held)}"
        await asyncio.sleep(0.05)
    await sync_one(survivor, ask("b1", 0, [win("s1", second.lease_micros)]))
    await survivor.close()
    for n in range(3):  # the dead come back (or a sibling adopts their journals): their wins count, once
        back = RedisStore.from_url(redis_server.url, tmp_path / f"dead{n}")
        await back.open()
        await sync_one(back, ask("b1", 0, back.take_pending()))
        await back.close()
    spent = int(state(redis_server)[f"s:{PERIOD}"])
    assert spent - budget == sum(held) <= len(dead) * lease, "overspend is exactly the bound in its worst case"


async def test_with_redis_up_a_dead_instance_leaves_nothing_uncounted(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Issue 13: with Redis reachable a win is counted there before its 200, and spends the lease it was won under.
    An instance that dies (and never comes back) leaves nothing in a journal and nothing to overspend: the
    fleet's spend is the sum of the acknowledged wins at once, and what its lease still held returns at expiry."""
    budget, ttl_ms = 100_000, 300
    dead = RedisStore.from_url(redis_server.url, tmp_path / "dead")
    survivor = RedisStore.from_url(redis_server.url, tmp_path / "survivor")
    for s in (dead, survivor):
        await s.open()
    await survivor.put_bidder(record("b1", budget))
    assert (await sync_one(dead, ask("b1", 30_000), ttl_ms=ttl_ms)).lease_micros == 30_000
    assert await dead.record_wins([win("d0", 10_000), win("d1", 5_000)]) == [True, True]
    assert int(state(redis_server)[f"l:{dead.instance}"]) == 15_000, "the wins spent the lease they came under"
    assert dead.pending() == []
    await dead.close()  # kill -9: nothing of it is needed again
    first = await sync_one(survivor, ask("b1", budget))
    assert first.spent_micros == 15_000, "every acknowledged win is in the fleet's spend"
    assert first.lease_micros <= budget - 15_000 - 15_000, "the rest of the dead lease stays held until it lapses"
    assert live_leases(state(redis_server)) == first.lease_micros + 15_000
    deadline = time.monotonic() + 20.0
    while (second := await sync_one(survivor, ask("b1", budget))).lease_micros < budget - 15_000:
        assert time.monotonic() < deadline, f"the dead lease did not lapse: lease {second.lease_micros}"
        await asyncio.sleep(0.05)
    assert await survivor.record_wins([win("s0", second.lease_micros)]) == [True]
    h = state(redis_server)
    assert int(h[f"s:{PERIOD}"]) == budget, "all of it delivered, not a micro more"
    assert int(h[f"l:{survivor.instance}"]) == 0
    await survivor.close()


async def test_a_bidder_redis_lost_has_its_wins_kept_in_the_journal(
    open_store: Opener, redis_server: RedisServer
) -> None:
    """No state in Redis (lost data): the wins are not counted into nothing; they wait in the journal and ship
    once an operator restores the bidder."""
    s = await open_store()
    await s.put_bidder(record("b1", 1_000))
    redis_server.kill()
    redis_server.wipe()
    redis_server.start()
    assert await s.record_wins([win("x", 30)]) == [True]
    assert [w.auction_id for w in s.pending()] == ["x"] and state(redis_server) == {}
    version = await s.restore_bidder(record("b1", 1_000), PERIOD, 100)
    reply = await sync_one(s, ask("b1", 0, s.take_pending(), known=version))
    assert reply.spent_micros == 130


async def test_a_journal_that_cannot_write_is_seen_and_so_is_its_recovery(open_store: Opener) -> None:
    """Readiness reads `write_error`: the journal takes events, so a full journal disk must show, and the sync's
    probe write (probe_write) must clear it once writes work again, with no event needed."""
    import sqlite3

    store = await open_store("a")
    store.reachable = False  # the journal takes events only while Redis cannot be reached
    journal = store._journal_store()

    def deny(action: int, *_: object) -> int:
        writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
        return sqlite3.SQLITE_DENY if action in writes else sqlite3.SQLITE_OK

    await journal._on_thread(lambda: journal._db().set_authorizer(deny))
    with pytest.raises(StoreError):
        await store.record_wins([win("x", 100)])
    assert store.write_error is not None
    await journal._on_thread(lambda: journal._db().set_authorizer(None))
    await store.probe_write()
    assert store.write_error is None


async def test_a_live_instance_takes_over_a_dead_siblings_journal_at_its_next_sync(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Issue 13: a dead process's acknowledged wins reached Redis only when some process started on the same
    folder. Now every sync adopts the journals no live process holds (their flock is free once the holder dies)."""
    folder = tmp_path / "shared-journal"
    live, dead, busy = (RedisStore.from_url(redis_server.url, folder) for _ in range(3))
    for s in (live, dead, busy):
        await s.open()
    try:
        await live.put_bidder(record("b1", 10**9))
        dead.reachable = busy.reachable = False  # cut off from Redis: they acknowledge from their journals
        assert await dead.record_wins([win("x", 700), win("y", 300)]) == [True, True]
        assert await busy.record_wins([win("z", 50)]) == [True]
        await dead.close()  # as kill -9 leaves it: journaled, unshipped, its lock freed by the kernel
        assert await live.adopt_orphans() == 2, "the dead one's wins, not the live sibling's"
        reply = await sync_one(live, ask("b1", 0, live.take_pending()))
        assert reply.spent_micros == 1_000
        assert await live.adopt_orphans() == 0, "nothing twice"
        assert len(live._orphans) == 1, "the emptied journal is remembered, not reopened every sync"
        back = RedisStore.from_url(redis_server.url, folder)  # a process starting later finds nothing to ship
        await back.open()
        assert back.pending() == []
        await back.close()
    finally:
        for s in (live, busy):
            await s.close()
