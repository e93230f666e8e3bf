"""Fixtures for end-to-end tests: `pacer serve` as a real subprocess on a free port, and helpers around it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rfc3339(ts: float) -> str:
    """Epoch seconds (whole milliseconds) -> RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def whole_ms(ts: float) -> float:
    return round(ts * 1000) / 1000


class PacerServer:
    """One `pacer serve` process at a time on a fixed port, in its own folder, on a SQLite file or a shared store
    (`store`, e.g. a Redis URL; `workers` processes then); can be killed and restarted."""

    def __init__(
        self,
        tmp_path: Path,
        store: str | None = None,
        workers: int = 1,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token or secrets.token_urlsafe(16)
        self.db = tmp_path / "p.db"
        self.store = store or f"sqlite:///{self.db}"
        self.workers = workers
        self.env = env or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.escalated = False  # the last stop() had to SIGKILL
        self._log: BinaryIO | None = None
        self._log_path = tmp_path / "serve.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACER_")}
        # The simulated exchange sends win notices within 50-150 ms, so the reservation TTL may go below the
        # production floor of 1 s (as an operator facing such an exchange would set it); with the 1 s floor the
        # unreported losses of the last second of a 20 s flight hold 5-8% of its budget past the end.
        env.update(
            {
                "PACER_OPERATOR_TOKEN": self.token,
                "PACER_TICK_MS": "100",
                "PACER_LOG_LEVEL": "warning",
                "PACER_TTL_MIN_S": "0.3",
                **self.env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        if self._log is not None:
            self._log.close()
        self._log = self._log_path.open("ab")
        self.starts += 1
        self._log.write(f"--- start {self.starts} ---\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacer.cli",
                "serve",
                "--port",
                str(self.port),
                "--store",
                self.store,
                "--workers",
                str(self.workers),
            ],
            cwd=self.tmp_path,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll GET /readyz until 200: the process is external, so a bounded poll loop is the only way."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pacer serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pacer serve not ready after {timeout}s:\n{self.log()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, no waiting (callable from inside an event-loop callback); `reap` collects the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def reap(self) -> int:
        assert self.proc is not None
        return self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S. Returns the exit code: uvicorn
        re-raises the SIGTERM it handled once it has shut down cleanly, so a clean stop reads -SIGTERM."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.escalated = True
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def operator_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stored_spend(self, bidder_id: str) -> int:
        """Spend the SQLite file holds for the bidder (read after the process has stopped)."""
        with sqlite3.connect(self.db) as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(spent_micros), 0) FROM spend WHERE bidder_id = ?", (bidder_id,)
            ).fetchone()
        conn.close()
        return int(row[0])


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **env: str) -> AsyncIterator[PacerServer]:
    """A ready `pacer serve` in tmp_path with these PACER_* overrides, stopped afterwards."""
    server = PacerServer(tmp_path, env=env)
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pacer_server(tmp_path: Path) -> AsyncIterator[PacerServer]:
    async with serving(tmp_path) as server:
        yield server


@pytest.fixture
async def client(pacer_server: PacerServer) -> AsyncIterator[httpx.AsyncClient]:
    """Keep-alive client for the service (bids, events, status)."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=pacer_server.url, timeout=10.0, limits=limits) as c:
        yield c


async def put_bidder(
    client: httpx.AsyncClient, server: PacerServer, bidder_id: str, budget: int, start: float, end: float, pacing: str
) -> dict[str, Any]:
    body = {
        "budget_micros": budget,
        "period": {"type": "flight", "start": rfc3339(start), "end": rfc3339(end)},
        "pacing": pacing,
    }
    response = await client.put(f"/v1/bidders/{bidder_id}", json=body, headers=server.operator_headers())
    assert response.status_code == 201, response.text
    status: dict[str, Any] = response.json()
    return status
