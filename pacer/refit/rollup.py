"""rollup.py: the heavy step of the refit: raw auction logs rolled up per bidder, in one SQL query that runs
unchanged on DuckDB (embedded) and on Spark (a cluster).

`log_files` finds and checks the Parquet files of a window (by partition names and footers, never the data);
`ROLLUP_SQL` is the whole computation; the engines only open the files, run it and hand back Arrow.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pacer.auctionlog import BID, SCHEMA, WIN, open_filesystem
from pacer.refit.rolled import BINS_PER_E, DAY_MS, SLOT_MS, Columns, Rollup

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

WIN_GRACE_MS = 3_600_000  # a win notice is counted if it arrives within an hour after the window closes: notices
# come seconds after the auction, so an hour is ample, and a rollup run an hour after `until` sees them all
HOUR_MS = 3_600_000
ENGINES = ("duckdb", "spark")
PARTS = {  # each part's columns besides `bidder`, in sort order first (the keys), then the values
    "traffic": ("day", "slot", "n", "rows"),
    "price": ("bin", "n", "price_sum"),
    "granted": ("bin", "n", "wins"),
    "value": ("bin", "n"),
}
_KEYS = ("day", "slot", "bin")
_DTYPES = {
    "day": np.int64,
    "slot": np.int64,
    "bin": np.int64,
    "n": np.float64,
    "wins": np.float64,
    "price_sum": np.float64,
    "rows": np.int64,
}
_LAYOUT = "date=YYYY-MM-DD/hour=HH/*.parquet"
_FOOTER_THREADS = 16  # footers are read in parallel: on object stores each is a round trip or two
_LOCAL_SHUFFLE_PARTITIONS = 8  # Spark's default 200 is sized for clusters; a rollup's result is small
# Files may hold ts in any sub-second unit pyarrow writes and Spark reads (not ns: Spark refuses it); DuckDB scans
# them all as microseconds, which holds each of them exactly.
_TS_UNITS = ("s", "ms", "us")
_SCAN_SCHEMA = SCHEMA.set(SCHEMA.get_field_index("ts"), pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False))
_SPARK_SCHEMA = (
    "ts TIMESTAMP, kind STRING, bidder_id STRING, auction_id STRING, bid_micros BIGINT, "
    "granted_micros BIGINT, reason STRING, price_micros BIGINT, sample DOUBLE"
)


def _bin(column: str) -> str:
    """bin_of() in SQL; callers keep the column > 0 (ln(0) is -inf on DuckDB and NULL on Spark)."""
    return f"CAST(FLOOR(LN(CAST({column} AS DOUBLE)) * {BINS_PER_E}) AS INT)"


# One query for both engines, over a view `auction_log` (SCHEMA's columns plus ts_ms, epoch milliseconds). Only
# functions and casts that DuckDB and Spark SQL share: `/` is float division in both, FLOOR is then cast back to
# BIGINT (DuckDB's FLOOR(double) is a double, Spark's a BIGINT), NULLs are typed (Spark wants them so in a UNION),
# SUM of a BIGINT is cast back (DuckDB widens it to HUGEINT), and NULL ordering is avoided with COALESCE (DuckDB
# and Spark sort NULLs differently). Placeholders: {since_ms}, {until_ms}.
#
# - decisions: the `bid` rows of [since, until), one per (bidder, auction): a re-logged decision keeps its first
#   ts (its slot) and the values of its most granted row (a grant is what went to the exchange; ties: the earliest,
#   then the highest bid and sample, so both engines pick the same row). Weight w = 1/sample; rows with sample <= 0
#   are malformed and left out (1/0 fails on Spark).
# - wins: `win` rows of [since, until + WIN_GRACE_MS), one per (bidder, auction) at its lowest price, LEFT JOINed to
#   the decisions: a win without a logged decision counts nowhere, a decision whose notice is later than the grace
#   counts as not won.
# - traffic.rows counts every row of [since, until) (decisions, wins, losses, duplicates) in the slot of its own ts.
# - price leaves out zero prices (no log bin); a win whose price is NULL counts in granted.wins only.
ROLLUP_SQL = f"""
WITH decided AS (
    SELECT bidder_id, auction_id, COALESCE(bid_micros, 0) AS bid_micros,
           COALESCE(granted_micros, 0) AS granted_micros, sample,
           MIN(ts_ms) OVER (PARTITION BY bidder_id, auction_id) AS first_ms,
           ROW_NUMBER() OVER (PARTITION BY bidder_id, auction_id
                              ORDER BY COALESCE(granted_micros, 0) DESC, ts_ms,
                                       COALESCE(bid_micros, 0) DESC, sample DESC) AS nth
    FROM auction_log
    WHERE kind = '{BID}' AND ts_ms >= {{since_ms}} AND ts_ms < {{until_ms}} AND sample > 0
), decisions AS (
    SELECT bidder_id, auction_id, first_ms AS ts_ms, bid_micros, granted_micros, CAST(1 AS DOUBLE) / sample AS w
    FROM decided
    WHERE nth = 1
), wins AS (
    SELECT bidder_id, auction_id, MIN(price_micros) AS price_micros
    FROM auction_log
    WHERE kind = '{WIN}' AND ts_ms >= {{since_ms}} AND ts_ms < {{until_ms}} + {WIN_GRACE_MS}
    GROUP BY bidder_id, auction_id
), outcomes AS (
    SELECT d.bidder_id, d.granted_micros, d.w, x.price_micros,
           CASE WHEN x.auction_id IS NULL THEN CAST(0 AS DOUBLE) ELSE d.w END AS won
    FROM decisions AS d
    LEFT JOIN wins AS x ON x.bidder_id = d.bidder_id AND x.auction_id = d.auction_id
), slotted AS (
    SELECT bidder_id, ts_ms, w, CAST(0 AS BIGINT) AS r FROM decisions
    UNION ALL
    SELECT bidder_id, ts_ms, CAST(0 AS DOUBLE) AS w, CAST(1 AS BIGINT) AS r
    FROM auction_log
    WHERE ts_ms >= {{since_ms}} AND ts_ms < {{until_ms}}
), traffic AS (
    SELECT bidder_id, CAST(FLOOR(ts_ms / {DAY_MS}) AS BIGINT) AS day,
           CAST(FLOOR(MOD(ts_ms, {DAY_MS}) / {SLOT_MS}) AS BIGINT) AS slot, w, r
    FROM slotted
)
SELECT 'traffic' AS part, bidder_id, day, slot, CAST(NULL AS INT) AS bin, SUM(w) AS n,
       CAST(NULL AS DOUBLE) AS wins, CAST(NULL AS DOUBLE) AS price_sum, CAST(SUM(r) AS BIGINT) AS rows
