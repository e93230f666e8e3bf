"""attack.py: bid latency while clients attack the connection layer, with pacer's connection guards and without.

    .venv/bin/python loadtest/attack.py [--seconds 8] [--silent 1000] [--stream-mb-s 100] [--unguarded]

Starts `pacer serve` (its guarded HTTP protocol, pacer/connections.py) and measures the latency of POST /v1/bid
(sequential, on one keep-alive connection, an unknown bidder: answered 200 bid:false) first with no attack, then
while one client streams an endless header line (reconnecting as soon as it is cut off) and `--silent` clients hold
connections that never send anything (reopening each one the server closes). With `--unguarded` the same is
measured in the same run against the same app on uvicorn's plain httptools protocol (`uvicorn --http httptools`,
what `pacer serve` ran before the guards), and the table gives the ratios. Prints a table: bids, p50, p99 and max
latency, timeouts, the server's CPU (cores) and its most open descriptors in each phase, and what the attackers saw.

The server is pinned to core 0 (bench.py's `Server`), this script and the attackers to core 1, the attackers in
a child process at a lower priority (nice 10), so that the probe's latency is the server's and not the attackers'.
Only 127.0.0.1 is targeted; every loop is bounded in count and time, and one header stream in bytes (without the
guard the server keeps all of it: STREAM_CAP bounds its memory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from bench import LOAD_CORE, Server, pacer, pid_cpu, terminated_on_signal

HOST = "127.0.0.1"
WARMUP_S = 1.0
BID_TIMEOUT_S = 10.0  # a bid unanswered this long counts as a timeout (and the probe reconnects)
READY_TIMEOUT_S = 30.0  # the attackers must have their connections open within this
CHUNK = 64 * 1024  # the header streamer writes this much at a time...
STREAM_CAP = 512 << 20  # ...and at most this much into one connection (unguarded, the server keeps it all)
MAX_STREAMS = 100_000  # header streams per attack
REOPENS_PER_SILENT = 100  # each silent connection is reopened at most this often per attack
OPEN_BATCH = 100  # silent connections opened at once
FD_SAMPLE_S = 0.25


def _bid_request(i: int) -> bytes:
    body = json.dumps({"bidder_id": "nobody", "auction_id": f"probe-{i}", "bid_micros": 1000}).encode()
    head = f"POST /v1/bid HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


# --- the attackers (a child process) ---------------------------------------------------------------------------


@dataclass
class AttackStats:
    streams: int = 0  # header streams started
    cut_off: int = 0  # ...that the server ended
    answered_431: int = 0  # ...with a 431
    stream_bytes: int = 0  # bytes of header sent, all streams
    longest_stream: int = 0  # bytes sent into one stream
    silent_opened: int = 0
    silent_closed: int = 0  # silent connections the server closed
    connect_errors: int = 0


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def _stream_header(port: int, until: float, rate: float, stats: AttackStats) -> None:
    """One endless header line at `rate` bytes/s (0: as fast as the server takes it), until the server cuts it off,
    STREAM_CAP or `until`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    stats.streams += 1
    answer = asyncio.create_task(_read_all(reader))
    sent = 0
    chunk = b"a" * CHUNK
    reset = False
    try:
        writer.write(b"POST /v1/bid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Long: ")
        began = time.monotonic()
        while not answer.done() and sent < STREAM_CAP and (now := time.monotonic()) < until:
            writer.write(chunk)
            sent += CHUNK
            await writer.drain()
            if rate and (ahead := began + sent / rate - now) > 0:
                await asyncio.sleep(ahead)  # the attacker's own pace (a link's bandwidth), not a synchronisation
    except OSError:
        reset = True
    if reset and not answer.done():
        await asyncio.wait([answer], timeout=2.0)  # the server reset it: what did it answer first?
    if answer.done():
        stats.cut_off += 1
        stats.answered_431 += answer.result().startswith(b"HTTP/1.1 431")
    else:
        answer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answer
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    stats.stream_bytes += sent
    stats.longest_stream = max(stats.longest_stream, sent)


async def _streamer(port: int, until: float, rate: float, stats: AttackStats) -> None:
    while time.monotonic() < until and stats.streams < MAX_STREAMS:
        try:
            await _stream_header(port, until, rate, stats)
        except OSError:
            stats.connect_errors += 1
            await asyncio.sleep(0.01)  # a refused connect: pace the retries


