"""connections.py: the HTTP protocol `pacer serve` runs: uvicorn's httptools protocol with connection guards.

uvicorn + httptools start no timer before a connection's first request, put no bound on a request head, and
accept connections until the process runs out of file descriptors. So one client could stall every other one: a
connection that sends nothing, or a head that never ends, lived forever, and httptools joins the pieces of a
header line with `bytes +=`, which is quadratic on the event loop (bid p50 0.87 ms -> 3.5 s while one client
streamed a header); ~20,000 silent connections used up the descriptors. `GuardedHttpToolsProtocol` adds:

- a bound on the request head, counted before the parser sees the bytes (so httptools never holds more than
  `PACER_MAX_HEADER_BYTES` of it): a head above it is answered 431 and the connection closed;
- a deadline on the request head, from its first byte: a head not complete within `PACER_HEADER_TIMEOUT_S` is
  answered 408 and the connection closed;
- the idle (keep-alive) timer from the moment a connection is made, not only after its first response, so a
  never-used connection is closed after `PACER_KEEP_ALIVE_S` (uvicorn's `timeout_keep_alive`) too;
- a cap of `PACER_MAX_CONNECTIONS` open connections per process: the ones beyond are answered 503 at once and
  closed, so their descriptors are freed (`raise_fd_limit` makes room for the cap at start).

The answers use pacer's error shape (`pacer.api.errors`, with `connection: close`) and are sent only where no
earlier response on the connection is still being written (else the connection is just closed). After an answer
the connection lingers: a FIN follows the answer and what the peer still sends is read and dropped, for at most
CLOSE_GRACE_S or until the peer closes; closing with unread bytes would make the kernel send a reset, which can
destroy the answer before the peer reads it. A closed connection whose peer takes nothing is aborted after
CLOSE_GRACE_S more, so every refused or idle connection frees its descriptor within a bounded time.

Cost on the hot path: a request read in one piece goes through three small Python overrides (data_received,
on_headers_complete, on_message_complete; about 0.5 us in all, against ~8 us for uvicorn's own handling of it)
and arms no timer (the header deadline is armed only for a head still incomplete after the read it began in).
The limits come from the PACER_* environment once per process (`uvicorn --workers N` spawns processes that
import this class by name).

A head that begins in the same read as the end of the message before it (HTTP pipelining) is counted, and its
deadline started, from the next read on: for such a head the parser may hold up to one read (uvloop reads at
most 250 kB) beyond the limit, and until the next read only the keep-alive timer (armed once the response before
it is sent) bounds its wait; both still bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from pacer.api.errors import ApiError
from pacer.config import Settings

log = logging.getLogger("pacer")

CLOSE_GRACE_S = 1.0  # a closed connection whose peer does not take what is left to send is aborted after this
FD_HEADROOM = 1024  # descriptors beyond the connections: listening socket, store, auction log, Redis, pipes
WARN_EVERY_S = 10.0  # each guard logs at most one warning this often (a flood must not become a logging storm)


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.header_timeout_s, settings.max_header_bytes, settings.max_connections)


def _answer(status: int, code: str, message: str) -> bytes:
    """Status line and the headers after uvicorn's default ones (server, date), then pacer's error body."""
    body = json.dumps(ApiError(status, code, message).body(), separators=(",", ":")).encode()
    head = f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode("ascii") + body


class _Warnings:
    """At most one warning per guard per WARN_EVERY_S, saying how often the guard fired since the last one."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def warn(self, status: int, message: str) -> None:
        count = self._count.get(status, 0) + 1
        now = time.monotonic()
        last = self._last.get(status)
        if last is not None and now - last < WARN_EVERY_S:
            self._count[status] = count
            return
        self._last[status] = now
        self._count[status] = 0
        more = f" ({count - 1} more since the last such warning)" if count > 1 else ""
        log.warning("%s: answered %d and closed the connection%s", message, status, more)


