"""Budget truth: where configuration and acknowledged spend live (SQLite embedded, Redis for fleets)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pacer.store.base import BidderRecord, ModelRecord, Store, StoreError, VersionConflict, WinRecord

if TYPE_CHECKING:
    from pacer.store.redis import RedisStore
    from pacer.store.sqlite import SqliteStore

__all__ = ["BidderRecord", "ModelRecord", "Store", "StoreError", "VersionConflict", "WinRecord", "open_store"]


def open_store(
    url: str, journal_dir: Path = Path("pacer-journal"), dedupe_s: float = 7 * 86400, instance: str | None = None
) -> SqliteStore | RedisStore:
    """Build the store a URL names: `sqlite:///path/to.db` (embedded) or `redis://host:port/db` (fleet; each
    instance keeps its journal in `journal_dir`); a win re-sent within `dedupe_s` is recognised."""
    if url.startswith("sqlite://"):
        from pacer.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("redis://", "rediss://")):
        from pacer.store.redis import RedisStore

        return RedisStore.from_url(url, journal_dir, dedupe_s, instance)
    raise StoreError(f"unsupported store URL {url!r}: expected sqlite:///path/to.db or redis://host:port/db")
