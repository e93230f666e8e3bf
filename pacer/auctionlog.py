"""auctionlog.py: the auction log: every decision and every outcome, as Parquet partitioned by date and hour.

Schema (one table for all rows; `kind` says which columns are set):

| column | type | bid (a decision) | win | loss |
|---|---|---|---|---|
| ts | timestamp[ms, UTC] | when decided | when the notice arrived | same |
| kind | string | "bid" | "win" | "loss" |
| bidder_id, auction_id | string | set | set | set |
| bid_micros | int64 | the requested bid | null | null |
| granted_micros | int64 | the granted bid, 0 when not granted | null | null |
| reason | string | why not granted (null when granted) | null | null |
| price_micros | int64 | null | the price paid | null |
| sample | float64 | the PACER_LOG_SAMPLE it was kept at (a row stands for 1/sample decisions) | 1.0 | 1.0 |

Files: `<root>/date=YYYY-MM-DD/hour=HH/part-<YYYYMMDDTHHMMSS>-<writer>-<seq>.parquet` (UTC), so any number of
writers can share one root (a local folder, or any filesystem pyarrow understands, e.g. s3://bucket/prefix).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from array import array
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger("pacer")

SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("bidder_id", pa.string(), nullable=False),
        pa.field("auction_id", pa.string(), nullable=False),
        pa.field("bid_micros", pa.int64()),
        pa.field("granted_micros", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("price_micros", pa.int64()),
        pa.field("sample", pa.float64(), nullable=False),
    ]
)
BID, WIN, LOSS = "bid", "win", "loss"


def open_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path a log URL names: a local folder (relative paths too), any URI pyarrow
    understands (s3://, gs://, hdfs://, file://), or, if fsspec is installed, any protocol it knows."""
    if "://" not in url:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(url))
    try:
        found: tuple[pafs.FileSystem, str] = pafs.FileSystem.from_uri(url)
        return found
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        try:
            import fsspec  # optional: the long tail of filesystems
        except ImportError:
            raise ValueError(f"{url}: {exc}") from exc
        protocol, _, path = url.partition("://")
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(protocol))), path


KINDS = (BID, WIN, LOSS)


