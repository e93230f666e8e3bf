"""bench_store.py: does the Redis fleet store cost bid throughput? pacer on the embedded store vs on Redis,
same server settings, measured in one run, alternating, median of the rounds.

    .venv/bin/python loadtest/bench_store.py [--seconds 8] [--rounds 3]

The server is pinned to core 0 and this load generator to core 1 (taskset), one `pacer serve` process each,
with 200 bidders active. The load is closed-loop: `--connections` keep-alive connections each sending the next
request as soon as the answer is in, so the server is saturated. Reports requests/s for POST /v1/bid and
decisions/s for POST /v1/bids (100 per call), and the Redis / embedded ratio. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIDDERS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:  # an external process: a bounded poll is the only way to see it ready
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        time.sleep(0.1)


def serve(folder: Path, store: str, token: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PACER_OPERATOR_TOKEN": token, "PACER_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "pacer.cli", "serve", "--port", str(port), "--store", store]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz")
    now = time.time()
    for b in range(BIDDERS):
        body = {
            "budget_micros": 10**13,
            "pacing": "even",
            "period": {"type": "flight", "start": _rfc3339(now - 60), "end": _rfc3339(now + 86400)},
        }
        req = urllib.request.Request(
            f"{url}/v1/bidders/b{b}",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).close()
    time.sleep(1.0)  # let every instance's first sync grant leases before measuring
    return proc, url


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def _connection(port: int, path: str, bodies: list[bytes], until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    i = 0
    while time.monotonic() < until:
        writer.write(requests[i % len(requests)])
        i += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        counts[0] += 1
    writer.close()


def load(port: int, path: str, per_call: int, seconds: float, connections: int) -> float:
    """Requests per second (x per_call = decisions per second) over `seconds`."""

    def body(k: int) -> bytes:
        reqs = [
            {"bidder_id": f"b{(k + j) % BIDDERS}", "auction_id": secrets.token_hex(8), "bid_micros": 2000}
            for j in range(per_call)
        ]
        return json.dumps(reqs[0] if per_call == 1 else {"requests": reqs}).encode()

    bodies = [body(k) for k in range(64)]

    async def run() -> float:
        counts = [0]
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(_connection(port, path, bodies, until, counts) for _ in range(connections)))
        return counts[0] / (time.monotonic() - started)

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server not found; install it: apt-get install -y redis-server", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rport = free_port()
        redis = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                "redis-server",
                "--port",
                str(rport),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        results: dict[tuple[str, str], list[float]] = {}
        try:
            for r in range(args.rounds):
                for name, store in (
                    ("embedded", f"sqlite:///{folder}/e{r}.db"),
                    ("redis", f"redis://127.0.0.1:{rport}/0"),
                ):
                    sub = folder / f"{name}{r}"
                    sub.mkdir()
                    proc, url = serve(sub, store, token)
                    port = int(url.rsplit(":", 1)[1])
                    try:
                        for route, per_call in (("/v1/bid", 1), ("/v1/bids", 100)):
                            rate = load(port, route, per_call, args.seconds, args.connections) * per_call
                            results.setdefault((name, route), []).append(rate)
                            print(f"round {r + 1} {name:8s} {route:8s} {rate:10.0f} /s", flush=True)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(30)
        finally:
            redis.terminate()
            redis.wait(10)
    print("\nmedians (requests/s for /v1/bid, decisions/s for /v1/bids of 100):")
    for route in ("/v1/bid", "/v1/bids"):
        e = statistics.median(results["embedded", route])
        r = statistics.median(results["redis", route])
        print(f"  {route:8s} embedded {e:10.0f}  redis {r:10.0f}  redis/embedded {r / e:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
