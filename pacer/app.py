"""app.py: the ASGI application: a small dispatcher in front of FastAPI.

POST /v1/bid, /v1/bids and /v1/events go straight to raw msgspec handlers (FastAPI's endpoint layer would cost
~3x the whole request); everything else (operator API, health, metrics, OpenAPI) is FastAPI. The lifespan opens
the store and starts the tick and snapshot loops.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send
from starlette.types import Scope as StarletteScope

from pacer import __version__, logs
from pacer.api import bidder
from pacer.api.auth import TokenError, bearer_matches, bidder_token, operator_token
from pacer.api.errors import ERROR, ApiError, responses
from pacer.api.operator import router as operator_router
from pacer.auctionlog import AuctionLogWriter
from pacer.clock import wall_clock
from pacer.config import Settings
from pacer.controller import ControlParams
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.fleet import Fleet
from pacer.metrics import PacerCollector
from pacer.service import BidderNotFound, RefitSettings, Service, VersionMismatch
from pacer.store import StoreError, open_store
from pacer.store.base import instance_id
from pacer.store.redis import BidderLost, RedisStore

log = logging.getLogger("pacer")

_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


def _curve(settings: Settings) -> TrafficCurve:
    path = Path(settings.models_dir) / "prior" / "traffic.json"
    if path.exists():
        return TrafficCurve.load(path)
    log.warning("no traffic prior at %s: 'traffic' pacing falls back to a flat day", path)
    return TrafficCurve.flat()


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _field(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else [str(p) for p in loc]
    # Drop pydantic's union tags ("flight"/"daily") so the field reads like the JSON path.
    parts = [p for p in parts if p not in ("flight", "daily", "[key]")]  # "[key]": a dict key was wrong
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def build_fastapi(service: Service, settings: Settings, token: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # redirect_slashes off: a redirect would echo the request's Host header back (open redirect); 404 instead.
    app = FastAPI(
        title="pacer",
        version=__version__,
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,  # FastAPI's pages load unpinned scripts from a CDN: _serve_docs
        description="Real-time budget pacing for ad bidding. Money is integer micros.",
    )
    app.state.service = service
    app.state.operator_token = token
    app.include_router(operator_router)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PacerCollector(service))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(BidderNotFound)
    async def not_found(request: Request, _: BidderNotFound) -> JSONResponse:
        bidder_id = request.path_params.get("bidder_id")
        return _error(ApiError(404, "not_found", f"no bidder {bidder_id!r}", "bidder_id"))

    @app.exception_handler(VersionMismatch)
    async def version_mismatch(_: Request, exc: VersionMismatch) -> JSONResponse:
        message = f"If-Match names another version: {exc}; nothing changed (GET it for its ETag)"
        response = _error(ApiError(412, "precondition_failed", message, "If-Match"))
        if exc.current is not None:
            response.headers["ETag"] = f'"{exc.current}"'
        return response

    @app.exception_handler(BidderLost)
    async def bidder_lost(_: Request, exc: BidderLost) -> JSONResponse:
        message = f"{exc}; nothing changed. POST /v1/bidders/{{id}}/restore with its spend"
        return _error(ApiError(409, "store_lost", message))

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        return _error(ApiError(503, "store_unavailable", f"not saved, nothing changed; retry: {exc}"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A typo gives both "unknown field" and "field required": the unknown one says what went wrong.
        errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
        first = errors[0]
        if first.get("type") == "json_invalid":
            return _error(ApiError(400, "invalid_json", "body is not valid JSON"))
        kind = first.get("type")
        if tuple(first.get("loc", ())) == ("body",):
            message = "body must be a JSON object sent with Content-Type: application/json"
            return _error(ApiError(422, "validation_error", message))
        message = "unknown field" if kind == "extra_forbidden" else str(first.get("msg", "invalid"))
        field = _field(tuple(first.get("loc", ())))
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            field = f"{field}.type"
        return _error(ApiError(422, "validation_error", message, field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's only 400 is a body it could not parse (e.g. not UTF-8): the same error as invalid JSON.
        codes = {
            400: "invalid_json",
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            403: "unauthorized",
        }
        message = "body is not valid JSON" if exc.status_code == 400 else str(exc.detail)
        response = _error(ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), message))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only (FastAPI makes one per method).
            response.headers["Allow"] = ", ".join(_methods(app, request.scope))
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive and serving."""
        return {"status": "ok"}

    readiness = {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}

    @app.get(
        "/readyz",
        tags=["ops"],
        responses={
            200: {"content": readiness},
            503: {"description": "not ready: `stale` and `store` say why", "content": readiness},
        },
    )
    async def readyz() -> JSONResponse:
        """Ready to take traffic: the store answers and accepted its last write (every sync writes, so a disk that
        filled up shows within one), a sync reached it within max(2 s, 2 sync intervals), and the pacing tick ran
        within max(2 s, 10 ticks). Otherwise 503, and `stale` names each part that failed and why. `degraded`
        (still 200: bids are served) when the auction log cannot be written (`auction_log` says why), or in a fleet
        when the store lost some bidders' spend (named; they are granted nothing)."""
        store_ok = await service.store.ping()
        stale = service.stale()
        ready = store_ok and not stale
        body: dict[str, object] = {
            "status": "ready" if ready else "not_ready",
            "store": store_ok,
            "stale": stale,
            "bidders": len(service.engine.bidders),
            "traffic_curve": service.engine.curve.name,
        }
        if service.log is not None:
            body["auction_log"] = service.log.status()
            if not service.log.ok and ready:
                body["status"] = "degraded"  # bidding goes on; the log is losing rows (see dropped_rows)
        fleet = service.fleet
        if fleet is not None:
            lost = fleet.lost
            age = round(fleet.age_s, 3) if fleet.syncs else None
            body["fleet"] = {
                "instance": fleet.store.instance,
                "last_sync_age_s": age,
                "leases_valid": not fleet.revoked,
                "store_lost_bidders": lost[:100],
                "store_lost_count": len(lost),
            }
            if lost and ready:
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    _document_bidder_routes(app, bidder_auth=settings.bidder_token is not None)
    _serve_docs(app)
    return app


