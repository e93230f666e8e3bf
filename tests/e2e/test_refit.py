"""End to end: the auction log and the refit around real `pacer serve` processes.

A service writes every decision and outcome to Parquet; `pacer refit` fits models from a log and publishes them
through the store, and the service paces by them within one sync; a rejected fit never replaces a good model;
the service's own background refit (one instance at a time) gets there by itself, on SQLite and on a Redis
fleet; a sink that cannot be written never stops bidding. Run with -s to see the figures.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pacer.auctionlog import BID, SCHEMA, WIN
from pacer.curves import SLOTS
from tests.e2e.conftest import REPO, PacerServer
from tests.logfiles import write_log
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

TOKEN = "refit-operator-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 60.0  # generous: a refit is a subprocess (imports, DuckDB, the fit) on a shared 2-core machine
PER_DAY = 6000
BIDDER = {"budget_micros": 5_000_000, "period": {"type": "daily", "timezone": "UTC"}, "pacing": "traffic"}


def true_shape() -> np.ndarray:
    """The history's traffic: a cosine over the day, 9x from trough (02:00 UTC) to peak (14:00 UTC)."""
    a = (9 - 1) / (9 + 1)
    shape = 1 + a * np.cos(2 * np.pi * ((np.arange(SLOTS) + 0.5) / SLOTS * 24 - 14) / 24)
    return shape / shape.sum()


def history(root: Path, bidder_id: str, days: float, per_day: int, seed: int = 5) -> int:
    """`days` of auctions up to now with the true shape: every requested bid granted, second price."""
    rng = np.random.default_rng(seed)
    end = time.time()
    start = end - days * 86400
    day0 = math.floor(start / 86400)
    slots = np.arange(day0 * SLOTS, math.ceil(end / 86400) * SLOTS)
    counts = rng.poisson(per_day * true_shape()[slots % SLOTS])
    slot = np.repeat(slots, counts)
    ts = (slot + rng.random(slot.shape[0])) * 300.0
    ts = np.sort(ts[(ts >= start) & (ts < end)])
    n = ts.shape[0]
    bid = np.exp(np.log(1800) + 0.5 * rng.standard_normal(n)).astype(np.int64) + 1
    market = np.exp(np.log(2000) + 0.6 * rng.standard_normal(n)).astype(np.int64) + 1
    won = market <= bid
    ids = np.array([f"h{i}" for i in range(n)], dtype=object)
    ms = np.round(ts * 1000).astype(np.int64)
    table = pa.table(
        {
            "ts": pa.array(np.concatenate([ms, ms[won] + 500]), pa.timestamp("ms", tz="UTC")),
            "kind": [BID] * n + [WIN] * int(won.sum()),
            "bidder_id": [bidder_id] * (n + int(won.sum())),
            "auction_id": np.concatenate([ids, ids[won]]).tolist(),
            "bid_micros": pa.array([*bid.tolist(), *[None] * int(won.sum())], pa.int64()),
            "granted_micros": pa.array([*bid.tolist(), *[None] * int(won.sum())], pa.int64()),
            "reason": pa.array([None] * (n + int(won.sum())), pa.string()),
            "price_micros": pa.array([*[None] * n, *market[won].tolist()], pa.int64()),
            "sample": np.ones(n + int(won.sum())),
        },
        schema=SCHEMA,
    )
    write_log(root, table, writer="history")
    return n


