"""Issue 12's defects, each as it was reproduced, through the real ASGI app (lifespan included): background loops
that die, lost operator updates, cross-site bids, unbounded bodies and ids, a log dropped silently at stop, ids
matched on the decoded path, redirects that echo the Host header, third-party scripts on /docs, world-readable
files."""

from __future__ import annotations

import asyncio
import logging
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacer.api.auth import bearer_matches
from pacer.app import PacerApp
from tests.api.conftest import OPERATOR, assert_error, bid, get_bidder, put_bidder, serve

DEADLINE_S = 20.0  # generous: the machine may be busy


async def eventually(check: Callable[[], Any], what: str) -> None:
    """Poll an asynchronous condition with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.05)


# --- 1. background loops survive, and /readyz says when the tick is stale ----------------------------------------


async def test_a_failing_tick_is_logged_counted_and_the_loop_goes_on(
    app: PacerApp, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = app.service
    real = service.engine.tick_steps

    def broken(chunk: int = 1000) -> Iterator[None]:
        raise IndexError("list index out of range")  # what a slot created during a stepped tick raised
        yield

    monkeypatch.setattr(service.engine, "tick_steps", broken)
    with caplog.at_level(logging.ERROR, logger="pacer"):
        await eventually(lambda: _true(service.background_errors["tick"] >= 3), "three failed ticks")
    assert any("background loop 'tick' failed" in r.getMessage() and r.exc_info for r in caplog.records)
    metrics = (await client.get("/metrics")).text
    assert re.search(r'^pacer_background_errors_total\{loop="tick"\} [3-9]', metrics, re.M), metrics

    async def unready() -> bool:
        resp = await client.get("/readyz")
        return resp.status_code == 503 and "tick" in resp.json()["stale"]

    await eventually(unready, "/readyz 503 naming the stale tick")
    monkeypatch.setattr(service.engine, "tick_steps", real)
    await eventually(lambda: _status(client, "/readyz", 200), "ready again once ticks complete")


async def _true(value: bool) -> bool:
    return value


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


# --- 4. operator writes: one read-modify-write at a time, If-Match ----------------------------------------------


async def test_a_budget_patch_never_undoes_a_concurrent_pause(client: httpx.AsyncClient) -> None:
    ids = [f"b{i}" for i in range(20)]
    for bidder_id in ids:
        await put_bidder(client, bidder_id, budget_micros=1_000_000)

    async def race(bidder_id: str) -> None:
        pause = client.post(f"/v1/bidders/{bidder_id}/pause", headers=OPERATOR)
        patch = client.patch(f"/v1/bidders/{bidder_id}", json={"budget_micros": 2_000_000}, headers=OPERATOR)
        for resp in await asyncio.gather(pause, patch):
            assert resp.status_code == 200, resp.text

    await asyncio.gather(*(race(b) for b in ids))
    for bidder_id in ids:
        status = await get_bidder(client, bidder_id)
        assert (status["state"], status["budget_micros"]) == ("paused", 2_000_000), bidder_id


async def test_a_patch_never_resurrects_a_deleted_bidder(client: httpx.AsyncClient) -> None:
    for i in range(20):
        await put_bidder(client, f"d{i}")

    async def race(bidder_id: str) -> None:
        delete = client.delete(f"/v1/bidders/{bidder_id}", headers=OPERATOR)
        patch = client.patch(f"/v1/bidders/{bidder_id}", json={"budget_micros": 5_000}, headers=OPERATOR)
        deleted, patched = await asyncio.gather(delete, patch)
        assert deleted.status_code == 204 and patched.status_code in (200, 404), patched.text
        assert_error(await client.get(f"/v1/bidders/{bidder_id}", headers=OPERATOR), 404, "not_found", "bidder_id")

    await asyncio.gather(*(race(f"d{i}") for i in range(20)))


async def test_etag_and_if_match(client: httpx.AsyncClient) -> None:
    created = await client.put(
        "/v1/bidders/b1", json={"budget_micros": 1000, "period": {"type": "daily", "timezone": "UTC"}}, headers=OPERATOR
    )
    assert created.status_code == 201 and created.headers["etag"] == '"1"'
    got = await client.get("/v1/bidders/b1", headers=OPERATOR)
    assert got.headers["etag"] == '"1"'
    ok = await client.patch("/v1/bidders/b1", json={"budget_micros": 2000}, headers={**OPERATOR, "If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    stale = await client.patch("/v1/bidders/b1", json={"budget_micros": 3000}, headers={**OPERATOR, "If-Match": '"1"'})
    assert_error(stale, 412, "precondition_failed", "If-Match")
    assert stale.headers["etag"] == '"2"'
    for tag in ("1", '"abc"', '"99999999999999999999999"', ""):
        assert_error(
            await client.post("/v1/bidders/b1/pause", headers={**OPERATOR, "If-Match": tag}),
            412,
            "precondition_failed",
            "If-Match",
        )
    assert_error(
        await client.delete("/v1/bidders/b1", headers={**OPERATOR, "If-Match": '"1"'}),
        412,
        "precondition_failed",
        "If-Match",
    )
    assert (await get_bidder(client, "b1"))["budget_micros"] == 2000, "nothing changed by a failed precondition"
    assert (await client.post("/v1/bidders/b1/pause", headers={**OPERATOR, "If-Match": 'W/"2"'})).status_code == 200
    assert (await client.delete("/v1/bidders/b1", headers={**OPERATOR, "If-Match": "*"})).status_code == 204
    body = {"budget_micros": 1000, "period": {"type": "daily", "timezone": "UTC"}}
    assert_error(
        await client.put("/v1/bidders/b1", json=body, headers={**OPERATOR, "If-Match": "*"}),
        412,
        "precondition_failed",
        "If-Match",
    )


# --- 6. bidder routes take JSON only (no cross-site simple requests) --------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
)
async def test_bidder_routes_refuse_bodies_a_browser_may_send_cross_site(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    await put_bidder(client, "b1", budget_micros=10**12)
    headers = {"content-type": content_type} if content_type else {}
    win = b'{"events": [{"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": 1000000000}]}'
    bid_body = b'{"bidder_id": "b1", "auction_id": "a1", "bid_micros": 1000000000}'
    for path, body in (("/v1/events", win), ("/v1/bid", bid_body)):
        resp = await client.post(path, content=body, headers=headers)
        assert_error(resp, 415, "unsupported_media_type", "Content-Type")
    status = await get_bidder(client, "b1")
    assert (status["spent_micros"], status["reserved_micros"]) == (0, 0), "nothing charged, nothing reserved"


async def test_json_with_parameters_is_accepted(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.post(
        "/v1/bid",
        content=b'{"bidder_id": "b1", "auction_id": "a1", "bid_micros": 10}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert resp.status_code == 200 and resp.json()["bid"] is True


# --- 7. bounded memory: bodies and ids ------------------------------------------------------------------------


async def test_operator_bodies_are_capped_before_they_are_read(client: httpx.AsyncClient) -> None:
    big = b'{"budget_micros": 1000, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    resp = await client.put("/v1/bidders/b1", content=big, headers={**OPERATOR, "content-type": "application/json"})
    assert_error(resp, 413, "payload_too_large")
    assert_error(await client.get("/v1/bidders/b1", headers=OPERATOR), 404, "not_found", "bidder_id")


async def test_a_declared_length_above_the_cap_is_refused_without_reading(app: PacerApp) -> None:
    sent: list[dict[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path, headers in (("/v1/bidders/b1", [(b"authorization", b"Bearer tok")]), ("/v1/events", [])):
        sent.clear()
        scope = {
            "type": "http",
            "method": "PUT" if "bidders" in path else "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", b"500000000")],
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 413
    assert reads == 0


async def test_decisions_for_unknown_bidders_are_counted_not_logged(app: PacerApp, client: httpx.AsyncClient) -> None:
    requests = [{"bidder_id": f"random-{i}", "auction_id": f"a{i}", "bid_micros": 100} for i in range(1000)]
    resp = await client.post("/v1/bids", json={"requests": requests})
    assert resp.status_code == 200
    assert app.service.log is not None and app.service.log.pending == 0
    metrics = (await client.get("/metrics")).text
    assert re.search(r'^pacer_decisions_total\{reason="unknown_bidder"\} 1000\.0$', metrics, re.M)


# --- 8. the auction log at shutdown ----------------------------------------------------------------------------


async def test_rows_that_cannot_be_written_at_shutdown_are_counted_and_logged(
    make_app: Callable[..., PacerApp], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pacer.service.LOG_STOP_S", 0.5)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be: every write fails")
    app = make_app(log_url=str(blocked))
    with caplog.at_level(logging.ERROR, logger="pacer"):
        async with serve(app) as client:
            await put_bidder(client, "b1")
            for i in range(30):
                await bid(client, "b1", f"a{i}", 10)
    assert app.service.log is not None and app.service.log.dropped_rows == 30
    assert any("30 rows could not be written" in r.getMessage() for r in caplog.records), caplog.text


# --- 9. paths, redirects, error codes, /docs, file modes --------------------------------------------------------


async def test_an_encoded_slash_is_part_of_the_id_not_a_separator(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "acme")
    resp = await client.post("/v1/bidders/acme%2Fpause", headers=OPERATOR)
    assert_error(resp, 404, "not_found", "bidder_id")
    assert (await get_bidder(client, "acme"))["state"] == "active", "acme was not paused"


async def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(client: httpx.AsyncClient) -> None:
    for path in ("/v1/bidders/", "/healthz/", "/v1/bidders/acme/"):
        resp = await client.get(path, headers={**OPERATOR, "Host": "evil.example"})
        assert resp.status_code == 404 and "location" not in resp.headers, (path, resp.headers)


async def test_an_operator_body_that_is_not_utf8_is_invalid_json(client: httpx.AsyncClient) -> None:
    resp = await client.put(
        "/v1/bidders/b1", content=b"\xff\xfe{", headers={**OPERATOR, "content-type": "application/json"}
    )
    assert_error(resp, 400, "invalid_json")


async def test_docs_load_nothing_from_another_origin(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for url in urls:
        assert (await client.get(url)).status_code == 200, url
    assert "cdn" not in page.text.lower()


def test_empty_credentials_never_match() -> None:
    assert not bearer_matches(b"Bearer ", b"")
    assert not bearer_matches(b"Bearer", b"")
    assert not bearer_matches(b"", b"")
    assert not bearer_matches(b"Bearer  ", b"tok")
    assert bearer_matches(b"bearer tok", b"tok")


async def test_store_files_are_private(app: PacerApp, client: httpx.AsyncClient, tmp_path: Path) -> None:
    await put_bidder(client, "b1")
    files = sorted(tmp_path.glob("p.db*"))
    assert {f.name for f in files} >= {"p.db", "p.db-wal"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