# The base methods, called directly: cheaper than super() on the per-request path.
_base_data_received = HttpToolsProtocol.data_received
_base_headers_complete = HttpToolsProtocol.on_headers_complete
_base_message_complete = HttpToolsProtocol.on_message_complete


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head, a header deadline, an idle timer from the start
    and a connection cap (see the module docstring)."""

    _limits: ClassVar[Limits | None] = None
    _answers: ClassVar[dict[int, bytes]] = {}
    _messages: ClassVar[dict[int, str]] = {}
    _warnings: ClassVar[_Warnings] = _Warnings()

    @classmethod
    def configure(cls, limits: Limits) -> None:
        """Set the limits (by default read from the PACER_* environment at the first connection)."""
        cls._limits = limits
        cls._messages = {
            431: f"request head above {limits.max_header_bytes} bytes",
            408: f"request head not complete within {limits.header_timeout_s} s",
            503: f"{limits.max_connections} connections open already; retry",
        }
        codes = {431: "header_too_large", 408: "header_timeout", 503: "too_many_connections"}
        cls._answers = {status: _answer(status, code, cls._messages[status]) for status, code in codes.items()}

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = type(self)._limits
        if limits is None:
            type(self).configure(Limits.from_settings(Settings()))
            limits = type(self)._limits
            assert limits is not None
        self._max_head = limits.max_header_bytes
        self._header_timeout = limits.header_timeout_s
        self._max_connections = limits.max_connections
        # A request head is open (its bytes are counted) from the connection's start, or the end of the message
        # before it, until its headers are complete.
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: TimerHandle | None = None
        self._close_timer: TimerHandle | None = None
        self._lingering = False  # answered and half-closed: what arrives is dropped

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(503)
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:  # in a body, or between a head and the message's end
            _base_data_received(self, data)
            return
        n = len(data)
        if self._head_bytes + n <= self._max_head:
            # Counting body bytes that follow the head in this read is harmless: the count restarts at the head's end.
            self._head_bytes += n
            _base_data_received(self, data)
            if self._in_head and self._head_bytes and self._head_timer is None and not self.transport.is_closing():
                # A head still incomplete after the read it began in: from its first byte, it has the header timeout.
                self._head_timer = self.loop.call_later(self._header_timeout, self._header_timeout_handler)
            return
        self._head_past_limit(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._close_timer, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._close_timer = None
        super().connection_lost(exc)

    # --- httptools parser callbacks -----------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        _base_headers_complete(self)

    def on_message_complete(self) -> None:
        self._in_head = True  # the next request's head begins
        self._head_bytes = 0
        _base_message_complete(self)

    # --- the guards ---------------------------------------------------------------------------------------------

    def _head_past_limit(self, data: bytes) -> None:
        """This read would take the open head past the limit: feed the parser only what the limit allows; if the head
        completed within that, go on with the rest as with any read, else answer 431."""
        if self._lingering or self.transport.is_closing():
            return  # refused or closed already: what still arrives is dropped, not parsed
        allowance = self._max_head - self._head_bytes
        self._head_bytes = self._max_head
        if allowance:
            view = memoryview(data)
            _base_data_received(self, view[:allowance])  # type: ignore[arg-type]  # httptools takes any buffer
            if self.transport.is_closing():
                return
            if self._head_bytes != self._max_head:  # the head completed (the count restarted, from zero)
                self.data_received(view[allowance:])  # type: ignore[arg-type]
                return
        self._refuse(431)

    def _header_timeout_handler(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408)

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if not self.transport.is_closing():
            self._close()

    def _refuse(self, status: int) -> None:
        """Answer with pacer's error body if nothing else is being written on this connection, then close it."""
        self._warnings.warn(status, self._messages[status])
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.cycle is not None:
            self.cycle.keep_alive = False
        answerable = self.cycle is None or self.cycle.response_complete
        if not answerable or self.transport.get_write_buffer_size() or not self.transport.can_write_eof():
            self._close()
            return
        answer = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            answer.extend([name, b": ", value, b"\r\n"])
        answer.append(self._answers[status])
        self.transport.write(b"".join(answer))
        # Lingering close: the answer and a FIN go out, and what the peer still sends is read and dropped for up to
        # CLOSE_GRACE_S (or until the peer closes). Closing at once with its bytes unread would make the kernel
        # send a reset, which can destroy the answer before the peer has read it.
        self.transport.write_eof()
        self._lingering = True
        self._in_head, self._head_bytes = True, self._max_head  # every read now takes the slow path, which drops it
        self._close_timer = self.loop.call_later(CLOSE_GRACE_S, self._close)

    def _close(self) -> None:
        """Close, and abort if what is left to send has not gone out within CLOSE_GRACE_S (a peer that reads
        nothing would otherwise keep the descriptor)."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.transport.close()
        self._close_timer = self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward the hard one if it is below what `max_connections` need (worker processes
    inherit it); warn when it cannot be raised far enough."""
    need = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            target = soft
    if target < need:
        log.warning(
            "the open-file limit is %d (hard %s): PACER_MAX_CONNECTIONS=%d needs about %d; beyond ~%d "
            "connections accepts will fail. Raise `ulimit -n` or lower PACER_MAX_CONNECTIONS.",
            target,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            max_connections,
            need,
            max(target - FD_HEADROOM, 0),
        )
