"""operator.py: the operator API (/v1/bidders...): budgets, periods, pacing mode, pause/resume, status.

Every route needs `Authorization: Bearer <PACER_OPERATOR_TOKEN>` (constant-time compare). Bodies reject
unknown fields: a typo like `budjet_micros` must fail loudly, not be ignored. Money fields take an integral float
as that integer (5.0 is 5: JSON has one number type), never 5.5, "5" or true. Not on the hot path.

Every status a route answers with is in its `responses` (the error ones with the one Error body, errors.py), so
/openapi.json says what the service does; tests/e2e/test_api_schema.py holds the running service to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from pacer.api.errors import ApiError, responses
from pacer.bidder_config import (
    MAX_BUDGET,
    BidCap,
    BidderConfig,
    BidderIn,
    BudgetMicros,
    DailyIn,
    FlightIn,
    Pacing,
    PeriodIn,
    State,
    Whole,
)
from pacer.engine import Engine
from pacer.periods import PeriodError, parse_period, period_to_json, rfc3339
from pacer.service import ANY_VERSION, BidderNotFound, Service

MAX_BULK = 10_000  # bidders per bulk PUT
EXPORT_CHUNK = 1000  # bidders per chunk of the ndjson export
BidderId = Annotated[str, Field(min_length=1, max_length=256)]
BulkId = Annotated[str, Field(min_length=1, max_length=256, pattern="^[^/]+$")]  # a path segment: no '/'
UNISSUED = -2  # the version an If-Match tag this API never issued names: it matches none (412)
DATE_TIME: JsonDict = {"format": "date-time"}


def _not_null(schema: dict[str, Any]) -> None:
    """PATCH fields may be left out, but not set to null (422): document the value's schema alone."""
    (value,) = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
    schema.update(value)
    schema.pop("default", None)


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    bidders: Annotated[dict[BulkId, BidderIn], Field(min_length=1, max_length=MAX_BULK)] = Field(
        description=f"bidder id -> the body of PUT /v1/bidders/{{id}}; 1..{MAX_BULK} per call"
    )


class BulkOut(BaseModel):
    created: int
    replaced: int


class BidderPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    budget_micros: BudgetMicros | None = Field(None, json_schema_extra=_not_null)
    period: PeriodIn | None = Field(None, json_schema_extra=_not_null)
    pacing: Pacing | None = Field(None, json_schema_extra=_not_null)
    max_bid_micros: BidCap | None = Field(None, description="null removes the cap")


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    spent_micros: Annotated[int, Whole] = Field(
        ge=0,
        le=MAX_BUDGET,
        description="spend of the current period already settled, e.g. the exchange's figure, or the spent_micros "
        "status showed before the loss. Wins still waiting in instances' journals are added when they sync.",
    )


class ModelStatus(BaseModel):
    source: Literal["prior", "fitted"] = Field(
        description="the traffic curve paced by: the shipped prior until a refit publishes one for this bidder"
    )
    version: int = Field(description="version of the fitted model in use (0: none)")
    fitted_at: str | None = Field(None, json_schema_extra=DATE_TIME)
    rows: int | None = Field(None, description="auction-log rows the model was fitted on")
    landscape: bool = Field(False, description="the model has a bid landscape (feed-forward bid multiplier)")
    fit_error: dict[str, float | None] | None = None
    last_fit: dict[str, object] | None = Field(
        None,
        description="the last refit attempt; a rejected one says why in `reason` and leaves the model in use unchanged",
    )


class BidderStatus(BaseModel):
    bidder_id: str
    state: State = Field(
        description="store_lost: the fleet store lost this bidder's spend; nothing is granted until "
        "POST /v1/bidders/{id}/restore"
    )
    budget_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    target_spent_micros: int = Field(description="where the pacing curve says spend should be now")
    period: dict[str, str] = Field(
        description="as set: {type: flight, start, end, timezone} or {type: daily, timezone}"
    )
    period_start: str = Field(json_schema_extra=DATE_TIME)
    period_end: str = Field(json_schema_extra=DATE_TIME)
    pacing: Pacing
    max_bid_micros: int | None
    throttle: float = Field(ge=0, le=1, description="probability of taking part in an auction")
    multiplier: float = Field(ge=0, le=1, description="share of the requested bid that is granted")
    model: ModelStatus


class Landscape(BaseModel):
    auction: Literal["first", "second"]
    bid_micros: list[int]
    win_rate: list[float] = Field(description="probability of winning at each bid")
    avg_price_micros: list[float] = Field(description="mean price paid when winning at each bid")


