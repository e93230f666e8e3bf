"""openloop.py: a constant-rate (open-loop) HTTP/1.1 load generator for `make bench`'s latency figures.

Latency is measured from each request's scheduled send time, so a stalled server cannot hide behind a waiting
client (coordinated omission).

    .venv/bin/python loadtest/openloop.py http://127.0.0.1:8080/v1/bid --rate 20000 [--seconds 10]

Requests go out at `rate` per second in total over `connections` keep-alive connections, one in flight per
connection (no pipelining). Request i is due at t0 + i/rate; it leaves on the first idle connection at or after
that time, and its latency runs from when it was due to when its answer is in. When every connection is busy,
due requests queue in the client and their wait counts. The client spins its event loop (event-loop timers are
millisecond-grained, too coarse here), so it uses its whole core; it reports its own lateness (`lag`: how late a
request left while a connection was idle) and the rate it achieved, and says `sustained: false` when it could
not keep up, in which case the latencies measure the client, not the server. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import uvloop

BIDDERS = 200
BID_MICROS = 2000
DRAIN_S = 2.0  # after the last due request, wait this long for answers still out; the rest count as lost
SUSTAINED_SHARE = 0.99  # the client kept up if it sent at least this share of the due requests...
MAX_LAG_P99_S = 100e-6  # ...and 99% of requests sent on an idle connection left within this of their due time
PERCENTILES = (50, 90, 99, 99.9)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


class Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses one answer (Content-Length framed), repeats."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0  # the due time of the request in flight
        self.sent = 0.0
        self.measured = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        self.client.answered(self, time.perf_counter(), head[9:12] == b"200")

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class Client:
    """The schedule, the idle connections, the backlog of due requests, and what was measured."""

    def __init__(self, host: str, path: str, rate: float, seconds: float, warmup: float, tag: str) -> None:
        self.host, self.path, self.rate, self.tag = host, path, rate, tag
        self.warmup, self.seconds = warmup, seconds
        self.idle: deque[Connection] = deque()
        self.next = 0  # index of the next request to schedule
        self.total = int(rate * (warmup + seconds))
        self.t0 = 0.0
        self.latency: list[float] = []  # from due time to answer, requests due after the warm-up
        self.service: list[float] = []  # from actual send to answer (what a closed-loop tool reports)
        self.lag: list[float] = []  # how late a request left an idle connection
        self.queued = 0  # measured requests that waited for a connection (all busy when due)
        self.errors = 0
        self.closed = 0
        self.outstanding = 0
        self.finished = asyncio.get_running_loop().create_future()

    def request(self, i: int) -> bytes:
        body = b'{"bidder_id":"b%d","auction_id":"%s-%d","bid_micros":%d}' % (
            i % BIDDERS,
            self.tag.encode(),
            i,
            BID_MICROS,
        )
        return b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            self.path.encode(),
            self.host.encode(),
            len(body),
            body,
        )

    def send(self, conn: Connection, now: float) -> None:
        i = self.next
        self.next += 1
        conn.due = self.t0 + i / self.rate
        conn.measured = conn.due >= self.t0 + self.warmup
        conn.sent = now
        self.outstanding += 1
        assert conn.transport is not None
        conn.transport.write(self.request(i))

    def spin(self) -> None:
        """Send every due request on an idle connection, then come back at once (a busy loop, on purpose)."""
        now = time.perf_counter()
        while self.idle and self.next < self.total and self.t0 + self.next / self.rate <= now:
            conn = self.idle.popleft()
            self.send(conn, now)
            if conn.measured:
                self.lag.append(now - conn.due)
            now = time.perf_counter()
        if self.next < self.total:
            asyncio.get_running_loop().call_soon(self.spin)
        elif not self.outstanding and not self.finished.done():
            self.finished.set_result(None)

    def answered(self, conn: Connection, now: float, ok: bool) -> None:
        self.outstanding -= 1
        if conn.measured:
            self.latency.append(now - conn.due)
            self.service.append(now - conn.sent)
            self.errors += not ok
        if self.next < self.total and self.t0 + self.next / self.rate <= now:
            self.send(conn, now)  # a request was due while every connection was busy: it waited
            self.queued += conn.measured
        else:
            self.idle.append(conn)
        if self.next >= self.total and not self.outstanding and not self.finished.done():
            self.finished.set_result(None)

    def lost(self, conn: Connection) -> None:
        self.closed += 1
        if conn in self.idle:
            self.idle.remove(conn)


async def run(url: str, rate: float, seconds: float, warmup: float, connections: int, tag: str) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    client = Client(f"{host}:{port}", parts.path or "/", rate, seconds, warmup, tag)
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(lambda: Connection(client), host, port))[1] for _ in range(connections)]
    client.idle.extend(conns)
    gc.collect()
    gc.disable()  # a collection mid-run would show up as client lag
    started_cpu = time.process_time()
    client.t0 = time.perf_counter() + 0.01
    loop.call_soon(client.spin)
    with contextlib.suppress(TimeoutError):  # answers still out after the drain count as lost
        await asyncio.wait_for(asyncio.shield(client.finished), warmup + seconds + DRAIN_S)
    elapsed = time.perf_counter() - client.t0
    cpu = time.process_time() - started_cpu
    gc.enable()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    measured_due = int(rate * seconds)
    latency = sorted(client.latency)
    lag = sorted(client.lag)
    service = sorted(client.service)
    answered = len(latency)
    lost = max(0, measured_due - answered)
    sent_share = answered / measured_due if measured_due else 0.0
    lag_p99 = percentile(lag, 99)
    return {
        "url": url,
        "rate": rate,
        "seconds": seconds,
        "connections": connections,
        "achieved_rate": answered / seconds,
        "answered": answered,
        "lost": lost,
        "errors": client.errors,
        "queued": client.queued,
        "elapsed_s": elapsed,
        "client_cpu_share": cpu / max(elapsed, 1e-9),
        "latency_us": {str(q): percentile(latency, q) * 1e6 for q in PERCENTILES}
        | {"max": latency[-1] * 1e6 if latency else None},
        "service_us": {str(q): percentile(service, q) * 1e6 for q in PERCENTILES},
        "lag_us": {str(q): percentile(lag, q) * 1e6 for q in PERCENTILES},
        "sustained": bool(sent_share >= SUSTAINED_SHARE and lag_p99 <= MAX_LAG_P99_S and not lost),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, all connections together")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate, not measured")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--tag", default=f"ol{os.getpid()}", help="auction_id prefix (unique per run)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = uvloop.run(run(args.url, args.rate, args.seconds, args.warmup, args.connections, args.tag))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
