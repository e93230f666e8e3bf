"""The auction log writer: partitions, sampling, and a failing sink that never loses outcomes silently."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pyarrow.dataset as ds

from pacer.auctionlog import SCHEMA, AuctionLogWriter

HOUR = 3600.0
T0 = 1_796_000_400.0  # 2026-11-30T01:00:00Z (a whole hour)


def read(root: Path) -> list[dict[str, object]]:
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["ts"], r["kind"], r["auction_id"]))


def test_rows_land_in_date_and_hour_partitions_with_the_schema(tmp_path: Path) -> None:
    log = AuctionLogWriter(str(tmp_path), "w1")
    log.decision(T0 + 10.0, "b1", "a1", 2000, 1500, None)
    log.decision(T0 + 11.5, "b1", "a2", 2000, 0, "paced")
    log.outcome(T0 + HOUR + 1.0, "win", "b1", "a1", 900)
    log.outcome(T0 + 23 * HOUR, "loss", "b1", "a3")
    assert log.flush()
    files = sorted(p.relative_to(tmp_path).parent.as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["date=2026-11-30/hour=01", "date=2026-11-30/hour=02", "date=2026-12-01/hour=00"]
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    for path in tmp_path.rglob("*.parquet"):
        assert ds.dataset(path).schema.equals(SCHEMA)
    rows = read(tmp_path)
    assert [
        (r["kind"], r["auction_id"], r["bid_micros"], r["granted_micros"], r["reason"], r["price_micros"]) for r in rows
    ] == [
        ("bid", "a1", 2000, 1500, None, None),
        ("bid", "a2", 2000, 0, "paced", None),
        ("win", "a1", None, None, None, 900),
        ("loss", "a3", None, None, None, None),
    ]
    assert rows[1]["ts"].timestamp() == T0 + 11.5
    assert log.written_rows == 4 and log.pending == 0 and log.ok


def test_sampling_keeps_a_share_of_decisions_and_every_outcome(tmp_path: Path) -> None:
    log = AuctionLogWriter(str(tmp_path), "w1", sample=0.25, rng=random.Random(7))
    for i in range(4000):
        log.decision(T0 + i, "b1", f"a{i}", 1000, 1000, None)
        log.outcome(T0 + i, "win", "b1", f"a{i}", 500)
    assert log.flush()
    rows = read(tmp_path)
    decisions = [r for r in rows if r["kind"] == "bid"]
    assert 850 <= len(decisions) <= 1150  # 25% of 4000, +-5 sigma
    assert {r["sample"] for r in decisions} == {0.25}
    assert sum(r["kind"] == "win" for r in rows) == 4000


def test_a_failing_sink_keeps_rows_counts_the_failure_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "log"
    root.write_text("a file where the log folder should be")  # unwritable, even for root
    log = AuctionLogWriter(str(root), "w1", max_rows=5)
    for i in range(4):
        log.decision(T0 + i, "b1", f"a{i}", 1000, 1000, None)
    log.outcome(T0, "win", "b1", "a0", 700)
    assert not log.flush()
    assert not log.ok and log.failures == 1 and log.last_error
    assert log.pending == 5 and log.dropped_rows == 0
    log.outcome(T0 + 5, "win", "b1", "a1", 800)  # one row over max_rows: the oldest decision goes
    assert not log.flush()
    assert log.pending == 5 and log.dropped_rows == 1
    root.unlink()
    assert log.flush() and log.ok
    rows = read(root)
    assert sorted(r["auction_id"] for r in rows if r["kind"] == "bid") == ["a1", "a2", "a3"]
    assert [r["price_micros"] for r in rows if r["kind"] == "win"] == [700, 800]
    assert log.status()["written_rows"] == 5


def test_buffered_rows_hold_no_python_objects_per_row(tmp_path: Path) -> None:
    """The buffer is flat arrays: nothing the garbage collector traverses or frees one by one, however many rows."""
    log = AuctionLogWriter(str(tmp_path), "w1")
    for i in range(10_000):
        log.decision(T0 + i, f"b{i % 7}", f"a{i}", 1000, 1000 if i % 2 else 0, None if i % 2 else "paced")
        log.outcome(T0 + i, "win" if i % 2 else "loss", f"b{i % 7}", f"a{i}", 900 if i % 2 else None)
    rows = log.take()
    buffers = [getattr(rows, name) for name in rows.__slots__ if name != "bidders"]
    assert len(rows) == 20_000 and all(len(gc.get_referents(b)) <= 1 for b in buffers)  # at most its type
    assert len(rows.bidders.names) == 7  # one entry per distinct bidder of the batch, none per row
    assert log.write(rows)
    got = read(tmp_path)
    assert len(got) == 20_000 and sum(r["kind"] == "win" for r in got) == 5_000
    assert {r["reason"] for r in got if r["kind"] == "bid"} == {None, "paced"}
    assert {r["granted_micros"] for r in got if r["kind"] == "bid" and r["reason"] == "paced"} == {0}


def test_bidder_ids_are_forgotten_with_their_batch(tmp_path: Path) -> None:
    """Issue 12: every bidder id ever logged was kept for the life of the process (~320 B each: a client sending
    random ids grew memory without bound). The id dictionary now goes with the batch that is written."""
    log = AuctionLogWriter(str(tmp_path), "w1")
    for i in range(1000):
        log.outcome(T0, "loss", f"random-{i}", f"a{i}")
    assert log.flush()
    log.outcome(T0 + 1, "win", "b1", "a-next", 900)
    rows = log.take()
    assert rows.bidders.names == ["b1"]
    assert log.write(rows)
    assert {r["bidder_id"] for r in read(tmp_path)} == {"b1"} | {f"random-{i}" for i in range(1000)}


def test_abandon_counts_what_could_not_be_written(tmp_path: Path) -> None:
    """Issue 12: at shutdown a failing sink's rows were dropped silently (dropped_rows stayed 0)."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    log = AuctionLogWriter(str(blocked), "w1")
    for i in range(10):
        log.outcome(T0, "win", "b1", f"a{i}", 900)
    assert not log.flush()
    log.decision(T0, "b1", "late", 1000, 0, "paced")
    assert log.abandon() == 11
    assert (log.pending, log.dropped_rows) == (0, 11)
