"""logfiles.py: auction-log Parquet files in the service's layout, for tests: write_log() and random_log() rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pacer.auctionlog import BID, LOSS, SCHEMA, WIN

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: random_log()'s first day
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SAMPLES = (1.0, 0.5, 0.25)  # weights 1/sample are powers of two: float sums are exact in any order
PACED = "paced"  # pacer.bidder_config.REASONS, spelled out: the engine module is not needed to write a log
DENIALS = (PACED, PACED, PACED, "exhausted", "no_budget")  # pacing refuses most; the rest run out of budget
MEDIAN_BID_MICROS = 1_500_000
GRANTED, WON, LOST = 0.6, 0.45, 0.7  # P(granted), P(win notice | granted), P(loss notice | granted, not won)
DUPLICATE, DUPLICATE_WIN, ORPHAN_WIN = 0.05, 0.05, 0.02  # re-logged decisions and wins; wins of unlogged decisions
MAX_NOTICE_MS = 5_000  # notices arrive up to 5 s after the decision


def write_log(root: Path, rows: list[dict[str, Any]] | pa.Table, writer: str = "test") -> list[Path]:
    """Write rows as the service does: one file per (date, hour) of ts under root/date=YYYY-MM-DD/hour=HH/.

    `rows`: dicts with SCHEMA's keys, `ts` in epoch milliseconds (a missing key is null), or a table of SCHEMA.
    A second call with the same writer adds files (the sequence number goes up), as a restarted writer would.
    """
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=SCHEMA)
    ts_ms = table["ts"].cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    hours = ts_ms // HOUR_MS
    written = []
    for hour in np.unique(hours):
        mine = hours == hour
        opened = datetime.fromtimestamp(int(ts_ms[mine].min()) / 1000, UTC)
        folder = root / f"date={opened:%Y-%m-%d}" / f"hour={opened:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        seq = len(list(folder.glob(f"part-*-{writer}-*.parquet")))
        path = folder / f"part-{opened:%Y%m%dT%H%M%S}-{writer}-{seq:04d}.parquet"
        pq.write_table(table.filter(pa.array(mine)), path)
        written.append(path)
    return written


def random_log(
    rng: np.random.Generator,
    bidders: Sequence[str],
    days: int,
    *,
    start_ms: int = START_MS,
    decisions_per_day: int = 1000,
) -> list[dict[str, Any]]:
    """Realistic rows over `days` days from `start_ms`, in no particular order: sampled decisions (some granted at
    or below the request, some refused with a reason), second-price wins and loss notices seconds later, re-logged
    decisions (same or another grant) and wins (same or another price), and wins whose decision was not sampled."""
    rows: list[dict[str, Any]] = []
    for i in range(days * decisions_per_day):
        ts = start_ms + int(rng.integers(0, days * DAY_MS))
        bidder = str(rng.choice(bidders))
        bid = max(1, int(rng.lognormal(np.log(MEDIAN_BID_MICROS), 0.6)))
        granted = max(1, int(bid * rng.uniform(0.4, 1.0))) if rng.random() < GRANTED else 0
        decision = {
            "ts": ts,
            "kind": BID,
            "bidder_id": bidder,
            "auction_id": f"a{i:07d}",
            "bid_micros": bid,
            "granted_micros": granted,
            "reason": None if granted else str(rng.choice(DENIALS)),
            "sample": float(rng.choice(SAMPLES)),
        }
        rows.append(decision)
        if rng.random() < DUPLICATE:  # a retried write, or the bidder asked again (maybe granted differently)
            again = dict(decision, ts=ts + int(rng.integers(0, MAX_NOTICE_MS)))
            if rng.random() < 0.5:
                regrant = int(bid * rng.uniform(0.0, 1.0))
                again.update(granted_micros=regrant, reason=None if regrant else PACED)
            rows.append(again)
        outcome = {"bidder_id": bidder, "auction_id": decision["auction_id"], "sample": 1.0}
        if granted and rng.random() < WON:
            win = dict(
                outcome,
                ts=ts + int(rng.integers(1, MAX_NOTICE_MS)),
                kind=WIN,
                price_micros=max(1, int(granted * rng.uniform(0.3, 1.0))),
            )
            rows.append(win)
            if rng.random() < DUPLICATE_WIN:
                rows.append(
                    dict(
                        win,
                        ts=win["ts"] + int(rng.integers(0, MAX_NOTICE_MS)),
                        price_micros=max(1, int(win["price_micros"] * rng.uniform(0.9, 1.0))),
                    )
                )
        elif granted and rng.random() < LOST:
            rows.append(dict(outcome, ts=ts + int(rng.integers(1, MAX_NOTICE_MS)), kind=LOSS))
        if rng.random() < ORPHAN_WIN:
            rows.append(
                dict(
                    outcome,
                    auction_id=f"u{i:07d}",
                    ts=ts + int(rng.integers(1, MAX_NOTICE_MS)),
                    kind=WIN,
                    price_micros=max(1, int(bid * rng.uniform(0.2, 0.8))),
                )
            )
    return rows
