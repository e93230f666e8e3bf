"""errors.py: pacer's HTTP errors, one body shape everywhere.

Every 4xx/5xx body is {"error": {"code": str, "message": str, "field": str | null}}.

    ApiError                 status  code
    ├── invalid_json           400   the body is not JSON
    ├── validation_error       422   a field is missing, of the wrong type, out of range or unknown (`field` names it)
    ├── unauthorized           401   missing or wrong bearer token
    ├── not_found              404   unknown bidder or route
    ├── method_not_allowed     405
    ├── header_timeout         408   the request head took longer than PACER_HEADER_TIMEOUT_S (connection closed)
    ├── payload_too_large      413   body above the limit
    ├── header_too_large       431   request head above PACER_MAX_HEADER_BYTES (connection closed)
    ├── store_unavailable      503   the budget truth cannot be written now; nothing was acknowledged, retry
    └── too_many_connections   503   PACER_MAX_CONNECTIONS open already (connection closed); retry
"""

from __future__ import annotations

import re

import msgspec


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
