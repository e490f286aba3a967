"""The lean intake door: an HTTP/1.1 front on Trio with the httptools C parser and orjson.

It answers the booking intake routes itself (`POST /api/events/{id}/bookings`, `/api/book-async`,
`/api/book-secure`, `/api/book-naive`, `/book`) through `ticketblitz.intake`, the same functions the
Quart app uses, and relays every other connection, from the first request it cannot answer on and
starting with the bytes already read, to Hypercorn on a private Unix socket in the same process —
websocket upgrades included. Users see one port.

Keep-alive and pipelining (answers in order), limits on the request head (16 KiB → 431) and body
(`max_body_bytes` → 413), a deadline for a slow client to send a whole request, an idle keep-alive
timeout, and a clean close on shutdown (in-flight requests finish, idle connections close).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import httptools
import orjson
import trio

from . import intake
from .representation import http_code, problem
from .service import BookingService

log = logging.getLogger("ticketblitz.door")

MAX_HEAD = 16 * 1024
READ_SIZE = 65536
IDLE_TIMEOUT = 15.0  # keep-alive connection without a request
REQUEST_TIMEOUT = 10.0  # a client must send a whole request within this (slow clients)
BOOKINGS_PREFIX = "/api/events/"
BOOKINGS_SUFFIX = "/bookings"
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class _Head:
    """httptools callbacks: the request target and the few headers the door needs."""

    __slots__ = ("connection", "content_length", "expect", "headers", "headers_done", "idempotency_key",
                 "transfer_encoding", "url")

    def __init__(self) -> None:
        self.url = b""
        self.content_length: int | None = None
        self.idempotency_key: str | None = None
        self.transfer_encoding = False
        self.connection = b""
        self.expect = False
        self.headers_done = False
        self.headers: dict[str, str] = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        self.headers[lowered.decode("latin-1")] = value.decode("latin-1")
        if lowered == b"content-length":
            self.content_length = int(value) if value.strip().isdigit() else -1
        elif lowered == b"idempotency-key":
            self.idempotency_key = value.decode("latin-1")
        elif lowered == b"transfer-encoding":
            self.transfer_encoding = True
        elif lowered == b"connection":
            self.connection = value.lower()
        elif lowered == b"expect":
            self.expect = True

    def on_headers_complete(self) -> None:
        self.headers_done = True


def _route(method: bytes, path: str) -> tuple[Callable[..., Awaitable[intake.Answer]], tuple[str, ...]] | None:
    """The intake route this request is for, with its path parameter; None for everything else."""
    if method != b"POST":
        return None
    compat = intake.COMPAT_ROUTES.get(path)
    if compat is not None:
        return compat, ()
    if path.startswith(BOOKINGS_PREFIX) and path.endswith(BOOKINGS_SUFFIX):
        event_id = path[len(BOOKINGS_PREFIX):-len(BOOKINGS_SUFFIX)]
        if event_id and "/" not in event_id:
            return intake.create_booking, (event_id,)
    return None


def _response(answer: intake.Answer, keep_alive: bool) -> bytes:
    body = orjson.dumps(answer.body)
    head = [b"HTTP/1.1 %d %s\r\n" % (answer.status, REASONS.get(answer.status, b"")),
            b"content-type: " + answer.content_type.encode() + b"\r\n",
            b"content-length: %d\r\n" % len(body)]
    for name, value in answer.headers.items():
        head.append(name.encode() + b": " + value.encode("latin-1") + b"\r\n")
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def _problem(status: int, detail: str) -> intake.Answer:
    title = REASONS.get(status, b"").decode()
    return intake.Answer(status, problem(status, http_code(status), title, detail), {}, intake.PROBLEM)


class IntakeDoor:
    """Serves the public listener: intake routes here, everything else relayed to Hypercorn."""

    def __init__(self, service: BookingService, upstream: str) -> None:
        self.service = service
        self.upstream = upstream  # Hypercorn's private Unix socket
        self.max_body = service.settings.max_body_bytes
        self.closing = trio.Event()
        self.connections = 0
        self._idle: set[trio.CancelScope] = set()  # connections waiting for their next request

    async def serve(self, sock: socket.socket, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until `close()`, then let every connection finish its request in flight."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            task_status.started()
            with trio.CancelScope() as accepting:
                nursery.start_soon(self._stop_accepting, accepting)
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._connection, stream)
        await listener.aclose()

    async def _stop_accepting(self, scope: trio.CancelScope) -> None:
        await self.closing.wait()
        scope.cancel()

    def close(self) -> None:
        """Stop accepting; idle keep-alive connections close now, busy ones after their answer."""
        self.closing.set()
        for scope in self._idle:
            scope.cancel()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._serve_requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        finally:
            self.connections -= 1

    async def _receive(self, stream: trio.SocketStream, deadline: float, *, idle: bool = False) -> bytes:
        """The next bytes, or b"" when the client closed, was too slow, or (idle) the door is closing."""
        if idle and self.closing.is_set():
            return b""
        with trio.move_on_at(deadline) as scope:
            if idle:
                self._idle.add(scope)
            try:
                return await stream.receive_some(READ_SIZE)
            finally:
                self._idle.discard(scope)
        return b""

    async def _serve_requests(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while not self.closing.is_set() or buf:
            # ---- the request head
            started = trio.current_time()
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD:
                    await stream.send_all(_response(_problem(431, "request head larger than 16 KiB"), False))
                    return
                timeout = REQUEST_TIMEOUT if buf else IDLE_TIMEOUT
                data = await self._receive(stream, started + timeout, idle=not buf)
                if not data:
                    return
                buf += data
                end = buf.find(b"\r\n\r\n")
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            try:
                parser.feed_data(bytes(buf[: end + 4]))
            except httptools.HttpParserUpgrade:
                await self._relay(stream, buf)
                return
            except httptools.HttpParserError:
                await stream.send_all(_response(_problem(400, "malformed HTTP request"), False))
                return
            method = parser.get_method()
            try:
                path = httptools.parse_url(head.url).path.decode("utf-8", "surrogateescape")
            except httptools.HttpParserInvalidURLError:
                path = ""
            route = _route(method, path)
            if route is None or head.transfer_encoding or head.expect or not head.headers_done:
                await self._relay(stream, buf)  # not ours (or chunked / 100-continue): Hypercorn answers it
                return
            keep_alive = parser.should_keep_alive() and head.connection != b"close"
            length = head.content_length or 0
            if length < 0:
                await stream.send_all(_response(_problem(400, "Content-Length is not a number"), False))
                return
            if length > self.max_body:
                detail = f"body: larger than the limit of {self.max_body} bytes"
                await stream.send_all(_response(_problem(413, detail), False))
                return
            # ---- the body
            total = end + 4 + length
            while len(buf) < total:
                data = await self._receive(stream, started + REQUEST_TIMEOUT)
                if not data:
                    return
                buf += data
            body = bytes(buf[end + 4: total])
            del buf[:total]
            # ---- the answer (pipelined requests wait in `buf` and are answered in order)
            clock = time.perf_counter()
            handler, params = route
            answer = await intake.answer(handler, self.service, intake.Call(head.headers, body), *params)
            self.service.telemetry.record_request(answer.status, time.perf_counter() - clock)
            if self.closing.is_set():
                keep_alive = False
            await stream.send_all(_response(answer, keep_alive))
            if not keep_alive:
                return

    async def _relay(self, client: trio.SocketStream, already: bytearray) -> None:
        """Pipe this connection to Hypercorn, starting with the bytes read so far, until either side closes."""
        try:
            upstream = await trio.open_unix_socket(self.upstream)
        except OSError:
            await client.send_all(_response(_problem(503, "the application server is not reachable"), False))
            return
        async with upstream:
            if already:
                await upstream.send_all(bytes(already))

            async def to_upstream(done: trio.CancelScope) -> None:
                try:
                    while data := await client.receive_some(READ_SIZE):
                        await upstream.send_all(data)
                    await upstream.send_eof()  # the client finished sending; its answers still flow back
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                    done.cancel()

            async def to_client(done: trio.CancelScope) -> None:
                try:
                    while data := await upstream.receive_some(READ_SIZE):
                        await client.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                    pass
                done.cancel()  # Hypercorn closed: so does the client's connection

            async with trio.open_nursery() as nursery:
                nursery.start_soon(to_upstream, nursery.cancel_scope)
                nursery.start_soon(to_client, nursery.cancel_scope)
