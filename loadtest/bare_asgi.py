"""bare_asgi.py: the ceiling for `make bench`: the least an ASGI app can do to answer a bid.

It reads the body and answers a decision-sized JSON, served by uvicorn with pacer's flags. Never a model for real
handlers: it validates nothing and decides nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# As long as pacer's answer to the bench's requests: {"auction_id":"<run>t<thread>-<n>","bid":true,"bid_micros":...}
DECISION = b'{"auction_id":"r1t1-1234567","bid":true,"bid_micros":2000}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(DECISION)).encode())]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY = {"type": "http.response.body", "body": DECISION}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send(START)
    await send(BODY)
