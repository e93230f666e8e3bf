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

from pacer.bidder_config import PACING_MODES

F64 = npt.NDArray[np.float64]

SLOTS = 288  # 5-minute slots of a local day
DAY = 86400.0
EPOCH_DOW = 3  # 1970-01-01 was a Thursday; Monday = 0
# frontload: F(x) = (1 + a) x - a x^2 with a = 0.4 spends 60% at half time and still 60% of the even
# rate at the very end (F'(1) = 1 - a), so the period ends without a cliff.
FRONTLOAD_A = 0.4

ASAP, EVEN, FRONTLOAD, TRAFFIC = 0, 1, 2, 3
MODES: dict[str, int] = dict(zip(PACING_MODES, (ASAP, EVEN, FRONTLOAD, TRAFFIC), strict=True))


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
        return _weight(self.cum, self.by_slot, self.week_cum, self.weekday_factor, local)

    @classmethod
    def load(cls, path: Path) -> TrafficCurve:
        doc = json.loads(path.read_text())
        return cls(doc["traffic_by_slot"], doc["weekday_factor"], doc.get("name", path.stem))

    @classmethod
    def flat(cls) -> TrafficCurve:
        return cls([1.0] * SLOTS, [1.0] * 7, "flat")


def _weight(
    cum: F64, by_slot: F64, week_cum: F64, weekday: F64, local: F64, rows: npt.NDArray[np.int64] | None = None
) -> F64:
    """The weight of one curve (1-D arrays), or of row `rows[i]` of a CurveTable (2-D arrays) for local[i]."""
    day = np.floor(local / DAY)
    frac = (local - day * DAY) / DAY * SLOTS
    slot = np.minimum(frac.astype(np.int64), SLOTS - 1)
    dow = ((day.astype(np.int64) + EPOCH_DOW) % 7).astype(np.int64)
    at_slot, at_dow = (slot, dow) if rows is None else ((rows, slot), (rows, dow))
    within = cum[at_slot] + (frac - slot) * by_slot[at_slot]
    weeks = np.floor((day + EPOCH_DOW) / 7)
    return weeks * 7.0 + week_cum[at_dow] + weekday[at_dow] * within


class CurveTable:
    """Every bidder's traffic curve as one row of a few arrays, so that a tick evaluates each bidder's own curve
    for all bidders in one vectorised step. Row 0 is the prior, for bidders without a fitted curve."""

    def __init__(self, prior: TrafficCurve) -> None:
        self.prior = prior
        self.by_slot = prior.by_slot[None, :].copy()
        self.cum = prior.cum[None, :].copy()
        self.weekday = prior.weekday_factor[None, :].copy()
        self.week_cum = prior.week_cum[None, :].copy()
        self.curves: list[TrafficCurve | None] = [prior]
        self._free: list[int] = []

    def add(self, curve: TrafficCurve) -> int:
        """A row for `curve` (a free one, or a new one: the arrays grow by doubling)."""
        if self._free:
            row = self._free.pop()
        else:
            row = len(self.curves)
            self.curves.append(None)
            if row >= self.cum.shape[0]:
                for name in ("by_slot", "cum", "weekday", "week_cum"):
                    old = getattr(self, name)
                    grown = np.zeros((2 * old.shape[0], old.shape[1]))
                    grown[: old.shape[0]] = old
                    setattr(self, name, grown)
        self.set(row, curve)
        return row

    def set(self, row: int, curve: TrafficCurve) -> None:
        self.curves[row] = curve
        self.by_slot[row], self.cum[row] = curve.by_slot, curve.cum
        self.weekday[row], self.week_cum[row] = curve.weekday_factor, curve.week_cum

    def release(self, row: int) -> None:
        if row:
            self.curves[row] = None
            self._free.append(row)

    def weight(self, rows: npt.NDArray[np.int64], local: F64) -> F64:
        """TrafficCurve.weight of curve rows[i] at local[i], for all i at once."""
        return _weight(self.cum, self.by_slot, self.week_cum, self.weekday, local, rows)


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
