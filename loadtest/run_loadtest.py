"""run_loadtest.py (`make loadtest`): a small fleet (one redis-server, two `pacer serve`) under the locust load of
locustfile.py, then the money check: each bidder's fleet spend equals the exchange's ledger exactly, none over
budget.

    .venv/bin/python loadtest/run_loadtest.py [--users 200] [--run-time 60s] [--bidders 50] [--out loadtest-out]

Everything runs in a temporary folder on free ports and is stopped on exit (Ctrl-C and errors included). Locust
sends every request to the next instance in turn, so most notices reach the instance that did not grant the bid.
After the run: the notices left are sent (by the locustfile), the instances are polled until they agree on every
bidder's spend twice in a row (a fleet view is at most one sync old), and then checked. Writes locust's CSV and
HTML report, the exchange ledgers, the instances' logs, `bidders.json` (budget, spend and ledger per bidder)
and `summary.txt` (the table) to --out. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
INSTANCES = 2
USERS = 200  # ~1,900 req/s: what this 2-core machine sustains with the fleet on it (loadtest/README.md)
RUN_TIME = "60s"
BIDDERS = 50
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
SETTLE_TIMEOUT_S = 15.0
SETTLE_EVERY_S = 0.3  # a little more than one sync (PACER_SYNC_MS, 250 ms by default)
SPAWN_RATE_MAX = 100  # users started per second (locust warns above)
LOCUST_GRACE_S = 120.0  # beyond --run-time: the start (bidders created) and the final drain of notices
EXHAUSTED_SHARE = 0.99  # spent this share of its budget: exhausted (what is left is less than about one bid)
ROUTES = ("/v1/bid", "/v1/bids", "/v1/events", "/v1/bidders/[id]", "/v1/bidders?limit=[n]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seconds(text: str) -> float:
    """Locust's --run-time syntax: 90, 90s, 2m, 1h30m."""
    if text.isdigit():
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a run time: {text!r} (e.g. 60s, 2m, 1h30m)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return float(h * 3600 + m * 60 + s)


class Stopped(Exception):
    """SIGTERM: unwind like Ctrl-C so that every process started is stopped."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Ask, then insist: SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def start(stack: ExitStack, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (a Ctrl-C reaches only this script, which stops the children in order)."""
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop, proc)
    return proc


def wait_until(ready: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `ready()` (another process: a bounded poll is the only way to see it ready)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {READY_TIMEOUT_S:g} s")
        time.sleep(0.05)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc (0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def children_cpu_s() -> float:
    """CPU seconds of the children this process has waited for (and of the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


def start_fleet(
    stack: ExitStack, tmp: Path, out: Path, token: str, instances: int
) -> tuple[list[str], dict[str, subprocess.Popen[bytes]]]:
    """Redis, then the instances, each ready; returns their URLs and every process by name."""
    rport = free_port()
    (tmp / "redis").mkdir()
    redis_log = out / "redis.log"
    redis = start(
        stack,
        [
            "redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp / "redis"),
        ],
        tmp,
        dict(os.environ),
        redis_log,
    )
    wait_until(lambda: redis_ready(rport), "redis-server", redis, redis_log)
    procs = {"redis": redis}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACER_")}
    env.update(
        PACER_OPERATOR_TOKEN=token,
        PACER_LOG_URL=str(tmp / "pacer-log"),
        PACER_LOG_LEVEL="warning",
        PACER_REFIT_S="0",  # no refit subprocess competing for the two cores during the measurement
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    urls = []
    for i in range(instances):
        folder = tmp / f"pacer{i}"
        folder.mkdir()
        port = free_port()
        log = out / f"pacer{i}.log"
        proc = start(
            stack,
            [
                sys.executable,
                "-m",
                "pacer.cli",
                "serve",
                "--port",
                str(port),
                "--store",
                f"redis://127.0.0.1:{rport}/0",
            ],
            folder,
            env,
            log,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda u=url: http(u + "/readyz")[0] == 200, f"pacer serve {url}", proc, log)
        urls.append(url)
        procs[f"pacer{i}"] = proc
    return urls, procs


def run_locust(
    stack: ExitStack,
    args: argparse.Namespace,
    urls: list[str],
    token: str,
    out: Path,
    fleet: dict[str, subprocess.Popen[bytes]],
) -> tuple[int, dict[str, float]]:
    """Locust's exit code, and the CPU each process used while it ran, in cores (1.0: one core busy)."""
    env = {**os.environ, "PACER_URLS": ",".join(urls), "PACER_OPERATOR_TOKEN": token}
    env.pop("PACER_BIDDER_TOKEN", None)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(args.users),
        "-r",
        str(min(args.users, SPAWN_RATE_MAX)),
        "--run-time",
        args.run_time,
        "--host",
        urls[0],
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--bidders",
        str(args.bidders),
        "--notices-to",
        args.notices_to,
        "--ledger-dir",
        str(out),
    ]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    print(f"locust: {args.users} users for {args.run_time} on {', '.join(urls)}", flush=True)
    began, locust_before = time.monotonic(), children_cpu_s()
    fleet_before = {name: cpu_s(p.pid) for name, p in fleet.items()}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)  # its output goes to the terminal
    stack.callback(stop, proc, signal.SIGINT)  # locust stops gracefully on SIGINT (writes its reports)
    rc = proc.wait(seconds(args.run_time) + LOCUST_GRACE_S)
    wall = time.monotonic() - began
    cpu = {"locust": (children_cpu_s() - locust_before) / wall}
    cpu.update((name, (cpu_s(p.pid) - fleet_before[name]) / wall) for name, p in fleet.items())
    return rc, cpu