class CurveOut(BaseModel):
    bidder_id: str
    pacing: Pacing
    period_start: str = Field(json_schema_extra=DATE_TIME)
    period_end: str = Field(json_schema_extra=DATE_TIME)
    target: dict[str, list[float] | list[str]] = Field(
        description="`t` (RFC 3339, at most 289 points over the current period) and `spent_share`: the share of "
        "the budget the pacing curve plans spent by each t"
    )
    traffic_source: Literal["prior", "fitted"]
    traffic_by_slot: list[float] = Field(description="288 shares of a local day's auctions, slot 0 = 00:00-00:05")
    weekday_factor: list[float] = Field(description="Monday first, mean 1")
    landscape: Landscape | None = Field(description="null until a fitted model with a landscape exists")
    model: ModelStatus


class BidderList(BaseModel):
    bidders: list[BidderStatus]
    next: str | None = Field(description="cursor for the next page; null on the last")


_bearer = HTTPBearer(auto_error=False, description="PACER_OPERATOR_TOKEN")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


# The token is checked once, by the dispatcher (pacer/app.py) before anything reads the body; this dependency
# only puts the scheme in the API document.
router = APIRouter(prefix="/v1/bidders", tags=["operator"], dependencies=[Depends(_bearer)])
ServiceDep = Annotated[Service, Depends(_service)]


def _status(engine: Engine, bidder_id: str) -> BidderStatus:
    raw = engine.status(bidder_id)
    if raw is None:
        raise BidderNotFound()
    raw["period"] = period_to_json(engine.bidders[bidder_id].config.period)
    raw["period_start"] = rfc3339(float(raw["period_start"]))  # type: ignore[arg-type]
    raw["period_end"] = rfc3339(float(raw["period_end"]))  # type: ignore[arg-type]
    return BidderStatus.model_validate(raw)


def _period(body: FlightIn | DailyIn) -> object:
    try:
        return parse_period(body.model_dump())
    except PeriodError as exc:
        raise ApiError(422, "validation_error", exc.message, exc.field) from None


def _existing(config: BidderConfig | None) -> BidderConfig:
    if config is None:
        raise BidderNotFound()
    return config


def _if_match(request: Request) -> int | None:
    """The version an `If-Match` header names (`"3"`, `W/"3"`, or `*` for any), None without one. A tag this API
    never issued matches nothing (412)."""
    header = request.headers.get("if-match")
    if header is None:
        return None
    tag = header.strip()
    if tag == "*":
        return ANY_VERSION
    tag = tag.removeprefix("W/")
    digits = tag[1:-1] if len(tag) > 2 and tag[0] == tag[-1] == '"' else ""
    return int(digits) if digits.isdigit() and len(digits) < 19 else UNISSUED


# In the API document: the ETag answers carry and the If-Match a change may send (read by _if_match).
_ETAG = {
    "ETag": {
        "description": 'the configuration version, e.g. "3": send it back in If-Match to change only that version',
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    }
}
_IF_MATCH = {
    "parameters": [
        {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": '^(\\*|(W/)?"[0-9]{1,18}")$'},
            "description": 'change only this version: an ETag this API sent ("3", or W/"3"), or * for any version of a '
            "bidder that exists. Otherwise 412 and nothing changes, for any other value too",
        }
    ]
}
_OK: dict[int | str, dict[str, Any]] = {200: {"headers": _ETAG}}
_ID_SLASH = (404, "`not_found`: a bidder id with '/' in it (sent as %2F)")
_NOT_RESTORABLE = (
    409,
    "`not_shared`: the store is not shared (Redis), so it never loses state; `not_lost`: this "
    "bidder's state is intact (spend is never reset by hand)",
)


def _answer(service: Service, bidder_id: str, response: Response) -> BidderStatus:
    """The bidder's status, with its version as the ETag (send it back in If-Match to update only that version)."""
    status = _status(service.engine, bidder_id)
    version = service.version(bidder_id)
    if version is not None:
        response.headers["ETag"] = f'"{version}"'
    return status


@router.put(
    "/{bidder_id}",
    response_model=BidderStatus,
    openapi_extra=_IF_MATCH,
    responses={
        **_OK,
        201: {"model": BidderStatus, "description": "Created", "headers": _ETAG},
        **responses(400, 401, _ID_SLASH, 409, 412, 413, 422, 503),
    },
)
async def put_bidder(
    bidder_id: BidderId, body: BidderIn, service: ServiceDep, request: Request, response: Response
) -> BidderStatus:
    """Create (201) or replace (200) a bidder. Spend already recorded in the same period is kept; a paused bidder
    stays paused. With `If-Match`, only the version named is replaced (412 otherwise)."""
    created = await service.update(bidder_id, _replacing(body, _period(body.period)), _if_match(request))
    response.status_code = 201 if created else 200
    return _answer(service, bidder_id, response)


