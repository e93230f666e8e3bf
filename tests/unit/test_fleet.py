"""Fleet against a real redis-server: what an instance may grant while its sync is in flight.

During a sync the instance has asked Redis for a lease of at least `floor` (its open reservations plus a small
in-flight allowance), so until the reply it must grant no more than that floor: whatever Redis answers then
covers every reservation it made meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pacer.bidder_config import BidderConfig, config_to_json
from pacer.clock import ManualClock
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.fleet import INFLIGHT_SHARE, Fleet
from pacer.periods import Flight
from pacer.service import load_bidders
from pacer.store.base import BidderRecord, WinRecord
from pacer.store.redis import RedisStore
from tests.redis_server import RedisServer

BUDGET = 10_000_000
BID = 1_000


async def _one_bidder_fleet(redis_server: RedisServer, folder: Path) -> tuple[Engine, Fleet, RedisStore]:
    clock = ManualClock(time.time())
    store = RedisStore.from_url(redis_server.url, folder)
    await store.open()
    config = BidderConfig(budget_micros=BUDGET, period=Flight(clock.now - 60, clock.now + 3600), pacing="asap")
    if not await store.load_bidders():
        await store.put_bidder(BidderRecord("b1", config_to_json(config), 1, clock.now))
    engine = Engine(clock, EngineParams(tick_s=0.1), TrafficCurve.flat(), leased=True)
    versions: dict[str, int] = {}
    await load_bidders(engine, store, await store.load_bidders(), versions)
    fleet = Fleet(engine, store, versions, sync_s=0.25, lease_ttl_s=5.0)
    engine.tick()
    await fleet.sync()
    return engine, fleet, store


async def test_grants_while_a_sync_is_in_flight_stay_within_the_floor_asked_for(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    engine, fleet, store = await _one_bidder_fleet(redis_server, tmp_path / "journal")
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    try:
        ledger = engine.bidders["b1"].ledger
        n = 0
        while engine.decide("b1", f"a{n}", BID)[0]:  # spend the first lease
            n += 1
        assert n > 0 and ledger.reserved > 0
        clock.advance(0.25)
        await fleet.sync()  # the demand seen: a bigger lease
        lease = ledger.limit - ledger.spent - ledger.reserved
        assert lease > BID

        task = asyncio.create_task(fleet.sync())
        # One turn of the loop: the task builds its requests (lowering the limit) and then waits on the socket,
        # whose reply can only be read in a later turn.
        await asyncio.sleep(0)
        assert not task.done()
        allowance = ledger.limit - ledger.spent - ledger.reserved
        assert 0 <= allowance < lease, "in flight, only the allowance may be granted"
        assert allowance <= INFLIGHT_SHARE * (lease + ledger.reserved) + BID
        granted = 0
        while True:
            micros, _ = engine.decide("b1", f"flight-{granted}", BID)
            if not micros:
                break
            granted += micros
        assert granted <= allowance
        floor = ledger.reserved
        await task
        # Redis's new lease covers every open reservation, those granted in flight included.
        assert ledger.limit - ledger.spent >= floor
        assert ledger.spent + ledger.reserved <= ledger.limit <= BUDGET
    finally:
        await store.close()


async def test_operator_writes_on_two_instances_never_undo_each_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 12: each instance read-modify-wrote the config it knew; a budget change on one instance undid a pause
    made on another since its last sync, and could resurrect a bidder deleted there. Redis now checks the version
    each write was based on; the loser re-reads the bidder and applies its change to what is current."""
    from dataclasses import replace

    import pytest

    from pacer.service import BidderNotFound, Service

    clock = ManualClock(time.time())
    services: list[Service] = []
    for name in ("a", "b"):
        store = RedisStore.from_url(redis_server.url, tmp_path / name)
        await store.open()
        engine = Engine(clock, EngineParams(tick_s=0.1), TrafficCurve.flat(), leased=True)
        services.append(Service(engine, store, 0.1, 0.25, 86400.0))
    a, b = services
    try:
        config = BidderConfig(budget_micros=BUDGET, period=Flight(clock.now - 60, clock.now + 3600), pacing="even")
        assert await a.update("b1", lambda _: config)
        await load_bidders(b.engine, b.store, await b.store.load_bidders(), b.versions)
        await a.update("b1", lambda old: replace(old, paused=True))  # b has not synced since
        await b.update("b1", lambda old: replace(old, budget_micros=2 * BUDGET))
        for service in (a, b):
            (stored,) = await service.store.load_configs(["b1"])
            assert stored is not None and stored.config["paused"] is True
            assert stored.config["budget_micros"] == 2 * BUDGET
        assert b.engine.bidders["b1"].config.paused, "b applied its change to the current config"
        await a.delete("b1")

        def patch(old: BidderConfig | None) -> BidderConfig:  # as PATCH does: the bidder must exist
            if old is None:
                raise BidderNotFound("b1")
            return replace(old, budget_micros=3 * BUDGET)

        assert "b1" in b.engine.bidders, "b runs b1 until its next sync"
        with pytest.raises(BidderNotFound):
            await b.update("b1", patch)
        assert await b.store.load_configs(["b1"]) == [None], "not resurrected"
        assert "b1" not in b.engine.bidders
    finally:
        for service in services:
            await service.store.close()


