"""bench.py: the pacing-quality benchmark (`make bench-quality`).

Every strategy replays the same synthetic day on fixed seeds: second and first price, stable traffic and a
shocked day (traffic x3 for an hour, -50% for three hours, competing bids x1.5 from noon), budgets from 1/64
to 1/2 of unpaced spend. Prints one table per scenario (means over bidders; worst delivery and overspend)
and writes them, the raw summaries and a comparison plot to --out.

    python -m pacer.replay.bench [--out DIR] [--bidders 12] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pacer.bidder_config import config_from_json
from pacer.config import Settings
from pacer.curves import TrafficCurve
from pacer.replay.metrics import metrics, summary
from pacer.replay.run import STRATEGIES, ReplayOptions, replay
from pacer.replay.synthetic import SyntheticSpec, generate

SCENARIOS = {
    "second price, stable": "auction=second",
    "second price, shocked": "auction=second,shock=true",
    "first price, stable": "auction=first",
    "first price, shocked": "auction=first,shock=true",
}
COLUMNS = (
    ("delivery", "delivery", "{:.2%}"),
    ("min_delivery", "min deliv.", "{:.2%}"),
    ("max_overspend", "overspend", "{:.2%}"),
    ("value_ratio", "value/opt", "{:.3f}"),
    ("smooth_rmse", "smooth rmse", "{:.3f}"),
    ("max_dev", "max dev", "{:.2%}"),
    ("volatility", "volatility", "{:.4f}"),
)


def _spec(scenario: str, bidders: int, seed: int) -> SyntheticSpec:
    return SyntheticSpec.parse(f"{SCENARIOS[scenario]},bidders={bidders},seed={seed},shape=prior,days=1")


def run_one(job: tuple[str, str, int, int, Path]) -> tuple[str, str, dict[str, object], float]:
    scenario, strategy, bidders, seed, plot_dir = job
    models = Path(Settings().models_dir)
    spec = _spec(scenario, bidders, seed)
    log, bodies = generate(spec, models)
    configs = {k: config_from_json(v) for k, v in bodies.items()}
    curve = TrafficCurve.load(models / "prior" / "traffic.json")
    started = time.perf_counter()
    result = replay(log, configs, curve, ReplayOptions(strategy=strategy, auction=spec.auction, seed=seed))
    doc = metrics(result)
    if plot_dir is not None and scenario == "second price, shocked":
        from pacer.replay.plots import spend_curve

        bidder = log.bidders[len(log.bidders) // 2]
        t, spend, target = spend_curve(result, bidder)
        doc["curve"] = {"bidder": bidder, "t": t.tolist(), "spend": spend.tolist(), "target": target.tolist()}
    return scenario, strategy, doc, time.perf_counter() - started


def table(scenario: str, rows: dict[str, dict[str, float]]) -> str:
    head = f"| {scenario} | " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    paced = [s for s in rows if s != "asap"]
    best_value = max(rows[s]["value_ratio"] for s in rows)
    best_rmse = min(rows[s]["smooth_rmse"] for s in paced)
    for strategy, s in rows.items():
        cells = []
        for key, _, fmt in COLUMNS:
            cell = fmt.format(s[key])
            if (key == "value_ratio" and s[key] == best_value) or (
                key == "smooth_rmse" and strategy in paced and s[key] == best_rmse
            ):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, dict[str, object]], path: Path) -> None:
    from datetime import UTC, datetime

    from pacer.replay.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    first = next(iter(curves.values()))
    times = first["t"]
    assert isinstance(times, list)  # as run_one builds it
    dates = [datetime.fromtimestamp(t, UTC) for t in times]
    ax.plot(dates, first["target"], color="0.3", linestyle="--", linewidth=2, label="target (traffic curve)")
    for strategy, c in curves.items():
        ax.plot(dates, c["spend"], label=strategy, linewidth=2 if strategy == "pacer" else 1)
    ax.set_title(f"Cumulative spend of {first['bidder']}, shocked day, second price")
    ax.set_ylabel("share of budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacer.replay.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-quality"))
    parser.add_argument("--bidders", type=int, default=12, help="bidders per scenario (budgets cycle 1/64..1/2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="replays run in parallel")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(sc, st, args.bidders, args.seed, args.out) for sc in SCENARIOS for st in STRATEGIES]
    results: dict[str, dict[str, dict[str, object]]] = {sc: {} for sc in SCENARIOS}
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        for scenario, strategy, doc, seconds in pool.map(run_one, jobs):
            results[scenario][strategy] = doc
            print(f"  {scenario:<24} {strategy:<9} {seconds:5.1f} s", file=sys.stderr, flush=True)
    summaries = {sc: {st: summary(doc) for st, doc in by.items()} for sc, by in results.items()}
    text = "\n\n".join(table(sc, rows) for sc, rows in summaries.items())
    print(text)
    print(
        f"\n{len(jobs)} replays in {time.perf_counter() - started:.0f} s; "
        f"{args.bidders} bidders x 1 day per scenario, seed {args.seed}",
        file=sys.stderr,
    )
    (args.out / "quality.md").write_text(text + "\n")
    (args.out / "quality.json").write_text(
        json.dumps(
            {
                sc: {st: {"summary": summaries[sc][st], "bidders": doc["bidders"]} for st, doc in by.items()}
                for sc, by in results.items()
            },
            indent=1,
        )
        + "\n"
    )
    curves = {st: doc["curve"] for st, doc in results["second price, shocked"].items() if "curve" in doc}
    if curves:
        plot(curves, args.out / "quality.png")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
