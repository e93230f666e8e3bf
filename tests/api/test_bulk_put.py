"""PUT /v1/bidders: many bidders in one call, validated whole (one bad bidder changes nothing), written at once."""

from __future__ import annotations

import json
from typing import Any

import httpx

from pacer.app import PacerApp
from tests.api.conftest import OPERATOR, assert_error, bidder_body, flight, get_bidder, put_bidder


async def bulk(client: httpx.AsyncClient, bidders: dict[str, Any]) -> httpx.Response:
    return await client.put("/v1/bidders", json={"bidders": bidders}, headers=OPERATOR)


async def test_bulk_put_creates_and_replaces_keeping_a_pause(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "old")
    assert (await client.post("/v1/bidders/old/pause", headers=OPERATOR)).status_code == 200
    resp = await bulk(
        client, {"old": bidder_body(budget_micros=7), "n1": bidder_body(), "n2": bidder_body(pacing="even")}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"created": 2, "replaced": 1}
    old = await get_bidder(client, "old")
    assert (old["budget_micros"], old["state"]) == (7, "paused"), "replaced, and still paused"
    assert (await get_bidder(client, "n2"))["pacing"] == "even"
    etag = (await client.get("/v1/bidders/old", headers=OPERATOR)).headers["etag"]
    assert etag == '"3"', "create, pause, bulk replace: three versions"


async def test_one_bad_bidder_is_named_and_nothing_changes(client: httpx.AsyncClient, app: PacerApp) -> None:
    bad_budget = {"ok": bidder_body(), "b2": bidder_body(budget_micros=0)}
    assert_error(await bulk(client, bad_budget), 422, "validation_error", "bidders.b2.budget_micros")
    bad_period = {"ok": bidder_body(), "b3": bidder_body(period=flight(start_in=10, end_in=5))}
    assert_error(await bulk(client, bad_period), 422, "validation_error", "bidders.b3.period.end")
    slash = {"ok": bidder_body(), "a/b": bidder_body()}
    assert_error(await bulk(client, slash), 422, "validation_error", "bidders.a/b")
    assert_error(await bulk(client, {}), 422, "validation_error", "bidders")
    assert app.service.engine.bidders == {}, "nothing was created"


async def test_bulk_put_takes_ten_thousand_in_one_call(client: httpx.AsyncClient, app: PacerApp) -> None:
    body = bidder_body()
    resp = await bulk(client, {f"b{i:05d}": body for i in range(10_000)})
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json() == {"created": 10_000, "replaced": 0}
    assert len(app.service.engine.bidders) == 10_000
    stored = await app.service.store.load_bidders()
    assert len(stored) == 10_000 and {r.version for r in stored} == {1}
    too_many = await bulk(client, {f"c{i}": body for i in range(10_001)})
    assert_error(too_many, 422, "validation_error", "bidders")


async def test_ndjson_export_streams_every_bidder_in_id_order(client: httpx.AsyncClient) -> None:
    ids = [f"b{i:04d}" for i in range(2_500)]  # more than one chunk
    assert (
        await bulk(client, {i: bidder_body(budget_micros=1_000 + n) for n, i in enumerate(reversed(ids))})
    ).status_code == 200
    assert (await client.delete("/v1/bidders/b0007", headers=OPERATOR)).status_code == 204
    resp = await client.get("/v1/bidders", params={"format": "ndjson"}, headers=OPERATOR)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in resp.text.splitlines()]
    assert [r["bidder_id"] for r in rows] == [i for i in ids if i != "b0007"]
    assert rows[0]["budget_micros"] == 1_000 + 2_499 and rows[0]["period"]["type"] == "flight"
    page = (await client.get("/v1/bidders", params={"limit": 3}, headers=OPERATOR)).json()
    assert [b["bidder_id"] for b in page["bidders"]] == ["b0000", "b0001", "b0002"]
    after = (await client.get("/v1/bidders", params={"limit": 6, "cursor": page["next"]}, headers=OPERATOR)).json()
    assert [b["bidder_id"] for b in after["bidders"]] == ["b0003", "b0004", "b0005", "b0006", "b0008", "b0009"]
