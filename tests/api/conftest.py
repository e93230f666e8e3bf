"""Fixtures for the API tests: the real ASGI app (dispatcher + FastAPI) in-process, lifespan included."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacer.app import PacerApp, create_app
from pacer.config import Settings

OPERATOR_TOKEN = "tok"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def flight(start_in: float = -3600, end_in: float = 86400, timezone: str = "UTC") -> dict[str, str]:
    """A flight period whose start and end are `start_in` / `end_in` seconds from now."""
    now = time.time()
    return {"type": "flight", "start": rfc3339(now + start_in), "end": rfc3339(now + end_in), "timezone": timezone}


def bidder_body(**overrides: Any) -> dict[str, Any]:
    """A valid PUT body: active flight, 'asap' pacing (multiplier and throttle stay 1, so grants are exact)."""
    return {"budget_micros": 1_000_000, "period": flight(), "pacing": "asap", **overrides}


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The response is an error with the one documented body shape, and the exact code and field."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "field"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert (error["code"], error["field"]) == (code, field), error
    return error


async def put_bidder(client: httpx.AsyncClient, bidder_id: str, **overrides: Any) -> dict[str, Any]:
    """Create or replace a bidder (operator token sent); returns its status."""
    resp = await client.put(f"/v1/bidders/{bidder_id}", json=bidder_body(**overrides), headers=OPERATOR)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


async def get_bidder(client: httpx.AsyncClient, bidder_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/bidders/{bidder_id}", headers=OPERATOR)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def bid(client: httpx.AsyncClient, bidder_id: str, auction_id: str, bid_micros: int) -> dict[str, Any]:
    """POST /v1/bid; returns the decision."""
    resp = await client.post(
        "/v1/bid", json={"bidder_id": bidder_id, "auction_id": auction_id, "bid_micros": bid_micros}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def win(bidder_id: str, auction_id: str, price_micros: int) -> dict[str, Any]:
    return {"type": "win", "bidder_id": bidder_id, "auction_id": auction_id, "price_micros": price_micros}


def loss(bidder_id: str, auction_id: str) -> dict[str, Any]:
    return {"type": "loss", "bidder_id": bidder_id, "auction_id": auction_id}


async def send_events(client: httpx.AsyncClient, *events: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/events; returns {"accepted": n, "duplicates": n}."""
    resp = await client.post("/v1/events", json={"events": list(events)})
    assert resp.status_code == 200, resp.text
    return resp.json()


@contextlib.asynccontextmanager
async def lifespan(app: PacerApp) -> AsyncIterator[None]:
    """The ASGI lifespan protocol, driven as uvicorn drives it, through the dispatcher."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    reply = asyncio.ensure_future(outbox.get())
    await asyncio.wait([reply, task], return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():  # the app ended (crashed) without answering: say why
        reply.cancel()
        task.result()
        raise AssertionError("the app ended its lifespan without completing startup")
    started = reply.result()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = await outbox.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


@contextlib.asynccontextmanager
async def serve(app: PacerApp, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (httpx's ASGITransport does not) around a client talking to it in-process."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., PacerApp]:
    """Build the whole service on a store in tmp_path; keyword arguments override Settings."""

    def make(**overrides: Any) -> PacerApp:
        settings = {
            "store": f"sqlite:///{tmp_path}/p.db",
            "operator_token": OPERATOR_TOKEN,
            "operator_token_file": tmp_path / "t",
            "log_url": str(tmp_path / "log"),
            **overrides,
        }
        return create_app(Settings(**settings))

    return make


@pytest.fixture
def app(make_app: Callable[..., PacerApp]) -> PacerApp:
    return make_app()


@pytest.fixture
async def client(app: PacerApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the running app, no bidder token; operator calls pass `headers=OPERATOR`."""
    async with serve(app) as c:
        yield c
