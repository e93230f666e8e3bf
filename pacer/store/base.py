"""The Store contract: what every backend promises. No backend code here.

Promises, checked by one contract test suite (tests/store_contract.py) run against SQLite and Redis:
- Durability: when an awaited write returns, it survives a crash (kill -9) of this process, and every other
  instance on the same store sees it (a fleet's spend is not "visible after the next sync").
- Idempotent wins: `record_wins` counts a (bidder_id, auction_id) once, across calls, concurrent calls, instances
  and restarts (within the dedupe window); it says which of the wins it was given were new.
- Atomicity: a win's dedupe key and its addition to (bidder_id, period_key) spend commit together or not
  at all.
- Writes from concurrent callers are batched (group commit): many awaiting callers, one transaction or round trip.
The hot path never calls a Store: the engine calls it from the event/sync paths only.

What only one kind of store does is not here: an embedded store's snapshot of open reservations (`Snapshots`
below; a fleet covers them with leases instead), and a fleet store's leases, journal and relay (fleet.py and
redis.py: the service reaches them through its Fleet only).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store could not do what was asked (unreachable, disk full, corrupt). Callers fail closed."""


class VersionConflict(Exception):
    """A shared store holds another version of the bidder than the writer knew (another instance wrote it, or
    deleted it): nothing was written. The writer re-reads the bidder and decides again."""


def instance_id() -> str:
    """This process's name in the fleet (leases, the refit lock, log file names): host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def to_json(doc: dict[str, object]) -> str:
    """Compact JSON for a store; NaN and non-JSON values are refused (StoreError), never written."""
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"not storable as JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class BidderRecord:
    """A bidder's configuration as the operator set it; `config` is the JSON body of PUT /v1/bidders/{id}
    plus `paused`. `version` grows by one on every change (instances compare it to pick up changes)."""

    bidder_id: str
    config: dict[str, object]
    version: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class WinRecord:
    """One acknowledged win: the money the exchange charged, attributed to the period it was spent in."""

    bidder_id: str
    auction_id: str
    price_micros: int
    period_key: str
    ts: float


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A bidder's spend-curve model as published by the refit: the current good model (version 0 and None
    until the first one) and the last fit attempt, good or rejected, with its reason. `seq` orders publications
    store-wide so an instance reads only what changed since it last looked."""

    bidder_id: str
    version: int
    model: dict[str, object] | None
    fit: dict[str, object]
    seq: int


class Store(Protocol):
    async def open(self) -> None:
        """Connect / create the schema. Raises StoreError if the store cannot be used."""

    async def close(self) -> None:
        """Flush pending writes and release resources."""

    async def ping(self) -> bool:
        """True if the store answers now (readiness)."""

    @property
    def write_error(self) -> str | None:
        """Why the last durable write failed (disk full, read-only, unreachable); None once one succeeds again.
        Readiness: a store that answers reads but cannot write must not take events."""

    async def load_bidders(self) -> list[BidderRecord]:
        """Every bidder currently configured (deleted ones excluded)."""

    async def load_configs(self, bidder_ids: list[str]) -> list[BidderRecord | None]:
        """Each bidder's current configuration (None where deleted or missing)."""

    async def put_bidder(self, record: BidderRecord) -> int:
        """Durably create or replace a bidder's configuration; `record.version - 1` is the version the caller
        knew (0: none, or deleted). Returns the version stored (a shared store assigns it fleet-wide). A shared
        store raises VersionConflict, writing nothing, when it holds another version."""

    async def put_bidders(self, records: list[BidderRecord]) -> list[int | VersionConflict | StoreError]:
        """put_bidder for many (bulk operator writes): per record the version stored, or why that one was not
        written. An embedded store writes them all in one transaction (all or none: it raises StoreError); a shared
        store writes each bidder atomically, in one round trip per chunk, and says which ones it did not."""

    async def delete_bidder(self, bidder_id: str, known_version: int | None = None) -> None:
        """Durably remove a bidder's configuration. Its recorded spend is kept: money spent stays spent. Given
        `known_version`, a shared store raises VersionConflict, deleting nothing, when it holds another."""

    async def record_wins(self, wins: list[WinRecord]) -> list[bool]:
        """Durably record wins; element i is True if wins[i] was new, False if its (bidder_id, auction_id)
        was recorded before (or earlier in the same list). Spend of new wins is added to
        (bidder_id, period_key) in the same transaction."""

    async def load_spend(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Recorded spend in micros for each (bidder_id, period_key); 0 where none."""

    async def probe_write(self) -> None:
        """A small durable write, every sync: a store that answers reads but cannot write (disk full) must show
        in `write_error` without waiting for the next event, and so must its recovery."""

    async def prune(self, before_ts: float) -> int:
        """Forget dedupe keys of wins older than before_ts (spend totals are kept). Returns rows removed."""

    async def publish_fits(self, fits: list[tuple[str, dict[str, object] | None, dict[str, object]]]) -> int:
        """Record refit outcomes: (bidder_id, model or None, fit status) each. A model (validated by the caller)
        replaces the bidder's current one with version + 1; None leaves the current model in place (a bad fit
        never replaces a good one) and only records the attempt. Returns the publication's seq."""

    async def load_models(self, after_seq: int) -> list[ModelRecord]:
        """Every bidder's model record published after `after_seq` (0: all), in seq order."""

    async def try_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease lock for `ttl_s`; False while someone else holds it (one refit at a time
        across the fleet; a holder that dies loses it at expiry)."""

    async def unlock(self, name: str, holder: str) -> None:
        """Release the lock if `holder` still holds it."""


class Snapshots(Protocol):
    """An instance alone on its store (embedded) keeps a snapshot of its open reservations."""

    async def save_reserved(self, reserved: dict[str, tuple[int, float]]) -> None:
        """Snapshot of each bidder's open reservations: (micros, epoch s until which they may still be won),
        replacing the previous one; written every sync. After a crash the engine holds that much back until
        then, so wins on auctions granted before the crash cannot overspend (bound: what was granted since the
        last snapshot)."""

    async def load_reserved(self) -> dict[str, tuple[int, float]]:
        """The last snapshot written by save_reserved."""
