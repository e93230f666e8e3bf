"""End to end: the connection guards of `pacer serve` (pacer/connections.py) against raw-socket attackers.

A request head above PACER_MAX_HEADER_BYTES gets 431, one slower than PACER_HEADER_TIMEOUT_S gets 408, a
never-used connection is closed after the keep-alive timeout, connections beyond PACER_MAX_CONNECTIONS get 503;
each is closed. Bodies do not count toward the head (no false 431), and bids on other connections go on while an
attacker streams a header. Every wait is on a condition with a deadline; durations are only bounded generously.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PacerServer, serving

pytestmark = pytest.mark.e2e

MAX_HEADER_BYTES = 65536  # the default of PACER_MAX_HEADER_BYTES: the tests check the default
DEADLINE_S = 20.0  # no wait below takes longer than this, guard or no guard
ATTACK_BYTES = 16 << 20  # an attacker stops sending after this much (without the guard it would never be cut off)


async def connect(server: PacerServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def request(path: str, body: bytes, pad: int = 0) -> bytes:
    """A POST with a JSON body; `pad` bytes of an X-Pad header make the head longer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if pad:
        head += "X-Pad: " + "p" * pad + "\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def head_length(path: str, body: bytes) -> int:
    return len(request(path, body)) - len(body)


def bid_body(auction: str) -> bytes:
    # An unknown bidder is answered 200 with bid: false, enough to see the service answers.
    return json.dumps({"bidder_id": "nobody", "auction_id": auction, "bid_micros": 1000}).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), DEADLINE_S)
    return status, headers, body


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = DEADLINE_S) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (EOF or reset): (data, closed in time)."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                return data, True
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data, True
    except TimeoutError:
        pass
    return data, False


