"""Hostile input over raw sockets against a real server on a real port (127.0.0.1, the intake door in
front of Hypercorn): request-target forms, garbage, each limit in one write and dripped, smuggling
pairs, pipelining across both doors, half-close, slow clients, bad websocket handshakes, a connection
flood over the cap. After each: the server still answers and books."""

from __future__ import annotations

import base64
import os

import pytest
import trio
from conftest import Harness
from hostile_support import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    booking_request,
    connect,
    hostile,
    read_until_closed,
    responses,
    send,
    still_books,
)

__all__ = ["hostile"]  # the fixture

H = b"Host: x\r\n"
BIG_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
MANY_HEADERS = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(3000)) + b"\r\n"
SOME_HEADERS = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 101 + b"\r\n"  # 102 fields in 750 bytes
LONG_TARGET = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
BIG_CHUNKED = (b"POST /api/book-async HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"a" * 4096 + b"\r\n") * 1 + \
    b"".join(b"1000\r\n" + b"a" * 4096 + b"\r\n" for _ in range(16)) + b"0\r\n\r\n"

# (name, bytes, status the door answers; the connection closes after it)
REFUSED: list[tuple[str, bytes, int]] = [
    # request-target forms
    ("absolute form without Host (issue 8's crash)", b"GET http://x HTTP/1.1\r\n\r\n", 400),
    ("authority form without CONNECT", b"GET x:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk without OPTIONS", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    ("fragment", b"GET /p#f HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad percent escape", b"POST /api/events/%zz/bookings HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", 400),
    ("path not UTF-8", b"GET /api/events/%ff%fe HTTP/1.1\r\n" + H + b"\r\n", 400),
    # garbage
    ("garbage", b"GARBAGE\r\n\r\n", 400),
    ("binary", bytes(range(256)), 400),
    ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # limits
    ("60 KB head", BIG_HEAD, 431),
    ("3,000 headers", MANY_HEADERS, 431),
    ("102 small headers", SOME_HEADERS, 431),
    ("20 KB target", LONG_TARGET, 414),
    ("Content-Length over the limit", b"POST /api/book-async HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
     b"Content-Length: 100000\r\n\r\n", 413),
    ("chunked body over the limit", BIG_CHUNKED, 413),
    ("relayed body over the limit", b"POST /api/events HTTP/1.1\r\n" + H + b"Content-Length: 70000\r\n\r\n", 413),
    # smuggling
    ("CL.TE", b"POST /api/book-async HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /admin HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("TE.CL", b"POST /healthz HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
     b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", 400),
    ("two lengths", b"POST /api/events HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 50\r\n\r\n"
     b"hello", 400),
    ("negative length", b"POST /api/events HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("length not a number", b"POST /api/book-async HTTP/1.1\r\n" + H + b"Content-Length: 1e3\r\n\r\n", 400),
    ("TE gzip", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE not final", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("TE obs-fold", b"POST /api/events HTTP/1.1\r\n" + H + b"X: y\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
    ("space before colon", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    ("control character", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST /api/events HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n", 400),
    ("bad chunk extension", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;=\r\n", 400),
    ("chunk without CRLF", b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhelloXX0\r\n\r\n", 400),
]


async def _event(h: Harness) -> str:
    return str((await h.create_event(rows=20, seats_per_row=20))["id"])


@pytest.mark.parametrize("drip", [None, 1], ids=["one-write", "dripped"])
async def test_each_refusal_in_one_write_and_dripped(hostile: Harness, drip: int | None) -> None:
    event_id = await _event(hostile)
    failures = []
    for name, data, status in REFUSED:
        stream = await connect(hostile)
        async with stream:
            piece = drip if drip is None or len(data) < 2000 else 512  # big ones in 512-byte pieces
            await send(stream, data, piece)
            raw, closed = await read_until_closed(stream)
        got = responses(raw)
        if len(got) != 1 or got[0][0] != status or not closed:
            failures.append(f"{name}: {[g[0] for g in got]} closed={closed} {raw[:120]!r}")
            continue
        answer = got[0]
        if not answer[1].get("content-type", "").startswith("application/problem+json") \
                or answer[1].get("connection") != "close":
            failures.append(f"{name}: not a closing problem+json: {answer[1]}")
        if status == 405 and answer[1].get("allow") != "GET, HEAD, POST, OPTIONS":
            failures.append(f"{name}: 405 without Allow")
    assert not failures, "\n".join(failures)
    await still_books(hostile, event_id)


async def test_served_target_forms(hostile: Harness) -> None:
    event_id = await _event(hostile)
    body = b'{"user_id": "absolute", "quantity": 1}'
    pipeline = (
        b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n"
        b"GET http://example.com HTTP/1.1\r\n" + H + b"\r\n"  # path-less absolute form: "/", the page
        b"POST http://example.com/api/events/" + event_id.encode() + b"/bookings HTTP/1.1\r\n" + H +
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body +
        b"GET http://example.com/healthz?x=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n"
    )
    stream = await connect(hostile)
    async with stream:
        await send(stream, pipeline)
        raw, closed = await read_until_closed(stream)
    got = responses(raw)
    assert [g[0] for g in got] == [204, 200, 202, 200] and closed, raw[:400]
    assert got[0][1]["allow"] == "GET, HEAD, POST, OPTIONS"
    assert b"<html" in got[1][2].lower()
    await still_books(hostile, event_id)


REST = b'r_id": "chunky", "quantity": 1}'
SMUGGLED = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_pipelining_across_both_doors_answers_in_order(hostile: Harness) -> None:
    event_id = await _event(hostile)
    e = event_id.encode()
    pipeline = b"".join([
        booking_request(event_id),
        b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n",  # relayed
        booking_request(event_id),
        b"GET /api/events/" + e + b" HTTP/1.1\r\n" + H + b"\r\n",  # relayed
        b"POST /api/events/" + e + b"/bookings HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"use\r\n" + b"%x\r\n" % len(REST) + REST +
        b"\r\n0\r\n\r\n",  # a chunked body to a door route
        b"GET /api/nothing HTTP/1.1\r\n" + H + b"\r\n",  # relayed 404
        b"GET /healthz HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,  # a body
        b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
        booking_request(event_id, close=True),
    ])
    for drip in (None, 7):
        stream = await connect(hostile)
        async with stream:
            await send(stream, pipeline, drip)
            raw, closed = await read_until_closed(stream)
        got = responses(raw)
        assert [g[0] for g in got] == [202, 200, 202, 200, 202, 404, 200, 204, 202] and closed, raw[:600]
        assert b'"id"' in got[3][2] and b"chunky" in got[4][2]
    await still_books(hostile, event_id)


async def test_half_close_after_a_request_still_gets_its_answers(hostile: Harness) -> None:
    event_id = await _event(hostile)
    stream = await connect(hostile)
    async with stream:
        await send(stream, booking_request(event_id) + b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
        await stream.send_eof()
        raw, closed = await read_until_closed(stream)
    assert [g[0] for g in responses(raw)] == [202, 200] and closed
    stream = await connect(hostile)  # half-closed inside a request: a 400, then close
    async with stream:
        await send(stream, b"POST /api/book-async HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc")
        await stream.send_eof()
        raw, closed = await read_until_closed(stream)
    assert [g[0] for g in responses(raw)] == [400] and closed
    await still_books(hostile, event_id)


async def test_slow_clients_get_408_and_idle_ones_are_closed_quietly(hostile: Harness) -> None:
    event_id = await _event(hostile)
    slow = {
        "head dripped past the header deadline": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n"),
        "door body past the body deadline": (booking_request(event_id)[:-5], b""),
        "relayed chunked body dripping": (b"POST /api/events HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                                          b"Content-Type: application/json\r\n\r\n", b"1\r\na\r\n"),
    }
    async with trio.open_nursery() as nursery:
        for name, (first, drip) in slow.items():
            async def one(name: str = name, first: bytes = first, drip: bytes = drip) -> None:
                stream = await connect(hostile)
                async with stream:
                    await send(stream, first)
                    started = trio.current_time()
                    with trio.move_on_after(HEADER_TIMEOUT + BODY_TIMEOUT + 5):
                        while drip:  # a piece every 0.2 s: never silent, never done
                            try:
                                await stream.send_all(drip)
                            except (trio.BrokenResourceError, trio.ClosedResourceError):
                                break
                            await trio.sleep(0.2)
                            if trio.current_time() - started > HEADER_TIMEOUT + 2:
                                break
                        raw, closed = await read_until_closed(stream)
                    assert [g[0] for g in responses(raw)] == [408] and closed, (name, raw[:200])

            nursery.start_soon(one)

        async def idle() -> None:
            stream = await connect(hostile)
            async with stream:
                raw, closed = await read_until_closed(stream, IDLE_TIMEOUT + 3)
            assert raw == b"" and closed

        async def idle_after_a_request() -> None:
            stream = await connect(hostile)
            async with stream:
                await send(stream, b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
                raw, closed = await read_until_closed(stream, IDLE_TIMEOUT + 3)
            assert [g[0] for g in responses(raw)] == [200] and closed

        nursery.start_soon(idle)
        nursery.start_soon(idle_after_a_request)
    await still_books(hostile, event_id)


async def test_expect_100_continue(hostile: Harness) -> None:
    event_id = await _event(hostile)
    request = booking_request(event_id, extra=b"Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    stream = await connect(hostile)
    async with stream:
        await send(stream, head + b"\r\n\r\n")
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await send(stream, body)
        with trio.fail_after(5):
            answer = await stream.receive_some(65536)
    assert responses(answer)[0][0] == 202
    stream = await connect(hostile)  # too large: 413 at once, no 100
    async with stream:
        await send(stream, b"POST /api/events HTTP/1.1\r\n" + H +
                   b"Expect: 100-continue\r\nContent-Length: 99999\r\n\r\n")
        raw, closed = await read_until_closed(stream)
    assert [g[0] for g in responses(raw)] == [413] and closed


def _handshake(path: bytes = b"/ws", *, key: bytes | None = None, version: bytes = b"13", method: bytes = b"GET",
               upgrade: bytes = b"websocket") -> bytes:
    key = base64.b64encode(os.urandom(16)) if key is None else key
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
            + (b"Sec-WebSocket-Key: " + key + b"\r\n" if key else b"")
            + b"Sec-WebSocket-Version: " + version + b"\r\n\r\n")


async def test_websocket_handshakes_good_and_bad(hostile: Harness) -> None:
    event_id = await _event(hostile)
    stream = await connect(hostile)  # a good one: 101, then the snapshot frame, through the pipe
    async with stream:
        await send(stream, _handshake())
        data = b""
        with trio.fail_after(5):
            while b"snapshot" not in data:
                data += await stream.receive_some(65536)
        assert data.startswith(b"HTTP/1.1 101 ")
    bad = {
        "no key": _handshake(key=b""),
        "version 99": _handshake(version=b"99"),
        "not a route": _handshake(b"/nothing-here"),
        "POST upgrade": _handshake(method=b"POST"),
        "h2c upgrade": _handshake(b"/healthz", upgrade=b"h2c"),
    }
    for name, data in bad.items():
        stream = await connect(hostile)
        async with stream:
            await send(stream, data + b"\x81\x05hello")
            raw, closed = await read_until_closed(stream, 5)
        got = responses(raw)
        assert got and 200 <= got[0][0] < 500 and got[0][0] != 101, (name, raw[:300])
        assert closed or name in ("POST upgrade", "h2c upgrade"), name
    await still_books(hostile, event_id)


async def test_a_flood_over_the_connection_cap_gets_503_and_the_server_goes_on(hostile: Harness) -> None:
    event_id = await _event(hostile)
    held: list[trio.SocketStream] = []
    answered = []
    try:
        for _ in range(MAX_CONNECTIONS + 8):
            stream = await connect(hostile)
            held.append(stream)
        for stream in held[-4:]:  # the last ones are over the cap
            raw, closed = await read_until_closed(stream, 3)
            answered.append((responses(raw), closed))
    finally:
        for stream in held:
            await stream.aclose()
    for got, closed in answered:
        assert [g[0] for g in got] == [503] and closed
        assert got[0][1]["retry-after"] == "1" and got[0][1]["content-type"] == "application/problem+json"
    with trio.fail_after(10):
        while True:  # the cap frees as the flood goes
            try:
                await still_books(hostile, event_id)
                break
            except AssertionError:
                await trio.sleep(0.2)


async def test_an_unexpected_error_closes_that_connection_only(hostile: Harness, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from ticketblitz import door

    event_id = await _event(hostile)
    real_route = door._route

    def exploding(method: str, path: str, query: str = "") -> object:
        if path == "/boom":
            raise RuntimeError("a bug in the door")
        return real_route(method, path, query)

    monkeypatch.setattr(door, "_route", exploding)
    stream = await connect(hostile)
    async with stream:
        await send(stream, b"GET /boom HTTP/1.1\r\n" + H + b"\r\n")
        raw, closed = await read_until_closed(stream)
    assert raw == b"" and closed
    assert any("connection failed" in r.getMessage() and r.exc_info for r in caplog.records)
    await still_books(hostile, event_id)
