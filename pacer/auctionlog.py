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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger("pacer")

SCHEMA = pa.schema([
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("bidder_id", pa.string(), nullable=False),
    pa.field("auction_id", pa.string(), nullable=False),
    pa.field("bid_micros", pa.int64()),
    pa.field("granted_micros", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("price_micros", pa.int64()),
    pa.field("sample", pa.float64(), nullable=False),
])
BID, WIN, LOSS = "bid", "win", "loss"


def open_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path a log URL names: a local folder (relative paths too), any URI pyarrow
    understands (s3://, gs://, hdfs://, file://), or, if fsspec is installed, any protocol it knows."""
    if "://" not in url:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(url))
    try:
        return pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        try:
            import fsspec  # optional: the long tail of filesystems
        except ImportError:
            raise ValueError(f"{url}: {exc}") from exc
        protocol, _, path = url.partition("://")
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(protocol))), path


# Rows wait as columns (one list per field), not as a tuple per row: a tuple per row is a container the garbage
# collector traverses in every full collection, and 10^5 of them made those pauses the bid path's p99.
DECISION_FIELDS = ("ts", "bidder_id", "auction_id", "bid_micros", "granted_micros", "reason")
OUTCOME_FIELDS = ("ts", "kind", "bidder_id", "auction_id", "price_micros")
Cols = tuple[list[Any], ...]


def _empty(fields: tuple[str, ...]) -> Cols:
    return tuple([] for _ in fields)


@dataclass(frozen=True, slots=True)
class Batch:
    decisions: Cols  # DECISION_FIELDS columns
    outcomes: Cols  # OUTCOME_FIELDS columns

    def __len__(self) -> int:
        return len(self.decisions[0]) + len(self.outcomes[0])

    def table(self, sample: float) -> pa.Table:
        return _table(self, sample)

    def slices(self, rows: int) -> Iterator[Batch]:
        """The batch in pieces of at most `rows` rows."""
        for lo in range(0, len(self.decisions[0]), rows):
            yield Batch(tuple(c[lo: lo + rows] for c in self.decisions), _empty(OUTCOME_FIELDS))
        for lo in range(0, len(self.outcomes[0]), rows):
            yield Batch(_empty(DECISION_FIELDS), tuple(c[lo: lo + rows] for c in self.outcomes))


