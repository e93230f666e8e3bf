"""redis.py: the fleet store. Budget truth (config, deduplicated spend, leases) lives in Redis. Never called from
the bid hot path.

- Events: `record_wins` counts each (bidder_id, auction_id) once fleet-wide in Redis before it returns (one
  pipelined round trip for all the wins that concurrent callers brought meanwhile: group commit). Only while Redis
  cannot be reached (or has lost a bidder) are wins queued in the instance's local journal instead, durable there
  before the 200, and `sync` ships them once it can.
- Leases: `sync` is one pipelined round trip per Redis node, one Lua call per group of bidders that share a hash
  slot (every key of a bidder carries its id as hash tag, so this runs on Redis Cluster as on one Redis). So is
  `record_wins`.
- Operator writes (put, delete, restore) go to Redis directly and fail with StoreError when it is down.

Keys (prefix `pacer` by default): `<p>:{<bidder_id>}:b` state hash, `<p>:{<bidder_id>}:w` win dedupe set,
`<p>:{registry}` bidder_id -> version (discovery), `<p>:{registry}:seq` bumped on every operator write,
`<p>:{models}` refit models (v:/m:/f:<bidder_id>), `<p>:{models}:seq` bidder_id by publication seq,
`<p>:{models}:n` the seq counter, `<p>:{lock}:<name>` lease locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from pacer.store import journal
from pacer.store.base import BidderRecord, ModelRecord, StoreError, VersionConflict, WinRecord, instance_id, to_json
from pacer.store.sqlite import SqliteStore

T = TypeVar("T")
TIMEOUT_S = 1.0  # a Redis that does not answer within this is treated as down: sync fails, bids go on
MAX_PRICE = 2**53  # Lua numbers are doubles: exact integers up to here (prices, and spend: MAX_SPEND in record.lua)
GROUP = 500  # bidders per Lua call on a plain Redis: one call blocks Redis ~5 ms at most
PUBLISH_GROUP = 100  # models per publish call (each ~10 KB of JSON)
BULK_GROUP = 1000  # operator writes per pipelined round trip of a bulk PUT


class BidderLost(StoreError):
    """Redis has no state for a bidder this instance knows: its data was lost. Only an operator's restore
    (stating the spend) brings it back; re-creating it would restart its spend from zero."""


@dataclass(slots=True)
class LeaseRequest:
    """One bidder's part of a sync: what this instance knows, wants, and has won since the last sync."""

    bidder_id: str
    known_version: int
    period_key: str
    want_micros: int
    hold_ms: int  # how long after the lease's TTL reservations granted under it may still be won
    wins: list[WinRecord] = field(default_factory=list)
    floor_micros: int = 0  # open reservations: granted to the market, so the lease never shrinks below them
    check: list[str] = field(default_factory=list)  # auctions won at other instances: counted in Redis yet?


@dataclass(frozen=True, slots=True)
class LeaseReply:
    status: str  # "ok", "deleted" or "lost"
    version: int
    incarnation: int
    spent_micros: int  # fleet spend in the requested period, this sync's wins included
    lease_micros: int  # what this instance may spend beyond spent_micros until the next sync
    fleet_leased_micros: int
    config: dict[str, object] | None  # set when the version differs from the one the instance knows
    duplicates: list[int]  # indexes into the request's wins that Redis had counted before
    counted: list[int]  # indexes into the request's `check` whose wins Redis has counted
    spend_version: int  # of spent_micros: see Counted


@dataclass(frozen=True, slots=True)
class Counted:
    """New wins Redis counted for one bidder in one `record_wins` call: their micros per period, and the bidder's
    spend version after them. A sync's fleet spend with a version at least this one already holds them."""

    bidder_id: str
    micros_by_period: dict[str, int]
    spend_version: int


CountedHook = Callable[[list[Counted]], None]


@dataclass(slots=True)
class _Recorded:
    """One caller's part of a record round trip: per win True (new), False (counted before) or None (for the
    journal: Redis could not take it); the wins for the journal; what Redis counted."""

    new: list[bool | None]
    queued: list[WinRecord]
    counted: list[Counted]