_DOCS_ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _serve_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the pinned fastapi-swagger package, served from this origin. Operators paste their
    token into this page: no third-party script may run on it (the CSP says so to the browser, too)."""
    assets = resources.files("fastapi_swagger.resources")
    policy = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="pacer API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )
        page.headers["Content-Security-Policy"] = policy
        return page

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        media = _DOCS_ASSETS.get(name)
        if media is None:
            raise StarletteHTTPException(404, f"no {name!r}")
        return Response((assets / name).read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _methods(app: FastAPI, scope: StarletteScope) -> list[str]:
    """Every method some route takes on this path (RFC 9110: a 405's Allow lists all the resource supports), asked
    of the router itself, the included routers' routes too."""
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]


_READINESS = {
    "title": "Readiness",
    "type": "object",
    "required": ["status", "store", "stale", "bidders", "traffic_curve"],
    "properties": {
        "status": {"enum": ["ready", "not_ready", "degraded"]},
        "store": {"type": "boolean", "description": "the store answers"},
        "stale": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "each part that failed (tick, sync, store_write) and why; empty when ready",
        },
        "bidders": {"type": "integer", "minimum": 0},
        "traffic_curve": {"type": "string"},
        "auction_log": {"type": "object", "description": "with PACER_LOG_URL: whether rows are being written"},
        "fleet": {"type": "object", "description": "with a Redis store: sync age, leases, bidders whose spend it lost"},
    },
}


