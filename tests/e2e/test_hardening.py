"""Issue 12, with real `pacer serve` processes: empty tokens never open the service, and /readyz tells the truth
when the disk cannot take a write (a file-size limit of 1 byte on the running process: every write fails with
EFBIG, as on a full disk; Python ignores the SIGXFSZ that comes with it)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pacer.api.auth import operator_token
from pacer.config import Settings
from tests.e2e.conftest import REPO, PacerServer, rfc3339

pytestmark = pytest.mark.e2e
START_TIMEOUT_S = 30.0


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`pacer serve` with these PACER_* variables; it is expected to refuse to start (else it is stopped)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACER_")}
    clean.update(env, PYTHONPATH=str(REPO), PACER_LOG_URL="")
    return subprocess.run(
        [sys.executable, "-m", "pacer.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"PACER_OPERATOR_TOKEN": ""},
        {"PACER_OPERATOR_TOKEN": "  \t"},
        {"PACER_OPERATOR_TOKEN": "ok", "PACER_BIDDER_TOKEN": " "},
    ],
    ids=["empty", "whitespace", "empty-bidder-token"],
)
def test_an_empty_token_refuses_to_start(tmp_path: Path, env: dict[str, str]) -> None:
    done = serve(tmp_path, **env)
    assert done.returncode == 2, done.stderr
    assert "empty" in done.stderr and "TOKEN" in done.stderr, done.stderr


def test_an_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    """What a disk that filled up while the file was created leaves behind."""
    (tmp_path / "pacer-operator-token").write_text("\n")
    done = serve(tmp_path)
    assert done.returncode == 2 and "pacer-operator-token" in done.stderr, done.stderr


def test_a_generated_token_is_written_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "token"
    token = operator_token(Settings(operator_token_file=path, _env_file=None))  # type: ignore[call-arg]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32 and path.read_text() == token + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["token"], "no temporary file left behind"
    assert operator_token(Settings(operator_token_file=path)) == token, "reused on restart"  # type: ignore[call-arg]


async def test_readyz_is_503_while_the_store_cannot_write(tmp_path: Path) -> None:
    server = PacerServer(tmp_path, env={"PACER_LOG_URL": ""})
    server.start()
    try:
        await server.wait_ready()
        assert server.proc is not None
        pid = server.proc.pid
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            now = time.time()
            body = {
                "budget_micros": 10**9,
                "period": {"type": "flight", "start": rfc3339(now - 60), "end": rfc3339(now + 3600)},
            }
            resp = await client.put("/v1/bidders/b1", json=body, headers=server.operator_headers())
            assert resp.status_code == 201, resp.text
            soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full from now on
            try:
                event = {"events": [{"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": 10}]}
                assert (await client.post("/v1/events", json=event)).status_code == 503
                ready = await wait_for_status(client, 503)
                assert "store_write" in ready["stale"], ready
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
            await wait_for_status(client, 200)  # the next snapshot writes again
            assert (await client.post("/v1/events", json=event)).status_code == 200
    finally:
        server.stop()


async def wait_for_status(client: httpx.AsyncClient, status: int, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get("/readyz")
        if resp.status_code == status:
            body: dict[str, object] = resp.json()
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {resp.status_code}: {resp.text}")
        await asyncio.sleep(0.05)


async def test_json_logs_are_one_object_per_line_with_the_instance(tmp_path: Path) -> None:
    """Issue 14: PACER_LOG_FORMAT=json (the Docker image's default): uvicorn's records and pacer's alike are JSON
    lines a collector can parse, and pacer's name the instance that wrote them."""
    server = PacerServer(tmp_path, env={"PACER_LOG_FORMAT": "json", "PACER_LOG_LEVEL": "info", "PACER_LOG_URL": ""})
    server.start()
    try:
        await server.wait_ready()
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line and not line.startswith("--- start")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["logger"].startswith("uvicorn") for r in records), lines
    loaded = [r for r in records if r["logger"] == "pacer" and r["msg"].startswith("loaded ")]
    assert loaded and loaded[0]["instance"].count(":") == 2, records
