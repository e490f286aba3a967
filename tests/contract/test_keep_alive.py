"""A keep-alive connection survives answers that go out before the request's body has arrived.

Found by the schema suite: a client that writes the head and then the body (as http.client and
requests do) and got a 401/403/404/405 before its body arrived had its next request on the same
connection hang until the client gave up.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import trio
from conftest import ADMIN, Harness

BODY = b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}]}'

# (method, path, extra headers, expected status) — every one answered before the body is needed
EARLY_ANSWERS = [
    ("POST", "/api/events", {}, 401),
    ("POST", "/api/events", {"Authorization": "Bearer wrong"}, 403),
    ("TRACE", "/api/events", {}, 405),
    ("PUT", "/book", {}, 405),
    ("GET", "/healthz", {}, 200),
    ("POST", "/api/bookings/bkg_nope/confirm", ADMIN, 404),
    ("POST", "/no/such/route", {}, 404),
]


async def read_answer(stream: trio.SocketStream, buffer: bytearray) -> tuple[int, dict[str, str], bytes] | None:
    """One HTTP/1.1 answer (status, headers, body) from `stream`; None when the server closed."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        data = await stream.receive_some(65536)
        if not data:
            break
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(lines[0].split()[1]), headers, body


async def send_split(stream: trio.SocketStream, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    """The head, a pause, then the body: as clients that write them separately do."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    await trio.sleep(0.05)
    await stream.send_all(body)


async def connect(harness: Harness) -> trio.SocketStream:
    url = urlsplit(harness.url)
    assert url.hostname is not None and url.port is not None
    return await trio.open_tcp_stream(url.hostname, url.port)


async def test_the_next_request_on_the_connection_is_answered(harness: Harness) -> None:
    for method, path, headers, status in EARLY_ANSWERS:
        stream = await connect(harness)
        async with stream:
            buffer = bytearray()
            for _ in range(2):
                await send_split(stream, method, path, headers, BODY)
                with trio.fail_after(10):
                    answer = await read_answer(stream, buffer)
                assert answer is not None, f"{method} {path}: the server closed the connection"
                assert answer[0] == status, (method, path, answer)
                if status == 405:
                    assert answer[1].get("allow"), answer[1]
            await send_split(stream, "GET", "/healthz", {}, b"")
            with trio.fail_after(10):
                answer = await read_answer(stream, buffer)
            assert answer is not None and answer[0] == 200, (method, path, answer)
