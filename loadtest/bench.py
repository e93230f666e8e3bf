"""bench.py: `make bench`: pacer's bid throughput and latency against a bare ASGI ceiling and a naive peer.

Same server settings for every target, measured in one run, gated on a quiet machine; then fleet-scale figures.
Never part of `make test`.

    .venv/bin/python loadtest/bench.py [--out bench-out] [--seconds 8] [--max-rounds 6] [--only a,b] [--profile]

Every server is uvicorn + uvloop + httptools, one worker, access log off, pinned to core 0; wrk (closed loop,
`loadtest/wrk_post.lua`: a fresh auction_id and the next of 200 bidders on every request), this script and
redis-server run on core 1, so core 0 belongs to the server under test alone (Redis's own work for c and d is
free to the server: the comparison flatters the naive peer, not pacer). Targets:

  a  bare ASGI app answering a decision-sized JSON (`loadtest/bare_asgi.py`): the ceiling
  b  pacer POST /v1/bid, embedded SQLite store, auction log on (the production default)
  b0 the same with the auction log off (PACER_LOG_URL=""): what the log costs
  c  pacer POST /v1/bid on Redis (a fleet of one), auction log on
  d  the naive peer (`loadtest/naive_peer.py`): FastAPI + pydantic + one redis-py round trip per bid
  e  pacer POST /v1/bids, 100 bids per call, embedded, log on (a server of its own, like b's): decisions/s

Each run starts its server afresh (pacer ones on the store and log folder of the previous run, with 200 active
bidders) and stops it afterwards: nothing else runs on core 0, and no run inherits another's state (pacer keeps
expired grants for PACER_TTL_MAX_S, so a long-lived server would slow down round after round when no win or loss
notices come, as here). The server must settle (its own CPU near zero) before the warm-up. Targets run
interleaved (a, b, b0, c, d, e, a, ...). Before each run the machine must be quiet: CPU used by processes other
than ours below QUIET_CORES for a second, else the run is skipped after QUIET_WAIT_S. A run is discarded (and
retried) if, during it, other processes used more than DISTURBED_CORE0/1 of either core (/proc/stat minus our
pinned processes), the server's core was not saturated, or wrk saw errors. Rounds go on until every target has
MIN_RUNS accepted runs and its median moved by at most STABLE in the last round, or MAX_ROUNDS, or the time
budget. Then open-loop latency (`loadtest/openloop.py`, median of OPENLOOP_RUNS runs) of b at half its median
rate, and of a and b0 at the same rate (whose stalls the p99 shows), and `loadtest/fleet_scale.py` (tick, memory,
Redis sync and auction log costs, in process). Then bid latency under a connection attack (`loadtest/attack.py`,
unless --no-attack) and POST /v1/events throughput on Redis next to embedded (`loadtest/bench_events.py`, events/s
and p99 at batches of 1, 100 and 1,000; unless --no-events; its figures in <out>/events.json), and 100,000 bidders
on one instance (`loadtest/bulk_load.py`: bulk load, idle CPU, tick, /metrics, restart; unless --no-scale).
Results: a table on
stdout and in <out>/bench.md, everything (raw runs too) in <out>/bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SERVER_CORE, LOAD_CORE = 0, 1
BIDDERS = 200
BUDGET_MICROS = 10**13  # never exhausted at bench rates: every bid is granted (and reserved)
FLIGHT_S = 7 * 86400  # long enough to stay active whatever the date
BATCH = 100  # bids per POST /v1/bids call
CONNECTIONS = 32
WRK_THREADS = 1  # one core for the load generator: a second thread only splits it
WARMUP_S = 2  # wrk takes whole seconds
RUN_S = 8.0
MIN_RUNS = 3
STABLE = 0.03  # a target's median is stable when the last round moved it by at most this share
MAX_ROUNDS = 6
BUDGET_S = 330.0  # no new round after this many seconds of closed-loop rounds (`make bench` stays under 10 min)
RETRIES = 2  # extra attempts at a run that was disturbed, within a round
QUIET_CORES = 0.05  # before a run: other processes' CPU (in cores) must stay below this for QUIET_WINDOW_S
QUIET_WINDOW_S = 1.0
QUIET_WAIT_S = 20.0  # give up waiting after this and run anyway (the run is still judged afterwards)
SETTLED_CORES = 0.05  # the server under test must be this idle before its warm-up starts
DISTURBED_CORE0 = 0.03  # a run is discarded if others used more than this share of the server's core...
DISTURBED_CORE1 = 0.05  # ...or of the load generator's core (a descheduled wrk leaves the server idle)
SATURATED = 0.95  # a closed-loop run keeps the server's core this busy; below, the load generator was starved
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
OPENLOOP_SHARE = 0.5  # open-loop latency at this share of b's closed-loop maximum
OPENLOOP_TRIES = 2
OPENLOOP_RUNS = 3  # open-loop runs per target (a fresh server each): the one with the median p99 is reported
OPENLOOP_STEP = 0.8  # when the client cannot sustain the rate, try this share of it
HZ = os.sysconf("SC_CLK_TCK")
GOALS = {  # name: (value key, threshold, higher is better)
    "b/a": ("b/a", 0.75, True),
    "c/b": ("c/b", 0.90, True),
    "b/d": ("b/d", 5.0, True),
    "e decisions/s": ("e", 150_000.0, True),
    "open-loop p99 of b (ms)": ("openloop_p99_ms", 2.0, False),
}


# --- CPU accounting --------------------------------------------------------------------------------------------


def core_busy() -> list[float]:
    """CPU seconds each core spent running tasks (user, nice, system, steal; interrupts left out: our own
    loopback traffic is processed there)."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                out.append((v[0] + v[1] + v[2] + v[7]) / HZ)
    return out


