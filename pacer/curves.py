"""curves.py: target spend curves (how much of a budget should be spent by time t) and the traffic prior.

Pure numpy over arrays of bidders so one tick evaluates every bidder at once. No I/O except loading a
curve artifact from models/ at start-up.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

SLOTS = 288  # 5-minute slots of a local day
DAY = 86400.0
EPOCH_DOW = 3  # 1970-01-01 was a Thursday; Monday = 0
# frontload: F(x) = (1 + a) x - a x^2 with a = 0.4 spends 60% at half time and still 60% of the even
# rate at the very end (F'(1) = 1 - a), so the period ends without a cliff.
FRONTLOAD_A = 0.4

ASAP, EVEN, FRONTLOAD, TRAFFIC = 0, 1, 2, 3
MODES = {"asap": ASAP, "even": EVEN, "frontload": FRONTLOAD, "traffic": TRAFFIC}


class TrafficCurve:
    """A daily traffic shape: share of a day's auctions per 5-minute local slot, and weekday factors."""

    def __init__(self, by_slot: list[float], weekday_factor: list[float], name: str = "prior") -> None:
        slots = np.asarray(by_slot, dtype=np.float64)
        days = np.asarray(weekday_factor, dtype=np.float64)
        if slots.shape != (SLOTS,) or not np.all(np.isfinite(slots)) or np.any(slots < 0):
            raise ValueError(f"traffic_by_slot must be {SLOTS} finite non-negative floats")
        if days.shape != (7,) or not np.all(np.isfinite(days)) or np.any(days <= 0):
            raise ValueError("weekday_factor must be 7 finite positive floats")
        self.name = name
        self.by_slot = slots / slots.sum()
        self.weekday_factor = days / days.mean()
        self.cum = np.concatenate([[0.0], np.cumsum(self.by_slot)])  # 289 points, cum[-1] == 1
        self.week_cum = np.concatenate([[0.0], np.cumsum(self.weekday_factor)])  # 8 points, [-1] == 7

    def weight(self, local: F64) -> F64:
        """Cumulative traffic weight up to local epoch seconds `local` (days count ~1 each)."""
        day = np.floor(local / DAY)
        frac = (local - day * DAY) / DAY * SLOTS
        slot = np.minimum(frac.astype(np.int64), SLOTS - 1)
        within = self.cum[slot] + (frac - slot) * self.by_slot[slot]
        dow = ((day.astype(np.int64) + EPOCH_DOW) % 7).astype(np.int64)
        weeks = np.floor((day + EPOCH_DOW) / 7)
        return weeks * 7.0 + self.week_cum[dow] + self.weekday_factor[dow] * within

    @classmethod
    def load(cls, path: Path) -> TrafficCurve:
        doc = json.loads(path.read_text())
        return cls(doc["traffic_by_slot"], doc["weekday_factor"], doc.get("name", path.stem))

    @classmethod
    def flat(cls) -> TrafficCurve:
        return cls([1.0] * SLOTS, [1.0] * 7, "flat")


def prior_from_traffic_share(csv_path: Path) -> dict[str, object]:
    """Build the shipped diurnal prior from hourly shares by region and weekday (each region weighs the same:
    its shares sum to 1 over its week). Each hour's share is spread evenly over its twelve 5-minute slots."""
    by_hour: dict[tuple[int, int], float] = defaultdict(float)
    regions = set()
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            by_hour[int(row["dow"]), int(row["hour"])] += float(row["traffic_share"])
            regions.add(row["region_id"])
    total = sum(by_hour.values())
    hourly = [sum(by_hour[d, h] for d in range(1, 8)) / total for h in range(24)]
    weekday = [sum(by_hour[d, h] for h in range(24)) / total * 7 for d in range(1, 8)]
    return {
        "format": "pacer.traffic/1",
        "name": "prior",
        "source": f"{csv_path.name}: {len(regions)} regions, hourly shares by weekday",
        "traffic_by_slot": [hourly[s // 12] / 12 for s in range(SLOTS)],
        "weekday_factor": weekday,
    }


def progress(
    mode: npt.NDArray[np.int8],
    t: F64,
    start: F64,
    end: F64,
    weight_t: F64,
    weight_start: F64,
    weight_end: F64,
) -> F64:
    """Fraction of the budget the curve says should be spent by t, for arrays of bidders.

    weight_* are TrafficCurve.weight at local t, start and end; they are only read for TRAFFIC bidders.
    """
    x = np.clip((t - start) / np.maximum(end - start, 1e-9), 0.0, 1.0)
    front = (1.0 + FRONTLOAD_A) * x - FRONTLOAD_A * x * x
    span = np.maximum(weight_end - weight_start, 1e-12)
    traffic = np.clip((weight_t - weight_start) / span, 0.0, 1.0)
    out = np.where(mode == FRONTLOAD, front, x)
    out = np.where(mode == TRAFFIC, traffic, out)
    return np.where(mode == ASAP, 1.0, out)