def _hold_after(store: RedisStore, script: str) -> tuple[asyncio.Event, asyncio.Event]:
    """From now on, each round trip of `script` runs at Redis, then sets the first event and waits for the second
    before its reply reaches the store: the two replies can be made to land in either order. `del
    store._run_script` ends it."""
    run = store._run_script
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(name: str, *args: object) -> list[object]:
        result = await run(name, *args)  # type: ignore[arg-type]
        if name == script:
            reached.set()
            await release.wait()
        return result

    store._run_script = held  # type: ignore[method-assign,assignment]
    return reached, release


async def _charge(engine: Engine, store: RedisStore, auction_id: str, price: int) -> None:
    """What POST /v1/events does with one win: count it in the store, then charge it if it was new."""
    period = engine.period_key("b1")
    [new] = await store.record_wins([WinRecord("b1", auction_id, price, period, time.time())])
    if new:
        engine.win("b1", auction_id, price)


async def test_a_win_counted_while_a_sync_is_in_flight_is_in_the_spend_once_in_either_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 13: wins are counted in Redis before their 200, so a sync's fleet spend may or may not hold a win whose
    answer the instance is still waiting for, or has just charged. Either way the ledger's spend must end up exactly
    Redis's: not twice (the sync read it, then the event charged it), not never (charged, then a sync read from
    before it overwrote the spend). The spend version tells which."""
    engine, fleet, store = await _one_bidder_fleet(redis_server, tmp_path / "a")
    other, _, other_store = await _one_bidder_fleet(redis_server, tmp_path / "b")
    ledger = engine.bidders["b1"].ledger
    try:
        await _charge(other, other_store, "elsewhere", 7)  # another instance's spend, learnt at the next sync

        # Order 1: Redis counts the win, the sync reads the spend with it, its reply is applied, and only then does
        # the event's answer come back and get charged.
        counted, release = _hold_after(store, "record")
        event = asyncio.create_task(_charge(engine, store, "w1", 1_000))
        await asyncio.wait_for(counted.wait(), 10.0)  # Redis has run the record script: the win is in its spend
        await fleet.sync()
        release.set()
        await event
        del store._run_script
        assert ledger.spent == 1_007, "the sync read the win, and the event charged it: once"

        # Order 2: the sync's script runs first; the event is counted and charged before the sync's reply lands.
        read, release = _hold_after(store, "sync")
        syncing = asyncio.create_task(fleet.sync())
        await asyncio.wait_for(read.wait(), 10.0)
        del store._run_script  # the event's round trip is not held
        await _charge(engine, store, "w2", 500)
        assert ledger.spent == 1_507
        release.set()
        await syncing
        assert ledger.spent == 1_507, "a fleet spend read before the win must not drop it"
        await fleet.sync()
        assert (
            ledger.spent
            == 1_507
            == (await store.load_spend([("b1", engine.period_key("b1"))]))[("b1", engine.period_key("b1"))]
        )
    finally:
        await store.close()
        await other_store.close()