FROM traffic
GROUP BY bidder_id, day, slot
UNION ALL
SELECT 'price' AS part, bidder_id, CAST(NULL AS BIGINT) AS day, CAST(NULL AS BIGINT) AS slot, bin, SUM(w) AS n,
       CAST(NULL AS DOUBLE) AS wins, SUM(w * CAST(price_micros AS DOUBLE)) AS price_sum,
       CAST(NULL AS BIGINT) AS rows
FROM (SELECT bidder_id, w, price_micros, {_bin("price_micros")} AS bin FROM outcomes WHERE price_micros > 0) AS p
GROUP BY bidder_id, bin
UNION ALL
SELECT 'granted' AS part, bidder_id, CAST(NULL AS BIGINT) AS day, CAST(NULL AS BIGINT) AS slot, bin, SUM(w) AS n,
       SUM(won) AS wins, CAST(NULL AS DOUBLE) AS price_sum, CAST(NULL AS BIGINT) AS rows
FROM (SELECT bidder_id, w, won, {_bin("granted_micros")} AS bin FROM outcomes WHERE granted_micros > 0) AS g
GROUP BY bidder_id, bin
UNION ALL
SELECT 'value' AS part, bidder_id, CAST(NULL AS BIGINT) AS day, CAST(NULL AS BIGINT) AS slot, bin, SUM(w) AS n,
       CAST(NULL AS DOUBLE) AS wins, CAST(NULL AS DOUBLE) AS price_sum, CAST(NULL AS BIGINT) AS rows
