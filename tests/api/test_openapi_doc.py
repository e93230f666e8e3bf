"""/openapi.json, in process: one Error schema for every error status, the statuses the dispatcher adds, the
concurrency headers, and fields with their real formats and bounds. (tests/e2e/test_api_schema.py holds the running
service to the whole document with Schemathesis.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.api.conftest import OPERATOR, put_bidder, serve

ERROR_REF = {"$ref": "#/components/schemas/Error"}
BIDDER_ID_ROUTES = [("/v1/bidders/{bidder_id}", m) for m in ("put", "patch", "get", "delete")] + [
    ("/v1/bidders/{bidder_id}/curve", "get"),
    ("/v1/bidders/{bidder_id}/pause", "post"),
    ("/v1/bidders/{bidder_id}/resume", "post"),
    ("/v1/bidders/{bidder_id}/restore", "post"),
]
IF_MATCH_ROUTES = [("/v1/bidders/{bidder_id}", m) for m in ("put", "patch", "delete")] + [
    ("/v1/bidders/{bidder_id}/pause", "post"),
    ("/v1/bidders/{bidder_id}/resume", "post"),
]


@pytest.fixture
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, methods in doc["paths"].items() for method, op in methods.items()]


def schemas(doc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = doc["components"]["schemas"]
    return found


async def test_every_error_status_has_the_one_error_schema(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in schemas(doc) and "ValidationError" not in schemas(doc)
    error = schemas(doc)["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message", "field"]
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400 or path == "/readyz":
                continue
            assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (method, path, status)


@pytest.mark.parametrize("path", ["/v1/bid", "/v1/bids", "/v1/events"])
async def test_bidder_routes_document_the_dispatchers_statuses(doc: dict[str, Any], path: str) -> None:
    statuses = set(doc["paths"][path]["post"]["responses"])
    assert statuses >= {"200", "400", "401", "413", "415", "422"}
    assert ("503" in statuses) == (path == "/v1/events")


@pytest.mark.parametrize(("path", "method"), BIDDER_ID_ROUTES)
async def test_operator_routes_document_auth_unknown_bidder_and_id_bounds(
    doc: dict[str, Any], path: str, method: str
) -> None:
    op = doc["paths"][path][method]
    assert {"401", "404", "422"} <= set(op["responses"])
    (bidder_id,) = [p for p in op["parameters"] if p["name"] == "bidder_id"]
    assert (bidder_id["schema"]["minLength"], bidder_id["schema"]["maxLength"]) == (1, 256)
    if "requestBody" in op:
        assert {"400", "413"} <= set(op["responses"])


@pytest.mark.parametrize(("path", "method"), IF_MATCH_ROUTES)
async def test_if_match_and_etag_are_documented(doc: dict[str, Any], path: str, method: str) -> None:
    op = doc["paths"][path][method]
    (if_match,) = [p for p in op["parameters"] if p["name"] == "If-Match"]
    assert (if_match["in"], if_match["required"]) == ("header", False)
    assert "412" in op["responses"]
    if method != "delete":
        assert "ETag" in op["responses"]["200"]["headers"]


async def test_the_etag_sent_matches_the_documented_one(client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    await put_bidder(client, "b1")
    etag = (await client.get("/v1/bidders/b1", headers=OPERATOR)).headers["ETag"]
    documented = doc["paths"]["/v1/bidders/{bidder_id}"]["get"]["responses"]["200"]["headers"]["ETag"]
    assert re.fullmatch(documented["schema"]["pattern"].strip("^$"), etag), etag
    if_match = [p for p in doc["paths"]["/v1/bidders/{bidder_id}"]["patch"]["parameters"] if p["name"] == "If-Match"]
    assert re.fullmatch(if_match[0]["schema"]["pattern"].strip("^$"), etag)


async def test_fields_have_their_formats_and_bounds(doc: dict[str, Any]) -> None:
    flight, daily = schemas(doc)["FlightIn"]["properties"], schemas(doc)["DailyIn"]["properties"]
    for name in ("start", "end"):
        assert flight[name]["format"] == "date-time"
    for zone in (flight["timezone"], daily["timezone"]):
        assert {"UTC", "America/New_York", "Europe/Berlin"} <= set(zone["enum"])
    status = schemas(doc)["BidderStatus"]["properties"]
    assert status["period_start"]["format"] == status["period_end"]["format"] == "date-time"
    bid = schemas(doc)["BidRequest"]["properties"]["bid_micros"]
    assert (bid["type"], bid["minimum"], bid["maximum"]) == ("integer", 1, 10**12)
    budget = schemas(doc)["BidderIn"]["properties"]["budget_micros"]
    assert (budget["type"], budget["maximum"]) == ("integer", 10**15)


async def test_patch_fields_are_optional_but_not_nullable(doc: dict[str, Any]) -> None:
    """null is refused for these (422), so the document does not offer it; max_bid_micros: null removes the cap."""
    patch = schemas(doc)["BidderPatch"]["properties"]
    for name in ("budget_micros", "period", "pacing"):
        assert "anyOf" not in patch[name] and patch[name].get("type") != "null", patch[name]
    assert {"type": "null"} in patch["max_bid_micros"]["anyOf"]


async def test_readyz_documents_its_503(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}
    assert responses["200"]["content"] == responses["503"]["content"] == ref


async def test_bidder_token_is_documented_when_set(make_app: Any) -> None:
    async with serve(make_app(bidder_token="bt")) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["paths"]["/v1/bid"]["post"]["security"] == [{"BidderBearer": []}]
    assert document["components"]["securitySchemes"]["BidderBearer"]["scheme"] == "bearer"