def pid_cpu(pid: int) -> float:
    """CPU seconds of a process, all its threads (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ


def own_cpu() -> float:
    """This process plus its reaped children (wrk, openloop once they exit)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class CpuWindow:
    """What each core did between `start` and `stop`, split into ours and everyone else's."""

    server_pids: list[int]
    core1_pids: list[int]
    t: float = 0.0
    busy: list[float] = field(default_factory=list)
    server: float = 0.0
    core1: float = 0.0

    def _read(self) -> tuple[float, list[float], float, float]:
        return (
            time.monotonic(),
            core_busy(),
            sum(pid_cpu(p) for p in self.server_pids),
            sum(pid_cpu(p) for p in self.core1_pids) + own_cpu(),
        )

    def start(self) -> None:
        self.t, self.busy, self.server, self.core1 = self._read()

    def stop(self) -> dict[str, float]:
        t, busy, server, core1 = self._read()
        dt = max(t - self.t, 1e-6)
        core0 = (busy[SERVER_CORE] - self.busy[SERVER_CORE]) / dt
        load = (busy[LOAD_CORE] - self.busy[LOAD_CORE]) / dt
        rest = (
            sum(
                b - a for i, (a, b) in enumerate(zip(self.busy, busy, strict=True)) if i not in (SERVER_CORE, LOAD_CORE)
            )
            / dt
        )
        ours0, ours1 = (server - self.server) / dt, (core1 - self.core1) / dt
        return {
            "seconds": dt,
            "server": ours0,
            "load": ours1,
            "others0": max(0.0, core0 - ours0) + rest,
            "others1": max(0.0, load - ours1),
        }