def _replacing(body: BidderIn, period: object) -> Callable[[BidderConfig | None], BidderConfig]:
    """PUT's change: the new settings, keeping a pause."""

    def replace_config(old: BidderConfig | None) -> BidderConfig:
        return BidderConfig(
            budget_micros=body.budget_micros,
            period=period,  # type: ignore[arg-type]
            pacing=body.pacing,
            max_bid_micros=body.max_bid_micros,
            paused=old.paused if old is not None else False,
        )

    return replace_config


@router.put("", response_model=BulkOut, responses=responses(400, 401, 409, 413, 422, 503))
async def put_bidders(body: BulkIn, service: ServiceDep) -> BulkOut:
    """Create or replace many bidders in one call, each as PUT /v1/bidders/{id} would (a paused one stays
    paused). The whole body is validated first: one bad bidder is a 422 naming it (`bidders.<id>.<field>`) and
    nothing changes. The embedded store then writes them all in one transaction; a fleet store writes each
    bidder atomically, so a 503 midway can leave some written: the same call again is safe (a PUT)."""
    changes = {}
    for bidder_id, one in body.bidders.items():
        try:
            period = parse_period(one.period.model_dump())
        except PeriodError as exc:
            raise ApiError(422, "validation_error", exc.message, f"bidders.{bidder_id}.{exc.field}") from None
        changes[bidder_id] = _replacing(one, period)
    created = await service.update_many(changes)
    return BulkOut(created=created, replaced=len(changes) - created)


@router.patch(
    "/{bidder_id}",
    response_model=BidderStatus,
    openapi_extra=_IF_MATCH,
    responses={**_OK, **responses(400, 401, 404, 409, 412, 413, 422, 503)},
)
async def patch_bidder(
    bidder_id: BidderId, body: BidderPatch, service: ServiceDep, request: Request, response: Response
) -> BidderStatus:
    """Change any of the fields; a budget raised or lowered mid-period re-plans the rest of it. The change applies
    to the bidder as it is when it is written (a concurrent pause is kept). With `If-Match`: that version only."""
    given = body.model_fields_set
    for name in ("budget_micros", "pacing", "period"):
        if name in given and getattr(body, name) is None:
            raise ApiError(422, "validation_error", "may not be null", name)
    changes: dict[str, object] = {name: getattr(body, name) for name in given if name != "period"}
    if body.period is not None:
        changes["period"] = _period(body.period)
    await service.update(
        bidder_id,
        lambda old: replace(_existing(old), **changes),  # type: ignore[arg-type]
        _if_match(request),
    )
    return _answer(service, bidder_id, response)


@router.get("/{bidder_id}", response_model=BidderStatus, responses={**_OK, **responses(401, 404, 422)})
async def get_bidder(bidder_id: BidderId, service: ServiceDep, response: Response) -> BidderStatus:
    """The bidder's status; its `ETag` is the configuration version."""
    return _answer(service, bidder_id, response)


