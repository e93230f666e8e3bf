"""SqliteStore: the shared Store contract, plus what only the embedded store has (URLs, pragmas, kill -9)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pacer.store import StoreError, open_store
from pacer.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.store_contract import StoreContract, StoreFactory

REPO = Path(__file__).resolve().parents[2]


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store_factory(self, tmp_path: Path) -> AsyncIterator[StoreFactory]:
        opened: list[SqliteStore] = []

        async def make() -> SqliteStore:
            store = SqliteStore(str(tmp_path / "data" / "pacer.db"))
            await store.open()
            opened.append(store)
            return store

        yield make
        for store in opened:
            await store.close()

    @contextlib.asynccontextmanager
    async def write_fault(self, store: SqliteStore) -> AsyncIterator[None]:  # type: ignore[override]
        """Deny writes to every table but `wins`: a record_wins batch fails after its dedupe inserts ran."""

        def deny(action: int, table: str | None, *_: object) -> int:
            writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
            return sqlite3.SQLITE_DENY if action in writes and table != "wins" else sqlite3.SQLITE_OK

        await store._on_thread(lambda: store._db().set_authorizer(deny))
        try:
            yield
        finally:
            await store._on_thread(lambda: store._db().set_authorizer(None))


async def test_reserved_snapshot_replaces_and_survives_a_reopen(tmp_path: Path) -> None:
    """Snapshots (the embedded store's own protocol): each replaces the last, and the last survives a restart."""
    store = SqliteStore(str(tmp_path / "pacer.db"))
    await store.open()
    assert await store.load_reserved() == {}
    await store.save_reserved({"a": (10, 1.5), "b": (20, 2.0)})
    assert await store.load_reserved() == {"a": (10, 1.5), "b": (20, 2.0)}
    await store.save_reserved({"b": (5, 3.0), "c": (0, 3.0)})
    assert await store.load_reserved() == {"b": (5, 3.0), "c": (0, 3.0)}
    await store.save_reserved({"a": (77, 9.5)})
    await store.close()
    again = SqliteStore(str(tmp_path / "pacer.db"))
    await again.open()
    try:
        assert await again.load_reserved() == {"a": (77, 9.5)}
        await again.save_reserved({})
        assert await again.load_reserved() == {}
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("url", "path", "synchronous"),
    [
        ("sqlite:///./pacer.db", "./pacer.db", "FULL"),
        ("sqlite:///data/pacer.db", "data/pacer.db", "FULL"),
        ("sqlite:////tmp/x.db", "/tmp/x.db", "FULL"),
        ("sqlite:////tmp/x.db?synchronous=normal", "/tmp/x.db", "NORMAL"),
        ("sqlite:///my%20db.db?synchronous=EXTRA", "my db.db", "EXTRA"),
    ],
)
def test_from_url(url: str, path: str, synchronous: str) -> None:
    store = SqliteStore.from_url(url)
    assert (store.path, store.synchronous) == (path, synchronous)
    assert isinstance(open_store(url), SqliteStore)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?synchronous=OFF",
        "sqlite:///x.db?timeout=5",
        "sqlite:///x.db?synchronous=FULL&synchronous=NORMAL",
        "sqlite:///:memory:",
        "postgres:///x.db",
    ],
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(StoreError):
        SqliteStore.from_url(url)


async def test_pragmas_and_schema(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "new" / "dir" / "p.db"), synchronous="NORMAL")
    await store.open()
    try:
        thread, mode, sync, version = await store._on_thread(
            lambda: (
                threading.current_thread().name,
                *(store._db().execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")),
                store._db().execute("PRAGMA user_version").fetchone()[0],
            )
        )
        assert thread.startswith("pacer-sqlite")
        assert (mode, sync, version) == ("wal", 1, SCHEMA_VERSION)
    finally:
        await store.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    assert await store.ping() is False


CHILD = """
import asyncio, sys
from pacer.store.base import WinRecord
from pacer.store.sqlite import SqliteStore

def price(worker, i):
    return 1 + (worker * 100003 + i * 7919) % 997

async def main(path):
    store = SqliteStore(path)
    await store.open()

    async def worker(w):
        for i in range(1_000_000):
            await store.record_wins([WinRecord("b1", f"{w}-{i}", price(w, i), "p", 1.0)])
            print(f"{w}-{i}", flush=True)

    await asyncio.gather(*(worker(w) for w in range(4)))

asyncio.run(main(sys.argv[1]))
"""


async def test_kill_9_loses_no_acknowledged_win(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    acked: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, path],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        watchdog = threading.Timer(60, child.kill)  # only guards against a hung child; not synchronisation
        watchdog.start()
        try:
            assert child.stdout is not None
            while len(acked) < 400:
                line = child.stdout.readline()
                assert line, f"child died early: {child.communicate()[1]}"
                acked.append(line.strip())
            child.send_signal(signal.SIGKILL)
            child.wait()
            acked += child.stdout.read().split()  # lines already in the pipe were acknowledged too
        finally:
            watchdog.cancel()
    assert child.returncode == -signal.SIGKILL

    store = SqliteStore(path)
    await store.open()
    try:
        rows = await store._on_thread(
            lambda: store._db().execute("SELECT auction_id, price_micros FROM wins").fetchall()
        )
        committed = dict(rows)
        spend = await store.load_spend([("b1", "p")])
    finally:
        await store.close()
    assert set(acked) <= set(committed)  # every acknowledged win survived
    assert spend == {("b1", "p"): sum(committed.values())}  # and spend matches exactly what was committed
    for w in range(4):  # each worker awaited win i before sending i+1: at most one unacknowledged, committed
        mine = {a for a in committed if a.startswith(f"{w}-")}
        assert len(mine - set(acked)) <= 1


async def test_unusable_path_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = SqliteStore(str(tmp_path / "file" / "p.db"))
    with pytest.raises(StoreError):
        await store.open()
