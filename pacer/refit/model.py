"""model.py: the per-bidder model artifact (pacer.model/1): fitted from a rollup, validated wherever it comes from,
and read by the controller as expected spend per auction for a bid multiplier. No I/O: callers store the dicts.

    {"format": "pacer.model/1", "bidder_id", "fitted_at", "rows", "timezone", "since", "until",
     "data": {"days", "decisions", "granted", "wins", "spend_micros"},
     "traffic_by_slot": [288], "weekday_factor": [7],
     "traffic": {"bandwidth_slots", "cv_error", "own_weight", "weekday_own_weight"},
     "landscape": {"auction", "bid_micros", "win_rate", "avg_price_micros", "calibration_error"} | null,
     "value": {"bid_micros", "share"} | null,
     "fit_error": {"traffic_cv", "landscape_calibration"}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pacer.curves import SLOTS, TrafficCurve
from pacer.periods import parse_rfc3339, rfc3339
from pacer.refit.landscape import FIRST, MAX_POINTS, SECOND, Landscape, fit_landscape
from pacer.refit.rolled import BINS_PER_E, Columns, Rollup
from pacer.refit.traffic import BANDWIDTHS, HALF_LIFE_DAYS, TrafficFit, fit_traffic, group_by_bidder

F64 = npt.NDArray[np.float64]

FORMAT = "pacer.model/1"
SUM_TOLERANCE = 1e-6  # shares sum to 1 and weekday factors average 1 within this (float round-off only)
PRICE_TOLERANCE = 1.0  # micros: grid bids are rounded to whole micros, prices are not


class ModelError(ValueError):
    """A model that must not be used; the message says why."""


@dataclass(frozen=True)
class FitParams:
    min_decisions: float = 2000.0  # fewer weighted decisions: no model, the bidder keeps the fleet default
    min_days: float = 1.0  # less exposure than this (days of logging) cannot show a daily shape
    half_life_days: float = HALF_LIFE_DAYS
    bandwidths: tuple[float, ...] = BANDWIDTHS
    max_points: int = MAX_POINTS


@dataclass(frozen=True)
class FitOutcome:
    bidder_id: str
    model: dict[str, Any] | None  # a validated pacer.model/1 document; None when rejected
    reason: str | None  # why rejected
    summary: dict[str, float]  # what the fit saw (rows, decisions, days, granted, wins, spend_micros), always set


def fit_bidders(
    rollup: Rollup,
    timezones: dict[str, str],
    prior: TrafficCurve,
    fitted_at: float,
    params: FitParams | None = None,
    auction: str | None = None,
) -> dict[str, FitOutcome]:
    """Fit every bidder in the rollup (any part). `fitted_at` is epoch seconds; `auction` ("first"/"second")
    overrides the per-bidder detection of the auction type."""
    if auction not in (None, FIRST, SECOND):
        raise ValueError(f"auction must be {FIRST!r}, {SECOND!r} or None, not {auction!r}")
    params = params or FitParams()
    traffic = fit_traffic(rollup, timezones, prior, params.half_life_days, params.bandwidths)
    price, granted, value = (_split(part) for part in (rollup.price, rollup.granted, rollup.value))
    bidders = sorted(set(traffic.bidders) | set(price) | set(granted) | set(value))
    header = {
        "fitted_at": rfc3339(fitted_at),
        "since": rfc3339(rollup.since_ms / 1000),
        "until": rfc3339(rollup.until_ms / 1000),
    }
    out = {}
    for bidder in bidders:
        parts = (price.get(bidder, {}), granted.get(bidder, {}), value.get(bidder, {}))
        tz = timezones.get(bidder, "UTC")
        out[bidder] = _fit_one(bidder, tz, traffic.bidders.get(bidder), *parts, header, params, auction)
    return out


def _split(part: Columns) -> dict[str, Columns]:
    if len(part.get("bidder", ())) == 0:
        return {}
    return {b: {k: col[idx] for k, col in part.items()} for b, idx in group_by_bidder(part["bidder"]).items()}


def _total(part: Columns, key: str) -> float:
    return float(np.sum(part[key])) if key in part else 0.0


def _fit_one(
    bidder: str,
    tz: str,
    traffic: TrafficFit | None,
    price: Columns,
    granted: Columns,
    value: Columns,
    header: dict[str, str],
    params: FitParams,
    auction: str | None,
) -> FitOutcome:
    data = {
        "days": traffic.days if traffic else 0.0,
        "decisions": traffic.decisions if traffic else 0.0,
        "granted": _total(granted, "n"),
        "wins": _total(granted, "wins"),
        "spend_micros": round(_total(price, "price_sum")),
    }
    rows = traffic.rows if traffic else 0
    summary: dict[str, float] = {"rows": rows, **data}
    if traffic is None or traffic.decisions < params.min_decisions:
        reason = f"too little data: {data['decisions']:.0f} decisions < {params.min_decisions:.0f}"
        return FitOutcome(bidder, None, reason, summary)
    if traffic.days < params.min_days:
        reason = f"too little data: {traffic.days:.2f} days of exposure < {params.min_days:g}"
        return FitOutcome(bidder, None, reason, summary)
    landscape = fit_landscape(price, granted, auction, params.max_points) if len(granted.get("bin", ())) else None
    doc = {
        "format": FORMAT,
        "bidder_id": bidder,
        "fitted_at": header["fitted_at"],
        "rows": rows,
        "timezone": tz,
        "since": header["since"],
        "until": header["until"],
        "data": data,
        "traffic_by_slot": traffic.by_slot.tolist(),
        "weekday_factor": traffic.weekday_factor.tolist(),
        "traffic": {
            "bandwidth_slots": traffic.bandwidth_slots,
            "cv_error": traffic.cv_error,
            "own_weight": traffic.own_weight,
            "weekday_own_weight": traffic.weekday_own_weight,
        },
        "landscape": _landscape_doc(landscape),
        "value": _value_doc(value),
        "fit_error": {
            "traffic_cv": traffic.cv_error,
            "landscape_calibration": landscape.calibration_error if landscape else None,
        },
    }
    try:
        validate(doc)
    except ModelError as e:
        return FitOutcome(bidder, None, str(e), summary)
    return FitOutcome(bidder, doc, None, summary)


def _landscape_doc(land: Landscape | None) -> dict[str, Any] | None:
    if land is None:
        return None
    return {
        "auction": land.auction,
        "bid_micros": land.bid_micros.tolist(),
        "win_rate": land.win_rate.tolist(),
        "avg_price_micros": land.avg_price_micros.tolist(),
        "calibration_error": land.calibration_error,
    }


def _value_doc(value: Columns) -> dict[str, Any] | None:
    """Requested bids as a distribution over bin mids (whole micros; bins that round alike merge)."""
    if _total(value, "n") <= 0:
        return None
    mids = np.round(np.exp((np.asarray(value["bin"], np.float64) + 0.5) / BINS_PER_E)).astype(np.int64)
    bids, inverse = np.unique(np.maximum(mids, 1), return_inverse=True)
    n = np.bincount(inverse, weights=np.asarray(value["n"], np.float64))
    return {"bid_micros": bids.tolist(), "share": (n / n.sum()).tolist()}


def _vector(obj: dict[str, Any], key: str, where: str, length: int | None = None) -> F64:
    """obj[key] as a finite float vector, or a ModelError naming it."""
    name = f"{where}.{key}" if where else key
    items = obj.get(key)
    if not isinstance(items, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in items):
        raise ModelError(f"{name}: must be a list of numbers")
    if length is not None and len(items) != length:
        raise ModelError(f"{name}: must have {length} values, has {len(items)}")
    vec = np.asarray(items, dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        raise ModelError(f"NaN in {name} (or an infinite value)")
    return vec


def _number(obj: dict[str, Any], key: str, where: str, optional: bool = False) -> None:
    value = obj.get(key)
    if value is None and optional:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ModelError(f"{where}.{key}: must be a finite non-negative number, not {value!r}")


def _section(doc: dict[str, Any], key: str, nullable: bool = False) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise ModelError(f"{key}: must be an object")
    return value


def validate(doc: object) -> None:
    """Raise ModelError saying what is wrong, or return: for fresh fits and for models loaded from anywhere."""
    if not isinstance(doc, dict):
        raise ModelError("model must be a JSON object")
    if doc.get("format") != FORMAT:
        raise ModelError(f"format must be {FORMAT!r}, not {doc.get('format')!r}")
    for key in ("bidder_id", "timezone", "fitted_at", "since", "until"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ModelError(f"{key}: must be a non-empty string")
    for key in ("fitted_at", "since", "until"):
        if parse_rfc3339(doc[key]) is None:
            raise ModelError(f"{key}: not an RFC 3339 time: {doc[key]!r}")
    if not isinstance(doc.get("rows"), int) or isinstance(doc["rows"], bool) or doc["rows"] < 0:
        raise ModelError("rows: must be a non-negative integer")
    data = _section(doc, "data") or {}
    for key in ("days", "decisions", "granted", "wins", "spend_micros"):
        _number(data, key, "data")
    _check_traffic(doc)
    land = _section(doc, "landscape", nullable=True)
    if land is not None:
        _check_landscape(land)
    value = _section(doc, "value", nullable=True)
    if value is None and land is not None:
        raise ModelError("value: requested bids are needed with a landscape (to predict spend)")
    if value is not None:
        bids = _vector(value, "bid_micros", "value")
        share = _vector(value, "share", "value", len(bids))
        if len(bids) == 0 or np.any(bids <= 0) or np.any(np.diff(bids) <= 0):
            raise ModelError("value.bid_micros: must be positive and strictly ascending")
        if np.any(share < 0) or abs(share.sum() - 1.0) > SUM_TOLERANCE:
            raise ModelError(f"value.share: must be non-negative and sum to 1 (sums to {share.sum():.9g})")
    errors = _section(doc, "fit_error") or {}
    _number(errors, "traffic_cv", "fit_error", optional=True)
    _number(errors, "landscape_calibration", "fit_error", optional=True)


def _check_traffic(doc: dict[str, Any]) -> None:
    slots = _vector(doc, "traffic_by_slot", "", SLOTS)
    if np.any(slots < 0) or abs(slots.sum() - 1.0) > SUM_TOLERANCE:
        raise ModelError(f"traffic curve is not a distribution: negative share or sum {slots.sum():.9g} != 1")
    week = _vector(doc, "weekday_factor", "", 7)
    if np.any(week <= 0) or abs(week.mean() - 1.0) > SUM_TOLERANCE:
        raise ModelError(f"weekday_factor: must be positive with mean 1 (mean {week.mean():.9g})")
    fit = _section(doc, "traffic") or {}
    _number(fit, "bandwidth_slots", "traffic")
    _number(fit, "cv_error", "traffic", optional=True)
    for key in ("own_weight", "weekday_own_weight"):
        _number(fit, key, "traffic")
        if fit[key] > 1:
            raise ModelError(f"traffic.{key}: must be in [0, 1], not {fit[key]!r}")


def _check_landscape(land: dict[str, Any]) -> None:
    if land.get("auction") not in (FIRST, SECOND):
        raise ModelError(f"landscape.auction: must be {FIRST!r} or {SECOND!r}, not {land.get('auction')!r}")
    raw_bids = land.get("bid_micros")
    if not isinstance(raw_bids, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in raw_bids):
        raise ModelError("landscape.bid_micros: must be a list of integers")
    bids = _vector(land, "bid_micros", "landscape")
    if len(bids) == 0 or bids[0] <= 0 or np.any(np.diff(bids) <= 0):
        raise ModelError("landscape.bid_micros: must be positive and strictly ascending")
    win = _vector(land, "win_rate", "landscape", len(bids))
    price = _vector(land, "avg_price_micros", "landscape", len(bids))
    if np.any(win < 0) or np.any(win > 1) or np.any(np.diff(win) < 0):
        raise ModelError("landscape.win_rate: must be non-decreasing within [0, 1]")
    if np.any(price > bids + PRICE_TOLERANCE) or np.any((win > 0) & (price <= 0)):
        raise ModelError("landscape.avg_price_micros: must be positive and at most the bid")
    _number(land, "calibration_error", "landscape")


def spend_per_auction(doc: dict[str, Any], multipliers: npt.ArrayLike) -> F64:
    """Expected spend (micros) per auction if every requested bid v becomes m * v: sum_v share(v) W(m v) C(m v).

    W * C (= E[price; win], the partial expectation) is interpolated in log-bid, 0 below the grid and its top value
    above it; interpolating W and C apart could dip between grid points, while this is non-decreasing in m."""
    land, value = doc.get("landscape"), doc.get("value")
    if land is None or value is None:
        raise ModelError(f"{doc.get('bidder_id')}: no landscape or no requested bids to predict spend from")
    m = np.asarray(multipliers, dtype=np.float64)
    grid = np.log(np.asarray(land["bid_micros"], dtype=np.float64))
    paid = np.maximum.accumulate(np.asarray(land["win_rate"]) * np.asarray(land["avg_price_micros"]))
    bids = m.reshape(-1, 1) * np.asarray(value["bid_micros"], dtype=np.float64)
    per_bid = np.interp(np.log(np.maximum(bids, np.finfo(np.float64).tiny)), grid, paid, left=0.0)
    return np.asarray(per_bid @ np.asarray(value["share"], dtype=np.float64), dtype=np.float64).reshape(m.shape)
