"""The bidder routes (POST /v1/bid, /v1/bids, /v1/events) through the real ASGI app, lifespan included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from pacer.app import PacerApp
from pacer.config import Settings
from pacer.store import StoreError
from tests.api.conftest import (
    OPERATOR,
    assert_error,
    bid,
    flight,
    get_bidder,
    loss,
    put_bidder,
    send_events,
    serve,
    win,
)

BID = {"bidder_id": "b1", "auction_id": "a1", "bid_micros": 1000}
JSON = {"content-type": "application/json"}
MAX_BODY = Settings.model_fields["max_body_bytes"].default


# --- POST /v1/bid: decisions ------------------------------------------------------------------------------


async def test_bid_granted_for_an_active_bidder(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.post("/v1/bid", json=BID)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"auction_id": "a1", "bid": True, "bid_micros": 1000}


async def test_bid_granted_is_capped_by_max_bid_micros(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", max_bid_micros=700)
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": True, "bid_micros": 700}
    assert await bid(client, "b1", "a2", 500) == {"auction_id": "a2", "bid": True, "bid_micros": 500}


async def test_bid_never_above_the_request_with_even_pacing(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", pacing="even", max_bid_micros=800)
    decision = await bid(client, "b1", "a1", 1000)
    assert decision["auction_id"] == "a1"
    if decision["bid"]:
        assert 1 <= decision["bid_micros"] <= 800
    else:
        assert decision["reason"] == "paced"


async def test_unknown_bidder(client: httpx.AsyncClient) -> None:
    assert await bid(client, "nobody", "a1", 1000) == {"auction_id": "a1", "bid": False, "reason": "unknown_bidder"}


async def test_paused_bidder(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.post("/v1/bidders/b1/pause", headers=OPERATOR)
    assert resp.status_code == 200
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": False, "reason": "paused"}


@pytest.mark.parametrize(
    ("start_in", "end_in", "state"),
    [(3600, 7200, "scheduled"), (-7200, -3600, "ended")],
    ids=["flight-in-the-future", "flight-in-the-past"],
)
async def test_not_active(client: httpx.AsyncClient, start_in: int, end_in: int, state: str) -> None:
    status = await put_bidder(client, "b1", period=flight(start_in, end_in))
    assert status["state"] == state
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": False, "reason": "not_active"}


async def test_exhausted_once_the_budget_is_spent(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1000)
    assert await send_events(client, win("b1", "w1", 1000)) == {"accepted": 1, "duplicates": 0}
    assert (await get_bidder(client, "b1"))["state"] == "exhausted"
    assert await bid(client, "b1", "a1", 10) == {"auction_id": "a1", "bid": False, "reason": "exhausted"}


async def test_no_budget_when_reserved_by_earlier_grants(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1000)
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": True, "bid_micros": 1000}
    assert await bid(client, "b1", "a2", 1000) == {"auction_id": "a2", "bid": False, "reason": "no_budget"}
    status = await get_bidder(client, "b1")
    assert (status["state"], status["reserved_micros"], status["spent_micros"]) == ("active", 1000, 0)


async def test_the_last_micros_stay_spendable(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1500)
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": True, "bid_micros": 1000}
    assert await bid(client, "b1", "a2", 1000) == {"auction_id": "a2", "bid": True, "bid_micros": 500}
    assert await bid(client, "b1", "a3", 1000) == {"auction_id": "a3", "bid": False, "reason": "no_budget"}


async def test_unknown_extra_fields_are_ignored(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    body = {**BID, "exchange": "x", "imp": [{"id": 1, "floor": 0.5}], "ext": None}
    resp = await client.post("/v1/bid", json=body)
    assert resp.status_code == 200
    assert resp.json() == {"auction_id": "a1", "bid": True, "bid_micros": 1000}


# --- POST /v1/bid: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{", b"", b"not json", b'{"bidder_id": "b1",}'], ids=repr)
async def test_bid_invalid_json(client: httpx.AsyncClient, content: bytes) -> None:
    resp = await client.post("/v1/bid", content=content, headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_json")


@pytest.mark.parametrize("missing", ["bidder_id", "auction_id", "bid_micros"])
async def test_bid_missing_field(client: httpx.AsyncClient, missing: str) -> None:
    body = {k: v for k, v in BID.items() if k != missing}
    assert_error(await client.post("/v1/bid", json=body), 422, "validation_error", missing)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bid_micros", "1000"),
        ("bid_micros", 1000.5),
        ("bid_micros", True),
        ("bid_micros", None),
        ("bid_micros", 0),
        ("bid_micros", -1),
        ("bid_micros", 10**12 + 1),
        ("bidder_id", ""),
        ("bidder_id", 7),
        ("auction_id", ""),
        ("auction_id", "x" * 257),
        ("auction_id", ["a1"]),
    ],
    ids=repr,
)
async def test_bid_invalid_field(client: httpx.AsyncClient, field: str, value: Any) -> None:
    resp = await client.post("/v1/bid", json={**BID, field: value})
    assert_error(resp, 422, "validation_error", field)


async def test_bid_integral_float_is_that_integer(client: httpx.AsyncClient) -> None:
    """JSON has one number type and JSON Schema's `integer` admits 1000.0: it is the integer 1000, granted exactly;
    1000.5 is still no integer."""
    await put_bidder(client, "b1")
    resp = await client.post("/v1/bid", json={**BID, "bid_micros": 1000.0})
    assert resp.status_code == 200, resp.text
    assert resp.content == b'{"auction_id":"a1","bid":true,"bid_micros":1000}'
    assert (await get_bidder(client, "b1"))["reserved_micros"] == 1000
    assert_error(
        await client.post("/v1/bid", json={**BID, "bid_micros": 1000.5}), 422, "validation_error", "bid_micros"
    )
    assert_error(await client.post("/v1/bid", json={**BID, "bid_micros": 1e13}), 422, "validation_error", "bid_micros")


async def test_bids_and_events_take_integral_floats(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    requests = [BID, {**BID, "auction_id": "a2", "bid_micros": 2000.0}]
    resp = await client.post("/v1/bids", json={"requests": requests})
    assert resp.status_code == 200, resp.text
    assert [d["bid_micros"] for d in resp.json()["decisions"]] == [1000, 2000]
    bad = [*requests, BID, {**BID, "bid_micros": 1000.5}]
    assert_error(
        await client.post("/v1/bids", json={"requests": bad}), 422, "validation_error", "requests[3].bid_micros"
    )
    assert await send_events(client, {**win("b1", "a2", 0), "price_micros": 1500.0}) == {"accepted": 1, "duplicates": 0}
    status = await get_bidder(client, "b1")
    assert (status["spent_micros"], status["reserved_micros"]) == (1500, 1000)
    assert type(status["spent_micros"]) is int


async def test_bid_micros_bounds_are_inclusive(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=10**15)
    assert await bid(client, "b1", "a1", 1) == {"auction_id": "a1", "bid": True, "bid_micros": 1}
    assert await bid(client, "b1", "a2", 10**12) == {"auction_id": "a2", "bid": True, "bid_micros": 10**12}


@pytest.mark.parametrize("content", [json.dumps([BID]).encode(), b'"bid"', b"1000", b"null"], ids=repr)
async def test_bid_body_not_an_object(client: httpx.AsyncClient, content: bytes) -> None:
    assert_error(await client.post("/v1/bid", content=content, headers=JSON), 422, "validation_error", None)


@pytest.mark.parametrize("path", ["/v1/bid", "/v1/bids", "/v1/events"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_bidder_routes_only_take_post(client: httpx.AsyncClient, path: str, method: str) -> None:
    assert_error(await client.request(method, path), 405, "method_not_allowed")


async def test_payload_too_large(client: httpx.AsyncClient) -> None:
    body = json.dumps({"requests": [BID] * 1000, "pad": "x" * MAX_BODY}).encode()
    assert_error(await client.post("/v1/bids", content=body, headers=JSON), 413, "payload_too_large")


async def test_payload_too_large_in_a_single_receive_message(app: PacerApp) -> None:
    """ASGI servers may hand over a whole body in one message (more_body false): the limit must still hold."""
    body = json.dumps({"requests": [BID] * 1000, "pad": "x" * MAX_BODY}).encode()
    assert len(body) > MAX_BODY
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/bids", "headers": [(b"content-type", b"application/json")]}
    async with app.fastapi.router.lifespan_context(app.fastapi):
        await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


# --- bidder token -----------------------------------------------------------------------------------------

ROUTE_BODIES = {
    "/v1/bid": BID,
    "/v1/bids": {"requests": [BID]},
    "/v1/events": {"events": [loss("b1", "a1")]},
}


@pytest.fixture
async def token_client(make_app: Callable[..., PacerApp]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app(bidder_token="btok")) as c:
        yield c


@pytest.mark.parametrize("path", list(ROUTE_BODIES))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "btok"},
        {"Authorization": "Basic btok"},
        {"Authorization": "Bearer tok"},
    ],
    ids=["missing", "wrong", "no-scheme", "basic", "operator-token"],
)
async def test_bidder_token_refused(token_client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    resp = await token_client.post(path, json=ROUTE_BODIES[path], headers=headers)
    assert_error(resp, 401, "unauthorized")


@pytest.mark.parametrize("path", list(ROUTE_BODIES))
async def test_bidder_token_accepted(token_client: httpx.AsyncClient, path: str) -> None:
    resp = await token_client.post(path, json=ROUTE_BODIES[path], headers={"Authorization": "Bearer btok"})
    assert resp.status_code == 200, resp.text


async def test_no_bidder_token_configured_means_open(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/bid", json=BID, headers={"Authorization": "Bearer anything"})
    assert resp.status_code == 200


# --- POST /v1/bids ----------------------------------------------------------------------------------------


async def test_bids_in_request_order(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1500)
    await put_bidder(client, "paused-one")
    await client.post("/v1/bidders/paused-one/pause", headers=OPERATOR)
    requests = [
        {"bidder_id": "b1", "auction_id": "a1", "bid_micros": 1000},
        {"bidder_id": "ghost", "auction_id": "a2", "bid_micros": 1000},
        {"bidder_id": "paused-one", "auction_id": "a3", "bid_micros": 1000},
        {"bidder_id": "b1", "auction_id": "a4", "bid_micros": 1000},
        {"bidder_id": "b1", "auction_id": "a5", "bid_micros": 1000},
    ]
    resp = await client.post("/v1/bids", json={"requests": requests})
    assert resp.status_code == 200
    assert resp.json() == {
        "decisions": [
            {"auction_id": "a1", "bid": True, "bid_micros": 1000},
            {"auction_id": "a2", "bid": False, "reason": "unknown_bidder"},
            {"auction_id": "a3", "bid": False, "reason": "paused"},
            {"auction_id": "a4", "bid": True, "bid_micros": 500},
            {"auction_id": "a5", "bid": False, "reason": "no_budget"},
        ]
    }


async def test_bids_full_batch_of_1000(client: httpx.AsyncClient) -> None:
    requests = [{"bidder_id": "ghost", "auction_id": f"a{i}", "bid_micros": 1} for i in range(1000)]
    resp = await client.post("/v1/bids", json={"requests": requests})
    assert resp.status_code == 200
    assert [d["auction_id"] for d in resp.json()["decisions"]] == [f"a{i}" for i in range(1000)]


@pytest.mark.parametrize("count", [0, 1001])
async def test_bids_batch_size_limits(client: httpx.AsyncClient, count: int) -> None:
    resp = await client.post("/v1/bids", json={"requests": [BID] * count})
    assert_error(resp, 422, "validation_error", "requests")


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"bid_micros": 0}, "requests[2].bid_micros"),
        ({"bid_micros": "5"}, "requests[2].bid_micros"),
        ({"bidder_id": ""}, "requests[2].bidder_id"),
    ],
    ids=repr,
)
async def test_bids_invalid_element_is_named(client: httpx.AsyncClient, bad: dict[str, Any], field: str) -> None:
    requests = [BID, BID, {**BID, **bad}, BID]
    assert_error(await client.post("/v1/bids", json={"requests": requests}), 422, "validation_error", field)


async def test_bids_element_missing_field_is_named(client: httpx.AsyncClient) -> None:
    requests = [BID, {"bidder_id": "b1", "bid_micros": 5}]
    resp = await client.post("/v1/bids", json={"requests": requests})
    assert_error(resp, 422, "validation_error", "requests[1].auction_id")


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "requests"), ({"requests": BID}, "requests"), ([BID], None)],
    ids=["missing", "not-a-list", "bare-array"],
)
async def test_bids_body_shape(client: httpx.AsyncClient, body: Any, field: str | None) -> None:
    assert_error(await client.post("/v1/bids", json=body), 422, "validation_error", field)


async def test_bids_invalid_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/v1/bids", content=b'{"requests": [', headers=JSON), 400, "invalid_json")


# --- POST /v1/events --------------------------------------------------------------------------------------


async def test_events_counts_and_spend(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": True, "bid_micros": 1000}
    assert await bid(client, "b1", "a2", 1000) == {"auction_id": "a2", "bid": True, "bid_micros": 1000}
    result = await send_events(client, win("b1", "a1", 900), loss("b1", "a2"))
    assert result == {"accepted": 2, "duplicates": 0}
    status = await get_bidder(client, "b1")
    assert (status["spent_micros"], status["reserved_micros"], status["remaining_micros"]) == (900, 0, 999_100)


async def test_duplicate_win_within_a_batch_counts_once(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    result = await send_events(client, win("b1", "a1", 300), win("b1", "a1", 300))
    assert result == {"accepted": 1, "duplicates": 1}
    assert (await get_bidder(client, "b1"))["spent_micros"] == 300


async def test_duplicate_win_across_batches_counts_once(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    assert await send_events(client, win("b1", "a1", 300)) == {"accepted": 1, "duplicates": 0}
    assert await send_events(client, win("b1", "a1", 300), win("b1", "a2", 200)) == {"accepted": 1, "duplicates": 1}
    assert (await get_bidder(client, "b1"))["spent_micros"] == 500


async def test_loss_frees_the_reservation(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1000)
    assert (await bid(client, "b1", "a1", 1000))["bid"] is True
    assert (await get_bidder(client, "b1"))["reserved_micros"] == 1000
    assert await send_events(client, loss("b1", "a1")) == {"accepted": 1, "duplicates": 0}
    status = await get_bidder(client, "b1")
    assert (status["reserved_micros"], status["spent_micros"]) == (0, 0)
    assert await bid(client, "b1", "a2", 1000) == {"auction_id": "a2", "bid": True, "bid_micros": 1000}


async def test_win_settles_its_reservation(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1000)
    assert (await bid(client, "b1", "a1", 800))["bid"] is True
    await send_events(client, win("b1", "a1", 600))
    status = await get_bidder(client, "b1")
    assert (status["reserved_micros"], status["spent_micros"], status["remaining_micros"]) == (0, 600, 400)


async def test_win_on_an_auction_never_granted_is_still_charged(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    assert await send_events(client, win("b1", "never-granted", 1234)) == {"accepted": 1, "duplicates": 0}
    status = await get_bidder(client, "b1")
    assert (status["spent_micros"], status["reserved_micros"]) == (1234, 0)


async def test_events_for_an_unknown_bidder_are_accepted(client: httpx.AsyncClient) -> None:
    result = await send_events(client, win("ghost", "a1", 100), loss("ghost", "a2"))
    assert result == {"accepted": 2, "duplicates": 0}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"type": "click", "bidder_id": "b1", "auction_id": "x"}, "events[1].type"),
        ({"bidder_id": "b1", "auction_id": "x", "price_micros": 5}, "events[1].type"),
        ({"type": "win", "bidder_id": "b1", "auction_id": "x"}, "events[1].price_micros"),
        ({"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": -5}, "events[1].price_micros"),
        ({"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": 0}, "events[1].price_micros"),
        ({"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": 10**12 + 1}, "events[1].price_micros"),
        ({"type": "win", "bidder_id": "b1", "auction_id": "x", "price_micros": 5.5}, "events[1].price_micros"),
        ({"type": "win", "bidder_id": "", "auction_id": "x", "price_micros": 5}, "events[1].bidder_id"),
        ({"type": "loss", "bidder_id": "b1"}, "events[1].auction_id"),
    ],
    ids=repr,
)
async def test_one_invalid_event_rejects_the_whole_batch(
    client: httpx.AsyncClient, bad: dict[str, Any], field: str
) -> None:
    await put_bidder(client, "b1")
    assert (await bid(client, "b1", "granted", 1000))["bid"] is True
    good_win = win("b1", "a1", 400)
    batch = [good_win, bad, loss("b1", "granted")]
    assert_error(await client.post("/v1/events", json={"events": batch}), 422, "validation_error", field)
    status = await get_bidder(client, "b1")
    assert (status["spent_micros"], status["reserved_micros"]) == (0, 1000)
    # The valid win of the rejected batch was not recorded: alone, it is new.
    assert await send_events(client, good_win) == {"accepted": 1, "duplicates": 0}
    assert (await get_bidder(client, "b1"))["spent_micros"] == 400


@pytest.mark.parametrize("count", [0, 1001])
async def test_events_batch_size_limits(client: httpx.AsyncClient, count: int) -> None:
    resp = await client.post("/v1/events", json={"events": [loss("b1", "a1")] * count})
    assert_error(resp, 422, "validation_error", "events")


async def test_events_full_batch_of_1000(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    events = [win("b1", f"a{i}", 2) for i in range(1000)]
    assert await send_events(client, *events) == {"accepted": 1000, "duplicates": 0}
    assert (await get_bidder(client, "b1"))["spent_micros"] == 2000


@pytest.mark.parametrize(
    ("content", "status", "code", "field"),
    [
        (b'{"events": [', 400, "invalid_json", None),
        (b"[]", 422, "validation_error", None),
        (b"{}", 422, "validation_error", "events"),
    ],
    ids=["invalid-json", "not-an-object", "missing-events"],
)
async def test_events_body_errors(
    client: httpx.AsyncClient, content: bytes, status: int, code: str, field: str | None
) -> None:
    assert_error(await client.post("/v1/events", content=content, headers=JSON), status, code, field)


async def test_events_store_unavailable(
    client: httpx.AsyncClient, app: PacerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_bidder(client, "b1")

    async def failing(_: object) -> list[bool]:
        raise StoreError("disk full")

    monkeypatch.setattr(app.service.store, "record_wins", failing)
    resp = await client.post("/v1/events", json={"events": [win("b1", "a1", 100)]})
    assert_error(resp, 503, "store_unavailable")
    monkeypatch.undo()
    assert (await get_bidder(client, "b1"))["spent_micros"] == 0
    assert await send_events(client, win("b1", "a1", 100)) == {"accepted": 1, "duplicates": 0}


async def test_reservations_open_at_shutdown_are_held_back_after_a_restart(make_app: Callable[..., PacerApp]) -> None:
    """Wins on auctions granted before a restart must not overspend: their money stays held until it expires."""
    async with serve(make_app()) as client:
        await put_bidder(client, "b", budget_micros=1_000_000)
        assert (await bid(client, "b", "before", 400_000))["bid_micros"] == 400_000
    async with serve(make_app()) as client:
        assert (await get_bidder(client, "b"))["reserved_micros"] == 400_000
        assert (await bid(client, "b", "after", 900_000))["bid_micros"] == 600_000  # not 900_000
        await send_events(client, win("b", "before", 300_000))  # unknown to this process, still charged
        status = await get_bidder(client, "b")
        assert (status["spent_micros"], status["reserved_micros"]) == (300_000, 600_000 + 100_000)