def wait_quiet(server: int | None = None, ours: tuple[int, ...] = ()) -> tuple[bool, float]:
    """Wait (at most QUIET_WAIT_S) until, for QUIET_WINDOW_S, other processes use less than QUIET_CORES and the
    server under test has settled (below SETTLED_CORES: done with its previous run's log writes and expiring
    reservations). Returns whether it got quiet, and the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < QUIET_WAIT_S:
        window = CpuWindow([server] if server else [], list(ours))
        window.start()
        time.sleep(QUIET_WINDOW_S)  # sampling /proc/stat over a window: there is no event to wait on
        cpu = window.stop()
        if cpu["others0"] + cpu["others1"] < QUIET_CORES and cpu["server"] < SETTLED_CORES:
            return True, time.monotonic() - started
    return False, time.monotonic() - started


# --- processes -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def http(url: str, method: str = "GET", body: object = None, token: str | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=10) as r:
        return bytes(r.read())


class Server:
    """One server process pinned to the server core, in its own folder (kept across its restarts)."""

    def __init__(self, name: str, argv: list[str], folder: Path, ready: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ready = ready
        self.argv = ["taskset", "-c", str(SERVER_CORE), sys.executable, *argv, "--port", str(self.port)]
        self.env = {**os.environ, "PYTHONPATH": f"{REPO}:{HERE}", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with (self.folder / "server.log").open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # an external process: polling its readiness URL is the only way to see it up
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                http(self.url + self.ready)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready at {self.url}{self.ready}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_redis(folder: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on the load core, no persistence unless `options` (later ones win, e.g. "--appendonly", "yes")
    say otherwise."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:  # wait for the port: redis-server has no readiness signal of its own
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, port
        if time.monotonic() > deadline:
            raise TimeoutError("redis-server did not start")
        time.sleep(0.05)


def pacer(name: str, folder: Path, store: str, token: str, env: dict[str, str] | None = None) -> Server:
    return Server(
        name,
        ["-m", "pacer.cli", "serve", "--store", store],
        folder,
        "/readyz",
        {"PACER_OPERATOR_TOKEN": token, "PACER_LOG_LEVEL": "warning", **(env or {})},
    )


def uvicorn(name: str, app: str, folder: Path, ready: str, env: dict[str, str] | None = None) -> Server:
    """The same server settings pacer serve uses (pacer/cli.py)."""
    return Server(
        name,
        [
            "-m",
            "uvicorn",
            app,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--host",
            "127.0.0.1",
        ],
        folder,
        ready,
        env,
    )


def create_bidders(server: Server, token: str) -> None:
    now = time.time()
    for b in range(BIDDERS):
        body = {
            "budget_micros": BUDGET_MICROS,
            "pacing": "traffic",
            "period": {"type": "flight", "start": rfc3339(now - 60), "end": rfc3339(now + FLIGHT_S)},
        }
        http(f"{server.url}/v1/bidders/b{b}", "PUT", body, token)


def seed_naive(redis_port: int) -> None:
    import redis  # pacer's own dependency

    client = redis.Redis(port=redis_port)
    with client.pipeline(transaction=False) as pipe:
        for b in range(BIDDERS):
            pipe.hset(f"naive:{{b{b}}}", mapping={"budget": BUDGET_MICROS, "spent": 0})
        pipe.execute()
    client.close()


def decisions(server: Server) -> dict[str, float]:
    """pacer's decision counters by reason (from /metrics)."""
    text = http(server.url + "/metrics").decode()
    return {m[1]: float(m[2]) for m in re.finditer(r'^pacer_decisions_total\{reason="(\w+)"\} (\S+)$', text, re.M)}


# --- runs ------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    server: Server
    path: str = "/v1/bid"
    per_call: int = 1
    pacer: bool = True
    core1_pids: list[int] = field(default_factory=list)  # e.g. redis-server, beside the load generator


@dataclass
class Run:
    target: str
    round: int
    attempt: int
    rate: float  # requests/s
    decisions: float  # decisions/s
    p50_us: float
    p99_us: float
    server_cpu: float  # cores
    load_cpu: float
    others0: float
    others1: float
    quiet_wait_s: float
    granted: float | None  # share of decisions granted (pacer), None elsewhere
    errors: int
    accepted: bool
    why: str = ""
    skipped: bool = False  # never run: the machine did not get quiet


def wrk(target: Target, seconds: float, tag: str) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "-s",
        str(HERE / "wrk_post.lua"),
        target.server.url + target.path,
        "--",
        str(BIDDERS),
        str(target.per_call),
        tag,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out[-2000:]}")
    return dict(json.loads(line[len("WRK_JSON ") :]))


def measure(target: Target, rnd: int, attempt: int, seconds: float) -> Run:
    server = target.server
    server.start()
    try:
        quiet, waited = wait_quiet(server.pid, tuple(target.core1_pids))
        if not quiet:
            nan = float("nan")
            return Run(
                target.key,
                rnd,
                attempt,
                nan,
                nan,
                nan,
                nan,
                nan,
                nan,
                nan,
                nan,
                waited,
                None,
                0,
                False,
                f"machine busy for {waited:.0f} s: not run",
                skipped=True,
            )
        tag = f"{target.key}{rnd}.{attempt}{secrets.token_hex(2)}"
        wrk(target, WARMUP_S, "w" + tag)
        before = decisions(server) if target.pacer else {}
        window = CpuWindow([server.pid], target.core1_pids)
        window.start()
        res = wrk(target, seconds, tag)
        cpu = window.stop()
        after = decisions(server) if target.pacer else {}
    finally:
        server.stop()
    rate = res["requests"] / (res["duration_us"] / 1e6)
    errors = int(sum(res[k] for k in ("connect", "read", "write", "status", "timeout")))
    granted = None
    if target.pacer:
        total = sum(after.values()) - sum(before.values())
        granted = (after.get("bid", 0) - before.get("bid", 0)) / total if total else 0.0
    why = []
    if errors:
        why.append(f"{errors} errors")
    if cpu["others0"] > DISTURBED_CORE0:
        why.append(f"others on core {SERVER_CORE}: {cpu['others0']:.2f}")
    if cpu["others1"] > DISTURBED_CORE1:
        why.append(f"others on core {LOAD_CORE}: {cpu['others1']:.2f}")
    if cpu["server"] < SATURATED:
        why.append(f"server not saturated: {cpu['server']:.2f}")
    return Run(
        target.key,
        rnd,
        attempt,
        rate,
        rate * target.per_call,
        res["p50_us"],
        res["p99_us"],
        cpu["server"],
        cpu["load"],
        cpu["others0"],
        cpu["others1"],
        waited,
        granted,
        errors,
        not why,
        "; ".join(why),
    )


