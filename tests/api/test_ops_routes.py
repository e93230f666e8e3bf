"""Ops routes (health, readiness, metrics, OpenAPI, docs) and unknown routes, through the real ASGI app."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from pacer.app import PacerApp
from tests.api.conftest import OPERATOR, assert_error, bid, put_bidder, send_events, win


async def test_healthz(client: httpx.AsyncClient) -> None:
    resp = await client.get("/healthz")
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


async def test_readyz(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.get("/readyz")
    assert resp.status_code == 200
    body = resp.json()
    assert (body["status"], body["store"], body["bidders"]) == ("ready", True, 1)
    assert isinstance(body["traffic_curve"], str)


async def test_readyz_store_down(client: httpx.AsyncClient, app: PacerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down() -> bool:
        return False

    monkeypatch.setattr(app.service.store, "ping", down)
    resp = await client.get("/readyz")
    assert resp.status_code == 503
    assert (resp.json()["status"], resp.json()["store"]) == ("not_ready", False)


async def test_ops_routes_need_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert (await client.get(path)).status_code == 200, path


async def test_metrics(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    assert (await bid(client, "b1", "a1", 100))["bid"] is True
    assert (await bid(client, "ghost", "a2", 100))["reason"] == "unknown_bidder"
    await send_events(client, win("b1", "a1", 90))
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert re.search(r'^pacer_decisions_total\{reason="bid"\} 1\.0$', text, re.M), text
    assert re.search(r'^pacer_decisions_total\{reason="unknown_bidder"\} 1\.0$', text, re.M)
    assert re.search(r'^pacer_events_total\{type="win"\} 1\.0$', text, re.M)
    assert re.search(r"^pacer_spent_micros 90\.0$", text, re.M)
    buckets = re.findall(r"^pacer_request_duration_seconds_bucket\{(.*)\} (\S+)$", text, re.M)
    bid_buckets = [float(n) for labels, n in buckets if 'route="/v1/bid"' in labels]
    assert bid_buckets and bid_buckets[-1] == 2.0  # +Inf bucket: both bids
    assert re.search(r'^pacer_request_duration_seconds_count\{route="/v1/bid"\} 2\.0$', text, re.M)
    assert re.search(r'^pacer_requests_total\{route="/v1/bid",status="200"\} 2\.0$', text, re.M)


async def test_metrics_show_the_loops_tick_sync_and_event_loop_lag(client: httpx.AsyncClient) -> None:
    """Issue 14: how long ticks and syncs take, and how late the event loop runs a timer, are histograms."""
    names = ("pacer_tick_seconds", "pacer_sync_seconds", "pacer_event_loop_lag_seconds")
    deadline = time.monotonic() + 10.0
    while True:
        text = (await client.get("/metrics")).text
        counts = {n: re.search(rf"^{n}_count (\S+)$", text, re.M) for n in names}
        if all(m is not None and float(m.group(1)) >= 1 for m in counts.values()):
            break
        assert time.monotonic() < deadline, {n: m and m.group(0) for n, m in counts.items()}
        await asyncio.sleep(0.05)
    for name in names:
        assert re.search(rf'^{name}_bucket\{{le="\+Inf"\}} ', text, re.M), name


async def test_metrics_count_rejected_requests(client: httpx.AsyncClient) -> None:
    await client.post("/v1/bid", content=b"{", headers={"content-type": "application/json"})
    text = (await client.get("/metrics")).text
    assert re.search(r'^pacer_requests_total\{route="/v1/bid",status="400"\} 1\.0$', text, re.M), text


# --- OpenAPI, docs ----------------------------------------------------------------------------------------

DOCUMENTED = {
    "/v1/bid": {"post"},
    "/v1/bids": {"post"},
    "/v1/events": {"post"},
    "/v1/bidders": {"get", "put"},
    "/v1/bidders/{bidder_id}": {"put", "patch", "get", "delete"},
    "/v1/bidders/{bidder_id}/pause": {"post"},
    "/v1/bidders/{bidder_id}/resume": {"post"},
    "/v1/bidders/{bidder_id}/restore": {"post"},
    "/v1/bidders/{bidder_id}/curve": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
}


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        node = schema["components"]["schemas"][name]
    return node


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    assert {path: set(ops) for path, ops in schema["paths"].items()} == DOCUMENTED


@pytest.mark.parametrize(
    ("path", "required"),
    [
        ("/v1/bid", {"bidder_id", "auction_id", "bid_micros"}),
        ("/v1/bids", {"requests"}),
        ("/v1/events", {"events"}),
    ],
)
async def test_openapi_bidder_request_schemas(client: httpx.AsyncClient, path: str, required: set[str]) -> None:
    schema = (await client.get("/openapi.json")).json()
    post = schema["paths"][path]["post"]
    body = resolve(schema, post["requestBody"]["content"]["application/json"]["schema"])
    assert body["type"] == "object"
    assert set(body["required"]) == required
    assert set(body["properties"]) >= required
    ok = resolve(schema, post["responses"]["200"]["content"]["application/json"]["schema"])
    assert ok["type"] == "object"


async def test_openapi_operator_put_schema(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    put = schema["paths"]["/v1/bidders/{bidder_id}"]["put"]
    body = resolve(schema, put["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["required"]) == {"budget_micros", "period"}
    assert body["additionalProperties"] is False


async def test_openapi_is_stable(client: httpx.AsyncClient) -> None:
    first = (await client.get("/openapi.json")).json()
    assert (await client.get("/openapi.json")).json() == first


async def test_docs(client: httpx.AsyncClient) -> None:
    resp = await client.get("/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in resp.text


# --- unknown routes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/bid/"), ("POST", "/v1/bidders/b1/frobnicate"), ("GET", "/")],
)
async def test_unknown_route(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_error(await client.request(method, path, headers=OPERATOR), 404, "not_found")


async def test_operator_paths_ask_for_the_token_before_saying_a_route_does_not_exist(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/v1/bidders/b1/frobnicate"), 401, "unauthorized")


async def test_ops_method_not_allowed(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/healthz"), 405, "method_not_allowed")