class _Results:
    """What one record round trip did to each of its wins, split up per caller by `part`."""

    def __init__(self, wins: list[WinRecord]) -> None:
        self.wins = wins
        self.new: list[bool | None] = [None] * len(wins)
        self.version: dict[str, int] = {}
        self.failed: set[int] = set()  # refused by Redis: the callers with any of these get an error

    def counted_by(self, bidder_id: str, indexes: list[int], duplicates: set[int], version: int) -> None:
        for k, i in enumerate(indexes):
            self.new[i] = k not in duplicates
        self.version[bidder_id] = version

    def part(self, lo: int, hi: int) -> _Recorded:
        if any(lo <= i < hi for i in self.failed):
            raise StoreError(f"spend would pass {MAX_PRICE} micros, past which Redis's scripts are not exact")
        micros: dict[str, dict[str, int]] = {}
        for w, fresh in zip(self.wins[lo:hi], self.new[lo:hi], strict=True):
            if fresh:
                periods = micros.setdefault(w.bidder_id, {})
                periods[w.period_key] = periods.get(w.period_key, 0) + w.price_micros
        queued = [w for w, fresh in zip(self.wins[lo:hi], self.new[lo:hi], strict=True) if fresh is None]
        return _Recorded(self.new[lo:hi], queued, [Counted(b, m, self.version[b]) for b, m in micros.items()])


def _script(name: str) -> str:
    return resources.files("pacer.store").joinpath(f"lua/{name}.lua").read_text()


