"""The Store contract suite: the promises of pacer/store/base.py, checked against any backend.

Not collected by itself (no test_ prefix). A backend's test module subclasses StoreContract as
`class TestXStore(StoreContract)` and provides:
- a `store_factory` fixture: an async callable opening a new store instance on the SAME backing storage each
  time it is called (so close + reopen, and two instances, can be tested), which closes every instance it made
  at teardown;
- `write_fault(store)`: an async context manager inside which every write of `store` fails inside the backend
  (after some of its statements ran, where it has several), and outside of which the store works again.
The store must also expose `commits`: how many write transactions (or round trips) it has made (group commit),
and `max_micros`: the largest price, and spend per bidder and period, it keeps exactly (past it a write fails).
Wins are recorded for configured bidders (`configured`): a fleet store keeps the wins of a bidder it has no
state for aside until an operator restores it (tests/unit/test_store_redis.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pacer.store.base import BidderRecord, Store, StoreError, WinRecord

StoreFactory = Callable[[], Awaitable[Store]]


NOW = time.time()


def win(auction_id: str, price: int, bidder_id: str = "b1", period: str = "2025-01-01", ts: float = NOW) -> WinRecord:
    return WinRecord(bidder_id, auction_id, price, period, ts)


def bidder(bidder_id: str, version: int = 1, **config: object) -> BidderRecord:
    """A bidder's config as the operator API writes it; `version` 1 creates it, n + 1 replaces version n."""
    body: dict[str, object] = {
        "budget_micros": 5_000_000,
        "period": {"type": "daily", "timezone": "UTC"},
        "paused": False,
        **config,
    }
    return BidderRecord(bidder_id, body, version, 1700000000.5)


async def configured(store: Store, *bidder_ids: str) -> None:
    for bidder_id in bidder_ids or ("b1", "b2"):
        await store.put_bidder(bidder(bidder_id))


async def check_models(a: Store, b: Store) -> None:
    """Two instances on one storage: a bad fit never replaces a good model; readers see only what changed."""
    model = {"format": "pacer.model/1", "bidder_id": "b1", "traffic_by_slot": [0.1 + 1e-17, 1 / 3]}
    seq1 = await a.publish_fits([("b1", model, {"ok": True}), ("b2", None, {"ok": False, "reason": "too little"})])
    first = await b.load_models(0)
    assert [(r.bidder_id, r.version, r.model, r.fit, r.seq) for r in first] == [
        ("b1", 1, model, {"ok": True}, seq1),
        ("b2", 0, None, {"ok": False, "reason": "too little"}, seq1),
    ]
    assert await b.load_models(seq1) == []
    seq2 = await a.publish_fits([("b1", None, {"ok": False, "reason": "NaN"})])
    assert seq2 > seq1
    [again] = await b.load_models(seq1)
    assert (again.version, again.model, again.fit) == (1, model, {"ok": False, "reason": "NaN"})  # good one kept
    newer = {**model, "traffic_by_slot": [0.5, 0.5]}
    await a.publish_fits([("b1", newer, {"ok": True})])
    [latest] = await b.load_models(seq2)
    assert (latest.version, latest.model) == (2, newer)
    with pytest.raises(StoreError):
        await a.publish_fits([("b3", {"x": float("nan")}, {"ok": True})])


async def check_lock(a: Store, b: Store) -> None:
    """One holder at a time; the holder renews; release lets the other in."""
    assert await a.try_lock("refit", "a", 60.0)
    assert not await b.try_lock("refit", "b", 60.0)
    assert await a.try_lock("refit", "a", 60.0)  # renewal
    await b.unlock("refit", "b")  # not the holder: no effect
    assert not await b.try_lock("refit", "b", 60.0)
    await a.unlock("refit", "a")
    assert await b.try_lock("refit", "b", 0.001)
    while not await a.try_lock("refit", "a", 60.0):  # b's lease expires (1 ms)
        await asyncio.sleep(0.01)