async def until(check: Callable[[], Awaitable[Any]], timeout: float = WAIT_S, what: str = "") -> Any:
    """Poll an external process's state until `check` returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.1)


def refit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACER_")},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "pacer.cli", "refit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


async def model_of(client: httpx.AsyncClient, bidder_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/bidders/{bidder_id}", headers=HEADERS)
    assert response.status_code == 200, response.text
    model: dict[str, Any] = response.json()["model"]
    return model


def started(tmp_path: Path, name: str, env: dict[str, str], store: str | None = None) -> PacerServer:
    server = PacerServer(tmp_path / name, store=store, token=TOKEN, env=env)
    server.start()
    return server


async def test_published_models_are_used_and_a_bad_fit_never_replaces_a_good_one(tmp_path: Path) -> None:
    logs, tiny = tmp_path / "history", tmp_path / "tiny"
    n = history(logs, "b1", days=3, per_day=PER_DAY)
    history(tiny, "b1", days=0.01, per_day=PER_DAY, seed=6)  # ~60 decisions: too little to fit
    server = started(
        tmp_path, "pacer", {"PACER_REFIT_S": "0", "PACER_SYNC_MS": "100", "PACER_LOG_URL": str(tmp_path / "own-log")}
    )
    store = f"sqlite:///{server.db}"
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            assert (await client.put("/v1/bidders/b1", json=BIDDER, headers=HEADERS)).status_code == 201
            assert (await model_of(client, "b1"))["source"] == "prior"

            done = refit_cli("--logs", str(logs), "--store", store, "--export", str(tmp_path / "out"))
            assert done.returncode == 0, done.stderr
            print(f"\n{done.stdout}")
            model = await until(lambda: _fitted(client, "b1"), what="the published model")
            assert (model["version"], model["last_fit"]["ok"], model["landscape"]) == (1, True, True)
            curve = (await client.get("/v1/bidders/b1/curve", headers=HEADERS)).json()
            l1 = float(np.abs(np.array(curve["traffic_by_slot"]) - true_shape()).sum())
            print(f"{n} decisions over 3 days: fitted traffic curve L1 error {l1:.4f}")
            assert curve["traffic_source"] == "fitted" and l1 <= 0.08
            win_rate = curve["landscape"]["win_rate"]
            assert win_rate == sorted(win_rate) and 0 <= win_rate[0] < win_rate[-1] <= 1
            exported = (tmp_path / "out" / "b1.json").read_text()
            assert '"bidder_id": "b1"' in exported and '"traffic_by_slot"' in exported

            done = refit_cli("--logs", str(tiny), "--store", store)
            assert done.returncode == 0, done.stderr
            assert "rejected: too little data" in done.stdout
            rejected = await until(lambda: _last_fit_failed(client, "b1"), what="the rejected fit's status")
            print(f"rejected fit: {rejected['last_fit']['reason']}")
            assert (rejected["source"], rejected["version"]) == ("fitted", 1)
            assert "too little data" in rejected["last_fit"]["reason"]

            empty = tmp_path / "empty"
            empty.mkdir()
            done = refit_cli("--logs", str(empty), "--store", store)
            assert done.returncode == 2 and "no auction log files under" in done.stderr, done.stderr
            (tiny / "date=2020-01-01" / "hour=00").mkdir(parents=True)
            (tiny / "date=2020-01-01" / "hour=00" / "part-x.parquet").write_bytes(b"not parquet")
            done = refit_cli("--logs", str(tiny), "--since", "2019-12-31T00:00:00Z", "--store", store)
            assert done.returncode == 2 and "part-x.parquet: not a readable Parquet file" in done.stderr, done.stderr
            assert (await model_of(client, "b1"))["version"] == 1
    finally:
        server.stop()


async def _fitted(client: httpx.AsyncClient, bidder_id: str) -> dict[str, Any] | None:
    model = await model_of(client, bidder_id)
    return model if model["source"] == "fitted" else None


async def _last_fit_failed(client: httpx.AsyncClient, bidder_id: str) -> dict[str, Any] | None:
    model = await model_of(client, bidder_id)
    return model if model["last_fit"] and not model["last_fit"]["ok"] else None


async def test_the_service_logs_every_decision_and_outcome_and_refits_by_itself(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    history(logs, "b1", days=2, per_day=PER_DAY)
    server = started(tmp_path, "pacer", {"PACER_REFIT_S": "1", "PACER_LOG_URL": str(logs), "PACER_LOG_FLUSH_S": "0.2"})
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            assert (await client.put("/v1/bidders/b1", json=BIDDER, headers=HEADERS)).status_code == 201
            ids = [f"live{i}" for i in range(50)]
            for aid in ids:
                assert (
                    await client.post("/v1/bid", json={"bidder_id": "b1", "auction_id": aid, "bid_micros": 2000})
                ).status_code == 200
            batch = {"requests": [{"bidder_id": "nobody", "auction_id": f"x{i}", "bid_micros": 10} for i in range(5)]}
            assert (await client.post("/v1/bids", json=batch)).status_code == 200
            events = [
                {"type": "win", "bidder_id": "b1", "auction_id": ids[0], "price_micros": 900},
                {"type": "win", "bidder_id": "b1", "auction_id": ids[0], "price_micros": 900},
                {"type": "loss", "bidder_id": "b1", "auction_id": ids[1]},
            ]
            assert (await client.post("/v1/events", json={"events": events})).status_code == 200

            def live_rows() -> list[dict[str, Any]]:
                table = ds.dataset(logs, format="parquet", partitioning="hive").to_table(
                    filter=ds.field("auction_id").isin([*ids, *(f"x{i}" for i in range(5))])
                )
                return table.to_pylist()

            async def all_logged() -> list[dict[str, Any]] | None:
                rows = await asyncio.to_thread(live_rows)
                return rows if len(rows) == 50 + 3 else None  # unknown bidders' decisions are only counted

            rows = await until(all_logged, what="the live rows in the log")
            decisions = [r for r in rows if r["kind"] == "bid"]
            assert {r["auction_id"] for r in decisions if r["bidder_id"] == "b1"} == set(ids)
            assert not [r for r in rows if r["bidder_id"] == "nobody"]
            assert all(
                r["bid_micros"] == 2000 and r["granted_micros"] <= 2000 for r in decisions if r["bidder_id"] == "b1"
            )
            assert sorted(r["kind"] for r in rows if r["kind"] != "bid") == ["loss", "win", "win"]

            model = await until(lambda: _fitted(client, "b1"), what="the background refit's model")
            assert model["last_fit"]["ok"]
            metrics = (await client.get("/metrics")).text
            assert 'pacer_refits_total{result="ok"}' in metrics and "pacer_fitted_bidders 1.0" in metrics
            assert 'pacer_decisions_total{reason="unknown_bidder"} 5.0' in metrics
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["auction_log"]["ok"]
    finally:
        server.stop()


async def test_fleet_refits_once_and_every_instance_uses_the_model(tmp_path: Path, redis_server: RedisServer) -> None:
    logs = tmp_path / "log"
    history(logs, "b1", days=2, per_day=PER_DAY)
    env = {"PACER_REFIT_S": "1", "PACER_LOG_URL": str(logs), "PACER_SYNC_MS": "100"}
    servers = [started(tmp_path, f"pacer{i}", env, store=redis_server.url) for i in range(2)]
    try:
        for s in servers:
            await s.wait_ready()
        async with (
            httpx.AsyncClient(base_url=servers[0].url, timeout=10.0) as first,
            httpx.AsyncClient(base_url=servers[1].url, timeout=10.0) as second,
        ):
            assert (await first.put("/v1/bidders/b1", json=BIDDER, headers=HEADERS)).status_code == 201
            for c in (first, second):
                await until(lambda c=c: _fitted(c, "b1"), what="the fleet's model")

            async def same_model() -> list[dict[str, Any]] | None:  # refits go on: wait for a sync to catch up
                both = [await model_of(c, "b1") for c in (first, second)]
                return both if both[0]["version"] == both[1]["version"] else None

            models = await until(same_model, what="both instances on one model version")
            assert models[0]["fitted_at"] == models[1]["fitted_at"] and models[0]["version"] >= 1
            texts = [(await c.get("/metrics")).text for c in (first, second)]
            runs = [_counter(t, 'pacer_refits_total{result="ok"}') for t in texts]
            print(f"\nrefits run: {runs}; both instances use model versions {[m['version'] for m in models]}")
            assert sum(runs) >= 1
    finally:
        for s in servers:
            s.stop()


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


async def test_an_unwritable_log_never_stops_bidding(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    server = started(
        tmp_path, "pacer", {"PACER_REFIT_S": "0", "PACER_LOG_URL": str(blocked), "PACER_LOG_FLUSH_S": "0.2"}
    )
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            assert (await client.put("/v1/bidders/b1", json=BIDDER, headers=HEADERS)).status_code == 201

            async def degraded() -> dict[str, Any] | None:
                response = await client.post("/v1/bid", json={"bidder_id": "b1", "auction_id": "a", "bid_micros": 2000})
                assert response.status_code == 200
                ready = await client.get("/readyz")
                body: dict[str, Any] = ready.json()
                return body if ready.status_code == 200 and body["status"] == "degraded" else None

            ready = await until(degraded, what="readyz to report the failing log")
            print(f"\nreadyz: {ready['auction_log']}")
            assert not ready["auction_log"]["ok"] and ready["auction_log"]["write_failures"] >= 1
            assert ready["auction_log"]["pending_rows"] >= 1 and "Error" in ready["auction_log"]["last_error"]
            metrics = (await client.get("/metrics")).text
            assert _counter(metrics, "pacer_log_write_failures_total") >= 1 and "pacer_log_ok 0.0" in metrics
    finally:
        server.stop()
