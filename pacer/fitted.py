"""fitted.py: a bidder's published spend-curve model as the engine uses it, built once when it arrives (never
per tick or per bid): its traffic curve, and its spend per auction at each feed-forward multiplier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacer.controller import FF_GRID
from pacer.curves import TrafficCurve
from pacer.refit.model import spend_per_auction, validate
from pacer.store import ModelRecord

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FittedModel:
    version: int
    doc: dict[str, object]  # the artifact (format pacer.model/1)
    fit: dict[str, object]  # the last fit attempt, good or rejected
    curve: TrafficCurve
    spend: F64 | None  # expected spend per auction (micros) at each FF_GRID multiplier; None without a landscape
    level: float  # auctions per unit of curve weight (about one average day) in the data it was fitted on

    @classmethod
    def from_record(cls, record: ModelRecord) -> FittedModel | None:
        """None when the record holds no good model yet. Raises ModelError (ValueError) for a model that does
        not validate: whatever wrote it, a bad model is never used."""
        doc = record.model
        if doc is None:
            return None
        validate(doc)
        by_slot, weekday = doc["traffic_by_slot"], doc["weekday_factor"]
        assert isinstance(by_slot, list) and isinstance(weekday, list)  # validate() checked both
        curve = TrafficCurve(by_slot, weekday, f"{record.bidder_id} v{record.version}")
        data = doc["data"]
        assert isinstance(data, dict)
        days = float(data["days"])
        level = float(data["decisions"]) / days if days > 0 else 0.0
        spend = spend_per_auction(doc, FF_GRID) if doc.get("landscape") else None
        return cls(record.version, doc, record.fit, curve, spend, level)
