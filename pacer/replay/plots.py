"""plots.py: PNGs of a replay, per bidder: cumulative spend against its target curve, and the pacing signals.

matplotlib (the `replay` extra) with the headless Agg backend; imported only when plots are asked for.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np

from pacer.replay.metrics import windows
from pacer.replay.run import ReplayResult


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("PNG plots need matplotlib: pip install 'pacer[replay]' (or pass --no-plots)") from exc
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _dates(ts: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in ts.tolist()]


def spend_curve(result: ReplayResult, bidder_id: str, points: int = 577) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, cumulative spend / budget, target / budget) over the bidder's periods."""
    log = result.log
    code = log.bidders.index(bidder_id)
    ws = windows(result, bidder_id)
    budget = result.configs[bidder_id].budget_micros
    times = np.linspace(ws[0].start, ws[-1].end, points)
    won = (log.bidder == code) & result.won
    paid_ts, paid = log.ts[won], result.price[won]
    spend = np.zeros(points)
    target = np.zeros(points)
    bidder = result.engine.bidders[bidder_id]
    for w in ws:  # daily budgets restart at each period
        inside = (times >= w.start) & (times <= w.end)
        in_w = (paid_ts >= w.start) & (paid_ts < w.end)
        cum = np.concatenate([[0], np.cumsum(paid[in_w])])
        spend[inside] = cum[np.searchsorted(paid_ts[in_w], times[inside], side="right")] / budget
        target[inside] = result.engine.target(bidder, times[inside], window=w)
    return times, spend, target


def plot_bidder(result: ReplayResult, bidder_id: str, path: Path) -> None:
    plt = _pyplot()
    times, spend, target = spend_curve(result, bidder_id)
    col = result.log.bidders.index(bidder_id)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2))
    top.plot(_dates(times), target, color="0.5", linestyle="--", label="target")
    top.plot(_dates(times), spend, color="C0", label="spend")
    top.set_ylabel("share of budget")
    top.set_title(
        f"{bidder_id}: {result.options.strategy}, {result.options.auction} price, "
        f"{result.configs[bidder_id].pacing} pacing"
    )
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    sample_dates = _dates(result.sample_t)
    bottom.plot(sample_dates, result.multiplier[:, col], color="C1", label="bid multiplier")
    bottom.plot(sample_dates, result.throttle[:, col], color="C2", label="throttle")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("signal")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_all(result: ReplayResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for bidder_id in result.log.bidders:
        path = out / f"{bidder_id}.png"
        plot_bidder(result, bidder_id, path)
        paths.append(path)
    return paths