@router.get("/{bidder_id}/curve", response_model=CurveOut, responses=responses(401, 404, 422))
async def get_curve(bidder_id: BidderId, service: ServiceDep) -> CurveOut:
    """What the pacer believes about this bidder: the target spend curve over its current period, the traffic
    curve it follows (fitted, or the prior), and the bid landscape that sets its feed-forward multiplier."""
    engine = service.engine
    bidder = engine.bidders.get(bidder_id)
    if bidder is None:
        raise BidderNotFound()
    w = bidder.window
    times = np.linspace(w.start, w.end, int(min(288, max(1, (w.end - w.start) // 300))) + 1)
    share = engine.target(bidder, times)
    model = bidder.model
    curve = model.curve if model is not None else engine.curve
    landscape = model.doc.get("landscape") if model is not None else None
    return CurveOut(
        bidder_id=bidder_id,
        pacing=bidder.config.pacing,  # type: ignore[arg-type]
        period_start=rfc3339(w.start),
        period_end=rfc3339(w.end),
        target={"t": [rfc3339(float(t)) for t in times], "spent_share": [round(float(x), 6) for x in share]},
        traffic_source="fitted" if model is not None else "prior",
        traffic_by_slot=curve.by_slot.tolist(),
        weekday_factor=curve.weekday_factor.tolist(),
        landscape=Landscape.model_validate(landscape) if landscape else None,
        model=ModelStatus.model_validate(engine.model_status(bidder_id)),
    )


_NDJSON = {
    "description": "with format=ndjson: every bidder's status, one JSON object per line, in id order",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
}


@router.get("", response_model=BidderList, responses={200: _NDJSON, **responses(401, 422)})
async def list_bidders(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=400, description="`next` of the page before; any other value is refused (422)")
    ] = None,
    format: Annotated[Literal["json", "ndjson"], Query(description="ndjson: all bidders, streamed")] = "json",
) -> BidderList | StreamingResponse:
    """Bidders in id order, a page at a time; pass `next` back as `cursor`. `format=ndjson` streams every bidder's
    status (its whole configuration included), one per line: an export."""
    if format == "ndjson":
        return StreamingResponse(_export(service), media_type="application/x-ndjson")
    after = ""
    if cursor:
        try:
            after = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            after = ""
        if not after:
            raise ApiError(422, "validation_error", "not a cursor returned by this API", "cursor")
    ids = service.engine.ids
    first = bisect.bisect_right(ids, after)
    page = ids[first : first + limit]
    more = first + limit < len(ids)
    token = base64.urlsafe_b64encode(page[-1].encode()).decode() if more else None
    return BidderList(bidders=[_status(service.engine, i) for i in page], next=token)


async def _export(service: Service) -> AsyncIterator[bytes]:
    """Every bidder's status, EXPORT_CHUNK at a time with a yield to bids between (ids created or deleted meanwhile
    may or may not be in it)."""
    ids = list(service.engine.ids)
    for lo in range(0, len(ids), EXPORT_CHUNK):
        lines = [
            _status(service.engine, i).model_dump_json() + "\n"
            for i in ids[lo : lo + EXPORT_CHUNK]
            if i in service.engine.bidders
        ]
        yield "".join(lines).encode()
        await asyncio.sleep(0)


async def _set_paused(
    bidder_id: str, paused: bool, service: Service, request: Request, response: Response
) -> BidderStatus:
    await service.update(bidder_id, lambda old: replace(_existing(old), paused=paused), _if_match(request))
    return _answer(service, bidder_id, response)


@router.post(
    "/{bidder_id}/pause",
    response_model=BidderStatus,
    openapi_extra=_IF_MATCH,
    responses={**_OK, **responses(401, 404, 409, 412, 422, 503)},
)
async def pause_bidder(bidder_id: BidderId, service: ServiceDep, request: Request, response: Response) -> BidderStatus:
    """Stop granting bids at once; reservations already granted still settle."""
    return await _set_paused(bidder_id, True, service, request, response)


@router.post(
    "/{bidder_id}/resume",
    response_model=BidderStatus,
    openapi_extra=_IF_MATCH,
    responses={**_OK, **responses(401, 404, 409, 412, 422, 503)},
)
async def resume_bidder(bidder_id: BidderId, service: ServiceDep, request: Request, response: Response) -> BidderStatus:
    return await _set_paused(bidder_id, False, service, request, response)


@router.post(
    "/{bidder_id}/restore",
    response_model=BidderStatus,
    responses={**_OK, **responses(400, 401, 404, _NOT_RESTORABLE, 413, 422, 503)},
)
async def restore_bidder(bidder_id: BidderId, body: RestoreIn, service: ServiceDep, response: Response) -> BidderStatus:
    """After the fleet store lost a bidder's state (state `store_lost`): write it back with the spend you state,
    and grant again. Refused for a bidder whose state is intact: spend is never reset by hand."""
    bidder = service.engine.bidders.get(bidder_id)
    if bidder is None:
        raise BidderNotFound()
    if service.fleet is None:
        raise ApiError(409, "not_shared", "only a shared (Redis) store can lose a bidder's state")
    if not bidder.lost:
        raise ApiError(409, "not_lost", f"bidder {bidder_id!r} is not in state store_lost: nothing to restore")
    await service.restore(bidder_id, body.spent_micros)
    return _answer(service, bidder_id, response)


@router.delete(
    "/{bidder_id}",
    status_code=204,
    response_class=Response,
    openapi_extra=_IF_MATCH,
    responses=responses(401, 404, 412, 422, 503),
)
async def delete_bidder(bidder_id: BidderId, service: ServiceDep, request: Request) -> Response:
    """Remove the bidder. Its recorded spend stays: re-creating it in the same period continues from it. With
    `If-Match`: that version only."""
    await service.delete(bidder_id, _if_match(request))
    return Response(status_code=204)
