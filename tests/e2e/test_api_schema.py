"""End to end: /openapi.json holds for the running service, checked by Schemathesis (`st run --checks all`).

A real `pacer serve` is started and `st`, a real HTTP client, is run against the document the service publishes. It
generates valid and invalid requests for every operation and checks each answer against the document: status
documented, body and headers matching their schemas, valid data accepted, invalid data rejected, 405 with a true
Allow header, 401 without the token, stateful sequences (a deleted bidder is gone). The run is bounded (examples per
operation) and seeded, so it is deterministic and takes about 15 s on 2 cores. Changes to schemathesis's
defaults are in schemathesis.toml and schemathesis_hooks.py, each with its reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import PacerServer

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ST = Path(sys.executable).with_name("st")
TOKEN = "schema-test-operator-token"
MAX_EXAMPLES = 15  # per operation and phase: ~1,800 requests in all (make test stays under 5 min)
SEED = 1
RUN_TIMEOUT_S = 300.0


async def test_live_openapi_document_holds(tmp_path: Path) -> None:
    assert ST.exists(), f"{ST} missing: schemathesis is in the test extra (pip install -e '.[test]')"
    server = PacerServer(tmp_path / "server", token=TOKEN)
    server.start()
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url) as client:
            document = (await client.get("/openapi.json")).json()
        operations = sum(len(methods) for methods in document["paths"].values())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
        env.update(SCHEMATHESIS_HOOKS=str(HERE / "schemathesis_hooks.py"), NO_COLOR="1")
        process = await asyncio.create_subprocess_exec(
            str(ST),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",  # the operator routes' token; bidder routes need none
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",  # nothing remembered from earlier runs: the same cases every time
            "--workers",
            "1",  # one request at a time: the stateful phase sees the same server states every time
            "--request-timeout",
            "10",
            "--no-color",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        report = out.decode(errors="replace")
        print(report)  # shown by pytest when the test fails: every failure, with a curl to reproduce it
        summary = report.rstrip().splitlines()[-1] if report.strip() else "(no output)"
        assert process.returncode == 0, f"st run failed (exit {process.returncode}): {summary}"
        assert "failure" not in summary and "error" not in summary, summary
        tested = re.search(r"Tested: (\d+)", report)
        assert tested is not None and int(tested.group(1)) == operations, f"not every operation was tested: {summary}"
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-5000:]