class RedisStore:
    """Store on Redis (or Redis Cluster, detected) plus a local journal folder."""

    def __init__(
        self,
        url: str,
        journal_dir: Path,
        prefix: str = "pacer",
        dedupe_s: float = 7 * 86400,
        instance: str | None = None,
    ) -> None:
        self.url = url
        self.journal_dir = journal_dir
        self.prefix = prefix
        self.dedupe_ms = int(dedupe_s * 1000)
        # Called with what each record_wins counted, just before it returns: nothing else runs in between, so the
        # fleet's books and the caller's charge of those wins change together (fleet.py).
        self.on_counted: CountedHook | None = None
        self.reachable = True  # False from a failed write to Redis until a sync succeeds: events go to the journal
        self.instance = instance or instance_id()  # names this instance's leases in Redis
        self.cluster = False
        self.max_micros = MAX_PRICE  # the largest price, and spend per bidder and period, kept exactly
        self.commits = 0  # record round trips and journal transactions (the contract suite reads it)
        self._redis: Any = None
        self._journal: SqliteStore | None = None
        self._claim: journal.Claim | None = None
        self._orphans: dict[Path, int] = {}  # journals of dead processes found with nothing to ship
        self._pending: list[WinRecord] = []  # journaled, not yet counted by Redis
        self._batch: list[tuple[list[WinRecord], asyncio.Future[_Recorded]]] = []  # waiting for the next round trip
        self._flusher: asyncio.Task[None] | None = None
        scripts = ("sync", "record", "put", "delete", "restore", "publish", "lock", "unlock")
        self._sources = {name: _script(name) for name in scripts}
        self._sha: dict[str, str] = {}

    @classmethod
    def from_url(
        cls, url: str, journal_dir: Path, dedupe_s: float = 7 * 86400, instance: str | None = None
    ) -> RedisStore:
        """`redis://[user:pass@]host:port/db[?prefix=pacer]` (or rediss://); other query options go to redis-py."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", "pacer")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise StoreError(f"bad redis URL {url!r}: expected redis://host:port/db")
        return cls(urlunsplit(parts._replace(query=urlencode(query))), journal_dir, prefix, dedupe_s, instance)

    # --- keys -------------------------------------------------------------------------------------------------

    def _state(self, bidder_id: str) -> str:
        return f"{self.prefix}:{{{bidder_id}}}:b"

    def _wins(self, bidder_id: str) -> str:
        return f"{self.prefix}:{{{bidder_id}}}:w"

    @property
    def _registry(self) -> str:
        return f"{self.prefix}:{{registry}}"

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            return
        # One retry: a pooled connection goes stale when Redis restarts. Every script and pipeline is safe to
        # run twice. (The asyncio Retry: redis-py's sync one, given to an asyncio client, silently never retries.)
        options: dict[str, Any] = {
            "socket_timeout": TIMEOUT_S,
            "socket_connect_timeout": TIMEOUT_S,
            "retry": Retry(NoBackoff(), 1),
        }
        probe = aioredis.Redis.from_url(self.url, **options)
        try:
            info = await self._call(probe.info("cluster"))
        finally:
            await probe.aclose()
        self.cluster = bool(info.get("cluster_enabled"))
        if self.cluster:
            self._redis = RedisCluster.from_url(
                self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 1)
            )
            await self._call(self._redis.initialize())
        else:
            self._redis = aioredis.Redis.from_url(self.url, **options)
        await self._load_scripts()
        self._claim = journal.claim(self.journal_dir)
        self._journal = SqliteStore(str(self._claim.path))
        await self._journal.open()
        await journal.adopt_orphans(self.journal_dir, self._journal, self._claim, self._orphans)
        self._pending = await self._journal.load_outbox()

    async def close(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)  # callers waiting on a round trip get their answer first
        if self._journal is not None:
            await self._journal.close()
            self._journal = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
            self._redis = None

    @property
    def write_error(self) -> str | None:
        """Events are made durable in the local journal (Redis's side shows in the fleet's sync age)."""
        return self._journal.write_error if self._journal is not None else None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client().ping()))
        except StoreError:
            return False

    # --- config -----------------------------------------------------------------------------------------------

    async def load_bidders(self) -> list[BidderRecord]:
        return [r for r in await self.load_configs(await self.bidder_ids()) if r is not None]

    async def bidder_ids(self) -> list[str]:
        """Every configured bidder's id, from the registry (ids only: discovery reads the configs of new ones)."""
        return sorted(k.decode() for k in await self._call(self._client().hkeys(self._registry)))

    async def load_configs(self, bidder_ids: list[str]) -> list[BidderRecord | None]:
        """Each bidder's configuration (None where deleted or missing), one pipelined round trip."""
        rows = await self._pipelined(
            lambda pipe: [pipe.hmget(self._state(b), "cfg", "ver", "del", "upd") for b in bidder_ids]
        )
        out: list[BidderRecord | None] = []
        for bidder_id, (cfg, ver, deleted, updated) in zip(bidder_ids, rows, strict=True):
            if cfg is None or ver is None or deleted == b"1":
                out.append(None)
            else:
                out.append(BidderRecord(bidder_id, json.loads(cfg), int(ver), float(updated or 0)))
        return out

    async def put_bidder(self, record: BidderRecord) -> int:
        """Write the config; `record.version - 1` is the version the caller knows (0: none). Returns the version
        Redis assigned. Raises BidderLost when the caller knows the bidder but Redis lost it."""
        [result] = await self.put_bidders([record])
        if isinstance(result, VersionConflict | StoreError):
            raise result
        return result

    async def put_bidders(self, records: list[BidderRecord]) -> list[int | VersionConflict | StoreError]:
        """put.lua per bidder (each atomic with its version check), BULK_GROUP at a time in one pipelined round
        trip, then one announcement of them all. BidderLost where the caller knows a bidder Redis lost."""
        out: list[int | VersionConflict | StoreError] = []
        for lo in range(0, len(records), BULK_GROUP):
            part = records[lo : lo + BULK_GROUP]
            calls = []
            for record in part:
                config = to_json(record.config)
                budget, paused = record.config["budget_micros"], "1" if record.config.get("paused") else "0"
                calls.append(
                    (
                        [0],
                        [self._state(record.bidder_id)],
                        [config, budget, paused, record.version - 1, repr(record.updated_at)],
                    )
                )
            replies = await self._run_script("put", calls)
            written: dict[str, int | None] = {}
            for record, reply in zip(part, replies, strict=True):
                if isinstance(reply, Exception):
                    raise StoreError(f"redis: put of bidder {record.bidder_id!r}: {reply}")
                if reply[0] == b"lost":
                    out.append(BidderLost(f"Redis has no state for bidder {record.bidder_id!r}: its data was lost"))
                elif reply[0] == b"conflict":
                    out.append(VersionConflict(f"bidder {record.bidder_id!r} is at version {reply[1]} in Redis"))
                else:
                    written[record.bidder_id] = int(reply[1])
                    out.append(int(reply[1]))
            await self._announce(written)
        return out

    async def delete_bidder(self, bidder_id: str, known_version: int | None = None) -> None:
        reply = await self._eval("delete", [self._state(bidder_id)], [] if known_version is None else [known_version])
        if reply[0] == b"conflict":
            raise VersionConflict(f"bidder {bidder_id!r} is at version {reply[1]} in Redis")
        await self._announce({bidder_id: None})

    async def restore_bidder(self, record: BidderRecord, period_key: str, spent_micros: int) -> int:
        """Bring back a lost bidder with the spend an operator states for its current period. Returns the version."""
        config = to_json(record.config)
        budget, paused = record.config["budget_micros"], "1" if record.config.get("paused") else "0"
        reply = await self._eval(
            "restore", [self._state(record.bidder_id)], [config, budget, paused, period_key, spent_micros]
        )
        await self._announce({record.bidder_id: int(reply[0])})
        return int(reply[0])

    async def _announce(self, versions: dict[str, int | None]) -> None:
        """Tell the fleet these bidders changed (None: deleted): discovery of new and deleted bidders."""
        if not versions:
            return

        def fill(pipe: Any) -> None:
            gone = [b for b, v in versions.items() if v is None]
            if gone:
                pipe.hdel(self._registry, *gone)
            live = {b: v for b, v in versions.items() if v is not None}
            if live:
                pipe.hset(self._registry, mapping=live)
            pipe.incr(f"{self._registry}:seq")

        await self._pipelined(fill, transaction=not self.cluster)

    # --- spend --------------------------------------------------------------------------------------------------

    async def record_wins(self, wins: list[WinRecord]) -> list[bool]:
        """Count the wins in Redis (see the module docstring); True for each win Redis had not counted before. While
        Redis cannot be reached the wins go to the journal's outbox, and True means "queued" (Redis decides at the
        sync). Raises StoreError, having made nothing durable, when neither can take them."""
        for w in wins:
            if not 0 <= w.price_micros <= MAX_PRICE:
                raise StoreError(f"price_micros must be an int in [0, {MAX_PRICE}], got {w.price_micros!r}")
        if not wins:
            return []
        if not self.reachable:
            return await self._queue(wins)
        future: asyncio.Future[_Recorded] = asyncio.get_running_loop().create_future()
        self._batch.append((wins, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        recorded = await asyncio.shield(future)  # a caller that goes away must not cancel the others' round trip
        if recorded.queued:
            queued = iter(await self._queue(recorded.queued))
            new = [next(queued) if fresh is None else fresh for fresh in recorded.new]
        else:
            new = [bool(fresh) for fresh in recorded.new]
        if recorded.counted and self.on_counted is not None:
            self.on_counted(recorded.counted)
        return new

    async def _flush(self) -> None:
        """Round trips until no caller waits: each takes every batch queued meanwhile (group commit)."""
        while self._batch:
            batches, self._batch = self._batch, []
            try:
                results = await self._record([w for wins, _ in batches for w in wins])
            except BaseException as exc:  # a bug, or the loop shutting down: every waiting caller is told
                for _, future in batches:
                    if not future.done():
                        future.cancel() if isinstance(exc, asyncio.CancelledError) else future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            lo = 0
            for wins, future in batches:
                if not future.done():
                    try:
                        future.set_result(results.part(lo, lo + len(wins)))
                    except StoreError as exc:
                        future.set_exception(exc)
                lo += len(wins)

    async def _record(self, wins: list[WinRecord]) -> _Results:
        """One pipelined round trip of record.lua calls. Wins Redis could not take (unreachable, or a bidder it
        lost) come back marked for the journal."""
        by_bidder: dict[str, list[int]] = {}
        for i, w in enumerate(wins):
            by_bidder.setdefault(w.bidder_id, []).append(i)
        bidder_ids = list(by_bidder)
        calls = []
        for members in self._groups(bidder_ids):
            keys: list[str] = []
            for j in members:
                keys += [self._state(bidder_ids[j]), self._wins(bidder_ids[j])]
            packed = [[_packed_win(wins[i]) for i in by_bidder[bidder_ids[j]]] for j in members]
            calls.append((members, keys, [self.instance, self.dedupe_ms, _pack(packed)]))
        results = _Results(wins)
        try:
            replies = await self._run_script("record", calls)
        except StoreError:
            self.reachable = False  # until a sync gets through: no event waits on a Redis that does not answer
            return results
        self.commits += 1
        for (members, _, _), group in zip(calls, replies, strict=True):
            if isinstance(group, Exception):
                continue  # this group's wins go to the journal; the sync says what is wrong
            for j, (status, version, dups) in zip(members, _unpack(group), strict=True):
                if status == "ok":
                    results.counted_by(
                        bidder_ids[j], by_bidder[bidder_ids[j]], {int(d) - 1 for d in dups}, int(version)
                    )
                elif status == "overflow":
                    results.failed.update(by_bidder[bidder_ids[j]])
        return results

    async def _queue(self, wins: list[WinRecord]) -> list[bool]:
        """Into the journal's outbox (durable), shipped by the next sync that reaches Redis."""
        fresh = await self._journal_store().queue_wins(wins)
        self._pending.extend(w for w, new in zip(wins, fresh, strict=True) if new)
        self.commits += 1
        return fresh

    async def load_spend(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        values = await self._pipelined(lambda pipe: [pipe.hget(self._state(b), f"s:{period}") for b, period in keys])
        return {key: int(v or 0) for key, v in zip(keys, values, strict=True)}

    async def probe_write(self) -> None:
        """The journal takes the write: it takes events while Redis cannot be reached, so its disk must be seen to
        fill up, and to work again, before it is needed (Redis's side shows in the fleet's sync age)."""
        await self._journal_store().probe_write()

    async def prune(self, before_ts: float) -> int:
        """Forget the dedupe keys of every configured bidder's wins acknowledged before `before_ts` (the scripts
        also forget a bidder's old keys whenever it wins). Hourly, pipelined GROUP bidders at a time."""
        registry = await self._call(self._client().hkeys(self._registry))
        ids = sorted(k.decode() for k in registry)
        cutoff = f"({int(before_ts * 1000)}"
        removed = 0
        for lo in range(0, len(ids), GROUP):
            part = ids[lo : lo + GROUP]

            def fill(pipe: Any, part: list[str] = part) -> None:
                for bidder_id in part:
                    pipe.zremrangebyscore(self._wins(bidder_id), "-inf", cutoff)

            removed += sum(int(n) for n in await self._pipelined(fill))
        return removed

    # --- sync ---------------------------------------------------------------------------------------------------

    async def adopt_orphans(self) -> int:
        """Take over the unshipped wins of dead processes' journals in this folder (a `--workers` sibling that
        died, a process that will not come back): they ship with this sync. Returns how many were taken."""
        if self._claim is None:
            raise StoreError("redis store is not open")
        try:
            wins = await journal.adopt_orphans(self.journal_dir, self._journal_store(), self._claim, self._orphans)
        except OSError as exc:
            raise StoreError(f"journal folder {self.journal_dir}: {exc}") from exc
        self._pending += wins
        return len(wins)

    def take_pending(self) -> list[WinRecord]:
        """The journaled wins Redis has not counted yet; give them back with `untake` if the sync fails."""
        pending, self._pending = self._pending, []
        return pending

    def pending(self) -> list[WinRecord]:
        return self._pending

    def untake(self, wins: list[WinRecord]) -> None:
        self._pending[:0] = wins

    async def shipped(self, wins: list[WinRecord]) -> None:
        """Redis has counted these (or had before): drop them from the journal's outbox."""
        if wins:
            await self._journal_store().drop_outbox(wins)

    async def sync(self, requests: list[LeaseRequest], lease_ttl_ms: int) -> tuple[list[LeaseReply], int]:
        """Ship wins, settle and renew leases for every bidder, and read the registry's change counter: one
        pipelined round trip (per node on a cluster). Returns a reply per request, in order, and the counter."""
        calls = []
        for members in self._groups([r.bidder_id for r in requests]):
            keys: list[str] = []
            packed = []
            for i in members:
                r = requests[i]
                keys += [self._state(r.bidder_id), self._wins(r.bidder_id)]
                packed.append(
                    (
                        r.known_version,
                        r.period_key,
                        r.want_micros,
                        r.floor_micros,
                        r.hold_ms,
                        [_packed_win(w) for w in r.wins],
                        r.check,
                    )
                )
            calls.append((members, keys, [self.instance, lease_ttl_ms, self.dedupe_ms, _pack(packed)]))
        results = await self._run_script("sync", calls, f"{self._registry}:seq")
        for r in results:
            if isinstance(r, Exception):
                raise StoreError(f"redis sync: {r}")
        self.reachable = True
        replies: dict[int, LeaseReply] = {}
        for n, ((members, _, _), group) in enumerate(zip(calls, results[:-1], strict=True)):
            if n:
                await asyncio.sleep(0)  # bids go on between groups (10,000 replies take ~20 ms to read)
            for i, raw in zip(members, _unpack(group), strict=True):
                replies[i] = _reply(raw)
        return [replies[i] for i in range(len(requests))], int(results[-1] or 0)

    # --- models and the refit lock --------------------------------------------------------------------------------

    @property
    def _models(self) -> str:
        return f"{self.prefix}:{{models}}"

    async def publish_fits(self, fits: list[tuple[str, dict[str, object] | None, dict[str, object]]]) -> int:
        seq = 0
        for lo in range(0, len(fits), PUBLISH_GROUP):
            args: list[object] = []
            for bidder_id, model, fit in fits[lo : lo + PUBLISH_GROUP]:
                args += [bidder_id, to_json(model) if model is not None else "", to_json(fit)]
            keys = [self._models, f"{self._models}:seq", f"{self._models}:n"]
            seq = int(await self._eval("publish", keys, args))
        return seq

    async def load_models(self, after_seq: int) -> list[ModelRecord]:
        client = self._client()
        changed = await self._call(
            client.zrangebyscore(f"{self._models}:seq", f"({after_seq}", "+inf", withscores=True)
        )
        if not changed:
            return []
        ids = [member.decode() for member, _ in changed]
        fields = [f"{kind}:{bidder_id}" for bidder_id in ids for kind in "vmf"]
        values = await self._call(client.hmget(self._models, fields))
        out = []
        for i, (bidder_id, (_, seq)) in enumerate(zip(ids, changed, strict=True)):
            version, model, fit = values[3 * i : 3 * i + 3]
            out.append(
                ModelRecord(
                    bidder_id,
                    int(version or 0),
                    json.loads(model) if model else None,
                    json.loads(fit) if fit else {},
                    int(seq),
                )
            )
        return out

    async def try_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        return bool(await self._eval("lock", [f"{self.prefix}:{{lock}}:{name}"], [holder, int(ttl_s * 1000)]))

    async def unlock(self, name: str, holder: str) -> None:
        await self._eval("unlock", [f"{self.prefix}:{{lock}}:{name}"], [holder])

    # --- notices relayed between instances -----------------------------------------------------------------------

    @property
    def _channel(self) -> str:
        return f"{self.prefix}:settled"

    async def publish_settled(self, notices: list[tuple[str, str, bool]]) -> None:
        """Tell the other instances which auctions' notices reached this one (best effort: a lost message only
        means a reservation elsewhere waits for its expiry)."""
        await self._call(self._client().publish(self._channel, json.dumps([self.instance, notices])))

    async def settled(self) -> AsyncIterator[list[tuple[str, str, bool]]]:
        """Notices the other instances relay, as they arrive. Raises StoreError when the connection drops."""
        pubsub = self._client().pubsub()
        try:
            await self._call(pubsub.subscribe(self._channel))
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except (RedisError, OSError) as exc:
                    raise StoreError(f"redis: {exc}") from exc
                if message is None:
                    continue
                sender, notices = json.loads(message["data"])
                if sender != self.instance:  # [bidder, auction, won]
                    yield [(n[0], n[1], bool(n[2])) for n in notices]
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    # --- machinery ----------------------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._redis is None:
            raise StoreError("redis store is not open")
        return self._redis

    def _journal_store(self) -> SqliteStore:
        if self._journal is None:
            raise StoreError("redis store is not open")
        return self._journal

    def _groups(self, bidder_ids: list[str]) -> list[list[int]]:
        """Indexes of `bidder_ids` per Lua call: the bidders of one hash slot on a cluster, GROUP at a time on one
        Redis."""
        groups: dict[int, list[int]] = {}
        for i, bidder_id in enumerate(bidder_ids):
            slot = key_slot(self._state(bidder_id).encode()) if self.cluster else i // GROUP
            groups.setdefault(slot, []).append(i)
        return list(groups.values())

    async def _run_script(
        self, name: str, calls: list[tuple[list[int], list[str], list[object]]], then_get: str | None = None
    ) -> list[Any]:
        """One pipelined round trip of `name` calls (and a GET of `then_get` last): each call's reply, or its
        error. Scripts flushed by a Redis restart are loaded again and the round trip repeated (every script is
        safe to run twice: wins counted by the first attempt come back as duplicates)."""

        def fill(pipe: Any) -> None:
            for _, keys, args in calls:
                pipe.execute_command("EVALSHA", self._sha[name], len(keys), *keys, *args)
            if then_get is not None:
                pipe.get(then_get)

        results = await self._pipelined(fill, raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in results):
            await self._load_scripts()
            results = await self._pipelined(fill, raise_on_error=False)
        return results

    async def _load_scripts(self) -> None:
        for name, source in self._sources.items():
            self._sha[name] = str(await self._call(self._client().script_load(source)))

    async def _eval(self, name: str, keys: list[str], args: list[object]) -> Any:
        for attempt in range(2):
            try:
                return await self._call(self._client().evalsha(self._sha[name], len(keys), *keys, *args))
            except StoreError as exc:
                if attempt or not isinstance(exc.__cause__, NoScriptError):
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    async def _pipelined(
        self, fill: Callable[[Any], object], transaction: bool = False, raise_on_error: bool = True
    ) -> list[Any]:
        """One pipelined round trip; redis-py retries it once on a stale pooled connection (Redis restarted)."""
        async with self._client().pipeline(transaction=transaction) as pipe:
            fill(pipe)
            return list(await self._call(pipe.execute(raise_on_error=raise_on_error)))

    @staticmethod
    async def _call(awaitable: Awaitable[T]) -> T:
        """Redis errors (down, timeout, OOM, script error) become StoreError; callers fail closed on it."""
        try:
            return await asyncio.wait_for(awaitable, 4 * TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {exc or type(exc).__name__}") from exc


_pack = msgspec.msgpack.Encoder().encode


def _packed_win(w: WinRecord) -> tuple[str, int, str, int]:
    """A win as record.lua and sync.lua take it; its dedupe key is scored by when it was acknowledged."""
    return w.auction_id, w.price_micros, w.period_key, int(w.ts * 1000)


_unpack = msgspec.msgpack.Decoder(list[list[Any]]).decode


def _reply(raw: list[Any]) -> LeaseReply:
    status, config_version, incarnation, spent, lease, fleet, cfg, dups, counted, version = raw
    return LeaseReply(
        status=status,
        version=int(config_version),
        incarnation=int(incarnation),
        spent_micros=int(spent),
        lease_micros=int(lease),
        fleet_leased_micros=int(fleet),
        config=json.loads(cfg) if cfg else None,
        duplicates=[int(d) - 1 for d in dups],
        counted=[int(c) - 1 for c in counted],
        spend_version=int(version),
    )