def parse(data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _raw(status: int, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status} -\r\n{head}\r\n".encode() + body


def assert_guard_answer(data: bytes, status: int, code: str) -> None:
    assert data.startswith(b"HTTP/1.1 "), f"no answer before the close: {data[:200]!r}"
    got, headers, body = parse(data)
    assert got == status, data[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == code
    assert body["error"]["field"] is None
    assert body["error"]["message"]


async def bid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auction: str) -> dict[str, Any]:
    writer.write(request("/v1/bid", bid_body(auction)))
    await writer.drain()
    status, _, body = await read_response(reader)
    assert status == 200, body
    decision: dict[str, Any] = json.loads(body)
    assert decision["auction_id"] == auction
    return decision


async def stream_header(server: PacerServer) -> tuple[bytes, bool, int]:
    """Stream one endless header line until the server cuts the connection off (or ATTACK_BYTES / DEADLINE_S):
    (what the server answered, whether it closed the connection, bytes sent)."""
    reader, writer = await connect(server)
    closed = asyncio.create_task(read_until_closed(reader))
    sent = 0
    deadline = time.monotonic() + DEADLINE_S
    try:
        writer.write(b"POST /v1/bid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Long: ")
        while not closed.done() and sent < ATTACK_BYTES and time.monotonic() < deadline:
            writer.write(b"a" * 16384)
            sent += 16384
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    data, was_closed = await closed
    await close(writer)
    return data, was_closed, sent


async def test_endless_header_line_gets_431_and_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        data, closed, _ = await stream_header(server)
        assert closed, "the server kept reading an endless header"
        assert_guard_answer(data, 431, "header_too_large")

        # The cut-off is at the limit: a head of exactly MAX_HEADER_BYTES is served, one byte more gets 431.
        body = bid_body("edge")
        pad = MAX_HEADER_BYTES - head_length("/v1/bid", body) - len("X-Pad: \r\n")
        reader, writer = await connect(server)
        try:
            writer.write(request("/v1/bid", body, pad=pad))
            status, _, answer = await read_response(reader)
            assert status == 200, answer
        finally:
            await close(writer)
        reader, writer = await connect(server)
        try:
            writer.write(request("/v1/bid", body, pad=pad + 1))
            await writer.drain()
            data, closed = await read_until_closed(reader)
        finally:
            await close(writer)
        assert closed
        assert_guard_answer(data, 431, "header_too_large")


async def test_trickled_head_gets_408_and_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, PACER_HEADER_TIMEOUT_S="1") as server:
        reader, writer = await connect(server)
        closed = asyncio.create_task(read_until_closed(reader))
        start = time.monotonic()
        try:
            writer.write(b"POST /v1/bid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            # The attack itself: a header line every 0.2 s, faster than any idle timeout, for as long as it lasts.
            while not closed.done() and time.monotonic() - start < DEADLINE_S:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                await asyncio.wait([closed], timeout=0.2)
        except (ConnectionResetError, BrokenPipeError):
            pass
        data, was_closed = await closed
        elapsed = time.monotonic() - start
        await close(writer)
        assert was_closed, "a head that never completes kept its connection"
        assert_guard_answer(data, 408, "header_timeout")
        assert 0.5 < elapsed < 10.0, elapsed


async def test_never_used_connection_is_closed_after_keep_alive(tmp_path: Path) -> None:
    async with serving(tmp_path, PACER_KEEP_ALIVE_S="1") as server:
        reader, writer = await connect(server)
        start = time.monotonic()
        data, closed = await read_until_closed(reader)
        elapsed = time.monotonic() - start
        await close(writer)
        assert closed, "a connection that never sent anything stayed open"
        assert data == b""  # an idle close says nothing
        assert 0.5 < elapsed < 10.0, elapsed

        # A used connection still gets its answers, then the same idle close.
        reader, writer = await connect(server)
        try:
            assert (await bid(reader, writer, "a-1"))["bid"] is False
            data, closed = await read_until_closed(reader)
        finally:
            await close(writer)
        assert closed
        assert data == b""


async def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    cap = 20
    async with serving(tmp_path, PACER_MAX_CONNECTIONS=str(cap), PACER_KEEP_ALIVE_S="60") as server:
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        refused = b""
        try:
            # Open connections one at a time, each proven served, until one is refused (the readiness probe's
            # connection may still be closing on the server, so the count may fall short of the cap by one).
            for i in range(cap + 5):
                reader, writer = await connect(server)
                writer.write(request("/v1/bid", bid_body(f"c-{i}")))
                status, headers, body = await read_response(reader)
                if status != 200:
                    rest, closed = await read_until_closed(reader)
                    await close(writer)
                    assert closed, "a refused connection was left open"
                    refused = _raw(status, headers, body) + rest
                    break
                held.append((reader, writer))
            assert cap - 1 <= len(held) <= cap, len(held)
            assert_guard_answer(refused, 503, "too_many_connections")

            # The connections already open keep working.
            for i, (reader, writer) in enumerate(held):
                assert (await bid(reader, writer, f"again-{i}"))["bid"] is False

            # Once one closes, a new connection is served again (the server sees the close soon, not at once).
            await close(held.pop()[1])
            deadline = time.monotonic() + DEADLINE_S
            while True:
                reader, writer = await connect(server)
                writer.write(request("/v1/bid", bid_body("after")))
                status, _, _ = await read_response(reader)
                if status == 200:
                    held.append((reader, writer))
                    break
                await close(writer)
                assert status == 503
                assert time.monotonic() < deadline, "no connection served after one closed"
        finally:
            for _, writer in held:
                await close(writer)


async def test_big_body_in_one_write_is_not_counted_as_head(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        # 1000 bids of ~220 bytes: a 220 kB body, sent in one write with its head.
        requests = [
            {"bidder_id": "nobody", "auction_id": f"a-{i:06d}-" + "x" * 150, "bid_micros": 1000} for i in range(1000)
        ]
        body = json.dumps({"requests": requests}).encode()
        assert len(body) > 200_000
        pad = MAX_HEADER_BYTES - head_length("/v1/bids", body) - len("X-Pad: \r\n")
        reader, writer = await connect(server)
        try:
            for extra in (0, pad):  # a small head, then one of exactly the limit, each with the whole body
                writer.write(request("/v1/bids", body, pad=extra))
                await writer.drain()
                status, _, answer = await read_response(reader)
                assert status == 200, answer[:300]
                assert len(json.loads(answer)["decisions"]) == 1000
        finally:
            await close(writer)

        # The same body after a head one byte above the limit: 431 (the body did not hide the head's size).
        reader, writer = await connect(server)
        try:
            writer.write(request("/v1/bids", body, pad=pad + 1))
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        data, closed = await read_until_closed(reader)
        await close(writer)
        assert closed
        assert_guard_answer(data, 431, "header_too_large")


async def test_bids_are_answered_while_an_attacker_streams_a_header(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        streams = 5
        results: list[tuple[bytes, bool, int]] = []

        async def attacker() -> None:
            # A new endless header as soon as the last one was cut off, while the bids go on.
            while len(results) < streams:
                results.append(await stream_header(server))
                if not results[-1][1]:
                    return  # never cut off: the assertions below say so

        attack = asyncio.create_task(attacker())
        reader, writer = await connect(server)
        slowest = 0.0
        bids = 0
        try:
            # Bid on another connection for as long as the attack lasts (and at least 20 times).
            while (not attack.done() or bids < 20) and bids < 2000:
                start = time.monotonic()
                assert (await bid(reader, writer, f"during-{bids}"))["bid"] is False
                slowest = max(slowest, time.monotonic() - start)
                bids += 1
        finally:
            await asyncio.wait_for(attack, DEADLINE_S * 2)
            await close(writer)
        assert len(results) == streams, f"an attacker was not cut off: {results[-1][1:]}"
        for data, closed, sent in results:
            assert closed, f"an attacker streamed {sent} bytes of one header and was not cut off"
            assert_guard_answer(data, 431, "header_too_large")
        assert slowest < 5.0, slowest
