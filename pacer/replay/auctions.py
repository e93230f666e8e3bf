"""auctions.py: the auction log replay reads (CSV or Parquet), held as numpy columns.

One row per auction offered to one bidder: `ts` (RFC 3339 with offset, epoch milliseconds, or a Parquet
timestamp), `bidder_id`, `auction_id`, `bid_micros` (what the bidder would bid unpaced: its value) and
`market_micros` (the highest competing bid). A bad file is refused with the row and column at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pacer.periods import parse_rfc3339

COLUMNS = ("ts", "bidder_id", "auction_id", "bid_micros", "market_micros")
MAX_MICROS = 10**12


class LogError(ValueError):
    """A log that cannot be replayed; the message names the file, column and first bad row."""


@dataclass(frozen=True)
class AuctionLog:
    """Columns sorted by time. `bidder` holds indexes into `bidders`."""

    ts: npt.NDArray[np.float64]  # epoch seconds
    bidder: npt.NDArray[np.int32]
    bidders: list[str]
    auction_id: npt.NDArray[np.object_]
    bid: npt.NDArray[np.int64]
    market: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def from_columns(
        cls,
        ts: npt.ArrayLike,
        bidder_id: list[str] | npt.ArrayLike,
        auction_id: npt.ArrayLike,
        bid: npt.ArrayLike,
        market: npt.ArrayLike,
    ) -> AuctionLog:
        ts_a = np.asarray(ts, dtype=np.float64)
        names, codes = np.unique(np.asarray(bidder_id, dtype=object).astype(str), return_inverse=True)
        order = np.argsort(ts_a, kind="stable")
        return cls(
            ts=ts_a[order],
            bidder=codes.astype(np.int32)[order],
            bidders=[str(n) for n in names],
            auction_id=np.asarray(auction_id, dtype=object)[order],
            bid=np.asarray(bid, dtype=np.int64)[order],
            market=np.asarray(market, dtype=np.int64)[order],
        )

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "ts": pa.array(np.round(self.ts * 1000).astype(np.int64)),  # epoch ms
                "bidder_id": pa.array(np.asarray(self.bidders, dtype=object)[self.bidder]).dictionary_encode(),
                "auction_id": pa.array(self.auction_id, type=pa.string()),
                "bid_micros": pa.array(self.bid),
                "market_micros": pa.array(self.market),
            }
        )

    def write(self, path: Path) -> None:
        """Parquet for a .parquet path, CSV otherwise (ts as epoch ms either way)."""
        table = self.to_table()
        if path.suffix == ".parquet":
            pq.write_table(table, path, compression="zstd")
        else:
            pacsv.write_csv(table.cast(table.schema.set(1, pa.field("bidder_id", pa.string()))), path)


def read_log(path: Path) -> AuctionLog:
    if not path.is_file():
        raise LogError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={"bidder_id": pa.string(), "auction_id": pa.string()}
                ),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogError(
            f"{path}: not a readable {'Parquet' if path.suffix == '.parquet' else 'CSV'} file: {exc}"
        ) from exc
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise LogError(f"{path}: missing column(s) {', '.join(missing)}; a log needs {', '.join(COLUMNS)}")
    for name in COLUMNS:
        nulls = table.column(name).null_count
        if nulls:
            row = _first(pc.is_null(table.column(name)))
            raise LogError(f"{path}: column {name}: empty value at row {row}")
    for name in ("bidder_id", "auction_id"):
        empty = pc.equal(pc.utf8_length(table.column(name).cast(pa.string())), 0)
        if pc.any(empty).as_py():
            raise LogError(f"{path}: column {name}: empty value at row {_first(empty)}")
    return AuctionLog.from_columns(
        ts=_seconds(path, table.column("ts")),
        bidder_id=table.column("bidder_id").to_numpy(zero_copy_only=False),
        auction_id=table.column("auction_id").cast(pa.string()).to_numpy(zero_copy_only=False),
        bid=_micros(path, table, "bid_micros"),
        market=_micros(path, table, "market_micros"),
    )


def _first(mask: pa.ChunkedArray) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0]) + 1


def _micros(path: Path, table: pa.Table, name: str) -> npt.NDArray[np.int64]:
    col = table.column(name)
    if not pa.types.is_integer(col.type):
        raise LogError(f"{path}: column {name}: integer micros expected, got {col.type}")
    values: npt.NDArray[np.int64] = col.to_numpy().astype(np.int64)
    bad = (values < 0) | (values > MAX_MICROS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LogError(f"{path}: column {name}: {values[row]} at row {row + 1} is outside 0..{MAX_MICROS}")
    return values


def _seconds(path: Path, col: pa.ChunkedArray) -> npt.NDArray[np.float64]:
    if pa.types.is_timestamp(col.type):
        if col.type.tz is None:
            raise LogError(
                f"{path}: column ts: timestamps without a time zone; write RFC 3339 with an offset "
                "(e.g. 2026-11-24T08:00:00Z) or epoch milliseconds"
            )
        us = pc.cast(col, pa.timestamp("us", col.type.tz)).cast(pa.int64())
        micros: npt.NDArray[np.float64] = us.to_numpy().astype(np.float64)
        return micros / 1e6
    if pa.types.is_integer(col.type):
        millis: npt.NDArray[np.float64] = col.to_numpy().astype(np.float64)
        return millis / 1000.0
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values = col.to_numpy(zero_copy_only=False)
        uniq, inverse = np.unique(values, return_inverse=True)
        out = np.empty(len(uniq))
        for i, text in enumerate(uniq):
            parsed = parse_rfc3339(text)
            if parsed is None:
                row = int(np.flatnonzero(inverse == i)[0]) + 1
                raise LogError(
                    f"{path}: column ts: {text!r} at row {row} is not RFC 3339 with an offset "
                    "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"
                )
            out[i] = parsed.timestamp()
        return out[inverse]
    raise LogError(f"{path}: column ts: RFC 3339 text, epoch milliseconds or a timestamp expected, got {col.type}")
