"""sqlite.py: the embedded store (one file, WAL, group commit on one writer thread), never called from the bid
hot path: the engine awaits it from the event and sync paths only, and the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pacer.store.base import BidderRecord, ModelRecord, StoreError, VersionConflict, WinRecord, to_json

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION = 4  # 4: the heartbeat table (every snapshot writes it: readiness sees a disk that fills up)
INT64_MAX = 2**63 - 1
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")  # OFF is refused: a power cut could corrupt the file
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bidders (
    bidder_id TEXT PRIMARY KEY, config TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS wins (
    bidder_id TEXT NOT NULL, auction_id TEXT NOT NULL, price_micros INTEGER NOT NULL,
    period_key TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (bidder_id, auction_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wins_ts ON wins (ts);
CREATE TABLE IF NOT EXISTS spend (
    bidder_id TEXT NOT NULL, period_key TEXT NOT NULL,
    spent_micros INTEGER NOT NULL CHECK (typeof(spent_micros) = 'integer'),
    PRIMARY KEY (bidder_id, period_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reserved (
    bidder_id TEXT PRIMARY KEY, reserved_micros INTEGER NOT NULL, hold_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    bidder_id TEXT NOT NULL, auction_id TEXT NOT NULL, price_micros INTEGER NOT NULL,
    period_key TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (bidder_id, auction_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS models (
    bidder_id TEXT PRIMARY KEY, version INTEGER NOT NULL, model TEXT, fit TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS models_seq ON models (seq);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""
# SQLite turns an overflowing integer sum into REAL; the CHECK above makes that an IntegrityError instead.
_ADD_SPEND = (
    "INSERT INTO spend (bidder_id, period_key, spent_micros) VALUES (?, ?, ?) ON CONFLICT (bidder_id, "
    "period_key) DO UPDATE SET spent_micros = spent_micros + excluded.spent_micros"
)


def _micros(value: int, what: str) -> int:
    """Refuse what SQLite INTEGER cannot hold exactly, rather than let it become a float or wrap."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
        raise StoreError(f"{what} must be an int in [0, 2**63-1], got {value!r}")
    return value


def _statement(sql: str, params: tuple[object, ...]) -> _Op:
    """A write op running one statement; its result is the number of rows changed."""
    return lambda conn: conn.execute(sql, params).rowcount


