"""metrics.py: judge a replay by what it did to the money.

Per bidder and period: delivery (spend / budget), overspend, when the budget ran out, smoothness against the
bidder's own target curve (RMSE of per-slot spend, max deviation of cumulative spend) and against its own traffic
in hindsight (what a traffic-shaped target should have been), value won against the hindsight optimum, eCPM
and how much the pacing signal moved. A bidder with daily budgets is judged per day and the days are added up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacer.periods import Flight, Window, rfc3339, window_at
from pacer.replay.run import ReplayResult

I64 = npt.NDArray[np.int64]
EXHAUSTED = 0.99  # a budget counts as run out once 99% of it is spent
MAX_SLOTS = 288


def optimum(value: I64, cost: I64, budget: int) -> float:
    """The hindsight optimum: the most value `budget` buys with full knowledge of every auction's price.

    A fractional knapsack: take auctions by value per unit of cost, best first, the last one in part. An
    auction's cost is its competing bid, the least anyone could have paid for it (first and second price alike);
    auctions at cost 0 are free and always taken.
    """
    v = value.astype(np.float64)
    c = cost.astype(np.float64)
    free = c <= 0
    total = float(v[free].sum())
    v, c = v[~free], c[~free]
    order = np.argsort(-v / c, kind="stable")
    v, c = v[order], c[order]
    spent = np.cumsum(c)
    k = int(np.searchsorted(spent, budget, side="right"))  # auctions [0, k) fit whole
    total += float(v[:k].sum())
    if k < v.shape[0]:
        left = budget - (float(spent[k - 1]) if k else 0.0)
        total += v[k] * left / c[k]
    return total


@dataclass(frozen=True)
class PeriodMetrics:
    budget: int
    spend: int
    wins: int
    value: int
    opt_value: float
    max_dev: float  # max |cumulative spend - target| / budget over slot edges
    sq_err: float  # sum over slots of ((slot spend - slot target) / mean slot target)^2
    traffic_sq_err: float  # the same against the bidder's own traffic in hindsight (its auctions per slot)
    slots: int
    exhausted_at: float | None


def windows(result: ReplayResult, bidder_id: str) -> list[Window]:
    """The periods of a bidder the log covers."""
    period = result.configs[bidder_id].period
    if isinstance(period, Flight):
        return [window_at(period, period.start)]
    first, last = float(result.log.ts[0]), float(result.log.ts[-1])
    out = [window_at(period, first)]
    while out[-1].end <= last:
        out.append(window_at(period, out[-1].end))
    return out


def period_metrics(result: ReplayResult, bidder_id: str, w: Window) -> PeriodMetrics:
    log = result.log
    code = log.bidders.index(bidder_id)
    mask = (log.bidder == code) & (log.ts >= w.start) & (log.ts < w.end)
    won = mask & result.won
    budget = result.configs[bidder_id].budget_micros
    paid = result.price[won]
    spend = int(paid.sum())
    slots = max(1, min(MAX_SLOTS, int(np.ceil((w.end - w.start) / 300.0))))
    edges = np.linspace(w.start, w.end, slots + 1)
    bidder = result.engine.bidders[bidder_id]
    target = budget * result.engine.target(bidder, edges, window=w)
    slot_spend = np.histogram(log.ts[won], bins=edges, weights=paid)[0]
    cum = np.concatenate([[0.0], np.cumsum(slot_spend)])
    per_slot = budget / slots
    sq_err = float((((slot_spend - np.diff(target)) / per_slot) ** 2).sum())
    auctions = np.histogram(log.ts[mask], bins=edges)[0]
    traffic_target = budget * auctions / max(int(auctions.sum()), 1)
    traffic_sq_err = float((((slot_spend - traffic_target) / per_slot) ** 2).sum())
    running = np.cumsum(paid)
    hit = np.flatnonzero(running >= EXHAUSTED * budget)
    return PeriodMetrics(
        budget=budget,
        spend=spend,
        wins=int(won.sum()),
        value=int(log.bid[won].sum()),
        opt_value=optimum(log.bid[mask], log.market[mask], budget),
        max_dev=float(np.abs(cum - target).max() / budget),
        sq_err=sq_err,
        traffic_sq_err=traffic_sq_err,
        slots=slots,
        exhausted_at=float(log.ts[won][hit[0]]) if hit.size else None,
    )


def signal_volatility(result: ReplayResult, bidder_id: str, start: float, end: float) -> float:
    """Mean |change| of the effective pacing signal (throttle x multiplier) between samples in the period."""
    col = result.log.bidders.index(bidder_id)
    inside = (result.sample_t >= start) & (result.sample_t < end)
    signal = (result.throttle[:, col] * result.multiplier[:, col])[inside]
    return float(np.abs(np.diff(signal)).mean()) if signal.shape[0] > 1 else 0.0


def bidder_metrics(result: ReplayResult, bidder_id: str) -> dict[str, object]:
    ws = windows(result, bidder_id)
    parts = [period_metrics(result, bidder_id, w) for w in ws]
    budget = sum(p.budget for p in parts)
    spend = sum(p.spend for p in parts)
    wins = sum(p.wins for p in parts)
    value = sum(p.value for p in parts)
    opt = sum(p.opt_value for p in parts)
    over = sum(max(p.spend - p.budget, 0) for p in parts)
    exhausted = [p.exhausted_at for p in parts if p.exhausted_at is not None]
    return {
        "budget_micros": budget,
        "spend_micros": spend,
        "delivery": spend / budget,
        "overspend": over / budget,  # share of the budget spent beyond it
        "value": value,
        "opt_value": round(opt, 1),
        "value_ratio": value / opt if opt else 0.0,
        "max_dev": max(p.max_dev for p in parts),
        "smooth_rmse": float(np.sqrt(sum(p.sq_err for p in parts) / sum(p.slots for p in parts))),
        "traffic_rmse": float(np.sqrt(sum(p.traffic_sq_err for p in parts) / sum(p.slots for p in parts))),
        "exhausted_at": rfc3339(min(exhausted)) if exhausted else None,
        "ecpm_micros": spend * 1000 // wins if wins else 0,
        "wins": wins,
        "signal_volatility": signal_volatility(result, bidder_id, ws[0].start, ws[-1].end),
        "periods": len(parts),
    }


def metrics(result: ReplayResult) -> dict[str, object]:
    """The document written to metrics.json."""
    return {
        "strategy": result.options.strategy,
        "auction": result.options.auction,
        "bidders": {b: bidder_metrics(result, b) for b in result.log.bidders},
    }


def summary(doc: dict[str, object]) -> dict[str, float]:
    """One row for a whole replay: means over bidders, and the worst delivery and overspend."""
    bidders = doc["bidders"]
    assert isinstance(bidders, dict)  # as metrics() builds it
    rows = list(bidders.values())

    def col(key: str) -> npt.NDArray[np.float64]:
        return np.array([r[key] for r in rows], dtype=np.float64)

    return {
        "delivery": float(col("delivery").mean()),
        "min_delivery": float(col("delivery").min()),
        "delivered_99": float((col("delivery") >= 0.99).mean()),
        "max_overspend": float(col("overspend").max()),
        "value_ratio": float(col("value_ratio").mean()),
        "smooth_rmse": float(col("smooth_rmse").mean()),
        "traffic_rmse": float(col("traffic_rmse").mean()),
        "max_dev": float(col("max_dev").mean()),
        "volatility": float(col("signal_volatility").mean()),
    }


def format_table(doc: dict[str, object]) -> str:
    head = (
        f"{'bidder':<12} {'budget':>12} {'delivery':>8} {'over':>6} {'value/opt':>9} {'max_dev':>7} "
        f"{'rmse':>6} {'eCPM':>7} {'vol':>6}  exhausted_at"
    )
    lines = [f"strategy {doc['strategy']}, {doc.get('auction', 'second')} price", head, "-" * len(head)]
    bidders = doc["bidders"]
    assert isinstance(bidders, dict)  # as metrics() builds it
    for name, r in bidders.items():
        lines.append(
            f"{name:<12} {r['budget_micros']:>12} {r['delivery']:>8.2%} {r['overspend']:>6.2%} "
            f"{r['value_ratio']:>9.3f} {r['max_dev']:>7.2%} {r['smooth_rmse']:>6.3f} {r['ecpm_micros']:>7} "
            f"{r['signal_volatility']:>6.4f}  {r['exhausted_at'] or '-'}"
        )
    s = summary(doc)
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':<12} {'':>12} {s['delivery']:>8.2%} {s['max_overspend']:>6.2%} {s['value_ratio']:>9.3f} "
        f"{s['max_dev']:>7.2%} {s['smooth_rmse']:>6.3f} {'':>7} {s['volatility']:>6.4f}  "
        f"(min delivery {s['min_delivery']:.2%}, {s['delivered_99']:.0%} of bidders >= 99%)"
    )
    return "\n".join(lines)