class _Names:
    """A growing dictionary of repeated strings (bidder ids, reasons): rows store a small int code."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.names: list[str] = list(names)
        self.codes: dict[str, int] = {n: i for i, n in enumerate(names)}

    def code(self, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code


class Rows:
    """Buffered rows as flat columns: numbers in `array.array`, auction ids as UTF-8 bytes with end offsets,
    bidder ids and reasons as codes. Nothing kept per row is a Python object, so the garbage collector has nothing
    to traverse (10^6 buffered rows held as Python objects cost 300-500 ms per full collection, and as much again
    to free), and Arrow takes the buffers without copying."""

    __slots__ = ("auction_data", "auction_ends", "bid", "bidder", "bidders", "granted", "kind", "price", "reason", "ts")

    def __init__(self) -> None:
        # The batch's own dictionary of bidder ids: it goes with the batch, so ids seen once (a client sending
        # random ones) are not kept for the life of the process.
        self.bidders = _Names()
        self.ts = array("d")
        self.kind = array("b")
        self.bidder = array("i")
        self.auction_data = bytearray()
        self.auction_ends = array("i", [0])
        self.bid = array("q")
        self.granted = array("q")
        self.reason = array("i")  # 0: none, else 1 + the code in the writer's reasons
        self.price = array("q")

    def __len__(self) -> int:
        return len(self.ts)

    def table(self, reasons: list[str], sample: float) -> pa.Table:
        """The rows as an Arrow table of SCHEMA (the buffers are shared, not copied)."""
        kind = np.frombuffer(self.kind, np.int8)
        is_bid, is_win = kind == 0, kind == 1
        reason = np.frombuffer(self.reason, np.int32)

        def ints(values: array[int], valid: np.ndarray) -> pa.Array:
            return pa.array(np.frombuffer(values, np.int64), pa.int64(), mask=~valid)

        def coded(codes: np.ndarray, names: list[str], valid: np.ndarray | None = None) -> pa.Array:
            indices = pa.array(codes, pa.int32(), mask=None if valid is None else ~valid)
            return pa.DictionaryArray.from_arrays(indices, pa.array(names, pa.string())).cast(pa.string())

        ts_ms = np.rint(np.frombuffer(self.ts, np.float64) * 1000.0).astype(np.int64)
        auction = pa.StringArray.from_buffers(
            len(self), pa.py_buffer(self.auction_ends), pa.py_buffer(self.auction_data)
        )
        return pa.table(
            {
                "ts": pa.array(ts_ms, pa.timestamp("ms", tz="UTC")),
                "kind": coded(kind.astype(np.int32), list(KINDS)),
                "bidder_id": coded(np.frombuffer(self.bidder, np.int32), self.bidders.names),
                "auction_id": auction,
                "bid_micros": ints(self.bid, is_bid),
                "granted_micros": ints(self.granted, is_bid),
                "reason": coded(np.maximum(reason - 1, 0), reasons or [""], reason > 0),
                "price_micros": ints(self.price, is_win),
                "sample": pa.array(np.where(is_bid, sample, 1.0), pa.float64()),
            },
            schema=SCHEMA,
        )


class AuctionLogWriter:
    """Buffers log rows in memory and writes them as Parquet when asked, from a thread.

    The hot path appends numbers to flat buffers (and draws a random number when sampling); `take` hands the
    buffers over in O(1), and `write` (in the service's low-priority thread) wraps them as Arrow arrays and writes
    Parquet. A sink that fails (full disk, no permission, network) never reaches the caller of
    `decision`/`outcome`: its rows wait, converted, for the next write, and past `max_rows` waiting rows the
    oldest decisions are dropped and counted (outcomes carry the money).
    """

    def __init__(
        self, url: str, writer_id: str, sample: float = 1.0, max_rows: int = 2_000_000, rng: random.Random | None = None
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"log sample must be within [0, 1], got {sample}")
        self.url = url
        self.fs, self.root = open_filesystem(url)
        self.writer_id = writer_id
        self.sample = sample
        self.max_rows = max_rows
        self._random = (rng or random.Random()).random
        self._reasons = _Names()  # few: the decision reasons
        self._rows = Rows()
        self._seq = 0
        self._lock = threading.Lock()  # one write at a time (a write at stop may meet a periodic one)
        self._waiting: list[pa.Table] = []  # rows a failed write gave back, oldest first
        self._waiting_rows = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self.failures = 0
        self.last_error: str | None = None

    # --- the hot path ---------------------------------------------------------------------------------------

    def decision(self, ts: float, bidder_id: str, auction_id: str, bid: int, granted: int, reason: str | None) -> None:
        """A decision for a configured bidder (the caller counts, and does not log, those for unknown ones)."""
        if self.sample < 1.0 and self._random() >= self.sample:
            return
        rows = self._rows
        names = rows.bidders
        bidder = names.codes.get(bidder_id)
        rows.ts.append(ts)
        rows.kind.append(0)
        rows.bidder.append(names.code(bidder_id) if bidder is None else bidder)
        data = rows.auction_data
        data += auction_id.encode()
        rows.auction_ends.append(len(data))
        rows.bid.append(bid)
        rows.granted.append(granted)
        rows.reason.append(0 if reason is None else 1 + self._reasons.code(reason))
        rows.price.append(0)

    def outcome(self, ts: float, kind: str, bidder_id: str, auction_id: str, price: int | None = None) -> None:
        """A win (with its price) or a loss: never sampled (spend must add up)."""
        rows = self._rows
        rows.ts.append(ts)
        rows.kind.append(1 if kind == WIN else 2)
        rows.bidder.append(rows.bidders.code(bidder_id))
        data = rows.auction_data
        data += auction_id.encode()
        rows.auction_ends.append(len(data))
        rows.bid.append(0)
        rows.granted.append(0)
        rows.reason.append(0)
        rows.price.append(price or 0)

    # --- writing (off the event loop) ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._rows) + self._waiting_rows

    @property
    def ok(self) -> bool:
        """False while the last write failed."""
        return self.last_error is None

    def take(self) -> Rows:
        """Everything buffered so far; the hot path appends to fresh buffers from here on. Call it on the thread
        that logs (the event loop), then `write` the rows from any thread."""
        rows, self._rows = self._rows, Rows()
        return rows

    def table(self, rows: Rows) -> pa.Table:
        """Taken rows as an Arrow table of SCHEMA."""
        return rows.table(list(self._reasons.names), self.sample)

    def write(self, rows: Rows) -> bool:
        """Write these rows after any that wait from failed writes, one file per (date, hour). False if the sink
        failed: the error is recorded (and logged once per failure streak), not raised, and the rows wait for the
        next write."""
        table = self.table(rows)
        with self._lock:
            if self._waiting:
                table = pa.concat_tables([*self._waiting, table])
                self._waiting, self._waiting_rows = [], 0
            if not table.num_rows:
                return True
            try:
                self._write_partitions(table)
            except (OSError, pa.ArrowException) as exc:
                self.failures += 1
                if self.last_error is None:
                    log.error(
                        "auction log: cannot write to %s: %s (bidding goes on; rows wait in memory up to "
                        "%d, then the oldest decisions are dropped and counted)",
                        self.url,
                        exc,
                        self.max_rows,
                    )
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._wait(table)
                return False
            if self.last_error is not None:
                log.warning("auction log: writing to %s works again", self.url)
            self.last_error = None
            self.written_rows += table.num_rows
            return True

    def _wait(self, table: pa.Table) -> None:
        """Keep unwritten rows; beyond max_rows waiting (with those still buffered), drop the oldest decisions."""
        excess = table.num_rows + len(self._rows) - self.max_rows
        if excess > 0:
            is_bid = table.column("kind").to_numpy(zero_copy_only=False) == BID
            drop = is_bid & (np.cumsum(is_bid) <= excess)
            table = table.filter(pa.array(~drop))
            self.dropped_rows += int(drop.sum())
        self._waiting, self._waiting_rows = [table], table.num_rows

    def flush(self) -> bool:
        """take + write in the caller's thread: for replay and shutdown."""
        return self.write(self.take())

    def abandon(self) -> int:
        """At shutdown, after the last write failed or hung: count every row still unwritten as dropped, let them
        go, and return how many."""
        lost = self.pending
        self.dropped_rows += lost
        self._rows, self._waiting, self._waiting_rows = Rows(), [], 0
        return lost

    def _write_partitions(self, table: pa.Table) -> None:
        hours = table.column("ts").cast(pa.int64()).to_numpy() // 3_600_000
        distinct = np.unique(hours)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for h in distinct.tolist():  # usually one: a batch is seconds of rows
            part = table if len(distinct) == 1 else table.filter(pa.array(hours == h))
            hour = datetime.fromtimestamp(h * 3600, UTC)
            folder = f"{self.root}/date={hour:%Y-%m-%d}/hour={hour:%H}"
            self._seq += 1
            name = f"part-{stamp}-{self.writer_id}-{self._seq:06d}.parquet"
            self.fs.create_dir(folder, recursive=True)
            if isinstance(self.fs, pafs.LocalFileSystem):
                # Readers skip dot-files: a half-written file is never read, then it appears whole.
                tmp = f"{folder}/.{name}.tmp"
                pq.write_table(part, tmp, filesystem=self.fs, compression="zstd")
                self.fs.move(tmp, f"{folder}/{name}")
            else:  # object stores publish an object only once it is complete
                pq.write_table(part, f"{folder}/{name}", filesystem=self.fs, compression="zstd")

    def status(self) -> dict[str, object]:
        return {
            "url": self.url,
            "ok": self.ok,
            "sample": self.sample,
            "written_rows": self.written_rows,
            "pending_rows": self.pending,
            "dropped_rows": self.dropped_rows,
            "write_failures": self.failures,
            "last_error": self.last_error,
        }
