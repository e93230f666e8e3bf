"""errors.py: pacer's HTTP errors, one body shape everywhere.

Every 4xx/5xx body is {"error": {"code": str, "message": str, "field": str | null}}.

    ApiError                 status  code
    ├── invalid_json           400   the body is not JSON
    ├── validation_error       422   a field is missing, of the wrong type, out of range or unknown (`field` names it)
    ├── unauthorized           401   missing or wrong bearer token
    ├── not_found              404   unknown bidder or route (or a bidder id with '/', sent as %2F)
    ├── method_not_allowed     405
    ├── header_timeout         408   the request head took longer than PACER_HEADER_TIMEOUT_S (connection closed)
    ├── store_lost             409   the fleet store lost the bidder's state: restore it first
    ├── not_shared             409   restore on a store that cannot lose state (not Redis)
    ├── not_lost               409   restore of a bidder whose state is intact
    ├── precondition_failed    412   If-Match names another version (the ETag header holds the current one)
    ├── payload_too_large      413   body above the limit
    ├── unsupported_media_type 415   a bidder route's body not sent as Content-Type: application/json
    ├── header_too_large       431   request head above PACER_MAX_HEADER_BYTES (connection closed)
    ├── store_unavailable      503   the budget truth cannot be written now; nothing was acknowledged, retry
    └── too_many_connections   503   PACER_MAX_CONNECTIONS open already (connection closed); retry

ERROR is that body's JSON Schema, the one `Error` component of /openapi.json; `responses(...)` documents the
statuses a route can answer with it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

CODES = (
    "invalid_json",
    "validation_error",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "header_timeout",
    "store_lost",
    "not_shared",
    "not_lost",
    "precondition_failed",
    "payload_too_large",
    "unsupported_media_type",
    "header_too_large",
    "store_unavailable",
    "too_many_connections",
    "http_error",
)
ERROR: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "description": "Every 4xx/5xx body. `code` is stable (branch on it); `message` is for people.",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "enum": list(CODES)},
                "message": {"type": "string", "minLength": 1},
                "field": {
                    "type": ["string", "null"],
                    "description": "the offending field as a JSON path "
                    "(`requests[3].bid_micros`, `period.end`), a header (`If-Match`), or null",
                },
            },
        }
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
_STATUS = {
    400: "`invalid_json`: the body is not JSON",
    401: "`unauthorized`: missing or wrong bearer token",
    404: "`not_found`: no such bidder",
    409: "`store_lost`: the fleet store lost this bidder's state; nothing changed (POST .../restore)",
    412: "`precondition_failed`: If-Match names another version; nothing changed (the ETag header holds the "
    "current one)",
    413: "`payload_too_large`: body above PACER_MAX_BODY_BYTES",
    415: "`unsupported_media_type`: the body was not sent with Content-Type: application/json",
    422: "`validation_error`: a field is missing, of the wrong type, out of range or unknown; `error.field` names it",
    503: "`store_unavailable`: the store cannot record it now; nothing changed, retry",
}


def responses(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the error statuses a route answers with: a status (the usual meaning) or (status,
    description), each with the one Error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for item in statuses:
        status, description = item if isinstance(item, tuple) else (item, _STATUS[item])
        out[status] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    return out


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


_PATH = re.compile(r" - at `\$\.?(.*)`$")


def from_msgspec(exc: msgspec.DecodeError) -> ApiError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.requests[3].bid_micros`" into a 4xx naming the field."""
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return ApiError(400, "invalid_json", f"body is not valid JSON: {text}")
    match = _PATH.search(text)
    field = match.group(1) if match else None
    message = _PATH.sub("", text)
    if message.startswith("Object missing required field"):
        name = message.split("`")[1]
        field = f"{field}.{name}" if field else name
    return ApiError(422, "validation_error", message, field or None)