async def _silent(port: int, stats: AttackStats, batch: asyncio.Semaphore) -> None:
    """Hold one connection that never sends; reopen it whenever the server closes it (until cancelled)."""
    for _ in range(REOPENS_PER_SILENT):
        try:
            async with batch:
                reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats.connect_errors += 1
            await asyncio.sleep(0.1)  # a refused connect: pace the retries
            continue
        stats.silent_opened += 1
        try:
            await _read_all(reader)
            stats.silent_closed += 1
        finally:
            writer.close()


async def _attack(port: int, silent: int, seconds: float, rate: float, pipe: Connection) -> AttackStats:
    stats = AttackStats()
    batch = asyncio.Semaphore(OPEN_BATCH)
    holders = [asyncio.create_task(_silent(port, stats, batch)) for _ in range(silent)]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while stats.silent_opened < silent and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the connections open in the background: poll their count
    pipe.send(("ready", stats.silent_opened))
    await _streamer(port, time.monotonic() + seconds, rate, stats)
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    return stats


def attacker(port: int, silent: int, seconds: float, rate: float, pipe: Connection) -> None:
    """Child process: open the silent connections, say "ready", attack for `seconds`, send the stats."""
    os.nice(10)
    import uvloop

    stats = uvloop.run(_attack(port, silent, seconds, rate, pipe))
    pipe.send(("stats", asdict(stats)))


# --- the probe (this process) ----------------------------------------------------------------------------------


@dataclass
class Phase:
    server: str
    name: str
    attacked: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    cpu: float = 0.0  # the server's CPU, in cores
    max_fds: int = 0  # the server's open descriptors, most seen
    max_rss_mb: float = 0.0  # the server's resident memory, most seen
    attack: AttackStats | None = None

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


async def _probe(port: int, seconds: float, phase: Phase, pid: int) -> None:
    """Sequential bids on one keep-alive connection for `seconds` (reconnecting after a timeout or an error)."""

    async def sample_fds() -> None:
        while True:
            phase.max_fds = max(phase.max_fds, _fds(pid))
            phase.max_rss_mb = max(phase.max_rss_mb, _rss_mb(pid))
            await asyncio.sleep(FD_SAMPLE_S)  # sampling /proc: there is nothing to wait on

    sampler = asyncio.create_task(sample_fds())
    end = time.monotonic() + seconds
    cpu0, t0 = pid_cpu(pid), time.monotonic()
    i = 0
    writer: asyncio.StreamWriter | None = None
    try:
        while time.monotonic() < end and i < 10_000_000:
            i += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), BID_TIMEOUT_S)
                start = time.perf_counter()
                writer.write(_bid_request(i))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BID_TIMEOUT_S)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await asyncio.wait_for(reader.readexactly(length), BID_TIMEOUT_S)
                elapsed = (time.perf_counter() - start) * 1000
                if not head.startswith(b"HTTP/1.1 200") or b'"bid":false' not in body:
                    phase.errors += 1
                else:
                    phase.latencies_ms.append(elapsed)
            except TimeoutError:
                phase.timeouts += 1
                _drop(writer)
                writer = None
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                phase.errors += 1
                _drop(writer)
                writer = None
    finally:
        _drop(writer)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    phase.cpu = (pid_cpu(pid) - cpu0) / max(time.monotonic() - t0, 1e-6)


def _drop(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def measure(server: Server, label: str, seconds: float, silent: int, rate: float) -> list[Phase]:
    import uvloop

    uvloop.run(_probe(server.port, WARMUP_S, Phase(label, "warm-up"), server.pid))
    quiet = Phase(label, "no attack")
    uvloop.run(_probe(server.port, seconds, quiet, server.pid))
    attacked = Phase(label, f"1 header stream + {silent} silent", attacked=True)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=attacker, args=(server.port, silent, seconds + 1.0, rate, theirs), daemon=True)
    child.start()
    try:
        if not ours.poll(READY_TIMEOUT_S + 5):
            raise RuntimeError("the attackers did not get ready")
        kind, opened = ours.recv()
        assert kind == "ready", kind
        attacked.name = f"1 header stream + {opened} silent"
        uvloop.run(_probe(server.port, seconds, attacked, server.pid))
        if ours.poll(seconds + READY_TIMEOUT_S):
            kind, stats = ours.recv()
            attacked.attack = AttackStats(**stats)
        child.join(10)
    finally:
        if child.is_alive():
            child.terminate()
            child.join(5)
    return [quiet, attacked]