def median(runs: list[Run], key: str = "decisions") -> float:
    return statistics.median(getattr(r, key) for r in runs) if runs else float("nan")


def stable(runs: list[Run]) -> bool:
    if len(runs) < MIN_RUNS:
        return False
    now, before = median(runs), median(runs[:-1])
    return abs(now - before) <= STABLE * before


def openloop(target: Target, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop latency at `rate` on a quiet machine: the client's result plus the run's CPU figures. Repeated
    (up to OPENLOOP_TRIES) while others disturbed the server's core or the client fell behind its schedule."""
    server = target.server
    server.start()
    try:
        result: dict[str, Any] = {}
        for attempt in range(OPENLOOP_TRIES):
            _, waited = wait_quiet(server.pid)
            window = CpuWindow([server.pid], [])
            window.start()
            cmd = [
                sys.executable,
                str(HERE / "openloop.py"),
                server.url + target.path,
                "--rate",
                f"{rate:.0f}",
                "--seconds",
                f"{seconds:g}",
                "--warmup",
                f"{WARMUP_S:g}",
                "--connections",
                str(CONNECTIONS),
                "--cpu",
                str(LOAD_CORE),
                "--tag",
                f"ol{target.key}{attempt}{secrets.token_hex(2)}",
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
            cpu = window.stop()
            result = dict(json.loads(out.strip().splitlines()[-1]))
            disturbed = cpu["others0"] > DISTURBED_CORE0 or cpu["others1"] > DISTURBED_CORE1
            result |= {
                "target": target.key,
                "others0": cpu["others0"],
                "others1": cpu["others1"],
                "server_cpu": cpu["server"],
                "quiet_wait_s": waited,
                "attempts": attempt + 1,
                "disturbed": disturbed,
            }
            if not result["disturbed"] and result["sustained"]:
                break
        return result
    finally:
        server.stop()


def openloop_median(target: Target, rate: float, seconds: float) -> dict[str, Any]:
    """OPENLOOP_RUNS open-loop runs; the one with the median p99, carrying every run's p99 (`p99_runs_us`)."""
    results = [openloop(target, rate, seconds) for _ in range(OPENLOOP_RUNS)]
    results.sort(key=lambda r: r["latency_us"]["99"])
    chosen = results[len(results) // 2]
    return chosen | {"p99_runs_us": [r["latency_us"]["99"] for r in results]}


# --- report ----------------------------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x == x else "n/a"


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def report(
    targets: list[Target],
    runs: list[Run],
    ratios: dict[str, float],
    openloops: list[dict[str, Any]],
    ratios_notes: list[str],
    fleet: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    lines = [
        f"# make bench ({meta['date']}, {meta['cpu']})",
        "",
        f"Server on core {SERVER_CORE} (uvicorn, uvloop, httptools, 1 worker, no access log; started afresh for "
        f"each run); wrk ({WRK_THREADS} thread, {CONNECTIONS} connections, {meta['seconds']:g} s runs after "
        f"{WARMUP_S:g} s warm-up), redis-server and this script on core {LOAD_CORE}. {BIDDERS} active bidders, "
        f"no win or loss notices. Medians of accepted runs; rounds: {meta['rounds']}; {meta['stopped']}.",
        "",
        "| target | what | req/s | decisions/s | p50 | p99 | server CPU | granted | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        ok = [r for r in runs if r.target == t.key and r.accepted]
        bad = sum(1 for r in runs if r.target == t.key and not r.accepted and not r.skipped)
        skipped = sum(1 for r in runs if r.target == t.key and r.skipped)
        granted = f"{median(ok, 'granted'):.0%}" if t.pacer and ok else "-"
        lines.append(
            f"| {t.key} | {t.label} | {fmt_rate(median(ok, 'rate'))} | {fmt_rate(median(ok))} | "
            f"{fmt_us(median(ok, 'p50_us'))} | {fmt_us(median(ok, 'p99_us'))} | "
            f"{median(ok, 'server_cpu'):.2f} | {granted} | {len(ok)}"
            + (f" (+{bad} discarded)" if bad else "")
            + (f" (+{skipped} not run: busy)" if skipped else "")
            + " |"
        )
    lines += ["", "Goals:", ""]
    for name, (key, threshold, higher) in GOALS.items():
        value = ratios.get(key, float("nan"))
        met = value >= threshold if higher else value <= threshold
        shown = fmt_rate(value) if key == "e" else f"{value:.3f}"
        verdict = "not measured" if value != value else "met" if met else "**MISSED**"
        lines.append(f"- {name} = {shown} (goal {'>=' if higher else '<='} {threshold:g}): {verdict}")
    b, b0 = ratios.get("b_rate", float("nan")), ratios.get("b0_rate", float("nan"))
    lines.append(
        f"- auction log cost on the server: b0 (log off) {fmt_rate(b0)} req/s vs b {fmt_rate(b)} req/s: "
        f"{(1 - b / b0):.1%} of throughput, {1e6 / b - 1e6 / b0:.2f} us per request"
    )
    lines += [
        "",
        f"Open-loop latency (`loadtest/openloop.py`, {CONNECTIONS} connections, constant rate, latency "
        f"from each request's scheduled send time; of {OPENLOOP_RUNS} runs on fresh servers, the one with the "
        "median p99; the goal is on b):",
        "",
        "| target | rate/s | achieved/s | p50 | p90 | p99 | p99.9 | max | waited for a connection | "
        "client late p99 | sustained | server CPU | p99 of each run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ol in openloops:
        lat, lag = ol["latency_us"], ol["lag_us"]
        flag = " (disturbed)" if ol["disturbed"] else ""
        lines.append(
            f"| {ol['target']} | {fmt_rate(ol['rate'])} ({ol['share']:.0%} of b) | "
            f"{fmt_rate(ol['achieved_rate'])} | {fmt_us(lat['50'])} | {fmt_us(lat['90'])} | "
            f"{fmt_us(lat['99'])} | {fmt_us(lat['99.9'])} | {fmt_us(lat['max'])} | {ol['queued']:,} | "
            f"{fmt_us(lag['99'])} | {'yes' if ol['sustained'] else 'NO'}{flag} | {ol['server_cpu']:.2f} | "
            f"{', '.join(fmt_us(p) for p in ol.get('p99_runs_us', []))} |"
        )
    lines += [f"- {note}" for note in ratios_notes]
    lines += ["", "Fleet scale (in process, no HTTP; `loadtest/fleet_scale.py`):", ""]
    lines += [f"- {line}" for line in fleet.get("lines", ["not run"])]
    lines += [
        "",
        "Raw runs (rate in requests/s; others = CPU of other processes, in cores, during the run):",
        "",
        "| round | target | attempt | req/s | decisions/s | p50 | p99 | server | load | others c0 | "
        "others c1 | quiet wait | kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.round} | {r.target} | {r.attempt} | {fmt_rate(r.rate)} | {fmt_rate(r.decisions)} | "
            f"{fmt_us(r.p50_us)} | {fmt_us(r.p99_us)} | {r.server_cpu:.2f} | {r.load_cpu:.2f} | "
            f"{r.others0:.3f} | {r.others1:.3f} | {r.quiet_wait_s:.1f} s | "
            f"{'yes' if r.accepted else 'no: ' + r.why} |"
        )
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminated_on_signal() -> Iterator[None]:
    """SIGTERM (make interrupted, CI timeout) unwinds like Ctrl-C, so every server is stopped."""

    def handler(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_line(run: Run) -> str:
    """One measured run as the progress line shows it."""
    if run.skipped:
        return run.why
    line = (
        f"{run.decisions:10,.0f}/s p50 {fmt_us(run.p50_us):>9s} p99 {fmt_us(run.p99_us):>9s} "
        f"server {run.server_cpu:.2f} load {run.load_cpu:.2f} others {run.others0:.3f}/{run.others1:.3f}"
    )
    if run.granted is not None:
        line += f" granted {run.granted:.0%}"
    return line + ("" if run.accepted else f"  DISCARDED: {run.why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-out")
    parser.add_argument("--seconds", type=float, default=RUN_S, help="length of each measured run")
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds of HTTP rounds before stopping")
    parser.add_argument("--only", default="", help="comma-separated targets (e.g. a,b), default all")
    parser.add_argument("--no-fleet", action="store_true", help="skip fleet_scale.py")
    parser.add_argument("--no-attack", action="store_true", help="skip attack.py (bid latency under attack)")
    parser.add_argument(
        "--no-events", action="store_true", help="skip bench_events.py (/v1/events throughput, Redis vs embedded)"
    )
    parser.add_argument("--no-scale", action="store_true", help="skip bulk_load.py (100,000 bidders on one instance)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile pacer (b) under load with py-spy (pip install py-spy): <out>/profile-b.txt",
    )
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "redis-server", "taskset") if shutil.which(tool) is None]
    if missing:
        packages = " ".join("util-linux" if tool == "taskset" else tool for tool in missing)
        print(f"bench: missing {', '.join(missing)}: apt-get install -y {packages}", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2 or max(os.sched_getaffinity(0)) < LOAD_CORE:
        print("bench: needs two cores (0 for the server, 1 for the load)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    args.out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pacer-bench-") as tmp, terminated_on_signal():
        root = Path(tmp)
        redis_proc, redis_port = start_redis(root)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        servers = {
            "a": uvicorn("bare", "bare_asgi:app", root / "bare", "/"),
            "b": pacer("embedded", root / "embedded", f"sqlite:///{root}/embedded/pacer.db", token),
            "b0": pacer(
                "embedded-nolog", root / "nolog", f"sqlite:///{root}/nolog/pacer.db", token, {"PACER_LOG_URL": ""}
            ),
            "c": pacer("redis", root / "redis", redis_url, token),
            "e": pacer("embedded-batch", root / "batch", f"sqlite:///{root}/batch/pacer.db", token),
            "d": uvicorn("naive", "naive_peer:app", root / "naive", "/openapi.json", {"NAIVE_REDIS_URL": redis_url}),
        }
        targets = [
            Target("a", "bare ASGI (ceiling)", servers["a"], pacer=False),
            Target("b", "pacer /v1/bid, embedded, log on", servers["b"]),
            Target("b0", "pacer /v1/bid, embedded, log off", servers["b0"]),
            Target("c", "pacer /v1/bid, Redis, log on", servers["c"], core1_pids=[redis_proc.pid]),
            Target("d", "naive FastAPI + redis-py per bid", servers["d"], pacer=False, core1_pids=[redis_proc.pid]),
            Target("e", f"pacer /v1/bids x{BATCH}, embedded, log on", servers["e"], "/v1/bids", BATCH),
        ]
        if args.only:
            keep = set(args.only.split(","))
            targets = [t for t in targets if t.key in keep]
        runs: list[Run] = []
        openloops: list[dict[str, Any]] = []
        notes: list[str] = []
        fleet: dict[str, Any] = {}
        try:
            for key, server in servers.items():
                if not any(t.server is server for t in targets):
                    continue
                server.start()
                if key in ("b", "b0", "c", "e"):
                    create_bidders(server, token)
                elif key == "d":
                    seed_naive(redis_port)
                server.stop()
            print(f"bidders created in {time.monotonic() - started:.0f} s; runs of {args.seconds:g} s", flush=True)
            rounds, stopped = 0, f"stopped at max rounds ({args.max_rounds})"
            deadline = time.monotonic() + args.budget
            accepted: dict[str, list[Run]] = {t.key: [] for t in targets}
            warned = False
            while rounds < args.max_rounds and time.monotonic() < deadline:
                rounds += 1
                round_started = time.monotonic()
                for t in targets:
                    for attempt in range(1 + RETRIES):
                        run = measure(t, rounds, attempt, args.seconds)
                        runs.append(run)
                        print(f"round {rounds} {t.key:2s} {run_line(run)}", flush=True)
                        if run.errors and not warned:
                            warned = True
                            print(
                                f"  {t.server.name} answered errors; its log ends with:\n"
                                f"{(t.server.folder / 'server.log').read_text()[-1500:]}",
                                flush=True,
                            )
                        if run.accepted:
                            accepted[t.key].append(run)
                        if run.accepted or run.skipped:
                            break
                if all(stable(v) for v in accepted.values()):
                    stopped = f"every median stable within {STABLE:.0%}"
                    break
                if time.monotonic() + (time.monotonic() - round_started) > deadline:
                    stopped = f"time budget ({args.budget:.0f} s of runs) reached"
                    break
            short = [k for k, v in accepted.items() if len(v) < MIN_RUNS]
            if short:
                stopped += f"; FEWER THAN {MIN_RUNS} ACCEPTED RUNS: {', '.join(short)} (busy machine or few rounds)"
            unstable = [k for k, v in accepted.items() if len(v) >= MIN_RUNS and not stable(v)]
            if unstable:
                stopped += f"; not stable: {', '.join(unstable)}"
            by = {k: median(v) for k, v in accepted.items()}
            ratios = {
                "b/a": by.get("b", 0) / by.get("a", float("nan")),
                "c/b": by.get("c", 0) / by.get("b", float("nan")),
                "b/d": by.get("b", 0) / by.get("d", float("nan")),
                "e": by.get("e", float("nan")),
                "b_rate": by.get("b", float("nan")),
                "b0_rate": by.get("b0", float("nan")),
            }
            by_key = {t.key: t for t in targets}
            if "b" in by_key and by.get("b", 0) > 0:
                rate = by["b"] * OPENLOOP_SHARE
                first = openloop_median(by_key["b"], rate, args.seconds)
                while not first["sustained"] and not first["disturbed"] and rate > by["b"] * 0.1:
                    # The client itself could not keep up (not others): find the rate it does sustain.
                    notes.append(f"the open-loop client did not sustain {rate:,.0f}/s: measured at a lower rate")
                    rate *= OPENLOOP_STEP
                    first = openloop_median(by_key["b"], rate, args.seconds)
                openloops.append(first)
                ratios["openloop_p99_ms"] = first["latency_us"]["99"] / 1000
                # The same rate on the ceiling and with the log off: whose stalls the p99 shows.
                openloops += [openloop_median(by_key[k], rate, args.seconds) for k in ("a", "b0") if k in by_key]
                for ol in openloops:
                    ol["share"] = rate / by["b"]
                    print(
                        f"open loop {ol['target']:2s} at {rate:,.0f}/s: p50 {fmt_us(ol['latency_us']['50'])} "
                        f"p99 {fmt_us(ol['latency_us']['99'])} sustained {ol['sustained']}",
                        flush=True,
                    )
            if args.profile and "b" in by_key:
                profile(by_key["b"], args.out / "profile-b.txt", args.seconds)
        finally:
            for server in servers.values():
                server.stop()
            redis_proc.terminate()
            redis_proc.wait(STOP_TIMEOUT_S)
        if not args.no_fleet:
            wait_quiet()  # best effort: fleet_scale takes medians of repeats
            print("fleet scale ...", flush=True)
            out = subprocess.run(
                [sys.executable, str(HERE / "fleet_scale.py"), "--json", "--cpu", str(SERVER_CORE)],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=REPO,
            )
            if out.returncode == 0:
                fleet = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                fleet = {"lines": [f"fleet_scale.py failed: {out.stderr.strip()[-500:]}"]}
    attack = ""
    if not args.no_attack:
        wait_quiet()
        print("connection attack ...", flush=True)
        out = subprocess.run(
            [sys.executable, str(HERE / "attack.py"), "--seconds", "5", "--unguarded"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        table = out.stdout.strip().split("\n\n", 1)[-1] if out.returncode == 0 else out.stderr.strip()[-500:]
        attack = (
            "\n\nBid latency while one client streams an endless header and 1,000 hold silent connections, "
            "with pacer's connection guards and on uvicorn's plain protocol (`loadtest/attack.py`):\n\n" + table + "\n"
        )
    events = ""
    if not args.no_events:
        wait_quiet()
        print("events throughput, embedded vs Redis ...", flush=True)  # its progress goes to stderr, shown live
        out = subprocess.run(
            [sys.executable, str(HERE / "bench_events.py"), "--seconds", "5", "--json", str(args.out / "events.json")],
            stdout=subprocess.PIPE,
            text=True,
            timeout=900,
            cwd=REPO,
        )
        table = out.stdout.strip() or f"bench_events.py failed (exit {out.returncode}): its output is above"
        if out.stdout.strip() and out.returncode:
            table += f"\n\n(bench_events.py exit status {out.returncode}: some answers were errors, see its notes)"
        events = "\n\n" + table + "\n"
    scale = ""
    if not args.no_scale:
        wait_quiet()
        print("100,000 bidders on one instance ...", flush=True)
        out = subprocess.run(
            [sys.executable, str(HERE / "bulk_load.py"), "--bidders", "100000"],
            stdout=subprocess.PIPE,
            text=True,
            timeout=900,
            cwd=REPO,
        )
        scale = "\n\n" + (out.stdout.strip() or f"bulk_load.py failed (exit {out.returncode})") + "\n"
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "seconds": args.seconds,
        "rounds": rounds,
        "stopped": stopped,
        "wall_s": round(time.monotonic() - started),
    }
    text = report(targets, runs, ratios, openloops, notes, fleet, meta) + attack + events + scale
    (args.out / "bench.md").write_text(text)
    (args.out / "bench.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "medians": {
                    k: {
                        "rate": median(v, "rate"),
                        "decisions": median(v),
                        "p50_us": median(v, "p50_us"),
                        "p99_us": median(v, "p99_us"),
                        "runs": len(v),
                    }
                    for k, v in accepted.items()
                },
                "ratios": ratios,
                "openloop": openloops,
                "fleet": fleet,
                "runs": [asdict(r) for r in runs],
                "settings": {
                    "bidders": BIDDERS,
                    "connections": CONNECTIONS,
                    "wrk_threads": WRK_THREADS,
                    "batch": BATCH,
                    "warmup_s": WARMUP_S,
                    "disturbed_core0": DISTURBED_CORE0,
                    "disturbed_core1": DISTURBED_CORE1,
                    "quiet_cores": QUIET_CORES,
                },
            },
            indent=1,
            default=str,
        )
    )
    print("\n" + text + f"\n(wall time {meta['wall_s']} s; written to {args.out}/bench.md and bench.json)")
    return 0


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


def profile(target: Target, path: Path, seconds: float) -> None:
    """py-spy samples the server under the same wrk load; writes the top functions by own and total time."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("profile: py-spy not found (.venv/bin/pip install py-spy)", file=sys.stderr)
        return
    raw = path.with_suffix(".folded")
    server = target.server
    server.start()
    try:
        rec = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                "250",
                "--duration",
                f"{seconds:g}",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wrk(target, seconds, "prof" + secrets.token_hex(2))
        rec.wait(seconds + 30)
    finally:
        server.stop()
    path.write_text(summarise_folded(raw.read_text()))
    print(f"profile of b written to {path}", flush=True)


AREAS = [  # (area, pattern): a sample counts for the first area matching its innermost frames
    ("auction log writer (thread)", r"auctionlog\.py.*(write|table)|parquet|pyarrow"),
    ("auction log append", r"AuctionLogWriter\.decision"),
    ("tick", r"tick_steps|controller\.py|_tick_loop"),
    ("store sync / snapshot", r"sqlite\.py|redis\.py|fleet\.py|_snapshot|_sync_loop"),
    ("engine.decide + ledger", r"engine\.py|ledger\.py"),
    ("bidder.py (msgspec decode, encode)", r"bidder\.py"),
    ("metrics", r"metrics\.py"),
    ("pacer/app.py (dispatch, body, response)", r"pacer/app\.py"),
    ("uvicorn send (transport.write)", r"httptools_impl\.py:5[0-9][0-9]"),
    ("uvicorn protocol (parse, task)", r"httptools_impl\.py|proxy_headers\.py"),
    ("event loop", r"runners\.py|asyncio|uvloop"),
]


def summarise_folded(folded: str, top: int = 30) -> str:
    """Own and total time per function, and time by area, from py-spy's collapsed stacks ('frame;... count')."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    areas: dict[str, int] = {}
    samples = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
        area = next((a for f in reversed(frames) for a, rx in AREAS if re.search(rx, f)), "other")
        areas[area] = areas.get(area, 0) + n
    out = [f"{samples} samples", "", "by area (innermost matching frame):"]
    out += [f"{n / samples:6.1%}  {a}" for a, n in sorted(areas.items(), key=lambda x: -x[1])]
    out += ["", "own time:"]
    out += [f"{n / samples:6.1%}  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    out += ["", "total time (self and callees):"]
    out += [f"{n / samples:6.1%}  {f}" for f, n in sorted(total.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
