"""bidder.py: the bidder routes (POST /v1/bid, /v1/bids, /v1/events) as plain functions of the body bytes.

The hot path: one typed msgspec decode, an in-memory engine call, one encode. No FastAPI, no pydantic, no I/O
for bids. Events await the store's group commit, because a 200 on an event means it is durable.
Bidder requests ignore unknown fields (exchanges add fields over time); events must all be valid or none count.
Money fields take an integral float as that integer (5.0 is 5: JSON has one number type), never 5.5, "5" or true.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect

from pacer.api.errors import ApiError, from_msgspec
from pacer.auctionlog import AuctionLogWriter
from pacer.bidder_config import MAX_MICROS, UNKNOWN_BIDDER, Reason
from pacer.engine import Engine
from pacer.settlement import Outcome, settle
from pacer.store import Store, StoreError

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Micros = Annotated[int, msgspec.Meta(ge=1, le=MAX_MICROS)]


class BidRequest(msgspec.Struct):
    bidder_id: Id
    auction_id: Id
    bid_micros: Micros


class BidsRequest(msgspec.Struct):
    requests: Annotated[list[BidRequest], msgspec.Meta(min_length=1, max_length=1000)]


class Decision(msgspec.Struct, omit_defaults=True):
    auction_id: str
    bid: bool
    bid_micros: int | None = None
    reason: Reason | None = None


class Decisions(msgspec.Struct):
    decisions: list[Decision]


class Win(msgspec.Struct, tag="win"):
    bidder_id: Id
    auction_id: Id
    price_micros: Micros


class Loss(msgspec.Struct, tag="loss"):
    bidder_id: Id
    auction_id: Id


class EventsRequest(msgspec.Struct):
    events: Annotated[list[Win | Loss], msgspec.Meta(min_length=1, max_length=1000)]


class EventsResponse(msgspec.Struct):
    accepted: int
    duplicates: int


_bid = msgspec.json.Decoder(BidRequest)
_bids = msgspec.json.Decoder(BidsRequest)
_events = msgspec.json.Decoder(EventsRequest)
_encode = msgspec.json.Encoder().encode
_WHOLE = "Expected `int`, got `float`"
T = TypeVar("T")


def _integral(value: Any, kind: msgspec.inspect.Type) -> Any:
    """`value` (plain JSON) with each integral float where `kind` has an int made that int."""
    if isinstance(kind, msgspec.inspect.IntType):
        return int(value) if type(value) is float and value.is_integer() else value
    if isinstance(kind, msgspec.inspect.ListType) and type(value) is list:
        return [_integral(v, kind.item_type) for v in value]
    if isinstance(kind, msgspec.inspect.UnionType) and type(value) is dict:  # tagged: Win | Loss
        for option in kind.types:
            if isinstance(option, msgspec.inspect.StructType) and value.get(option.tag_field) == option.tag:
                return _integral(value, option)
    if isinstance(kind, msgspec.inspect.StructType) and type(value) is dict:
        return {
            **value,
            **{f.encode_name: _integral(value[f.encode_name], f.type) for f in kind.fields if f.encode_name in value},
        }
    return value


_TYPES: dict[type, msgspec.inspect.Type] = {}  # msgspec.inspect.type_info takes ~100 us: once per type


def _redecode(exc: msgspec.DecodeError, body: bytes, cls: type[T]) -> T:
    """After the typed decode refused the body: 5.0 is the integer 5 (JSON does not tell them apart and JSON Schema's
    `integer` admits it), so where an int field got an integral float, decode again with those made ints. Only
    such bodies pay for the second decode; the hot path is the typed decode alone. Else the 4xx naming the field."""
    if not (isinstance(exc, msgspec.ValidationError) and str(exc).startswith(_WHOLE)):
        raise from_msgspec(exc) from None
    try:
        kind = _TYPES.get(cls) or _TYPES.setdefault(cls, msgspec.inspect.type_info(cls))
        return msgspec.convert(_integral(msgspec.json.decode(body), kind), cls)
    except msgspec.DecodeError as again:  # ValidationError is one: 5.5, or another field wrong
        raise from_msgspec(again) from None


def _decide(engine: Engine, r: BidRequest, log: AuctionLogWriter | None, now: float) -> Decision:
    granted, reason = engine.decide(r.bidder_id, r.auction_id, r.bid_micros)
    if log is not None and reason != UNKNOWN_BIDDER:  # counted in the engine; a made-up id is nothing to learn from
        log.decision(now, r.bidder_id, r.auction_id, r.bid_micros, granted, reason or None)
    if granted:
        return Decision(r.auction_id, True, bid_micros=granted)
    return Decision(r.auction_id, False, reason=reason)  # type: ignore[arg-type]


def bid(engine: Engine, body: bytes, log: AuctionLogWriter | None = None) -> bytes:
    try:
        request = _bid.decode(body)
    except msgspec.DecodeError as exc:
        request = _redecode(exc, body, BidRequest)
    return _encode(_decide(engine, request, log, engine.clock()))


def bids(engine: Engine, body: bytes, log: AuctionLogWriter | None = None) -> bytes:
    try:
        batch = _bids.decode(body)
    except msgspec.DecodeError as exc:
        batch = _redecode(exc, body, BidsRequest)
    now = engine.clock()
    return _encode(Decisions([_decide(engine, r, log, now) for r in batch.requests]))


async def events(engine: Engine, store: Store, body: bytes, log: AuctionLogWriter | None = None) -> bytes:
    """Validate the whole batch, then settle it (pacer/settlement.py): durable before the answer."""
    try:
        batch = _events.decode(body)
    except msgspec.DecodeError as exc:
        batch = _redecode(exc, body, EventsRequest)
    outcomes = [
        Outcome(e.bidder_id, e.auction_id, e.price_micros if isinstance(e, Win) else None) for e in batch.events
    ]
    try:
        duplicates = await settle(engine, store, outcomes, log)
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", f"events not recorded, retry: {exc}") from None
    return _encode(EventsResponse(len(batch.events) - duplicates, duplicates))


def schemas() -> tuple[dict[str, object], dict[str, object]]:
    """OpenAPI components for the bidder routes, generated from the very structs that decode them."""
    types = (BidRequest, Decision, BidsRequest, Decisions, EventsRequest, EventsResponse)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return dict(zip((t.__name__ for t in types), refs, strict=True)), components
