"""journal.py: a fleet instance's local journal file, claimed with a lock so that processes sharing a folder
(`pacer serve --workers N`, or a restart after kill -9) each get their own, and a dead one's is taken over.

The journal is a SqliteStore whose outbox holds the wins Redis has not counted: those acknowledged while Redis could
not be reached (durable here before the 200), until a sync ships them. Nothing here runs on the hot path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from pacer.store.base import StoreError, WinRecord
from pacer.store.sqlite import SqliteStore

log = logging.getLogger("pacer")

MAX_JOURNALS = 1024  # more processes than this on one folder is a misconfiguration, not a fleet


class Claim:
    """An exclusive lock on journal-<n>: held by an open file descriptor, so the kernel frees it when the process
    dies, however it dies."""

    def __init__(self, folder: Path, n: int, fd: int) -> None:
        self.folder = folder
        self.n = n
        self._fd = fd

    @property
    def path(self) -> Path:
        return self.folder / f"journal-{self.n}.db"

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _try_lock(folder: Path, n: int) -> Claim | None:
    fd = os.open(folder / f"journal-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Claim(folder, n, fd)


def claim(folder: Path) -> Claim:
    """The lowest-numbered journal no live process holds (a restarted instance gets its old one back)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_JOURNALS):
            found = _try_lock(folder, n)
            if found is not None:
                return found
    except OSError as exc:
        raise StoreError(f"journal folder {folder}: {exc}") from exc
    raise StoreError(f"journal folder {folder}: all {MAX_JOURNALS} journals are held by live processes")


def _stamp(path: Path) -> int:
    """When the journal last changed (its WAL takes the writes): a dead process's stays put."""
    stamps = [0]
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            stamps.append(part.stat().st_mtime_ns)
    return max(stamps)


async def adopt_orphans(
    folder: Path, mine: SqliteStore, own: Claim, empty: dict[Path, int] | None = None
) -> list[WinRecord]:
    """Move the unshipped wins of journals no live process holds into `mine`; returns them. Called at start and at
    every sync, so a dead sibling's wins reach the shared store within one sync, not when some process restarts.
    `empty` remembers journals found with nothing to ship, or unreadable (and when they last changed), so they are
    not opened again every sync. A crash half-way ships some twice at worst; the shared store counts each win once."""
    moved: list[WinRecord] = []
    for path in sorted(folder.glob("journal-*.db")):
        try:
            n = int(path.stem.removeprefix("journal-"))
        except ValueError:
            continue
        if n == own.n or (empty is not None and empty.get(path) == _stamp(path)):
            continue
        found = _try_lock(folder, n)
        if found is None:
            continue  # a live process owns it
        try:
            orphan = SqliteStore(str(path))
            try:
                await orphan.open()
                wins = await orphan.load_outbox()
                if wins:
                    await mine.queue_wins(wins)
                    await orphan.drop_outbox(wins)
                    moved += wins
                    log.warning("took over %d unshipped wins from %s", len(wins), path)
            except StoreError as exc:  # one unreadable journal must not stop the others (nor the sync)
                log.error("journal %s: cannot take over its wins: %s (tried again once it changes)", path, exc)
            finally:
                await orphan.close()
            if empty is not None:
                empty[path] = _stamp(path)
        finally:
            with contextlib.suppress(OSError):
                found.release()
    return moved