def fleet_view(urls: list[str], token: str, prefix: str) -> list[dict[str, dict[str, Any]]]:
    """Every instance's statuses of the load test's bidders (the list, page by page)."""
    views = []
    for url in urls:
        view: dict[str, dict[str, Any]] = {}
        cursor = ""
        while True:
            code, body = http(f"{url}/v1/bidders?limit=1000{cursor}", token)
            if code != 200:
                raise RuntimeError(f"GET {url}/v1/bidders: {code}")
            view.update((s["bidder_id"], s) for s in body["bidders"] if s["bidder_id"].startswith(prefix))
            if not body["next"]:
                break
            cursor = f"&cursor={body['next']}"
        views.append(view)
    return views


def settle(urls: list[str], token: str, prefix: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """Poll until every instance shows the same spend for every bidder, twice in a row one sync apart."""

    def spend(view: dict[str, dict[str, Any]]) -> dict[str, int]:
        return {b: s["spent_micros"] for b, s in view.items()}

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: dict[str, int] | None = None
    while True:
        views = fleet_view(urls, token, prefix)
        spends = [spend(v) for v in views]
        agreed = all(s == spends[0] for s in spends)
        if agreed and spends[0] == last:
            return views[0], True
        last = spends[0] if agreed else None
        if time.monotonic() > deadline:
            return views[0], False
        time.sleep(SETTLE_EVERY_S)


@dataclass
class Ledger:
    """The exchange's ledgers of every locust process, added up."""

    charged: dict[str, dict[str, int]] = field(default_factory=dict)  # bidder -> auction -> price
    tally: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    unsent: int = 0
    files: int = 0
    delay_p99: float = 0.0
    delay_max: float = 0.0

    @classmethod
    def read(cls, folder: Path) -> Ledger:
        ledger = cls()
        for path in sorted(folder.glob("exchange-*.json")):
            data = json.loads(path.read_text())
            ledger.files += 1
            for bidder_id, auction_id, price in data["wins"]:
                auctions = ledger.charged.setdefault(bidder_id, {})
                if auctions.setdefault(auction_id, price) != price:
                    ledger.errors.append(f"{bidder_id}/{auction_id} charged {auctions[auction_id]} and {price}")
            ledger.tally.update(data["tally"])
            ledger.reasons.update(data["reasons"])
            ledger.errors += data["errors"]
            ledger.error_count += data["error_count"]
            ledger.unsent += data["unsent"]
            delays = data["win_delay_s"]
            ledger.delay_p99 = max(ledger.delay_p99, delays["p99"] or 0.0)
            ledger.delay_max = max(ledger.delay_max, delays["max"] or 0.0)
        return ledger

    def spend(self, bidder_id: str) -> int:
        return sum(self.charged.get(bidder_id, {}).values())

    @property
    def wins(self) -> int:
        return sum(len(a) for a in self.charged.values())


def locust_routes(out: Path) -> list[dict[str, str]]:
    path = out / "locust_stats.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def report(
    args: argparse.Namespace,
    urls: list[str],
    locust_rc: int,
    cpu: dict[str, float],
    status: dict[str, dict[str, Any]],
    settled: bool,
    ledger: Ledger,
    out: Path,
) -> bool:
    """Print the table and the checks; True if every check passed."""
    lines: list[str] = []
    failures: list[str] = []
    service_total = sum(s["spent_micros"] for s in status.values())
    exchange_total = sum(ledger.spend(b) for b in status)
    mismatched = {
        b: (s["spent_micros"], ledger.spend(b)) for b, s in status.items() if s["spent_micros"] != ledger.spend(b)
    }
    over = {
        b: s["spent_micros"] - s["budget_micros"] for b, s in status.items() if s["spent_micros"] > s["budget_micros"]
    }
    exhausted = sum(s["spent_micros"] >= EXHAUSTED_SHARE * s["budget_micros"] for s in status.values())
    states = Counter(s["state"] for s in status.values())
    t, reasons = ledger.tally, ledger.reasons
    grants = reasons["bid"]
    auctions = t["auctions"]
    unacked = t["wins_decided"] - ledger.wins
    foreign = sorted(set(ledger.charged) - set(status))

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<34} {value}")

    lines.append(f"pacer load test: {len(urls)} instances + Redis, {args.users} locust users, {args.run_time}")
    row("bidders", f"{len(status)} (states: {', '.join(f'{k} {v}' for k, v in sorted(states.items()))})")
    row("bids asked (auctions)", f"{auctions:,}")
    row(
        "grants",
        f"{grants:,} ({grants / max(auctions, 1):.1%}); no bid: "
        + ", ".join(f"{k} {v:,}" for k, v in reasons.most_common() if k != "bid"),
    )
    row("wins (unique, acknowledged)", f"{ledger.wins:,} ({ledger.wins / max(grants, 1):.1%} of grants)")
    row(
        "win notices acknowledged", f"{t['win_notices']:,}, of them duplicates sent on purpose {t['duplicates_sent']:,}"
    )
    row("loss notices acknowledged", f"{t['loss_notices']:,}")
    row("notices posted again (no 200)", f"{t['events_retried']:,}")
    row("service answered", f"accepted {t['service_accepted']:,}, duplicates {t['service_duplicates']:,}")
    row("win notice delay (grant -> 200)", f"p99 {ledger.delay_p99:.3f} s, max {ledger.delay_max:.3f} s")
    row(
        "spend: service / exchange",
        f"{service_total:,} / {exchange_total:,} micros "
        + ("(equal per bidder)" if not mismatched else f"({len(mismatched)} bidders differ)"),
    )
    row("overspent bidders", f"{len(over)}")
    row("exhausted bidders", f"{exhausted} (spent >= {EXHAUSTED_SHARE:.0%} of budget)")
    row(f"CPU while locust ran, of {os.cpu_count()} cores", ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    lines.append("")
    lines.append(f"  {'route':<24} {'method':<6} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'fails':>6}")
    for r in locust_routes(out):
        if r["Name"] in ROUTES or r["Name"] == "Aggregated":
            lines.append(
                f"  {r['Name']:<24} {r['Type']:<6} {int(r['Request Count']):>9,} "
                f"{float(r['Requests/s']):>8.1f} {r['50%']:>7} {r['99%']:>7} {r['Failure Count']:>6}"
            )

    if locust_rc != 0:
        failures.append(f"locust exited with {locust_rc} (failed requests or errors: see its output)")
    if ledger.files != max(1, args.processes):
        failures.append(f"{ledger.files} exchange ledger files, expected {max(1, args.processes)}")
    if not settled:
        failures.append(f"the instances did not agree on spend within {SETTLE_TIMEOUT_S:g} s")
    if len(status) != args.bidders:
        failures.append(f"{len(status)} bidders in the fleet, expected {args.bidders}")
    for b, (service, exchange) in sorted(mismatched.items())[:20]:
        failures.append(f"{b}: service spent {service:,}, exchange charged {exchange:,} ({service - exchange:+,})")
    for b, extra in sorted(over.items()):
        failures.append(f"{b}: overspent by {extra:,} micros")
    if foreign:
        failures.append(f"wins charged for bidders the fleet does not know: {foreign[:5]}")
    if unacked or ledger.unsent:
        failures.append(f"{unacked} wins never acknowledged, {ledger.unsent} notices unsent")
    if ledger.error_count:
        failures.append(f"{ledger.error_count} exchange errors, e.g. {ledger.errors[:3]}")
    lines.append("")
    lines += [f"FAIL {f}" for f in failures] or ["OK: spend == exchange ledger exactly for every bidder; no overspend"]
    per_bidder = {
        b: {
            "budget_micros": s["budget_micros"],
            "spent_micros": s["spent_micros"],
            "exchange_micros": ledger.spend(b),
            "state": s["state"],
            "pacing": s["pacing"],
        }
        for b, s in sorted(status.items())
    }
    (out / "bidders.json").write_text(json.dumps(per_bidder, indent=1))
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (out / "summary.txt").write_text(text + "\n")
    return not failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=USERS, help="locust users (one of them is the operator)")
    parser.add_argument("--run-time", default=RUN_TIME, type=lambda s: (seconds(s), s)[1], help="e.g. 60s, 5m")
    parser.add_argument("--bidders", type=int, default=BIDDERS)
    parser.add_argument("--instances", type=int, default=INSTANCES)
    parser.add_argument("--processes", type=int, default=1, help="locust processes (each writes its own ledger)")
    parser.add_argument(
        "--notices-to",
        choices=("next", "granting"),
        default="next",
        help="notices to the next instance in turn (round-robin) or to the one that granted the bid",
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest-out"))
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server not found; install it: apt-get install -y redis-server", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in [
        *out.glob("exchange-*.json"),
        *out.glob("locust*"),
        *out.glob("pacer*.log"),
        out / "summary.txt",
        out / "bidders.json",
    ]:
        old.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    token = secrets.token_urlsafe(16)
    prefix = "lt-"
    try:
        with tempfile.TemporaryDirectory(prefix="pacer-loadtest-") as tmp, ExitStack() as stack:
            urls, fleet = start_fleet(stack, Path(tmp), out, token, args.instances)
            locust_rc, cpu = run_locust(stack, args, urls, token, out, fleet)
            status, settled = settle(urls, token, prefix)
            ok = report(args, urls, locust_rc, cpu, status, settled, Ledger.read(out), out)
    except (KeyboardInterrupt, Stopped) as e:
        signum = e.args[0] if isinstance(e, Stopped) else signal.SIGINT
        print(f"\nstopped by {signal.Signals(signum).name}; every process it started was stopped", file=sys.stderr)
        return 128 + signum
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
