"""rolled.py: what the rollup hands the fit: its columns, units and price bins. No pyarrow and no SQL engine here,
so the engine (through the model validation it shares with the fit) loads neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BINS_PER_E = 20  # price bins: bin(x) = floor(ln(x) * 20), each about 5.1% wide
SLOT_MS = 300_000  # 5-minute slots
DAY_MS = 86_400_000

Columns = dict[str, npt.NDArray[np.generic]]


def bin_of(micros: float) -> int:
    return math.floor(math.log(micros) * BINS_PER_E)


@dataclass(frozen=True)
class Rollup:
    """The rollup's four parts, each a dict of equal-length numpy columns (`bidder` is an object array of str).
    Every count is weighted: a logged decision counts 1/sample, and so do its outcomes.

    - traffic: bidder, day (UTC epoch day: floor(ts_ms / DAY_MS)), slot (UTC 5-minute slot of that day, 0..287),
      n (decisions = auctions the bidder asked about), rows (raw log rows of that bidder there: decisions and
      outcomes, unweighted)
    - price: bidder, bin (bin of the win price), n (won decisions), price_sum (sum of their prices)
    - granted: bidder, bin (bin of the granted bid), n (granted decisions), wins (those of them won)
    - value: bidder, bin (bin of the requested bid), n (decisions)

    A win is joined to its decision on (bidder_id, auction_id); wins without a logged decision (the decision was
    not sampled) count in none of the parts, so sampling keeps the estimates unbiased. Duplicate rows of one
    auction count once.
    """

    traffic: Columns
    price: Columns
    granted: Columns
    value: Columns
    since_ms: int  # rows from here...
    until_ms: int  # ...up to here (exclusive)