class AuctionLogWriter:
    """Buffers log rows in memory and writes them as Parquet when asked, from a thread.

    The hot path pays six list appends per decision (and a random draw when sampling); converting rows to Arrow
    and writing files happens in `write`, which the service runs off the event loop. A sink that fails (full
    disk, no permission, network) never reaches the caller of `decision`/`outcome`: its rows wait for the next
    write, and past `max_rows` waiting rows the oldest are dropped and counted.
    """

    def __init__(self, url: str, writer_id: str, sample: float = 1.0, max_rows: int = 2_000_000,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"log sample must be within [0, 1], got {sample}")
        self.url = url
        self.fs, self.root = open_filesystem(url)
        self.writer_id = writer_id
        self.sample = sample
        self.max_rows = max_rows
        self._random = (rng or random.Random()).random
        self._decisions = _empty(DECISION_FIELDS)
        self._outcomes = _empty(OUTCOME_FIELDS)
        self._bind()
        self._seq = 0
        self._lock = threading.Lock()  # one write at a time (a write at stop may meet a periodic one)
        self.written_rows = 0
        self.written_files = 0
        self.dropped_rows = 0
        self.failures = 0
        self.last_error: str | None = None

    # --- the hot path ---------------------------------------------------------------------------------------

    def decision(self, ts: float, bidder_id: str, auction_id: str, bid: int, granted: int, reason: str | None
                 ) -> None:
        if self.sample < 1.0 and self._random() >= self.sample:
            return
        self._d_ts(ts)
        self._d_bidder(bidder_id)
        self._d_auction(auction_id)
        self._d_bid(bid)
        self._d_granted(granted)
        self._d_reason(reason)

    def outcome(self, ts: float, kind: str, bidder_id: str, auction_id: str, price: int | None = None) -> None:
        """A win (with its price) or a loss: never sampled (spend must add up)."""
        for column, value in zip(self._outcomes, (ts, kind, bidder_id, auction_id, price), strict=True):
            column.append(value)

    def _bind(self) -> None:
        """The decision columns' bound append methods: the hot path's six calls skip an attribute lookup each."""
        (self._d_ts, self._d_bidder, self._d_auction, self._d_bid, self._d_granted,
         self._d_reason) = (c.append for c in self._decisions)

    # --- writing (off the event loop) ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._decisions[0]) + len(self._outcomes[0])

    @property
    def ok(self) -> bool:
        """False while the last write failed."""
        return self.last_error is None

    def take(self) -> Batch:
        """Everything buffered so far; the hot path appends to fresh columns from here on. Call it on the thread
        that logs (the event loop), then `write` the batch from any thread."""
        batch = Batch(self._decisions, self._outcomes)
        self._decisions, self._outcomes = _empty(DECISION_FIELDS), _empty(OUTCOME_FIELDS)
        self._bind()
        return batch

    def write(self, batch: Batch) -> bool:
        """Write a batch, one file per (date, hour). False if the sink failed: the error is recorded (and
        logged once per failure streak), not raised; give the batch back with `requeue`."""
        if not len(batch):
            return True
        return self.write_table(batch.table(self.sample))

    def write_table(self, table: pa.Table) -> bool:
        """`write` for rows already converted (Batch.table). The service converts on the event loop in slices
        between bids, so its writer thread runs only Arrow's C++, which releases the GIL the event loop needs
        (one 200k-row conversion in a thread held it for 45-70 ms: the bid path's p99)."""
        with self._lock:
            try:
                files = self._write_partitions(table)
            except (OSError, pa.ArrowException) as exc:
                self.failures += 1
                if self.last_error is None:
                    log.error("auction log: cannot write to %s: %s (bidding goes on; rows wait in memory up to "
                              "%d, then the oldest are dropped and counted)", self.url, exc, self.max_rows)
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            if self.last_error is not None:
                log.warning("auction log: writing to %s works again", self.url)
            self.last_error = None
            self.written_rows += table.num_rows
            self.written_files += files
            return True

    def requeue(self, batch: Batch) -> None:
        """Put a batch that could not be written back in front of newer rows; beyond max_rows waiting, drop the
        oldest decisions first (outcomes carry the money). Call it where `take` is called."""
        for old, new in zip((*batch.decisions, *batch.outcomes), (*self._decisions, *self._outcomes), strict=True):
            new[:0] = old
        excess = self.pending - self.max_rows
        if excess > 0:
            cut = min(excess, len(self._decisions[0]))
            for column in self._decisions:
                del column[:cut]
            for column in self._outcomes:
                del column[: excess - cut]
            self.dropped_rows += excess

    def flush(self) -> bool:
        """take + write (+ requeue on failure) in the caller's thread: for replay and shutdown."""
        batch = self.take()
        ok = self.write(batch)
        if not ok:
            self.requeue(batch)
        return ok

    def _write_partitions(self, table: pa.Table) -> int:
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
        return len(distinct)

    def status(self) -> dict[str, object]:
        return {"url": self.url, "ok": self.ok, "sample": self.sample, "written_rows": self.written_rows,
                "pending_rows": self.pending, "dropped_rows": self.dropped_rows, "write_failures": self.failures,
                "last_error": self.last_error}


def _table(batch: Batch, sample: float) -> pa.Table:
    d, o = batch.decisions, batch.outcomes
    nd, no = len(d[0]), len(o[0])

    def column(name: str, kind: pa.DataType) -> pa.Array:
        parts = [pa.array(cols[fields.index(name)], kind) if name in fields else pa.nulls(n, kind)
                 for cols, fields, n in ((d, DECISION_FIELDS, nd), (o, OUTCOME_FIELDS, no))]
        return pa.concat_arrays(parts)

    ts = pc.round(pc.multiply(column("ts", pa.float64()), 1000.0)).cast(pa.int64())
    kinds = pa.concat_arrays([pa.array([BID] * nd, pa.string()), pa.array(o[1], pa.string())])
    return pa.table({
        "ts": ts.cast(pa.timestamp("ms", tz="UTC")), "kind": kinds,
        "bidder_id": column("bidder_id", pa.string()), "auction_id": column("auction_id", pa.string()),
        "bid_micros": column("bid_micros", pa.int64()), "granted_micros": column("granted_micros", pa.int64()),
        "reason": column("reason", pa.string()), "price_micros": column("price_micros", pa.int64()),
        "sample": pa.array(np.concatenate([np.full(nd, sample), np.ones(no)]), pa.float64()),
    }, schema=SCHEMA)