def _document_bidder_routes(app: FastAPI, bidder_auth: bool) -> None:
    """Add the raw bidder routes to /openapi.json from the msgspec structs that decode them, with every status the
    dispatcher (PacerApp) and the handlers answer; the shared components (Error, Readiness) too."""
    refs, components = bidder.schemas()
    errors = responses(
        400, (401, "`unauthorized`: missing or wrong bearer token (only when PACER_BIDDER_TOKEN is set)"), 413, 415, 422
    )
    security: dict[str, object] = {"security": [{"BidderBearer": []}]} if bidder_auth else {}

    def route(summary: str, request: str, response: str, doc: str, *more: int) -> dict[str, object]:
        return {
            "post": {
                "tags": ["bidder"],
                "summary": summary,
                "description": doc,
                **security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": refs[request]}}},
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": refs[response]}}},
                    **{str(status): body for status, body in {**errors, **responses(*more)}.items()},
                },
            }
        }

    paths = {
        "/v1/bid": route(
            "Decide one bid",
            "BidRequest",
            "Decision",
            "Bid or not, and at what price (never above the request nor max_bid_micros). In memory.",
        ),
        "/v1/bids": route("Decide up to 1000 bids", "BidsRequest", "Decisions", "Decisions in request order."),
        "/v1/events": route(
            "Report wins and losses",
            "EventsRequest",
            "EventsResponse",
            "1..1000 events; all valid or none counted. 200 means durable; a win counts once. "
            "503 if the store cannot record them: retry.",
            503,
        ),
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["paths"] = {**paths, **schema["paths"]}
            parts = schema.setdefault("components", {})
            parts.setdefault("schemas", {}).update({**components, "Error": ERROR, "Readiness": _READINESS})
            if bidder_auth:
                parts.setdefault("securitySchemes", {})["BidderBearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "PACER_BIDDER_TOKEN",
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class PacerApp:
    """The dispatcher: hot bidder routes to raw handlers, the rest to FastAPI (lifespan included). Every client
    limit that needs no parsing is applied here, once: the operator token, the body size, bidder routes' JSON
    content type, ids in paths."""

    def __init__(
        self, service: Service, fastapi: FastAPI, bidder_token: str | None, max_body: int, max_bulk_body: int
    ) -> None:
        self.service = service
        self.fastapi = fastapi
        self._bidder_token = bidder_token.encode() if bidder_token else None
        self._operator_token: bytes = fastapi.state.operator_token.encode()
        self._max_body = max_body
        self._max_bulk_body = max_bulk_body  # PUT /v1/bidders: up to 10,000 bidders' settings
        engine, store = service.engine, service.store

        auction_log = service.log

        async def events(body: bytes) -> bytes:
            return await bidder.events(engine, store, body, auction_log)

        # Decisions are synchronous (no I/O): called directly, without a coroutine per request.
        self._decide: dict[str, Callable[[bytes], bytes]] = {
            "/v1/bid": functools.partial(bidder.bid, engine, log=auction_log),
            "/v1/bids": functools.partial(bidder.bids, engine, log=auction_log),
        }
        self._record: dict[str, Callable[[bytes], Awaitable[bytes]]] = {"/v1/events": events}
        self._http = service.http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")  # lifespan scopes have none
        if scope["type"] != "http" or (path not in self._decide and path not in self._record):
            if scope["type"] == "http":
                try:
                    receive = await self._guard(scope, receive, path)
                except ApiError as exc:
                    await _send_json(send, exc.status, _encode(exc.body()))
                    return
            await self.fastapi(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            if scope["method"] != "POST":
                raise ApiError(405, "method_not_allowed", f"{scope['method']} not allowed; use POST")
            if self._bidder_token is not None and not bearer_matches(
                _header(scope, b"authorization"), self._bidder_token
            ):
                raise ApiError(401, "unauthorized", "missing or wrong bidder bearer token")
            if not _is_json(_header(scope, b"content-type")):
                # A browser may post text/plain anywhere without asking (no CORS preflight): a web page would
                # otherwise reserve budgets or report fake wins through any bidder's browser.
                raise ApiError(
                    415, "unsupported_media_type", "send the body with Content-Type: application/json", "Content-Type"
                )
            body = await _read_body(scope, receive, self._max_body)
            decide = self._decide.get(path)
            status, out = 200, decide(body) if decide is not None else await self._record[path](body)
        except ApiError as exc:
            status, out = exc.status, _encode(exc.body())
        await _send_json(send, status, out, [(b"allow", b"POST")] if status == 405 else None)
        self._http.observe(path, status, time.perf_counter() - started)

    async def _guard(self, scope: Scope, receive: Receive, path: str) -> Receive:
        """Before FastAPI sees a request: the operator token (no token, no word about the body), ids matched on
        the raw path, and the body read within the limit (FastAPI would read any size whole)."""
        if path.startswith("/v1/bidders"):
            if not bearer_matches(_header(scope, b"authorization"), self._operator_token):
                raise ApiError(401, "unauthorized", "missing or wrong operator bearer token")
            if b"%2f" in scope.get("raw_path", b"").lower():
                # Routing sees the decoded path, where acme%2Fpause would be the pause route of bidder acme.
                raise ApiError(404, "not_found", "a bidder id cannot contain '/' (%2F)", "bidder_id")
        bulk = path == "/v1/bidders" and scope.get("method") == "PUT"
        body = await _read_body(scope, receive, max(self._max_body, self._max_bulk_body) if bulk else self._max_body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnect notices
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def _is_json(content_type: bytes) -> bool:
    """application/json, parameters (charset) allowed, case-insensitive (RFC 9110 media types)."""
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body above {limit} bytes (PACER_MAX_BODY_BYTES)")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit`: by its Content-Length before reading
    anything, else while reading (chunked)."""
    length = _header(scope, b"content-length")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings | None = None) -> PacerApp:
    """Build the whole service from settings (uvicorn calls this as a factory)."""
    settings = settings or Settings()
    params = EngineParams(
        tick_s=settings.tick_ms / 1000,
        ttl_min_s=settings.ttl_min_s,
        ttl_max_s=settings.ttl_max_s,
        ttl_initial_s=settings.ttl_initial_s,
        control=ControlParams(),
    )
    dedupe_s = settings.dedupe_days * 86400
    instance = instance_id()
    logs.set_instance(instance)
    store = open_store(settings.store, settings.journal_dir, dedupe_s, instance)
    fleet = isinstance(store, RedisStore)  # the one place that asks: the service reaches the rest via its Fleet
    engine = Engine(wall_clock, params, _curve(settings), leased=fleet)
    refit = (
        RefitSettings(
            settings.refit_s,
            settings.log_url,
            settings.refit_since,
            settings.refit_engine,
            settings.spark_master,
            settings.refit_timeout_s,
        )
        if settings.log_url
        else None
    )
    service = Service(
        engine,
        store,
        params.tick_s,
        settings.sync_ms / 1000,
        dedupe_s,
        log_flush=(settings.log_flush_s, settings.log_flush_rows),
        refit=refit,
        instance=instance,
    )
    if settings.log_url:
        try:
            service.log = AuctionLogWriter(
                settings.log_url, service.instance.replace(":", "-"), settings.log_sample, settings.log_max_rows
            )
        except ValueError as exc:
            raise SystemExit(f"pacer: PACER_LOG_URL: {exc}") from None
    if isinstance(store, RedisStore):
        service.fleet = Fleet(engine, store, service.versions, settings.sync_ms / 1000, settings.lease_ttl_ms / 1000)
    else:
        service.snapshots = store
    try:
        token, bidders = operator_token(settings), bidder_token(settings)
    except TokenError as exc:
        raise SystemExit(f"pacer: {exc}") from None
    return PacerApp(
        service, build_fastapi(service, settings, token), bidders, settings.max_body_bytes, settings.max_bulk_body_bytes
    )