class SqliteStore:
    """Store on one SQLite file. Writes queue up; one writer task commits everything queued so far in a
    single transaction on the store's own thread, so many concurrent callers share one fsync.

    As a fleet instance's journal it holds, in its outbox table, the wins the shared store has not counted yet
    (see queue_wins and redis.py)."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        if not path or path == ":memory:":
            raise StoreError(f"sqlite store needs a file path, got {path!r}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = 5000
        self.max_micros = INT64_MAX  # the largest price, and spend per bidder and period, kept exactly
        self.commits = 0  # transactions committed: lets tests (and metrics) see that group commit batches
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched on the executor thread only
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._write_error: str | None = None

    @property
    def write_error(self) -> str | None:
        return self._write_error

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """`sqlite:///rel/path.db` or `sqlite:////abs/path.db`, optionally `?synchronous=NORMAL`."""
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.scheme != "sqlite" or parts.netloc or parts.fragment or not parts.path.startswith("/"):
            raise StoreError(f"bad sqlite URL {url!r}: expected sqlite:///path/to.db")
        if set(query) - {"synchronous"} or any(len(v) != 1 for v in query.values()):
            raise StoreError(f"bad sqlite URL {url!r}: the only option is ?synchronous=FULL|NORMAL|EXTRA")
        return cls(unquote(parts.path[1:]), query.get("synchronous", ["FULL"])[0])

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacer-sqlite")
        self._closing = False
        try:
            await self._on_thread(self._connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _connect(self) -> None:
        """Open the file and bring the schema up to date; runs on the store thread (sqlite3 connections
        refuse to be used from another thread than the one that made them)."""
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # Budgets, spend and every win are the operator's business only: 0600. SQLite gives its -wal and -shm
        # files the database file's mode, so creating the file first (O_EXCL: never widen an existing one's) does.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None)  # no implicit BEGIN: we say when
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema {version} is newer than this pacer ({SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        """Commit what is queued, then release the file and the thread. Safe to call twice."""
        executor = self._executor
        if executor is None:
            return
        self._closing = True
        while self._writer is not None and not self._writer.done():
            await self._writer
        self._executor = None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=True)  # the thread is idle by now: this join does not block for long

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self._on_thread(lambda: self._db().execute("SELECT 1").fetchone()), 1.0)
        except (StoreError, TimeoutError):
            return False
        return True

    # -- reads: straight onto the thread; they never see half a batch, since a batch is one thread job --

    async def load_bidders(self) -> list[BidderRecord]:
        rows = await self._query("SELECT bidder_id, config, version, updated_at FROM bidders ORDER BY 1")
        return [BidderRecord(bid, json.loads(config), version, ts) for bid, config, version, ts in rows]

    async def load_spend(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        def read() -> dict[tuple[str, str], int]:
            sql = "SELECT spent_micros FROM spend WHERE bidder_id = ? AND period_key = ?"
            return {key: (self._db().execute(sql, key).fetchone() or (0,))[0] for key in keys}

        return await self._on_thread(read)

    async def load_reserved(self) -> dict[str, tuple[int, float]]:
        rows = await self._query("SELECT bidder_id, reserved_micros, hold_until FROM reserved")
        return {bidder_id: (micros, until) for bidder_id, micros, until in rows}

    # -- writes: queued for the next group commit --

    async def load_configs(self, bidder_ids: list[str]) -> list[BidderRecord | None]:
        def read() -> list[BidderRecord | None]:
            conn = self._db()
            rows = [
                conn.execute("SELECT config, version, updated_at FROM bidders WHERE bidder_id = ?", (b,)).fetchone()
                for b in bidder_ids
            ]
            return [
                None if r is None else BidderRecord(b, json.loads(r[0]), r[1], r[2])
                for b, r in zip(bidder_ids, rows, strict=True)
            ]

        return await self._on_thread(read)

    async def put_bidder(self, record: BidderRecord) -> int:
        [version] = await self.put_bidders([record])
        assert isinstance(version, int)  # one process writes this file: no version conflicts
        return version

    async def put_bidders(self, records: list[BidderRecord]) -> list[int | VersionConflict | StoreError]:
        rows = []
        for record in records:
            try:
                config = json.dumps(record.config, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"bidder {record.bidder_id!r}: config is not JSON: {exc}") from exc
            rows.append((record.bidder_id, config, _micros(record.version, "version"), record.updated_at))

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR REPLACE INTO bidders VALUES (?, ?, ?, ?)", rows)

        await self._write(apply)
        return [record.version for record in records]

    async def delete_bidder(self, bidder_id: str, known_version: int | None = None) -> None:
        """One process writes this file (its service lock orders the writes): no version to check."""
        await self._write(_statement("DELETE FROM bidders WHERE bidder_id = ?", (bidder_id,)))

    async def record_wins(self, wins: list[WinRecord]) -> list[bool]:
        for win in wins:
            _micros(win.price_micros, "price_micros")
        if not wins:
            return []

        def apply(conn: sqlite3.Connection) -> list[bool]:
            new = []
            for w in wins:
                row = (w.bidder_id, w.auction_id, w.price_micros, w.period_key, w.ts)
                fresh = conn.execute("INSERT OR IGNORE INTO wins VALUES (?, ?, ?, ?, ?)", row).rowcount == 1
                if fresh:
                    conn.execute(_ADD_SPEND, (w.bidder_id, w.period_key, w.price_micros))
                new.append(fresh)
            return new

        result: list[bool] = await self._write(apply)
        return result

    async def save_reserved(self, reserved: dict[str, tuple[int, float]]) -> None:
        rows = [
            (bidder_id, _micros(micros, "reserved_micros"), until) for bidder_id, (micros, until) in reserved.items()
        ]

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM reserved")
            conn.executemany("INSERT INTO reserved VALUES (?, ?, ?)", rows)
            # A write that always changes a page: with nothing reserved the snapshot would write nothing, and a
            # full disk would go unnoticed until the next event failed.
            conn.execute("INSERT OR REPLACE INTO heartbeat VALUES (1, ?)", (time.time(),))

        await self._write(apply)

    async def probe_write(self) -> None:
        await self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO heartbeat VALUES (1, ?)", (time.time(),)))

    async def load_outbox(self) -> list[WinRecord]:
        """Wins journaled but not yet confirmed counted by the shared store, oldest first."""
        rows = await self._query("SELECT bidder_id, auction_id, price_micros, period_key, ts FROM outbox ORDER BY ts")
        return [WinRecord(*row) for row in rows]

    async def queue_wins(self, wins: list[WinRecord]) -> list[bool]:
        """A fleet journal's outbox: hold wins durably until the shared store has counted them (while it cannot be
        reached, or for a bidder it lost). Element i is False where that win is queued already (it ships once).
        The outbox is no dedupe authority: a win leaves it once shipped, and the shared store decides."""
        for win in wins:
            _micros(win.price_micros, "price_micros")
        rows = [(w.bidder_id, w.auction_id, w.price_micros, w.period_key, w.ts) for w in wins]

        def apply(conn: sqlite3.Connection) -> list[bool]:
            sql = "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)"
            return [conn.execute(sql, row).rowcount == 1 for row in rows]

        result: list[bool] = await self._write(apply)
        return result

    async def drop_outbox(self, wins: list[WinRecord]) -> None:
        """The shared store has counted these (or knew them already): they need not be shipped again."""
        keys = [(w.bidder_id, w.auction_id) for w in wins]

        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE bidder_id = ? AND auction_id = ?", keys)

        await self._write(apply)

    async def prune(self, before_ts: float) -> int:
        removed: int = await self._write(_statement("DELETE FROM wins WHERE ts < ?", (before_ts,)))
        return removed

    # -- models and the refit lock --

    async def publish_fits(self, fits: list[tuple[str, dict[str, object] | None, dict[str, object]]]) -> int:
        rows = [
            (bidder_id, to_json(model) if model is not None else None, to_json(fit)) for bidder_id, model, fit in fits
        ]

        def apply(conn: sqlite3.Connection) -> int:
            seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM models").fetchone()[0]
            conn.executemany(
                "INSERT INTO models VALUES (?1, CASE WHEN ?2 IS NULL THEN 0 ELSE 1 END, ?2, ?3, ?4) "
                "ON CONFLICT (bidder_id) DO UPDATE SET version = version + (excluded.model IS NOT NULL), "
                "model = COALESCE(excluded.model, model), fit = excluded.fit, seq = excluded.seq",
                [(*row, seq) for row in rows],
            )
            return seq

        seq: int = await self._write(apply)
        return seq

    async def load_models(self, after_seq: int) -> list[ModelRecord]:
        rows = await self._on_thread(
            lambda: (
                self._db()
                .execute(
                    "SELECT bidder_id, version, model, fit, seq FROM models WHERE seq > ? ORDER BY seq, bidder_id",
                    (after_seq,),
                )
                .fetchall()
            )
        )
        return [ModelRecord(b, v, json.loads(m) if m else None, json.loads(f), s) for b, v, m, f, s in rows]

    async def try_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.time()
        taken: int = await self._write(
            _statement(
                "INSERT INTO locks VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE locks.until < ? OR locks.holder = excluded.holder",
                (name, holder, now + ttl_s, now),
            )
        )
        return taken == 1

    async def unlock(self, name: str, holder: str) -> None:
        await self._write(_statement("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder)))

    # -- machinery --

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("sqlite store is not open")
        return self._conn

    async def _query(self, sql: str) -> list[Any]:
        return await self._on_thread(lambda: self._db().execute(sql).fetchall())

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        """Run fn on the store thread; sqlite errors become StoreError (callers fail closed on it)."""
        if self._executor is None:
            raise StoreError("sqlite store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError) as exc:  # OSError: the folder cannot be created
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def _write(self, op: _Op) -> Any:
        """Queue op for the next transaction and wait until that transaction has committed."""
        if self._executor is None or self._closing:
            raise StoreError("sqlite store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """The single writer: while anything is queued, commit all of it as one transaction."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._on_thread(functools.partial(self._commit, [op for op, _ in batch]))
                self._write_error = None
            except Exception as exc:
                self._write_error = str(exc)
                results = [StoreError(f"write batch rolled back: {exc}") for _ in batch]
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller was cancelled; its write committed (or not) regardless
                    continue
                if isinstance(result, StoreError):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _commit(self, ops: list[_Op]) -> list[Any]:
        """One transaction for the whole batch. Each op runs in a savepoint, so an op whose own data cannot
        be stored (spend overflow) fails alone; any other error rolls back the whole batch."""
        conn = self._db()
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    results.append(op(conn))
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO op")
                    results.append(StoreError(f"rejected (would overflow INTEGER?): {exc}"))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return results
