"""The hostile-input suite's server: the embedded adapters behind the intake door, with short deadlines
and a small connection cap so that slow clients and floods are cheap to test; and raw-socket helpers."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from conftest import FakeClock, Harness, make_settings

from ticketblitz.http.relay import ResponseFraming
from ticketblitz.server import Running, build_service, serve

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 48
_users = itertools.count()


@pytest.fixture
async def hostile(tmp_path: Any, nursery: trio.Nursery) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, intake_door=True, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                             idle_timeout=IDLE_TIMEOUT, max_connections=MAX_CONNECTIONS)
    clock = FakeClock()
    service = build_service(settings, clock)
    running: Running = await nursery.start(partial(serve, settings, service=service))
    async with httpx.AsyncClient(base_url=running.url, timeout=30.0,
                                 limits=httpx.Limits(max_connections=4, max_keepalive_connections=4)) as client:
        yield Harness(running.url, client, service, clock, running)
    running.stop.set()


def address(h: Harness) -> tuple[str, int]:
    host, port = h.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def connect(h: Harness) -> trio.SocketStream:
    return await trio.open_tcp_stream(*address(h))


async def send(stream: trio.SocketStream, data: bytes, drip: int | None = None) -> None:
    """All at once, or in pieces of `drip` bytes, each its own segment (TCP_NODELAY)."""
    if drip is None:
        await stream.send_all(data)
        return
    try:
        for i in range(0, len(data), drip):
            await stream.send_all(data[i:i + drip])
            await trio.lowlevel.checkpoint()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server refused before the end, and closed: what some cases want


async def read_until_closed(stream: trio.SocketStream, seconds: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends within `seconds`, and whether it closed the connection."""
    data = bytearray()
    with trio.move_on_after(seconds):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return bytes(data), True
    return bytes(data), False


def responses(data: bytes, methods: list[str] | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a server's bytes into answers (status, headers, body), using the door's own response
    framing (unit-tested against h11); 1xx interim answers count as answers."""
    out = []
    rest = data
    for method in itertools.chain(methods or [], itertools.repeat("GET")):
        if not rest:
            break
        framing = ResponseFraming(method)
        taken = framing.feed(rest)
        if not framing.complete:
            framing.feed(b"")
        assert not framing.error, (framing.error, rest[:200])
        raw, rest = rest[:taken], rest[taken:]
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        out.append((int(lines[0].split(" ")[1]), headers, body))
    return out


def booking_request(event_id: str, *, close: bool = False, extra: bytes = b"") -> bytes:
    body = b'{"user_id": "hostile-%d", "quantity": 1}' % next(_users)
    return (b"POST /api/events/%s/bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s%s\r\n%s") % (event_id.encode(), len(body), extra,
                                                  b"Connection: close\r\n" if close else b"", body)


async def still_books(h: Harness, event_id: str) -> None:
    """The server still answers (a relayed GET) and books: a real booking gets 202 and is decided."""
    r = await h.client.get("/healthz")
    assert r.status_code == 200, r.text
    r = await h.book(event_id, {"user_id": f"check-{next(_users)}", "quantity": 1})
    assert r.status_code == 202, r.text
    assert (await h.settle(r.json()["id"]))["status"] == "held"
