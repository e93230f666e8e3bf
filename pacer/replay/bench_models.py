"""bench_models.py: pacing with fitted spend curves against pacing with the prior (`make bench-models`).

The whole loop a production deployment runs, in virtual time: a week of auctions for bidders whose traffic has
each one real region's shape (from traffic_share.csv: up to 26x night to peak, unlike the fleet-average prior),
replayed by pacer with the prior and written as an auction log; `pacer refit` on that log (DuckDB rollup, numpy
fit); then the following days replayed twice, with the prior and with the fitted models. Both are judged on
smoothness against each bidder's own traffic in hindsight (the traffic-shaped target) and value / hindsight
optimum.

    python -m pacer.replay.bench_models [--out DIR] [--bidders 12] [--history-days 7] [--eval-days 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pacer.auctionlog import AuctionLogWriter
from pacer.bidder_config import config_from_json
from pacer.config import Settings
from pacer.curves import TrafficCurve
from pacer.refit.job import refit
from pacer.replay.auctions import AuctionLog
from pacer.replay.metrics import metrics, summary
from pacer.replay.run import ReplayOptions, replay
from pacer.replay.synthetic import SyntheticSpec, generate

COLUMNS = (
    ("delivery", "delivery", "{:.2%}"),
    ("max_overspend", "overspend", "{:.2%}"),
    ("traffic_rmse", "rmse vs own traffic", "{:.3f}"),
    ("value_ratio", "value/opt", "{:.3f}"),
    ("max_dev", "max dev (own curve)", "{:.2%}"),
)


def _part(log: AuctionLog, lo: float, hi: float) -> AuctionLog:
    keep = (log.ts >= lo) & (log.ts < hi)
    names = np.asarray(log.bidders, dtype=object)[log.bidder[keep]]
    return AuctionLog.from_columns(log.ts[keep], names, log.auction_id[keep], log.bid[keep], log.market[keep])


def run_scenario(job: tuple[str, int, int, int, int]) -> tuple[str, dict[str, dict[str, float]], dict[str, object]]:
    auction, bidders, history, evaluate, seed = job
    models_dir = Path(Settings().models_dir)
    spec = SyntheticSpec.parse(
        f"shape=regions,period=daily,pacing=traffic,auction={auction},bidders={bidders},"
        f"days={history + evaluate},seed={seed}"
    )
    log, bodies = generate(spec, models_dir)
    configs = {k: config_from_json(v) for k, v in bodies.items()}
    prior = TrafficCurve.load(models_dir / "prior" / "traffic.json")
    t0 = float(log.ts[0]) // 86400 * 86400
    split = t0 + history * 86400
    info: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="pacer-bench-models-") as tmp:
        writer = AuctionLogWriter(tmp, "bench")
        started = time.perf_counter()
        replay(_part(log, t0, split), configs, prior, ReplayOptions(auction=auction, seed=seed, log=writer))
        info["history_replay_s"] = round(time.perf_counter() - started, 1)
        info["log_rows"] = writer.written_rows
        started = time.perf_counter()
        outcomes = refit(tmp, t0, split, {}, prior)
        info["refit_s"] = round(time.perf_counter() - started, 1)
    models = {b: o.model for b, o in outcomes.items() if o.model is not None}
    info["fitted"] = f"{len(models)} of {len(outcomes)}"
    rejected = {b: o.reason for b, o in outcomes.items() if o.model is None}
    if rejected:
        info["rejected"] = rejected
    ahead = _part(log, split, split + evaluate * 86400)
    rows = {}
    for label, fitted in (("prior", None), ("fitted", models)):
        result = replay(ahead, configs, prior, ReplayOptions(auction=auction, seed=seed, models=fitted))
        rows[label] = summary(metrics(result))
    return auction, rows, info


def table(auction: str, rows: dict[str, dict[str, float]]) -> str:
    lines = [
        f"| {auction} price | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for label, s in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt.format(s[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacer.replay.bench_models", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-models"))
    parser.add_argument("--bidders", type=int, default=12)
    parser.add_argument("--history-days", type=int, default=7)
    parser.add_argument("--eval-days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(a, args.bidders, args.history_days, args.eval_days, args.seed) for a in ("second", "first")]
    started = time.perf_counter()
    results = {}
    with ProcessPoolExecutor(2) as pool:
        for auction, rows, info in pool.map(run_scenario, jobs):
            results[auction] = {"rows": rows, "info": info}
            print(f"  {auction} price: {json.dumps(info)}", file=sys.stderr, flush=True)
    text = "\n\n".join(table(a, r["rows"]) for a, r in results.items())  # type: ignore[arg-type]
    print(text)
    print(
        f"\n{time.perf_counter() - started:.0f} s; {args.bidders} bidders, {args.history_days} days of history, "
        f"{args.eval_days} days judged, seed {args.seed}",
        file=sys.stderr,
    )
    (args.out / "models.md").write_text(text + "\n")
    (args.out / "models.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
