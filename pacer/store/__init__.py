"""Budget truth: where configuration and acknowledged spend live (SQLite embedded, Redis for fleets)."""

from pacer.store.base import BidderRecord, Store, StoreError, WinRecord

__all__ = ["BidderRecord", "Store", "StoreError", "WinRecord", "open_store"]


def open_store(url: str) -> Store:
    """Build the store a URL names: `sqlite:///path/to.db` (embedded) or `redis://host:port/db` (fleet)."""
    if url.startswith("sqlite://"):
        from pacer.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    raise StoreError(f"unsupported store URL {url!r}: expected sqlite:///path/to.db")
