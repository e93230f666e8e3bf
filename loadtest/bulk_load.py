"""bulk_load.py: how a real `pacer serve` copes with many budgets: load them with bulk PUTs, restart on them, page
through them, export them, scrape /metrics, and what they cost in memory (issue 14's figures).

    .venv/bin/python loadtest/bulk_load.py [--bidders 100000] [--store sqlite|redis]

Prints one markdown table. The server runs pinned to core 0 (bench.py's Server), this script on core 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import http, pacer, rfc3339, start_redis

PER_CALL = 10_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def histogram_mean(metrics: str, name: str) -> float:
    """Mean of a Prometheus histogram in `metrics` text: its _sum over its _count."""
    values = dict(line.split(" ", 1) for line in metrics.splitlines() if line.startswith(f"{name}_"))
    return float(values[f"{name}_sum"]) / max(1.0, float(values[f"{name}_count"]))


def timed_get(url: str, token: str, runs: int = 5) -> float:
    """Median seconds of `runs` GETs of `url` (the whole body read)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bidders", type=int, default=100_000)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    token = secrets.token_urlsafe(16)
    now = time.time()
    body = {
        "budget_micros": 10**9,
        "period": {"type": "flight", "start": rfc3339(now - 60), "end": rfc3339(now + 86400)},
        "pacing": "even",
    }
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="pacer-bulk-") as tmp:
        folder = Path(tmp)
        redis = None
        store = f"sqlite:///{folder}/pacer.db"
        if args.store == "redis":
            redis, port = start_redis(folder, "--appendonly", "yes", "--appendfsync", "always")
            store = f"redis://127.0.0.1:{port}/0"
        server = pacer("pacer", folder / "server", store, token, {"PACER_LOG_URL": ""})
        try:
            server.start()
            base_rss = rss_kb(server.pid)
            started = time.perf_counter()
            for lo in range(0, args.bidders, PER_CALL):
                ids = range(lo, min(args.bidders, lo + PER_CALL))
                reply = json.loads(
                    http(server.url + "/v1/bidders", "PUT", {"bidders": {f"b{i:07d}": body for i in ids}}, token)
                )
                assert reply["created"] == len(ids), reply
            load_s = time.perf_counter() - started
            rows.append(
                (
                    f"load {args.bidders:,} bidders, {PER_CALL:,} per PUT",
                    f"{load_s:.1f} s ({args.bidders / load_s:,.0f} bidders/s)",
                )
            )
            time.sleep(2.0)  # a few ticks and syncs over all of them
            rss = rss_kb(server.pid)
            middle = base64.urlsafe_b64encode(f"b{args.bidders // 2:07d}".encode()).decode()
            before = cpu_s(server.pid)
            time.sleep(5.0)
            rows.append(("idle CPU (no traffic, 5 s)", f"{(cpu_s(server.pid) - before) / 5.0:.0%} of a core"))
            metrics = http(server.url + "/metrics").decode()
            tick_ms = histogram_mean(metrics, "pacer_tick_seconds") * 1000
            lag_ms = histogram_mean(metrics, "pacer_event_loop_lag_seconds") * 1000
            rows.append(("tick, mean wall time (pacer_tick_seconds)", f"{tick_ms:.1f} ms"))
            rows.append(("event-loop lag, mean (pacer_event_loop_lag_seconds)", f"{lag_ms:.1f} ms"))
            rows.append(
                ("RSS per bidder (after - before the load)", f"{(rss - base_rss) * 1024 / args.bidders:,.0f} B")
            )
            rows.append(
                (
                    "GET /v1/bidders?limit=100, a page in the middle",
                    f"{timed_get(f'{server.url}/v1/bidders?limit=100&cursor={middle}', token) * 1000:.1f} ms",
                )
            )
            rows.append(("GET /metrics", f"{timed_get(server.url + '/metrics', token) * 1000:.1f} ms"))
            rows.append(
                (
                    "GET /v1/bidders?format=ndjson (all)",
                    f"{timed_get(server.url + '/v1/bidders?format=ndjson', token, runs=1):.1f} s",
                )
            )
            server.stop()
            started = time.perf_counter()
            server.start()
            rows.append(("restart until /readyz answers 200", f"{time.perf_counter() - started:.1f} s"))
        finally:
            server.stop()
            if redis is not None:
                redis.terminate()
                redis.wait()
    print(f"\n{args.bidders:,} bidders on {args.store} (`loadtest/bulk_load.py`)\n")
    print("| figure | measured |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
