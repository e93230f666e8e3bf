"""Rollup: the SQL on DuckDB against a plain-Python reference, DuckDB and Spark agreeing exactly, the window and
its partition pruning, and clear errors for bad log folders and files."""

from __future__ import annotations

import math
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pacer.auctionlog import BID, LOSS, SCHEMA, WIN
from pacer.refit.rolled import DAY_MS, SLOT_MS, Rollup, bin_of
from pacer.refit.rollup import PARTS, WIN_GRACE_MS, LogError, log_files, rollup, spark_session
from tests.logfiles import HOUR_MS, START_MS, random_log, write_log

BIDDERS = ("acme", "b-2", "zeta", "Émile")  # non-ASCII: both engines must sort and group it the same
SINCE = START_MS + HOUR_MS + 17 * 60_000  # mid-slot, mid-hour: partial partitions at both ends
UNTIL = START_MS + 2 * DAY_MS + 9 * HOUR_MS + 123
Part = dict[tuple[Any, ...], tuple[float, ...]]


@pytest.fixture(scope="module")
def random_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Three days of random log with a few hand-made edge rows: a win in the grace hour, one past it."""
    rows = random_log(np.random.default_rng(20260101), BIDDERS, days=3)
    edge = {"bidder_id": "acme", "bid_micros": 2_000_000, "granted_micros": 1_000_000, "sample": 0.5}
    rows += [
        dict(edge, ts=UNTIL - 5, kind=BID, auction_id="late-1"),
        dict(edge, ts=UNTIL + WIN_GRACE_MS - 1, kind=WIN, auction_id="late-1", price_micros=700_000, sample=1.0),
        dict(edge, ts=UNTIL - 4, kind=BID, auction_id="late-2"),
        dict(edge, ts=UNTIL + WIN_GRACE_MS, kind=WIN, auction_id="late-2", price_micros=800_000, sample=1.0),
    ]
    root = tmp_path_factory.mktemp("log")
    write_log(root, rows)
    return root, rows


def reference(rows: list[dict[str, Any]], since_ms: int, until_ms: int) -> dict[str, Part]:
    """The Rollup definitions, computed row by row in plain Python."""
    decided: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    wins: dict[tuple[str, str], int] = {}
    traffic: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        key, ts = (row["bidder_id"], row["auction_id"]), row["ts"]
        if since_ms <= ts < until_ms:
            traffic[(row["bidder_id"], ts // DAY_MS, ts % DAY_MS // SLOT_MS)][1] += 1
            if row["kind"] == BID:
                decided[key].append(row)
        if row["kind"] == WIN and since_ms <= ts < until_ms + WIN_GRACE_MS:
            wins[key] = min(wins.get(key, row["price_micros"]), row["price_micros"])
    price: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    granted: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    value: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0])
    for key, copies in decided.items():
        kept = min(copies, key=lambda r: (-r["granted_micros"], r["ts"], -r["bid_micros"], -r["sample"]))
        first = min(r["ts"] for r in copies)
        bidder, w = key[0], 1 / kept["sample"]
        traffic[(bidder, first // DAY_MS, first % DAY_MS // SLOT_MS)][0] += w
        value[(bidder, bin_of(kept["bid_micros"]))][0] += w
        if kept["granted_micros"] > 0:
            cell = granted[(bidder, bin_of(kept["granted_micros"]))]
            cell[0] += w
            cell[1] += w if key in wins else 0.0
        if key in wins:
            cell = price[(bidder, bin_of(wins[key]))]
            cell[0] += w
            cell[1] += w * wins[key]
    return {
        name: {k: tuple(v) for k, v in part.items()}
        for name, part in {"traffic": traffic, "price": price, "granted": granted, "value": value}.items()
    }


def as_cells(result: Rollup) -> dict[str, Part]:
    """Each part as {(bidder, keys...): (values...)}, after checking its dtypes, lengths and sort order."""
    cells = {}
    for name, columns in PARTS.items():
        part = getattr(result, name)
        assert list(part) == ["bidder", *columns]
        assert part["bidder"].dtype == object and all(isinstance(b, str) for b in part["bidder"])
        for column in columns:
            assert part[column].dtype == (np.float64 if column in ("n", "wins", "price_sum") else np.int64), column
        keys = [c for c in columns if c in ("day", "slot", "bin")]
        values = [c for c in columns if c not in keys]
        rows = list(zip(*(part[c].tolist() for c in ["bidder", *keys, *values]), strict=True))
        assert [r[: 1 + len(keys)] for r in rows] == sorted(r[: 1 + len(keys)] for r in rows), f"{name} not sorted"
        cells[name] = {r[: 1 + len(keys)]: r[1 + len(keys) :] for r in rows}
        assert len(cells[name]) == len(rows), f"{name}: a key twice"
    return cells


def test_duckdb_rollup_equals_the_reference(random_root: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = random_root
    # the log exercises every rule: re-logged decisions (some granted differently), re-logged wins, orphan wins
    decisions = Counter((r["bidder_id"], r["auction_id"]) for r in rows if r["kind"] == BID)
    wins = Counter((r["bidder_id"], r["auction_id"]) for r in rows if r["kind"] == WIN)
    assert max(decisions.values()) > 1 and max(wins.values()) > 1 and set(wins) - set(decisions)
    assert any(r["kind"] == LOSS for r in rows) and {r["sample"] for r in rows} == {1.0, 0.5, 0.25}

    result = rollup(str(root), SINCE, UNTIL)

    assert (result.since_ms, result.until_ms) == (SINCE, UNTIL)
    got, want = as_cells(result), reference(rows, SINCE, UNTIL)
    for name in PARTS:
        assert got[name] == want[name], name  # exact: weights are powers of two
    assert got["granted"][("acme", bin_of(1_000_000))][1] >= 2.0  # late-1 (won in the grace hour) counts
    assert 0 < sum(r for _, r in got["traffic"].values()) < len(rows)  # the window cut the log


def test_window_rows_and_partitions(tmp_path: Path) -> None:
    since, until = START_MS + HOUR_MS, START_MS + 3 * HOUR_MS
    row = {"bidder_id": "b", "bid_micros": 3_000_000, "granted_micros": 2_000_000, "sample": 1.0}
    write_log(
        tmp_path,
        [
            dict(row, ts=since - 1, kind=BID, auction_id="before"),
            dict(row, ts=since + 10, kind=WIN, auction_id="before", price_micros=1_000_000),  # its decision is outside
            dict(row, ts=since, kind=BID, auction_id="first", sample=0.5),
            dict(row, ts=until + WIN_GRACE_MS - 1, kind=WIN, auction_id="first", price_micros=1_500_000),
            dict(row, ts=until - 1, kind=BID, auction_id="last", granted_micros=2_500_000),
            dict(row, ts=until + WIN_GRACE_MS, kind=WIN, auction_id="last", price_micros=1_200_000),  # too late
            dict(row, ts=until, kind=BID, auction_id="after"),
        ],
    )
    # partitions outside [since, until + grace) are never opened: corrupt files there do not matter
    for outside in ("date=2025-12-30/hour=00", "date=2026-01-01/hour=00", "date=2026-01-01/hour=04"):
        (tmp_path / outside).mkdir(parents=True, exist_ok=True)
        (tmp_path / outside / "part-20260101T000000-x-0000.parquet").write_bytes(b"not parquet")

    result = rollup(tmp_path.as_uri(), since, until)  # a file:// URI as well as a path

    assert {p.rsplit("/", 2)[1] for p in log_files(str(tmp_path), since, until).paths} == {
        "hour=01",
        "hour=02",
        "hour=03",
    }
    day = START_MS // DAY_MS
    assert as_cells(result) == {
        "traffic": {("b", day, 12): (2.0, 2), ("b", day, 35): (1.0, 1)},  # rows: "first" and the "before" win
        "price": {("b", bin_of(1_500_000)): (2.0, 3_000_000.0)},
        "granted": {("b", bin_of(2_000_000)): (2.0, 2.0), ("b", bin_of(2_500_000)): (1.0, 0.0)},
        "value": {("b", bin_of(3_000_000)): (3.0,)},
    }
    (tmp_path / "date=2026-01-01/hour=03/part-20260101T030000-x-0000.parquet").write_bytes(b"")  # the grace hour
    with pytest.raises(LogError, match=r"hour=03/part-20260101T030000-x-0000\.parquet: not a readable Parquet"):
        rollup(str(tmp_path), since, until)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    since, until = START_MS, START_MS + DAY_MS
    with pytest.raises(LogError, match="nope: no such folder"):
        rollup(str(tmp_path / "nope"), since, until)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LogError, match=r"no auction log files under .* \(expected date=YYYY-MM-DD/hour=HH/\*"):
        rollup(str(tmp_path), since, until)
    with pytest.raises(LogError, match=r"notes\.txt: not a folder"):
        rollup(str(tmp_path / "notes.txt"), since, until)

    row = {
        "ts": START_MS + 10,
        "kind": BID,
        "bidder_id": "b",
        "auction_id": "a",
        "bid_micros": 5,
        "granted_micros": 0,
        "reason": "paced",
        "sample": 1.0,
    }
    good = write_log(tmp_path, [row])[0]
    with pytest.raises(LogError, match=r"no auction log files from 2026-02-01T00:00:00Z .* it has dates 2026-01-01$"):
        rollup(str(tmp_path), START_MS + 31 * DAY_MS, START_MS + 32 * DAY_MS)

    bad = good.with_name("part-20260101T000001-w-0000.parquet")
    name = re.escape(bad.name)
    bad.write_bytes(b"PAR1 this is not a parquet file PAR1")
    with pytest.raises(LogError, match=f"{re.escape(bad.as_posix())}: not a readable Parquet file"):
        rollup(str(tmp_path), since, until)

    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA).drop_columns(["price_micros"]), bad)
    with pytest.raises(LogError, match=f"{name}: missing column price_micros"):
        rollup(str(tmp_path), since, until)

    wrong = pa.Table.from_pylist([row], schema=SCHEMA).set_column(4, "bid_micros", pa.array(["5"]))
    pq.write_table(wrong, bad)
    with pytest.raises(LogError, match=f"{name}: column bid_micros is string; the auction log has int64"):
        rollup(str(tmp_path), since, until)

    bad.unlink()
    with pytest.raises(ValueError, match="unknown engine 'postgres'"):
        rollup(str(tmp_path), since, until, engine="postgres")
    assert rollup(str(tmp_path), since, until).value["n"].tolist() == [1.0]  # and the good file alone is fine


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module (start-up is seconds); rollup(engine="spark") reuses it."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Java is not installed")
    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.mark.spark
def test_spark_and_duckdb_agree_exactly(spark: Any, random_root: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = random_root
    on_duckdb = rollup(str(root), SINCE, UNTIL)
    on_spark = rollup(str(root), SINCE, UNTIL, engine="spark")
    assert spark.getActiveSession() is not None  # the module's session was reused, not stopped

    for name in PARTS:
        duck, sp = getattr(on_duckdb, name), getattr(on_spark, name)
        assert len(duck["bidder"]) > 0, name
        for column in duck:
            assert sp[column].dtype == duck[column].dtype, (name, column)
            assert np.array_equal(sp[column], duck[column]), (name, column)  # exact, value for value, in order
    assert math.isclose(on_spark.value["n"].sum(), on_spark.traffic["n"].sum())
