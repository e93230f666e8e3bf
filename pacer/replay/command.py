"""command.py: `pacer replay`: replay a log (or a synthetic one) and write metrics and plots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pacer.auctionlog import AuctionLogWriter
from pacer.bidder_config import config_from_json
from pacer.config import Settings
from pacer.curves import TrafficCurve
from pacer.refit.job import file_name
from pacer.refit.model import validate
from pacer.replay.auctions import LogError, read_log
from pacer.replay.metrics import format_table, metrics
from pacer.replay.run import STRATEGIES, BiddersError, ReplayOptions, load_bidders, replay
from pacer.replay.synthetic import SpecError, SyntheticSpec, generate


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="replay an auction log through the engine in virtual time",
        description="Replay an auction log (CSV or Parquet) through the real engine in virtual "
        "time and report delivery, overspend, smoothness and value per bidder.",
    )
    p.add_argument(
        "log",
        nargs="?",
        type=Path,
        help="auction log: ts, bidder_id, auction_id, bid_micros, market_micros (CSV or .parquet)",
    )
    p.add_argument("--bidders", type=Path, help='JSON {"<bidder_id>": <PUT /v1/bidders body>, ...}')
    p.add_argument(
        "--synthetic",
        metavar="SPEC",
        help="generate the log and bidders instead: key=value,... "
        "(e.g. bidders=12,days=1,shape=regions,shock=true), a JSON object or a .json file",
    )
    p.add_argument("--out", type=Path, help="write metrics.json, metrics.txt and plots/ here")
    p.add_argument("--strategy", choices=STRATEGIES, default="pacer", help="pacer's controller or a baseline")
    p.add_argument(
        "--auction",
        choices=("first", "second"),
        default=None,
        help="price rule (default second; with --synthetic, the spec's)",
    )
    p.add_argument("--win-delay", type=float, default=1.0, help="mean win-notice delay in seconds (exponential)")
    p.add_argument("--loss-notices", action="store_true", help="the exchange also sends loss notices")
    p.add_argument("--tick", type=float, default=1.0, help="engine tick in virtual seconds (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine's and the notices' randomness")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument(
        "--log-out",
        type=Path,
        metavar="DIR",
        help="write the replay's decisions and outcomes here as "
        "an auction log (the service's format: Parquet by date/hour), e.g. to refit on",
    )
    p.add_argument(
        "--models",
        type=Path,
        metavar="DIR",
        help="pace with fitted models: DIR/<bidder_id>.json as written by `pacer refit --export DIR`",
    )


def load_models(folder: Path, bidders: list[str]) -> dict[str, dict[str, object]]:
    """DIR/<bidder_id>.json for each bidder that has one, validated (a bad file is an error, not skipped)."""
    if not folder.is_dir():
        raise ValueError(f"--models: {folder}: no such folder")
    models = {}
    for bidder_id in bidders:
        path = folder / file_name(bidder_id)
        if path.is_file():
            try:
                doc = json.loads(path.read_text())
                validate(doc)
            except (json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"--models: {path}: {exc}") from exc
            models[bidder_id] = doc
    return models


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (LogError, BiddersError, SpecError, ValueError, OSError) as exc:
        print(f"pacer replay: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    models = Path(settings.models_dir)
    if args.synthetic:
        if args.log or args.bidders:
            raise ValueError("give either LOG with --bidders, or --synthetic, not both")
        spec = SyntheticSpec.parse(args.synthetic)
        log, bodies = generate(spec, models)
        configs = {k: config_from_json(v) for k, v in bodies.items()}
        auction = args.auction or spec.auction
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            log.write(args.out / "auctions.parquet")
            (args.out / "bidders.json").write_text(json.dumps(bodies, indent=1) + "\n")
            (args.out / "spec.json").write_text(json.dumps(spec.to_json(), indent=1) + "\n")
    else:
        if not args.log or not args.bidders:
            raise ValueError("give LOG and --bidders BIDDERS.json (or --synthetic SPEC)")
        log = read_log(args.log)
        configs = load_bidders(args.bidders)
        auction = args.auction or "second"
    if len(log) == 0:
        raise ValueError("the log has no auctions")
    if args.win_delay < 0 or args.tick <= 0:
        raise ValueError("--win-delay must be >= 0 and --tick > 0")
    options = ReplayOptions(
        strategy=args.strategy,
        auction=auction,
        win_delay_s=args.win_delay,
        loss_notices=args.loss_notices,
        tick_s=args.tick,
        seed=args.seed,
        models=load_models(args.models, log.bidders) if args.models else None,
        log=AuctionLogWriter(str(args.log_out), "replay") if args.log_out else None,
    )
    curve = TrafficCurve.load(models / "prior" / "traffic.json")
    started = time.perf_counter()
    result = replay(log, configs, curve, options)
    doc = metrics(result)
    table = format_table(doc)
    print(table)
    print(
        f"{len(log)} auctions, {len(log.bidders)} bidders, replayed in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n")
        (args.out / "metrics.txt").write_text(table + "\n")
        if not args.no_plots:
            from pacer.replay.plots import plot_all

            plot_all(result, args.out / "plots")
    return 0