FROM (SELECT bidder_id, w, {_bin("bid_micros")} AS bin FROM decisions WHERE bid_micros > 0) AS v
GROUP BY bidder_id, bin
"""


class LogError(ValueError):
    """An auction log that cannot be rolled up; the message names the folder or file, and the column."""


@dataclass(frozen=True)
class LogFiles:
    """The files of one window: `paths` on `filesystem` for pyarrow, the same files as `uris` for Spark."""

    filesystem: pafs.FileSystem
    paths: list[str]
    uris: list[str]


def log_files(url: str, since_ms: int, until_ms: int) -> LogFiles:
    """The Parquet files that can hold rows of [since_ms, until_ms) or their wins (WIN_GRACE_MS later), each
    checked against SCHEMA by its footer. Partitions outside the window are told apart by name, never opened.

    `url`: a local folder, a file:// URI or any URI pyarrow opens (s3://bucket/prefix, gs://...).
    """
    if until_ms <= since_ms:
        raise ValueError(f"empty window: since {since_ms} is not before until {until_ms}")
    fs, root, base = _open(url)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise LogError(f"{url}: no such folder")
    if kind != pafs.FileType.Directory:
        raise LogError(f"{url}: not a folder (an auction log is a folder of {_LAYOUT})")
    days: dict[int, str] = {}  # epoch day -> its folder
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        day = _partition(entry.base_name, "date") if entry.type == pafs.FileType.Directory else None
        if day is not None:
            days[day] = entry.path
    end_ms = until_ms + WIN_GRACE_MS
    paths: list[str] = []
    for day, folder in sorted(days.items()):
        if day * DAY_MS >= end_ms or (day + 1) * DAY_MS <= since_ms:
            continue
        # one recursive listing per date: a single paged LIST on object stores
        for entry in fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
            parent, hour_dir, name = entry.path.rsplit("/", 2)
            hour = _partition(hour_dir, "hour")
            if (
                entry.type != pafs.FileType.File
                or parent != folder
                or hour is None
                or not name.endswith(".parquet")
                or name.startswith((".", "_"))
            ):  # hidden: files still being written, markers
                continue
            start_ms = day * DAY_MS + hour * HOUR_MS
            if start_ms < end_ms and start_ms + HOUR_MS > since_ms:
                paths.append(entry.path)
    if not paths:
        if not days:
            raise LogError(f"no auction log files under {url} (expected {_LAYOUT})")
        raise LogError(
            f"{url}: no auction log files from {_iso(since_ms)} to {_iso(until_ms)}; "
            f"it has dates {_dates(sorted(days))}"
        )
    paths.sort()
    files = LogFiles(fs, paths, [base + p[len(root) :] for p in paths])
    with ThreadPoolExecutor(max_workers=_FOOTER_THREADS) as pool:
        list(pool.map(lambda p, u: _check(fs, p, u), files.paths, files.uris))
    return files


def rollup(url: str, since_ms: int, until_ms: int, engine: str = "duckdb", spark_master: str | None = None) -> Rollup:
    """The auction log under `url` rolled up over [since_ms, until_ms) by ROLLUP_SQL on `engine` ("duckdb", in
    process, or "spark" on `spark_master`: a running session is reused, else one is started and stopped)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    files = log_files(url, since_ms, until_ms)
    sql = ROLLUP_SQL.format(since_ms=int(since_ms), until_ms=int(until_ms))
    table = _on_duckdb(url, files, sql) if engine == "duckdb" else _on_spark(files, sql, spark_master)
    parts: dict[str, Columns] = {}
    for part, names in PARTS.items():
        rows = table.filter(pc.equal(table["part"], part))
        rows = rows.sort_by([("bidder_id", "ascending")] + [(k, "ascending") for k in names if k in _KEYS])
        columns: Columns = {"bidder": rows["bidder_id"].to_numpy(zero_copy_only=False).astype(object)}
        for name in names:
            columns[name] = rows[name].to_numpy(zero_copy_only=False).astype(_DTYPES[name])
        parts[part] = columns
    return Rollup(
        traffic=parts["traffic"],
        price=parts["price"],
        granted=parts["granted"],
        value=parts["value"],
        since_ms=int(since_ms),
        until_ms=int(until_ms),
    )


