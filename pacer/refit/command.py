"""command.py: `pacer refit`: fit spend curves from the auction log, then publish them and/or export them."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from pacer.config import Settings
from pacer.curves import TrafficCurve
from pacer.periods import PeriodError, parse_period
from pacer.refit.job import export, parse_since, publish, refit, report
from pacer.refit.model import FitOutcome
from pacer.refit.rollup import LogError
from pacer.store import StoreError, open_store

SHOWN = 40  # bidders listed in the printed table; the rest are summed up


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "refit",
        help="fit spend curves (traffic curve, bid landscape) from the auction log",
        description="Roll the auction log up (DuckDB, or Spark), fit each bidder's traffic curve and "
        "bid landscape, validate them, and publish the good ones through the store "
        "(every instance uses them within one sync). A fit that fails validation never "
        "replaces a good model; its reason shows in the bidder's status.",
    )
    p.add_argument("--logs", help="log root: a folder or a URI such as s3://bucket/prefix (default PACER_LOG_URL)")
    p.add_argument(
        "--since", default=None, help="history to fit on: 7d, 36h, 90m or RFC 3339 (default PACER_REFIT_SINCE, 7d)"
    )
    p.add_argument("--until", default=None, help="end of the history, RFC 3339 (default now)")
    p.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default=None,
        help="where the rollup SQL runs (default PACER_REFIT_ENGINE)",
    )
    p.add_argument("--spark-master", default=None, help="Spark master URL (default PACER_SPARK_MASTER or local[*])")
    p.add_argument(
        "--auction",
        choices=("first", "second"),
        default=None,
        help="price rule of the exchange (default: detected from the log)",
    )
    p.add_argument(
        "--timezones",
        type=Path,
        help='JSON {"<bidder_id>": "<IANA zone>"}: the local day of each '
        "bidder's curve (default: the store's bidder configs, else UTC)",
    )
    p.add_argument("--export", type=Path, metavar="OUT", help="also write OUT/<bidder_id>.json per fitted bidder")
    p.add_argument("--report", type=Path, help="write every outcome (models and rejections) to this JSON file")
    p.add_argument("--store", help="store to publish to (default PACER_STORE)")
    p.add_argument("--no-publish", action="store_true", help="do not publish; only --export / --report")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (LogError, ValueError, StoreError) as exc:
        print(f"pacer refit: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    now = time.time()
    until = parse_since(args.until, now) if args.until else now
    since = parse_since(args.since or settings.refit_since, until if args.until else now)
    if since >= until:
        raise ValueError("--since must be before --until")
    logs = args.logs or settings.log_url
    if not logs:
        raise ValueError("no log: give --logs or set PACER_LOG_URL")
    store_url = args.store or settings.store
    timezones = _timezones(args.timezones) if args.timezones else {}
    store = None
    if not args.no_publish:
        # A private journal folder: publishing models writes no spend, and must not adopt a live journal.
        store = open_store(store_url, Path(tempfile.mkdtemp(prefix="pacer-refit-")))
        await store.open()
    try:
        if store is not None and not args.timezones:
            timezones = {
                r.bidder_id: str(period["timezone"])
                for r in await store.load_bidders()
                if isinstance(period := r.config["period"], dict) and "timezone" in period  # always a dict
            }
        prior = TrafficCurve.load(Path(settings.models_dir) / "prior" / "traffic.json")
        started = time.perf_counter()
        outcomes = refit(
            logs,
            since,
            until,
            timezones,
            prior,
            engine=args.engine or settings.refit_engine,
            spark_master=args.spark_master or settings.spark_master,
            auction=args.auction,
        )
        print(_table(outcomes))
        print(f"refit of {logs} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if args.export:
            n = export(outcomes, args.export)
            print(f"exported {n} model(s) to {args.export}", file=sys.stderr)
        rows = report(outcomes)
        if args.report:
            args.report.write_text(json.dumps(rows, allow_nan=False) + "\n")
        if store is not None:
            seq = await publish(store, rows)
            print(f"published to {store_url} (seq {seq})", file=sys.stderr)
    finally:
        if store is not None:
            await store.close()
    return 0


def _timezones(path: Path) -> dict[str, str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--timezones: {path}: not a readable JSON file: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ValueError(f'--timezones: {path}: expected {{"<bidder_id>": "<IANA zone>", ...}}')
    for bidder_id, zone in doc.items():
        try:
            parse_period({"type": "daily", "timezone": zone})
        except PeriodError as exc:
            raise ValueError(f"--timezones: {path}: {bidder_id}: {exc.message}") from None
    return doc


def _table(outcomes: dict[str, FitOutcome]) -> str:
    head = f"{'bidder':<16} {'rows':>9} {'decisions':>10} {'days':>5} {'traffic cv':>10} {'landscape':>9}  result"
    lines = [head, "-" * len(head)]
    for bidder_id, o in list(outcomes.items())[:SHOWN]:
        s = o.summary
        doc = o.model or {}
        err = doc.get("fit_error") or {}
        cv, cal = err.get("traffic_cv"), err.get("landscape_calibration")
        result = (
            f"fitted (bandwidth {doc['traffic']['bandwidth_slots']} slots, own weight "
            f"{doc['traffic']['own_weight']:.2f})"
            if o.model
            else f"rejected: {o.reason}"
        )
        lines.append(
            f"{bidder_id[:16]:<16} {s.get('rows', 0):>9} {s.get('decisions', 0):>10.0f} "
            f"{s.get('days', 0):>5.1f} {_num(cv):>10} {_num(cal):>9}  {result}"
        )
    good = sum(o.model is not None for o in outcomes.values())
    if len(outcomes) > SHOWN:
        lines.append(f"... and {len(outcomes) - SHOWN} more")
    lines.append(f"{good} fitted, {len(outcomes) - good} rejected (a rejected fit keeps the model in use)")
    return "\n".join(lines)


def _num(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, int | float) else "-"
