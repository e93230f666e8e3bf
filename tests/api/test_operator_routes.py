"""The operator API (/v1/bidders...) through the real ASGI app, lifespan included."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from pacer.app import PacerApp
from pacer.store import StoreError
from tests.api.conftest import (
    OPERATOR,
    assert_error,
    bid,
    bidder_body,
    flight,
    get_bidder,
    put_bidder,
    send_events,
    serve,
    win,
)

STATUS_KEYS = {
    "bidder_id",
    "state",
    "budget_micros",
    "spent_micros",
    "reserved_micros",
    "remaining_micros",
    "target_spent_micros",
    "period",
    "period_start",
    "period_end",
    "pacing",
    "max_bid_micros",
    "throttle",
    "multiplier",
    "model",
}

# Every operator route, as (method, path, JSON body or None), all aimed at an existing bidder "b1".
ROUTES = [
    ("PUT", "/v1/bidders/b1", bidder_body()),
    ("PATCH", "/v1/bidders/b1", {"budget_micros": 5}),
    ("GET", "/v1/bidders/b1", None),
    ("GET", "/v1/bidders", None),
    ("POST", "/v1/bidders/b1/pause", None),
    ("POST", "/v1/bidders/b1/resume", None),
    ("DELETE", "/v1/bidders/b1", None),
]


def dt(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# --- authorization ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic tok"},
        {"Authorization": "tok"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer tok2"},
    ],
    ids=["missing", "wrong", "basic-scheme", "no-scheme", "empty", "longer"],
)
async def test_operator_routes_need_the_token(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    before = await put_bidder(client, "b1")
    resp = await client.request(method, path, json=body, headers=headers)
    assert_error(resp, 401, "unauthorized")
    assert await get_bidder(client, "b1") == before  # nothing changed


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_token_is_checked_before_the_body_is_parsed(client: httpx.AsyncClient, method: str) -> None:
    resp = await client.request(method, "/v1/bidders/b1", content=b"{", headers={"content-type": "application/json"})
    assert_error(resp, 401, "unauthorized")


# --- PUT --------------------------------------------------------------------------------------------------


async def test_put_creates_then_replaces_keeping_spend(client: httpx.AsyncClient) -> None:
    period = flight()  # the same flight both times (built twice, a second boundary between would make another)
    resp = await client.put(
        "/v1/bidders/b1", json=bidder_body(budget_micros=1_000_000, period=period), headers=OPERATOR
    )
    assert resp.status_code == 201
    assert (await send_events(client, win("b1", "a1", 300)))["accepted"] == 1
    resp = await client.put(
        "/v1/bidders/b1", json=bidder_body(budget_micros=2_000_000, pacing="even", period=period), headers=OPERATOR
    )
    assert resp.status_code == 200
    status = resp.json()
    assert (status["budget_micros"], status["spent_micros"], status["remaining_micros"]) == (2_000_000, 300, 1_999_700)
    assert status["pacing"] == "even"


async def test_put_status_has_exactly_the_documented_keys(client: httpx.AsyncClient) -> None:
    period = flight(-3600, 86400)
    resp = await client.put(
        "/v1/bidders/b1", json=bidder_body(budget_micros=5000, period=period, max_bid_micros=900), headers=OPERATOR
    )
    assert resp.status_code == 201
    status = resp.json()
    assert set(status) == STATUS_KEYS
    assert status == {
        "bidder_id": "b1",
        "state": "active",
        "budget_micros": 5000,
        "spent_micros": 0,
        "reserved_micros": 0,
        "remaining_micros": 5000,
        "target_spent_micros": 5000,
        "period": period,
        "period_start": period["start"],
        "period_end": period["end"],
        "pacing": "asap",
        "max_bid_micros": 900,
        "throttle": 1.0,
        "multiplier": 1.0,
        "model": {
            "source": "prior",
            "version": 0,
            "fitted_at": None,
            "rows": None,
            "landscape": False,
            "fit_error": None,
            "last_fit": None,
        },
    }
    assert await get_bidder(client, "b1") == status


async def test_put_defaults(client: httpx.AsyncClient) -> None:
    period = flight()
    del period["timezone"]
    resp = await client.put("/v1/bidders/b1", json={"budget_micros": 1000, "period": period}, headers=OPERATOR)
    assert resp.status_code == 201
    status = resp.json()
    assert (status["pacing"], status["max_bid_micros"], status["period"]["timezone"]) == ("even", None, "UTC")


async def test_integral_floats_are_integers(client: httpx.AsyncClient) -> None:
    """5000.0 is the integer 5000 (JSON has one number type; JSON Schema's `integer` admits it); 5000.5 is not."""
    resp = await client.put(
        "/v1/bidders/b1", json=bidder_body(budget_micros=5000.0, max_bid_micros=900.0), headers=OPERATOR
    )
    assert resp.status_code == 201, resp.text
    assert '"budget_micros":5000,' in resp.text
    status = resp.json()
    assert (status["budget_micros"], status["max_bid_micros"], status["remaining_micros"]) == (5000, 900, 5000)
    resp = await client.patch("/v1/bidders/b1", json={"budget_micros": 6000.0}, headers=OPERATOR)
    assert resp.status_code == 200, resp.text
    assert '"budget_micros":6000,' in resp.text
    resp = await client.patch("/v1/bidders/b1", json={"budget_micros": 6000.5}, headers=OPERATOR)
    assert_error(resp, 422, "validation_error", "budget_micros")


async def test_put_keeps_a_paused_bidder_paused(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    await client.post("/v1/bidders/b1/pause", headers=OPERATOR)
    assert (await put_bidder(client, "b1", budget_micros=7))["state"] == "paused"


async def test_put_budget_upper_bound_is_inclusive(client: httpx.AsyncClient) -> None:
    assert (await put_bidder(client, "b1", budget_micros=10**15))["budget_micros"] == 10**15


PUT_ERRORS = [
    ("typo-field", {"budjet_micros": 5}, "budjet_micros"),
    ("unknown-flight-field", {"period": {**flight(), "x": 1}}, "period.x"),
    ("unknown-daily-field", {"period": {"type": "daily", "timezone": "UTC", "x": 1}}, "period.x"),
    ("budget-string", {"budget_micros": "1000"}, "budget_micros"),
    ("budget-float", {"budget_micros": 1000.5}, "budget_micros"),
    ("budget-bool", {"budget_micros": True}, "budget_micros"),
    ("budget-null", {"budget_micros": None}, "budget_micros"),
    ("budget-negative", {"budget_micros": -1}, "budget_micros"),
    ("budget-zero", {"budget_micros": 0}, "budget_micros"),
    ("budget-too-big", {"budget_micros": 10**15 + 1}, "budget_micros"),
    ("pacing-unknown", {"pacing": "fast"}, "pacing"),
    ("max-bid-zero", {"max_bid_micros": 0}, "max_bid_micros"),
    ("max-bid-too-big", {"max_bid_micros": 10**12 + 1}, "max_bid_micros"),
    ("max-bid-string", {"max_bid_micros": "5"}, "max_bid_micros"),
    ("period-type-unknown", {"period": {"type": "weekly", "timezone": "UTC"}}, "period.type"),
    ("period-type-missing", {"period": {"timezone": "UTC"}}, "period.type"),
    ("period-not-object", {"period": "daily"}, "period"),
    ("flight-end-before-start", {"period": flight(3600, 60)}, "period.end"),
    ("flight-end-equals-start", {"period": flight(3600, 3600)}, "period.end"),
    ("flight-naive-start", {"period": {**flight(), "start": "2026-01-01T00:00:00"}}, "period.start"),
    ("flight-naive-end", {"period": {**flight(), "end": "2200-01-01T00:00:00"}}, "period.end"),
    ("flight-start-not-a-time", {"period": {**flight(), "start": "tomorrow"}}, "period.start"),
    ("flight-start-missing", {"period": {"type": "flight", "end": "2200-01-01T00:00:00Z"}}, "period.start"),
    ("flight-bad-timezone", {"period": flight(timezone="Mars/Olympus_Mons")}, "period.timezone"),
    ("daily-bad-timezone", {"period": {"type": "daily", "timezone": "America/Nowhere"}}, "period.timezone"),
    ("daily-empty-timezone", {"period": {"type": "daily", "timezone": ""}}, "period.timezone"),
    ("daily-missing-timezone", {"period": {"type": "daily"}}, "period.timezone"),
]


@pytest.mark.parametrize(("overrides", "field"), [e[1:] for e in PUT_ERRORS], ids=[e[0] for e in PUT_ERRORS])
async def test_put_validation_errors(client: httpx.AsyncClient, overrides: dict[str, Any], field: str) -> None:
    resp = await client.put("/v1/bidders/b1", json=bidder_body(**overrides), headers=OPERATOR)
    assert_error(resp, 422, "validation_error", field)
    assert_error(await client.get("/v1/bidders/b1", headers=OPERATOR), 404, "not_found", "bidder_id")


@pytest.mark.parametrize("missing", ["budget_micros", "period"])
async def test_put_missing_field(client: httpx.AsyncClient, missing: str) -> None:
    body = bidder_body()
    del body[missing]
    assert_error(await client.put("/v1/bidders/b1", json=body, headers=OPERATOR), 422, "validation_error", missing)


async def test_put_failed_validation_leaves_the_bidder_unchanged(client: httpx.AsyncClient) -> None:
    before = await put_bidder(client, "b1")
    resp = await client.put("/v1/bidders/b1", json=bidder_body(budget_micros=0), headers=OPERATOR)
    assert_error(resp, 422, "validation_error", "budget_micros")
    assert await get_bidder(client, "b1") == before


@pytest.mark.parametrize("content", [b"{", b"budget=5", b'{"budget_micros": 5,}'], ids=repr)
async def test_put_not_json(client: httpx.AsyncClient, content: bytes) -> None:
    headers = {**OPERATOR, "content-type": "application/json"}
    assert_error(await client.put("/v1/bidders/b1", content=content, headers=headers), 400, "invalid_json")


@pytest.mark.parametrize("body", [[bidder_body()], "x", 5], ids=["array", "string", "number"])
async def test_put_body_not_an_object(client: httpx.AsyncClient, body: Any) -> None:
    assert_error(await client.put("/v1/bidders/b1", json=body, headers=OPERATOR), 422, "validation_error", None)


async def test_put_without_a_body(client: httpx.AsyncClient) -> None:
    assert_error(await client.put("/v1/bidders/b1", headers=OPERATOR), 422, "validation_error", None)


async def test_put_bidder_id_too_long(client: httpx.AsyncClient) -> None:
    resp = await client.put(f"/v1/bidders/{'x' * 257}", json=bidder_body(), headers=OPERATOR)
    assert_error(resp, 422, "validation_error", "bidder_id")


async def test_daily_period_is_local_midnight_to_midnight(client: httpx.AsyncClient) -> None:
    before = time.time()
    status = await put_bidder(client, "ny", period={"type": "daily", "timezone": "America/New_York"})
    after = time.time()
    assert status["period"] == {"type": "daily", "timezone": "America/New_York"}
    start, end = status["period_start"], status["period_end"]
    assert start.endswith(("T05:00:00Z", "T04:00:00Z")), start
    assert end.endswith(("T05:00:00Z", "T04:00:00Z")), end
    zone = ZoneInfo("America/New_York")
    local_start, local_end = dt(start).astimezone(zone), dt(end).astimezone(zone)
    assert local_start.time() == local_end.time() == datetime.min.time()
    assert (local_end.date() - local_start.date()).days == 1
    assert dt(start).timestamp() <= after and before < dt(end).timestamp()  # the day containing the PUT


async def test_daily_period_in_utc(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC).date()
    status = await put_bidder(client, "utc", period={"type": "daily", "timezone": "UTC"})
    after = datetime.now(UTC).date()
    assert status["period_start"] in {f"{day.isoformat()}T00:00:00Z" for day in (before, after)}
    assert dt(status["period_end"]).timestamp() - dt(status["period_start"]).timestamp() == 86400


# --- PATCH ------------------------------------------------------------------------------------------------


async def patch(client: httpx.AsyncClient, bidder_id: str, body: Any) -> httpx.Response:
    return await client.patch(f"/v1/bidders/{bidder_id}", json=body, headers=OPERATOR)


async def test_patch_budget(client: httpx.AsyncClient) -> None:
    before = await put_bidder(client, "b1", budget_micros=1000)
    await send_events(client, win("b1", "a1", 400))
    resp = await patch(client, "b1", {"budget_micros": 5000})
    assert resp.status_code == 200
    status = resp.json()
    assert (status["budget_micros"], status["spent_micros"], status["remaining_micros"]) == (5000, 400, 4600)
    assert (status["period"], status["pacing"]) == (before["period"], before["pacing"])
    assert await get_bidder(client, "b1") == status


async def test_patch_lowering_the_budget_below_spend_exhausts(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", budget_micros=1000)
    await send_events(client, win("b1", "a1", 400))
    status = (await patch(client, "b1", {"budget_micros": 300})).json()
    assert (status["state"], status["remaining_micros"]) == ("exhausted", 0)
    assert await bid(client, "b1", "a2", 10) == {"auction_id": "a2", "bid": False, "reason": "exhausted"}


async def test_patch_max_bid_then_null_removes_it(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await patch(client, "b1", {"max_bid_micros": 250})
    assert (resp.status_code, resp.json()["max_bid_micros"]) == (200, 250)
    assert await bid(client, "b1", "a1", 1000) == {"auction_id": "a1", "bid": True, "bid_micros": 250}
    resp = await patch(client, "b1", {"max_bid_micros": None})
    assert (resp.status_code, resp.json()["max_bid_micros"]) == (200, None)
    assert await bid(client, "b1", "a2", 1000) == {"auction_id": "a2", "bid": True, "bid_micros": 1000}


async def test_patch_pacing(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1", pacing="asap")
    resp = await patch(client, "b1", {"pacing": "frontload"})
    assert (resp.status_code, resp.json()["pacing"]) == (200, "frontload")
    assert (await get_bidder(client, "b1"))["pacing"] == "frontload"


async def test_patch_period(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    later = flight(3600, 7200, timezone="Europe/Paris")
    status = (await patch(client, "b1", {"period": later})).json()
    assert status["period"] == later
    assert (status["period_start"], status["period_end"], status["state"]) == (
        later["start"],
        later["end"],
        "scheduled",
    )
    assert await bid(client, "b1", "a1", 10) == {"auction_id": "a1", "bid": False, "reason": "not_active"}
    status = (await patch(client, "b1", {"period": {"type": "daily", "timezone": "UTC"}})).json()
    assert (status["period"], status["state"]) == ({"type": "daily", "timezone": "UTC"}, "active")


async def test_patch_empty_body_changes_nothing(client: httpx.AsyncClient) -> None:
    before = await put_bidder(client, "b1", max_bid_micros=10)
    resp = await patch(client, "b1", {})
    assert resp.status_code == 200
    assert resp.json() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget_micros": None}, "budget_micros"),
        ({"pacing": None}, "pacing"),
        ({"period": None}, "period"),
        ({"budget_micros": 0}, "budget_micros"),
        ({"budget_micros": "5"}, "budget_micros"),
        ({"pacing": "slow"}, "pacing"),
        ({"max_bid_micros": -1}, "max_bid_micros"),
        ({"budjet_micros": 5}, "budjet_micros"),
        ({"period": {"type": "daily", "timezone": "UTC", "x": 1}}, "period.x"),
        ({"period": {"type": "flight", "start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"}}, "period.end"),
        ({"period": {"type": "daily", "timezone": "Nowhere/City"}}, "period.timezone"),
    ],
    ids=repr,
)
async def test_patch_validation_errors(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    before = await put_bidder(client, "b1")
    assert_error(await patch(client, "b1", body), 422, "validation_error", field)
    assert await get_bidder(client, "b1") == before


async def test_patch_not_json(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.patch("/v1/bidders/b1", content=b"{", headers={**OPERATOR, "content-type": "application/json"})
    assert_error(resp, 400, "invalid_json")


async def test_patch_unknown_bidder(client: httpx.AsyncClient) -> None:
    assert_error(await patch(client, "ghost", {"budget_micros": 5}), 404, "not_found", "bidder_id")


# --- GET, list --------------------------------------------------------------------------------------------


async def test_get_unknown_bidder(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/bidders/ghost", headers=OPERATOR), 404, "not_found", "bidder_id")


async def test_list_empty(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/bidders", headers=OPERATOR)
    assert (resp.status_code, resp.json()) == (200, {"bidders": [], "next": None})


async def test_list_walks_all_pages_in_id_order(client: httpx.AsyncClient) -> None:
    for bidder_id in ("c", "a", "e", "b", "d"):
        await put_bidder(client, bidder_id)
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        resp = await client.get("/v1/bidders", params=params, headers=OPERATOR)
        assert resp.status_code == 200
        page = resp.json()
        assert set(page) == {"bidders", "next"}
        assert all(set(b) == STATUS_KEYS for b in page["bidders"])
        pages.append([b["bidder_id"] for b in page["bidders"]])
        if page["next"] is None:
            break
        assert isinstance(page["next"], str)
        params = {"limit": 2, "cursor": page["next"]}
    assert pages == [["a", "b"], ["c", "d"], ["e"]]


async def test_list_default_limit_returns_all(client: httpx.AsyncClient) -> None:
    for bidder_id in ("b", "a"):
        await put_bidder(client, bidder_id)
    page = (await client.get("/v1/bidders", headers=OPERATOR)).json()
    assert ([b["bidder_id"] for b in page["bidders"]], page["next"]) == (["a", "b"], None)


async def test_list_exact_page_has_no_next(client: httpx.AsyncClient) -> None:
    for bidder_id in ("a", "b"):
        await put_bidder(client, bidder_id)
    page = (await client.get("/v1/bidders", params={"limit": 2}, headers=OPERATOR)).json()
    assert ([b["bidder_id"] for b in page["bidders"]], page["next"]) == (["a", "b"], None)


@pytest.mark.parametrize(
    "cursor",
    ["abc", "not-a-cursor", "!!!!", "====", "x" * 401, base64.urlsafe_b64encode(b"\xff\xfe").decode()],
    ids=["bad-padding", "not-utf8", "no-base64-chars", "only-padding", "too-long", "binary"],
)
async def test_list_bad_cursor(client: httpx.AsyncClient, cursor: str) -> None:
    await put_bidder(client, "a")
    resp = await client.get("/v1/bidders", params={"cursor": cursor}, headers=OPERATOR)
    assert_error(resp, 422, "validation_error", "cursor")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "two"])
async def test_list_bad_limit(client: httpx.AsyncClient, limit: str) -> None:
    resp = await client.get("/v1/bidders", params={"limit": limit}, headers=OPERATOR)
    assert_error(resp, 422, "validation_error", "limit")


# --- pause, resume, delete --------------------------------------------------------------------------------


async def test_pause_and_resume(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.post("/v1/bidders/b1/pause", headers=OPERATOR)
    assert resp.status_code == 200
    assert set(resp.json()) == STATUS_KEYS
    assert resp.json()["state"] == "paused"
    assert await bid(client, "b1", "a1", 100) == {"auction_id": "a1", "bid": False, "reason": "paused"}
    resp = await client.post("/v1/bidders/b1/resume", headers=OPERATOR)
    assert (resp.status_code, resp.json()["state"]) == (200, "active")
    assert await bid(client, "b1", "a2", 100) == {"auction_id": "a2", "bid": True, "bid_micros": 100}


async def test_pause_is_idempotent(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    for _ in range(2):
        resp = await client.post("/v1/bidders/b1/pause", headers=OPERATOR)
        assert (resp.status_code, resp.json()["state"]) == (200, "paused")


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_pause_resume_unknown_bidder(client: httpx.AsyncClient, action: str) -> None:
    resp = await client.post(f"/v1/bidders/ghost/{action}", headers=OPERATOR)
    assert_error(resp, 404, "not_found", "bidder_id")


async def test_delete(client: httpx.AsyncClient) -> None:
    await put_bidder(client, "b1")
    resp = await client.delete("/v1/bidders/b1", headers=OPERATOR)
    assert (resp.status_code, resp.content) == (204, b"")
    assert_error(await client.get("/v1/bidders/b1", headers=OPERATOR), 404, "not_found", "bidder_id")
    assert await bid(client, "b1", "a1", 100) == {"auction_id": "a1", "bid": False, "reason": "unknown_bidder"}
    assert (await client.get("/v1/bidders", headers=OPERATOR)).json() == {"bidders": [], "next": None}


async def test_delete_then_recreate_keeps_recorded_spend(client: httpx.AsyncClient) -> None:
    period = flight()
    await put_bidder(client, "b1", period=period)
    await send_events(client, win("b1", "a1", 300))
    assert (await client.delete("/v1/bidders/b1", headers=OPERATOR)).status_code == 204
    resp = await client.put("/v1/bidders/b1", json=bidder_body(period=period), headers=OPERATOR)
    assert (resp.status_code, resp.json()["spent_micros"]) == (201, 300)


async def test_delete_unknown_bidder(client: httpx.AsyncClient) -> None:
    assert_error(await client.delete("/v1/bidders/ghost", headers=OPERATOR), 404, "not_found", "bidder_id")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/bidders/b1"), ("DELETE", "/v1/bidders"), ("GET", "/v1/bidders/b1/pause")],
)
async def test_operator_method_not_allowed(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_error(await client.request(method, path, headers=OPERATOR), 405, "method_not_allowed")


# --- the store refusing a write ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/bidders/b1", bidder_body(budget_micros=5)),
        ("PATCH", "/v1/bidders/b1", {"budget_micros": 5}),
        ("POST", "/v1/bidders/b1/pause", None),
        ("DELETE", "/v1/bidders/b1", None),
    ],
    ids=["put", "patch", "pause", "delete"],
)
async def test_store_unavailable_on_operator_writes(
    app: PacerApp, monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: Any
) -> None:
    """A write the store refuses is a 503 store_unavailable with the error body, and changes nothing."""

    async def failing(*_: object) -> None:
        raise StoreError("disk full")

    async with serve(app, raise_app_exceptions=False) as client:
        before = await put_bidder(client, "b1")
        monkeypatch.setattr(app.service.store, "put_bidder", failing)
        monkeypatch.setattr(app.service.store, "delete_bidder", failing)
        resp = await client.request(method, path, json=body, headers=OPERATOR)
        assert_error(resp, 503, "store_unavailable")
        assert await get_bidder(client, "b1") == before