class StoreContract:
    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> Store:
        return await store_factory()

    @contextlib.asynccontextmanager
    async def write_fault(self, store: Store) -> AsyncIterator[None]:
        raise NotImplementedError("the backend's test class provides write_fault")
        yield

    # -- bidders --

    async def test_bidders_round_trip(self, store: Store) -> None:
        assert await store.load_bidders() == []
        a = bidder("a", 1, targeting={"geo": ["FR", "DE"], "floor": 0.25}, note="é ✓")
        b = bidder("b", 1)
        assert await store.put_bidder(a) == 1
        assert await store.put_bidder(b) == 1
        assert sorted(await store.load_bidders(), key=lambda r: r.bidder_id) == [a, b]
        assert await store.load_configs(["b", "nobody", "a"]) == [b, None, a]

    async def test_put_bidder_replaces(self, store: Store) -> None:
        await store.put_bidder(bidder("a", 1, budget_micros=1))
        new = bidder("a", 2, budget_micros=2, paused=True)
        assert await store.put_bidder(new) == 2
        assert await store.load_bidders() == [new]

    async def test_delete_bidder(self, store: Store) -> None:
        await store.put_bidder(bidder("a"))
        await store.put_bidder(bidder("b"))
        await store.delete_bidder("a")
        await store.delete_bidder("never-existed")
        assert [r.bidder_id for r in await store.load_bidders()] == ["b"]

    async def test_delete_bidder_keeps_spend(self, store: Store) -> None:
        await configured(store, "b1")
        await store.record_wins([win("x", 700)])
        await store.delete_bidder("b1")
        assert await store.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 700}

    # -- wins and spend --

    async def test_record_wins_empty(self, store: Store) -> None:
        assert await store.record_wins([]) == []

    async def test_duplicate_across_calls(self, store: Store) -> None:
        await configured(store)
        assert await store.record_wins([win("x", 100), win("y", 20)]) == [True, True]
        assert await store.record_wins([win("x", 100), win("z", 3)]) == [False, True]
        assert await store.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 123}

    async def test_duplicate_within_one_call_counts_first(self, store: Store) -> None:
        await configured(store)
        assert await store.record_wins([win("x", 100), win("x", 999, period="other"), win("y", 1)]) == [
            True,
            False,
            True,
        ]
        spend = await store.load_spend([("b1", "2025-01-01"), ("b1", "other")])
        assert spend == {("b1", "2025-01-01"): 101, ("b1", "other"): 0}

    async def test_same_auction_for_two_bidders_is_two_wins(self, store: Store) -> None:
        await configured(store)
        assert await store.record_wins([win("x", 5, "b1"), win("x", 7, "b2")]) == [True, True]
        spend = await store.load_spend([("b1", "2025-01-01"), ("b2", "2025-01-01")])
        assert spend == {("b1", "2025-01-01"): 5, ("b2", "2025-01-01"): 7}

    async def test_spend_per_period(self, store: Store) -> None:
        await configured(store)
        await store.record_wins([win("1", 10, period="d1"), win("2", 20, period="d2"), win("3", 30, "b1", "d1")])
        await store.record_wins([win("4", 1, "b2", period="d1")])
        keys = [("b1", "d1"), ("b1", "d2"), ("b2", "d1"), ("b2", "d2")]
        assert await store.load_spend(keys) == dict(zip(keys, [40, 20, 1, 0], strict=True))

    async def test_load_spend_missing_keys(self, store: Store) -> None:
        assert await store.load_spend([]) == {}
        assert await store.load_spend([("nobody", "d"), ("b1", "d")]) == {("nobody", "d"): 0, ("b1", "d"): 0}

    async def test_concurrent_overlapping_wins_counted_once(self, store: Store) -> None:
        await configured(store)

        def price(n: int) -> int:
            return 1_000 + n * 37

        calls = [[win(f"a{(i * k) % 150}", price((i * k) % 150)) for k in (1, 3, 7)] for i in range(200)]
        results = await asyncio.gather(*(store.record_wins(c) for c in calls))
        pairs = [pair for c, r in zip(calls, results, strict=True) for pair in zip(c, r, strict=True)]
        new_ids = [w.auction_id for w, new in pairs if new]
        unique = {w.auction_id: w.price_micros for c in calls for w in c}
        assert sorted(new_ids) == sorted(unique)  # each key new exactly once
        assert await store.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): sum(unique.values())}

    async def test_group_commit_batches_concurrent_writes(self, store: Store) -> None:
        await configured(store)
        before = store.commits  # type: ignore[attr-defined]
        results = await asyncio.gather(*(store.record_wins([win(f"a{i}", 1)]) for i in range(200)))
        assert results == [[True]] * 200
        assert store.commits - before < 100  # type: ignore[attr-defined]

    async def test_price_out_of_range_rejected(self, store: Store) -> None:
        await configured(store)
        for bad in (store.max_micros + 1, 2**63, -1):  # type: ignore[attr-defined]
            with pytest.raises(StoreError):
                await store.record_wins([win("x", bad)])
        assert await store.record_wins([win("x", 1)]) == [True]

    async def test_spend_overflow_fails_only_that_write(self, store: Store) -> None:
        await configured(store)
        most: int = store.max_micros  # type: ignore[attr-defined]
        assert await store.record_wins([win("x", most)]) == [True]
        overflow, other = await asyncio.gather(
            store.record_wins([win("y", 1)]), store.record_wins([win("z", 5, "b2")]), return_exceptions=True
        )
        assert isinstance(overflow, StoreError)
        assert other == [True]
        spend = await store.load_spend([("b1", "2025-01-01"), ("b2", "2025-01-01")])
        assert spend == {("b1", "2025-01-01"): most, ("b2", "2025-01-01"): 5}
        assert await store.record_wins([win("y", 1, period="next")]) == [True]  # y was not remembered

    # -- prune --

    async def test_prune_forgets_dedupe_keys_keeps_spend(self, store: Store) -> None:
        await configured(store)
        await store.record_wins([win("old", 100, ts=NOW - 200), win("new", 10, ts=NOW - 100)])
        assert await store.prune(NOW - 150) == 1
        assert await store.prune(NOW - 150) == 0
        assert await store.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 110}
        assert await store.record_wins([win("old", 100, ts=NOW - 200), win("new", 10, ts=NOW - 100)]) == [True, False]

    # -- models and locks --

    async def test_models_publish_and_load(self, store_factory: StoreFactory) -> None:
        await check_models(await store_factory(), await store_factory())

    async def test_lock_one_holder(self, store_factory: StoreFactory) -> None:
        await check_lock(await store_factory(), await store_factory())

    # -- durability and lifecycle --

    async def test_durable_across_reopen(self, store_factory: StoreFactory) -> None:
        first = await store_factory()
        await configured(first, "b1")
        await first.record_wins([win("x", 250), win("y", 50, period="d2")])
        await first.close()
        second = await store_factory()
        assert await second.load_bidders() == [bidder("b1")]
        spend = await second.load_spend([("b1", "2025-01-01"), ("b1", "d2")])
        assert spend == {("b1", "2025-01-01"): 250, ("b1", "d2"): 50}
        assert await second.record_wins([win("x", 250), win("w", 1)]) == [False, True]

    async def test_returned_write_is_committed(self, store_factory: StoreFactory) -> None:
        """Each awaited write is visible to another instance at once: nothing acknowledged is left pending."""
        writer, reader = await store_factory(), await store_factory()
        await configured(writer, "b1")
        for i in range(1, 6):
            await writer.record_wins([win(f"a{i}", 10)])
            assert await reader.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 10 * i}
            assert await reader.record_wins([win(f"a{i}", 10)]) == [False], "the other instance knows it too"

    async def test_close_drains_pending_writes(self, store_factory: StoreFactory) -> None:
        first = await store_factory()
        await configured(first, "b1")
        tasks = [asyncio.create_task(first.record_wins([win(f"a{i}", 2)])) for i in range(20)]
        await asyncio.sleep(0)  # let the tasks queue their writes (no timing involved)
        await first.close()
        assert [await t for t in tasks] == [[True]] * 20
        second = await store_factory()
        assert await second.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 40}

    async def test_probe_write(self, store: Store) -> None:
        await store.probe_write()
        assert store.write_error is None
        async with self.write_fault(store):
            with pytest.raises(StoreError):
                await store.probe_write()
            assert store.write_error is not None
        await store.probe_write()
        assert store.write_error is None

    async def test_ping_and_closed_store(self, store: Store) -> None:
        assert await store.ping() is True
        await store.close()
        await store.close()  # idempotent
        assert await store.ping() is False
        with pytest.raises(StoreError):
            await store.record_wins([win("x", 1)])

    async def test_failing_batch_commits_nothing_and_store_recovers(self, store: Store) -> None:
        await configured(store)
        await store.record_wins([win("before", 1)])
        async with self.write_fault(store):
            results = await asyncio.gather(
                store.record_wins([win("x", 100), win("y", 10)]),
                store.record_wins([win("z", 1000, "b2")]),
                store.put_bidder(bidder("a")),
                return_exceptions=True,
            )
            assert all(isinstance(r, StoreError) for r in results), results
        assert [r.bidder_id for r in await store.load_bidders()] == ["b1", "b2"]
        spend = await store.load_spend([("b1", "2025-01-01"), ("b2", "2025-01-01")])
        assert spend == {("b1", "2025-01-01"): 1, ("b2", "2025-01-01"): 0}
        assert await store.record_wins([win("x", 100), win("y", 10), win("before", 1)]) == [True, True, False]
        assert await store.load_spend([("b1", "2025-01-01")]) == {("b1", "2025-01-01"): 111}
