"""bench_events.py: POST /v1/events throughput, fleet mode (Redis store) next to embedded mode (SQLite store).

    .venv/bin/python loadtest/bench_events.py [--seconds 5] [--rounds 3] [--json events.json]

A 200 on /v1/events means the wins are durable: committed to SQLite (group commit, fsync) in embedded mode,
counted in Redis (one pipelined round trip per group of concurrent requests; AOF with `appendfsync always`, as
ops/redis.conf) in fleet mode. Both are `pacer serve` with the same settings (bench.py's `pacer`: auction log on,
a bidder token), pinned to core 0; wrk (`loadtest/wrk_events.lua`), redis-server and this script on core 1.
Each round starts one server per mode on a fresh store (Redis: a fresh redis-server) with BIDDERS active bidders
(large budgets, a current flight, so every win is charged) and runs every batch size on it; the modes alternate
which goes first. Each run is closed-loop: BATCHES[batch] keep-alive connections, each sending its next request as
soon as the answer is in; every request `batch` events (9 wins to 1 loss, every auction id new), after a WARMUP_S
warm-up and once the machine is quiet (bench.py's `wait_quiet`).

Every answer is checked: a 200 whose `accepted` is the batch size and `duplicates` 0, else it is an error; the
server's own counters (/metrics) must agree: no /v1/events answer other than 200, no duplicate, and at least the
events the client saw accepted. Prints progress on stderr and a markdown table on stdout: the median events/s and
the median p99 request latency per mode and batch size, the Redis / embedded ratio, and the goal (Redis keeps
GOAL_RATIO of embedded events/s at batches of GOAL_BATCH). Exit status 1 if any answer was an error. Run by
`make bench` (bench.py, unless --no-events); never part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import (
    BIDDERS,
    DISTURBED_CORE0,
    DISTURBED_CORE1,
    HERE,
    LOAD_CORE,
    SERVER_CORE,
    CpuWindow,
    Server,
    cpu_model,
    create_bidders,
    http,
    pacer,
    start_redis,
    terminated_on_signal,
    wait_quiet,
)

BATCHES = {1: 16, 100: 8, 1000: 4}  # events per request: closed-loop connections (fewer as requests grow)
MODES = ("embedded", "redis")
WARMUP_S = 1  # wrk takes whole seconds
RUN_S = 5.0
ROUNDS = 3
WRK_TIMEOUT_S = 5  # an answer slower than this is a wrk timeout (an error)
GOAL_BATCH, GOAL_RATIO = 100, 0.8
REDIS_DURABLE = ("--appendonly", "yes", "--appendfsync", "always")  # as ops/redis.conf


@dataclass
class Run:
    mode: str
    batch: int
    round: int
    connections: int
    requests: int
    events_s: float
    p50_us: float
    p99_us: float
    server_cpu: float  # cores (below 1: waiting for fsync or Redis, not for the client)
    load_cpu: float  # the load generator's core: wrk, this script, and in Redis mode redis-server
    others0: float  # other processes' CPU on the server's core, in cores
    others1: float  # ... and on the load generator's core
    quiet_wait_s: float
    errors: int  # bad answers (not 200, or miscounted), socket errors and timeouts, disagreeing server counters
    why: str  # what the errors were, and what disturbed the run

    @property
    def disturbed(self) -> bool:
        """Other processes used either core (bench.py's thresholds). The kernel's own I/O threads count as others
        too: fsync-heavy runs may show a little of them."""
        return self.others0 > DISTURBED_CORE0 or self.others1 > DISTURBED_CORE1


def wrk(url: str, batch: int, connections: int, seconds: int, tag: str, bidder_token: str) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(HERE / "wrk_events.lua"),
        url + "/v1/events",
        "--",
        str(BIDDERS),
        str(batch),
        tag,
        bidder_token,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out[-2000:]}")
    return dict(json.loads(line.removeprefix("WRK_JSON ")))


def wrk_errors(res: dict[str, Any], batch: int) -> tuple[int, list[str]]:
    """How many of a wrk run's requests went wrong (bad answers, socket errors, timeouts), and how."""
    checked = res["good"] + res["non200"] + res["miscounted"]
    count = res["non200"] + res["miscounted"] + sum(res[k] for k in ("connect", "read", "write", "timeout"))
    why = []
    if res["non200"]:
        why.append(f"{res['non200']} answers not 200")
    if res["miscounted"]:
        why.append(f"{res['miscounted']} answers with accepted != {batch} or duplicates != 0")
    sockets = {k: res[k] for k in ("connect", "read", "write", "timeout") if res[k]}
    if sockets:
        why.append("wrk errors: " + ", ".join(f"{k} {v}" for k, v in sockets.items()))
    if checked != res["requests"]:
        why.append(f"{res['requests']} answers but {checked} checked")
    if why and res["first_bad"]:
        why.append(f"first bad answer: {res['first_bad'][:200]}")
    return (count or 1) if why else 0, why


def counters(server: Server) -> dict[str, float]:
    """The server's event counters (win, loss, duplicate) and its /v1/events answers by status ("status:200")."""
    text = http(server.url + "/metrics").decode()
    out = {m[1]: float(m[2]) for m in re.finditer(r'^pacer_events_total\{type="(\w+)"\} (\S+)$', text, re.M)}
    for m in re.finditer(r'^pacer_requests_total\{route="/v1/events",status="(\d+)"\} (\S+)$', text, re.M):
        out[f"status:{m[1]}"] = float(m[2])
    return out


def server_errors(before: dict[str, float], after: dict[str, float], client: int, batch: int, conns: int) -> list[str]:
    """Disagreements between the server's counters over the measured run and what the client saw: `client` events
    accepted. Up to `conns` requests may have been in flight when the warm-up stopped, and as many when the run did:
    the server may count those too."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after.keys() | before.keys()}
    why = [
        f"server answered {n:.0f} x {k[7:]}"
        for k, n in sorted(delta.items())
        if k.startswith("status:") and k != "status:200" and n
    ]
    if delta.get("duplicate", 0):
        why.append(f"server counted {delta['duplicate']:.0f} duplicate wins")
    counted = delta.get("win", 0) + delta.get("loss", 0)
    if not client <= counted <= client + 2 * conns * batch:
        why.append(f"server counted {counted:.0f} events, the client saw {client} accepted")
    return why


def measure(
    server: Server, mode: str, batch: int, rnd: int, seconds: float, bidder_token: str, core1_pids: list[int]
) -> Run:
    conns = BATCHES[batch]
    _, waited = wait_quiet(server.pid, tuple(core1_pids))
    tag = f"{mode[0]}{rnd}x{batch}-{secrets.token_hex(3)}"
    warm = wrk(server.url, batch, conns, WARMUP_S, "w" + tag, bidder_token)
    before = counters(server)
    window = CpuWindow([server.pid], core1_pids)
    window.start()
    res = wrk(server.url, batch, conns, max(1, round(seconds)), tag, bidder_token)
    cpu = window.stop()
    after = counters(server)
    warm_errors, warm_why = wrk_errors(warm, batch)
    run_errors, run_why = wrk_errors(res, batch)
    disagree = server_errors(before, after, res["accepted"], batch, conns)
    errors = warm_errors + run_errors + len(disagree)
    why = [f"warm-up: {w}" for w in warm_why] + run_why + disagree
    run = Run(
        mode=mode,
        batch=batch,
        round=rnd,
        connections=conns,
        requests=res["requests"],
        events_s=res["accepted"] / (res["duration_us"] / 1e6),
        p50_us=res["p50_us"],
        p99_us=res["p99_us"],
        server_cpu=cpu["server"],
        load_cpu=cpu["load"],
        others0=cpu["others0"],
        others1=cpu["others1"],
        quiet_wait_s=waited,
        errors=errors,
        why="",
    )
    if run.disturbed:
        why.append(
            f"disturbed: others used {cpu['others0']:.2f} of core {SERVER_CORE}, {cpu['others1']:.2f} of core "
            f"{LOAD_CORE}"
        )
    run.why = "; ".join(why)
    return run


# --- report ----------------------------------------------------------------------------------------------------


def median(runs: list[Run], key: str) -> float:
    return statistics.median(getattr(r, key) for r in runs) if runs else float("nan")


def report(runs: list[Run], seconds: float, rounds: int) -> tuple[str, dict[str, Any]]:
    """The markdown table and the figures behind it."""
    lines = [
        f"Events throughput, POST /v1/events (`loadtest/bench_events.py`, {cpu_model()}): `pacer serve` on core "
        f"{SERVER_CORE}; wrk, redis-server (AOF, appendfsync always) and the script on core {LOAD_CORE}. "
        f"{BIDDERS} bidders, 9 wins to 1 loss (events/s counts both), closed loop, {seconds:g} s runs; medians of "
        f"{rounds} rounds (modes alternating); p99: the median of the runs' p99 request latency.",
        "",
        "| events/request | connections | embedded events/s | Redis events/s | Redis / embedded "
        "| embedded p99 | Redis p99 | server CPU e/R | errors | disturbed runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    figures: dict[str, Any] = {}
    for batch, conns in BATCHES.items():
        e = [r for r in runs if r.batch == batch and r.mode == "embedded"]
        rd = [r for r in runs if r.batch == batch and r.mode == "redis"]
        ratio = median(rd, "events_s") / median(e, "events_s") if e and rd else float("nan")
        errors = sum(r.errors for r in e + rd)
        disturbed = sum(r.disturbed for r in e + rd)
        figures[str(batch)] = {
            "embedded_events_s": median(e, "events_s"),
            "redis_events_s": median(rd, "events_s"),
            "ratio": ratio,
            "embedded_p99_ms": median(e, "p99_us") / 1000,
            "redis_p99_ms": median(rd, "p99_us") / 1000,
            "errors": errors,
            "disturbed_runs": disturbed,
        }
        lines.append(
            f"| {batch:,} | {conns} | {spread(e)} | {spread(rd)} | {ratio:.3f} | "
            f"{median(e, 'p99_us') / 1000:.2f} ms | {median(rd, 'p99_us') / 1000:.2f} ms | "
            f"{median(e, 'server_cpu'):.2f} / {median(rd, 'server_cpu'):.2f} | {errors} | "
            f"{disturbed} of {len(e + rd)} |"
        )
    goal = figures.get(str(GOAL_BATCH), {}).get("ratio", float("nan"))
    errors = sum(r.errors for r in runs)
    verdict = "not measured" if goal != goal else "met" if goal >= GOAL_RATIO else "**MISSED**"
    if errors:
        verdict += f" (but {errors} errors: the figures do not count)"
    lines += [
        "",
        f"- Redis / embedded events/s at batches of {GOAL_BATCH} = {goal:.3f} (goal >= {GOAL_RATIO:g}): {verdict}",
        f"- core {LOAD_CORE} (wrk, redis-server, this script) at most {max(r.load_cpu for r in runs):.2f} busy "
        "in a run; server CPU below 1 is the server waiting for its store (fsync, Redis), not for the client",
    ]
    noisy = [r for r in runs if r.disturbed]
    if noisy:
        lines.append(
            f"- {len(noisy)} of {len(runs)} runs disturbed (other processes used more than "
            f"{DISTURBED_CORE0:g} of core {SERVER_CORE} or {DISTURBED_CORE1:g} of core {LOAD_CORE}): the figures "
            "are noisy"
        )
    lines += [f"- error, {r.mode} x{r.batch} round {r.round}: {r.why}" for r in runs if r.errors]
    figures |= {"goal_ratio": goal, "goal_met": goal >= GOAL_RATIO and not errors, "errors": errors}
    return "\n".join(lines) + "\n", figures


def spread(runs: list[Run]) -> str:
    """The median events/s, and the runs' range as a share of it."""
    if not runs:
        return "n/a"
    m = median(runs, "events_s")
    rates = [r.events_s for r in runs]
    return f"{m:,.0f} (±{(max(rates) - min(rates)) / 2 / m:.0%})" if m else "0"


# --- main ------------------------------------------------------------------------------------------------------


def progress(run: Run) -> None:
    print(
        f"round {run.round} {run.mode:8s} x{run.batch:<5d} {run.events_s:10,.0f} events/s  "
        f"p50 {run.p50_us / 1000:6.2f} ms  p99 {run.p99_us / 1000:6.2f} ms  server {run.server_cpu:.2f}  "
        f"load {run.load_cpu:.2f}  others {run.others0:.2f}/{run.others1:.2f}  quiet wait {run.quiet_wait_s:.0f} s"
        + (f"  {run.why}" if run.why else ""),
        file=sys.stderr,
        flush=True,
    )


def round_of(root: Path, rnd: int, mode: str, seconds: float, token: str, bidder_token: str) -> list[Run]:
    """One mode's runs in one round: a fresh store and server, every batch size."""
    folder = root / f"{mode}{rnd}"
    folder.mkdir()
    redis: subprocess.Popen[bytes] | None = None
    if mode == "redis":
        redis, port = start_redis(folder, *REDIS_DURABLE)
        store = f"redis://127.0.0.1:{port}/0"
    else:
        store = f"sqlite:///{folder}/pacer.db"
    server = pacer(mode, folder / "server", store, token, {"PACER_BIDDER_TOKEN": bidder_token})
    runs = []
    try:
        server.start()
        create_bidders(server, token)
        for batch in BATCHES:
            run = measure(server, mode, batch, rnd, seconds, bidder_token, [redis.pid] if redis else [])
            runs.append(run)
            progress(run)
            if run.errors:
                log = (server.folder / "server.log").read_text()[-1500:]
                print(f"  {mode} answered errors; its log ends with:\n{log}", file=sys.stderr, flush=True)
    finally:
        server.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(15)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=RUN_S, help="length of each measured run (whole seconds)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", type=Path, help="also write the figures and every run here")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "redis-server", "taskset") if shutil.which(tool) is None]
    if missing:
        packages = " ".join("util-linux" if tool == "taskset" else tool for tool in missing)
        print(f"bench_events: missing {', '.join(missing)}: apt-get install -y {packages}", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:  # the machine's cores: bench.py runs this pinned to core 1 already
        print("bench_events: needs two cores (0 for the server, 1 for the load)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    token, bidder_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pacer-bench-events-") as tmp, terminated_on_signal():
        for rnd in range(1, args.rounds + 1):
            for mode in MODES if rnd % 2 else MODES[::-1]:
                runs += round_of(Path(tmp), rnd, mode, args.seconds, token, bidder_token)
    text, figures = report(runs, max(1, round(args.seconds)), args.rounds)
    if args.json:
        args.json.write_text(
            json.dumps({"figures": figures, "runs": [asdict(r) | {"disturbed": r.disturbed} for r in runs]}, indent=1)
        )
    print(text)
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