def spark_session(master: str | None = None) -> SparkSession:
    """A Spark session fit for the rollup: UTC (days and slots are UTC), no UI; few shuffle partitions locally."""
    try:
        from pyspark.sql import DataFrame, SparkSession
    except ImportError as exc:
        raise RuntimeError("the spark engine needs pyspark: pip install 'pacer[spark]' (and Java 17)") from exc
    if not hasattr(DataFrame, "toArrow"):  # results come back as Arrow, as DuckDB's do
        raise RuntimeError("the spark engine needs pyspark 4 or later: pip install -U 'pacer[spark]'")
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise RuntimeError("the spark engine needs Java 17: install it or set JAVA_HOME")
    master = master or "local[*]"
    builder = (
        SparkSession.builder.master(master)
        .appName("pacer-rollup")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    if master.startswith("local"):
        builder = builder.config("spark.sql.shuffle.partitions", str(_LOCAL_SHUFFLE_PARTITIONS))
    return builder.getOrCreate()


def _on_duckdb(url: str, files: LogFiles, sql: str) -> pa.Table:
    import duckdb  # here, not at the top: the service imports the refit package without needing DuckDB loaded

    columns = ", ".join(SCHEMA.names)
    con = duckdb.connect()
    try:
        con.register(
            "auction_files", ds.dataset(files.paths, schema=_SCAN_SCHEMA, format="parquet", filesystem=files.filesystem)
        )
        con.execute(f"CREATE VIEW auction_log AS SELECT {columns}, epoch_ms(ts) AS ts_ms FROM auction_files")
        return con.sql(sql).to_arrow_table()
    except (duckdb.Error, pa.ArrowException, OSError) as exc:  # e.g. a file whose data (not footer) is damaged
        raise LogError(f"{url}: reading the auction log failed: {exc}") from exc
    finally:
        con.close()


def _on_spark(files: LogFiles, sql: str, master: str | None) -> pa.Table:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    spark = running or spark_session(master)
    try:
        frame = spark.read.schema(_SPARK_SCHEMA).parquet(*files.uris)
        frame.selectExpr(*SCHEMA.names, "unix_millis(ts) AS ts_ms").createOrReplaceTempView("auction_log")
        return spark.sql(sql).toArrow()
    except (PySparkException, Py4JJavaError) as exc:  # e.g. a file whose data (not footer) is damaged
        raise LogError(
            f"{files.uris[0].rsplit('/date=', 1)[0]}: reading the auction log on Spark failed: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    finally:
        if running is None:
            spark.stop()


def _open(url: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path on it, root as a URI for Spark). Spark reads s3:// through s3a:// (hadoop-aws on the
    cluster, credentials in its Hadoop config); any query (?region=...) is pyarrow's alone."""
    try:
        fs, root = open_filesystem(url)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise LogError(f"{url}: cannot open it: {exc}") from exc
    root = root.replace(os.sep, "/").rstrip("/") if isinstance(fs, pafs.LocalFileSystem) else root.rstrip("/")
    if "://" not in url:
        return fs, root, "file://" + root
    base = url.split("?", 1)[0].rstrip("/")
    if base.startswith("s3://"):
        base = "s3a://" + base[len("s3://") :]
    return fs, root, base


def _partition(name: str, key: str) -> int | None:
    """The epoch day of `date=YYYY-MM-DD` or the hour of `hour=HH`; None for anything else."""
    prefix, sep, value = name.partition("=")
    if prefix != key or not sep:
        return None
    try:
        if key == "date":
            return (date.fromisoformat(value) - date(1970, 1, 1)).days
        hour = int(value)
    except ValueError:
        return None
    return hour if 0 <= hour < 24 else None


def _check(fs: pafs.FileSystem, path: str, uri: str) -> None:
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        raise LogError(f"{uri}: not a readable Parquet file: {exc}") from exc
    for field in SCHEMA:
        if field.name not in schema.names:
            raise LogError(
                f"{uri}: missing column {field.name} ({field.type}); an auction log file has {', '.join(SCHEMA.names)}"
            )
        actual = schema.field(field.name).type
        if not _fits(field.type, actual):
            raise LogError(f"{uri}: column {field.name} is {actual}; the auction log has {field.type}")


def _fits(expected: pa.DataType, actual: pa.DataType) -> bool:
    """Whether both engines read `actual` as `expected`: any string encoding, any tz-aware ts unit they share."""
    if pa.types.is_string(expected):
        value = actual.value_type if pa.types.is_dictionary(actual) else actual
        return bool(pa.types.is_string(value) or pa.types.is_large_string(value))
    if pa.types.is_timestamp(expected):
        return bool(pa.types.is_timestamp(actual) and actual.tz is not None and actual.unit in _TS_UNITS)
    return bool(actual == expected)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _dates(days: list[int]) -> str:
    """A short list: a log may hold years of dates."""
    shown = [str(date.fromordinal(date(1970, 1, 1).toordinal() + d)) for d in days]
    if len(shown) <= 6:
        return ", ".join(shown)
    return f"{', '.join(shown[:3])}, ..., {', '.join(shown[-3:])} ({len(shown)} dates)"
