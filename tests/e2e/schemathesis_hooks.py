"""Schemathesis hooks for tests/e2e/test_api_schema.py: the two rules of a valid request JSON Schema cannot state.

/openapi.json gives every field its type, format and bounds. Two rules involve more than one value, and JSON
Schema cannot state them:

- a flight's `end` is after its `start` (PUT/PATCH /v1/bidders/{id}, each bidder of PUT /v1/bidders), which the
  document says in words;
- `cursor` is the `next` of an earlier page (GET /v1/bidders), an opaque value; any other is refused (422).

Schemathesis marks a case "positive" when the schema says it is valid, and positive_data_acceptance fails if such a
case is refused. The hook below makes positive cases obey these two rules as well, with the fewest changes (a flight
is put in order, a cursor is encoded as `next` is) and leaves every other case, negative ones included, as
generated. The alternative that `st explain ST202` suggests, counting 422 as acceptable for these operations, would
also accept a real rejection of valid data there, such as 5.0 refused as a budget.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

_MAX_YEAR = 2200  # pacer/periods.py: instants from 2000 to 2200; the document's pattern says the same


def _ms(text: str) -> int:
    """The instant as the service keeps it: epoch milliseconds (pacer/periods.py rounds to the ms)."""
    micros = (datetime.fromisoformat(text.upper()) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (micros + 500) // 1000


def _ordered_flight(period: dict[str, Any]) -> None:
    start, end = period["start"], period["end"]
    if _ms(end) > _ms(start):
        return
    if _ms(end) < _ms(start):
        period["start"], period["end"] = end, start
        return
    # The same instant twice: move one of them by a day, whichever stays within the document's years.
    instant = datetime.fromisoformat(start.upper())
    if (instant + timedelta(days=1)).year <= _MAX_YEAR:
        period["end"] = (instant + timedelta(days=1)).isoformat()
    else:
        period["start"] = (instant - timedelta(days=1)).isoformat()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    body = case.body
    if isinstance(body, dict):
        bulk = body.get("bidders")  # PUT /v1/bidders: each bidder's flight in order
        for one in [body, *(bulk.values() if isinstance(bulk, dict) else [])]:
            period = one.get("period") if isinstance(one, dict) else None
            if (
                isinstance(period, dict)
                and period.get("type") == "flight"
                and isinstance(period.get("start"), str)
                and isinstance(period.get("end"), str)
            ):
                _ordered_flight(period)
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("cursor"), str) and query["cursor"]:
        # A cursor as the service makes one: the base64url of an id (75 characters stay within maxLength 400).
        query["cursor"] = base64.urlsafe_b64encode(query["cursor"][:75].encode("utf-8", "replace")).decode()
    return case