def report(phases: list[Phase]) -> str:
    rows = [
        f"{'server':<10} {'phase':<28} {'bids':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'timeouts':>8} "
        f"{'server cpu':>10} {'fds max':>7} {'rss MB':>7}"
    ]
    for p in phases:
        rows.append(
            f"{p.server:<10} {p.name:<28} {len(p.latencies_ms):>7} {p.pct(0.5):>9.2f} {p.pct(0.99):>9.2f} "
            f"{max(p.latencies_ms, default=float('nan')):>9.2f} {p.timeouts:>8} {p.cpu:>10.2f} "
            f"{p.max_fds:>7} {p.max_rss_mb:>7.0f}"
        )
    rows.append("")
    for p in phases:
        a = p.attack
        if a is not None:
            rows.append(
                f"{p.server}: {a.streams} header stream(s), {a.cut_off} cut off by the server "
                f"({a.answered_431} with 431), longest {a.longest_stream / 1024:.0f} KiB, "
                f"{a.stream_bytes / 2**20:.0f} MiB sent in all; silent connections opened {a.silent_opened}, "
                f"closed by the server {a.silent_closed}; connect errors {a.connect_errors}"
            )
    by = {(p.server, p.attacked): p for p in phases}
    rows.append("")
    for server in dict.fromkeys(p.server for p in phases):
        quiet, attacked = by[(server, False)], by[(server, True)]
        rows.append(
            f"{server}: under attack / no attack: p50 x{attacked.pct(0.5) / quiet.pct(0.5):.1f}, "
            f"p99 x{attacked.pct(0.99) / quiet.pct(0.99):.1f}; bids answered x"
            f"{len(attacked.latencies_ms) / max(len(quiet.latencies_ms), 1):.2f}"
        )
    if ("unguarded", True) in by:
        g, u = by[("guarded", True)], by[("unguarded", True)]
        rows.append(
            f"under attack, unguarded / guarded: p50 x{u.pct(0.5) / g.pct(0.5):.1f}, "
            f"p99 x{u.pct(0.99) / g.pct(0.99):.1f}"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    parser.add_argument(
        "--stream-mb-s",
        type=float,
        default=100.0,
        help="the header stream's rate in MB/s (100: one client on a 1 Gbit/s link; 0: unlimited)",
    )
    parser.add_argument("--silent", type=int, default=1000, help="silent connections held during the attack")
    parser.add_argument(
        "--unguarded",
        action="store_true",
        help="also measure uvicorn's plain httptools protocol (no guards), in the same run",
    )
    args = parser.parse_args()
    if not 0 < args.seconds <= 120 or not 0 <= args.silent <= 5000:
        parser.error("--seconds in (0, 120], --silent in [0, 5000]")
    if (os.cpu_count() or 1) < 2:  # the machine's cores: bench.py runs this pinned to core 1 already
        print("attack: needs two cores (0 for the server, 1 for the probe and the attackers)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    token = secrets.token_urlsafe(16)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="pacer-attack-") as tmp, terminated_on_signal():
        root = Path(tmp)
        servers = [("guarded", pacer("guarded", root / "guarded", f"sqlite:///{root}/guarded/pacer.db", token))]
        if args.unguarded:
            folder = root / "unguarded"
            env = {
                "PACER_OPERATOR_TOKEN": token,
                "PACER_LOG_LEVEL": "warning",
                "PACER_STORE": f"sqlite:///{folder}/pacer.db",
            }
            argv = [
                "-m",
                "uvicorn",
                "pacer.app:create_app",
                "--factory",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--host",
                HOST,
            ]
            servers.append(("unguarded", Server("unguarded", argv, folder, "/readyz", env)))
        for label, server in servers:
            server.start()
            try:
                phases += measure(server, label, args.seconds, args.silent, args.stream_mb_s * 1e6)
            finally:
                server.stop()
            print(f"{label}: done", flush=True)
    print()
    print(report(phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
