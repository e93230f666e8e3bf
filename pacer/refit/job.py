"""job.py: one refit: roll the log up (DuckDB or Spark), fit every bidder (numpy), and hand the outcomes on:
as files (`--export`), as a report for the service that started the job, or published through the store."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import quote

from pacer.curves import TrafficCurve
from pacer.periods import parse_rfc3339, rfc3339
from pacer.refit.model import FitOutcome, fit_bidders
from pacer.refit.rollup import rollup
from pacer.store import Store

_SPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)([dhm])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0}


def parse_since(text: str, now: float) -> float:
    """`7d`, `36h`, `90m` before now, or an RFC 3339 instant. Raises ValueError naming the flag."""
    match = _SPAN.fullmatch(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    parsed = parse_rfc3339(text.strip())
    if parsed is None:
        raise ValueError(f"--since: {text!r} is neither a span like 7d, 36h, 90m nor RFC 3339 with an offset")
    return parsed.timestamp()


def refit(
    logs_url: str,
    since: float,
    until: float,
    timezones: dict[str, str],
    prior: TrafficCurve,
    engine: str = "duckdb",
    spark_master: str | None = None,
    auction: str | None = None,
) -> dict[str, FitOutcome]:
    """Fit every bidder with log rows in [since, until). Raises LogError for logs that cannot be read."""
    rolled = rollup(logs_url, int(since * 1000), int(until * 1000), engine=engine, spark_master=spark_master)
    return fit_bidders(rolled, timezones, prior, fitted_at=time.time(), auction=auction)


def fit_status(outcome: FitOutcome) -> dict[str, object]:
    """What the store keeps about an attempt, good or not (status pages show it)."""
    return {"at": rfc3339(time.time()), "ok": outcome.model is not None, "reason": outcome.reason, **outcome.summary}


def file_name(bidder_id: str) -> str:
    """`<bidder_id>.json`, with anything that is not safe in a file name percent-encoded (ids are free text)."""
    name = quote(bidder_id, safe="-_.")
    return ("%2E" + name[1:] if name.startswith(".") else name) + ".json"


def export(outcomes: dict[str, FitOutcome], out: Path) -> int:
    """One JSON per bidder with a good model: OUT/<bidder_id>.json. Returns how many were written."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for bidder_id, outcome in outcomes.items():
        if outcome.model is not None:
            (out / file_name(bidder_id)).write_text(json.dumps(outcome.model, indent=1, allow_nan=False) + "\n")
            written += 1
    return written


def report(outcomes: dict[str, FitOutcome]) -> list[dict[str, object]]:
    """Every outcome as JSON: what a service reads back from a refit it ran as a subprocess."""
    return [{"bidder_id": b, "model": o.model, "fit": fit_status(o)} for b, o in outcomes.items()]


async def publish(store: Store, rows: list[dict[str, object]]) -> int:
    """Publish a report's outcomes: good models replace the current ones, rejected fits only say why."""
    fits = [(str(r["bidder_id"]), r["model"], r["fit"]) for r in rows]
    return await store.publish_fits(fits) if fits else 0  # type: ignore[arg-type]
