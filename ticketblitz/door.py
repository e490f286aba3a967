"""The lean intake door: a short Trio I/O loop around the sans-IO HTTP core (`ticketblitz.http`).

It owns the public port. Every request of every connection is parsed and checked by the core (limits,
target forms, smuggling); the door adds what needs a clock or a socket:

- deadlines: a head must arrive within `header_timeout` of its first byte and a body within
  `body_timeout` of its head (else `408` and close); a keep-alive connection with no request for
  `idle_timeout` closes quietly;
- the booking intake routes (`POST /api/events/{id}/bookings`, `/api/book-async`, `/api/book-secure`,
  `/api/book-naive`, `/book`), answered here through `ticketblitz.intake`, the functions the Quart app
  uses too; `OPTIONS *` (`204` with `Allow`);
- everything else relayed to Hypercorn on a private Unix socket, one request at a time as a canonical
  re-serialisation (see `ticketblitz/http/relay.py` for why that cannot be smuggled); after a `101` to
  a websocket handshake the bytes are piped both ways;
- keep-alive and pipelining (answers in order, across both kinds of routes), `100 Continue` answered
  here, a clean close on shutdown (idle connections at once, busy ones after their answer);
- a connection cap (`max_connections`: beyond it `503` with `Retry-After`, then close), an accept loop
  that backs off 100 ms when the process or system is out of descriptors or buffers (like
  `trio.serve_listeners`), and connection tasks whose unexpected exceptions are logged and close that
  connection only.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import orjson
import trio

from . import intake, reads
from .http import CLOSED, END, NEED_DATA, Data, Limits, Phase, Refusal, Request, ServerConnection, TargetForm, serialize
from .http.core import ASTERISK_ANSWER, CONTINUE
from .http.relay import ResponseFraming, upstream_request
from .representation import http_code, problem
from .service import BookingService

log = logging.getLogger("ticketblitz.door")

READ_SIZE = 65536
LARGE_BODY = 65536  # an answer body over this is sent after its head, not copied into one bytes object
EVENTS_PREFIX = "/api/events/"  # the event routes: .../{id}, .../{id}/bookings, .../{id}/seats
BOOKINGS_SUFFIX = "/bookings"
# accept(2) errors that mean "out of descriptors or kernel memory for now" (trio.serve_listeners)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF = 0.100
ACCEPT_LOG_EVERY = 10.0  # seconds between two log lines about a failing accept
BUSY_RETRY_AFTER = 1  # seconds, in the 503 of a connection over the cap
MAX_BUSY_ANSWERS = 64  # connections over the cap answered at once; more are closed without an answer
BUSY_SECONDS = 1.0  # for writing the 503 of a connection over the cap
LINGER_SECONDS = 2.0  # after a refusal: read (and drop) what the client still sends, so it gets the answer
LINGER_BYTES = 1 << 20
UNYIELDED_ANSWERS = 8  # answers a pipelining client gets in a row before its task lets the others run
UPSTREAM_SEND_SECONDS = 10.0  # for handing a request (≤ head + body limits) to Hypercorn
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)

# the handler, its path parameters, the route's name in telemetry and /metrics, whether it takes a JSON body
Route = tuple[Callable[..., Awaitable[intake.Answer]], tuple[str, ...], str, bool]
BOOKINGS_TEMPLATE = "POST /api/events/{id}/bookings"
QUEUE_SUFFIX = "/queue"
CHALLENGE_SUFFIX = "/queue/challenge"
TICKET_PREFIX = "/api/queue/"


def _one_segment(value: str) -> bool:
    return bool(value) and "/" not in value


def _route(method: str, path: str, query: str = "") -> Route | None:
    """The intake route this request is for, with its path parameter; None for everything else."""
    if method == "GET":
        return _get_route(path, query)
    if method != "POST":
        return None
    compat = intake.COMPAT_ROUTES.get(path)
    if compat is not None:
        return compat, (), "POST " + path, True
    if path.startswith(EVENTS_PREFIX):
        if path.endswith(BOOKINGS_SUFFIX):
            event_id = path[len(EVENTS_PREFIX):-len(BOOKINGS_SUFFIX)]
            if _one_segment(event_id):
                return intake.create_booking, (event_id,), BOOKINGS_TEMPLATE, True
        elif path.endswith(QUEUE_SUFFIX):
            event_id = path[len(EVENTS_PREFIX):-len(QUEUE_SUFFIX)]
            if _one_segment(event_id):
                return intake.join_queue, (event_id,), "POST /api/events/{id}/queue", True
    return None


def _get_route(path: str, query: str) -> Route | None:
    """The GETs answered through `intake`: a booking's long-poll, and the waiting room's reads: a ticket
    (also its long-poll), a line, a challenge."""
    if path.startswith(BOOKING_PREFIX):
        booking_id = path[len(BOOKING_PREFIX):]
        if _one_segment(booking_id) and reads.query_value(query, "wait") is not None:
            return intake.booking_long_poll, (booking_id,), "GET /api/bookings/{id}", False
        return None
    if path.startswith(TICKET_PREFIX):
        ticket_id = path[len(TICKET_PREFIX):]
        if _one_segment(ticket_id):
            return intake.queue_ticket, (ticket_id,), "GET /api/queue/{id}", False
    elif path.startswith(EVENTS_PREFIX):
        if path.endswith(CHALLENGE_SUFFIX):
            event_id = path[len(EVENTS_PREFIX):-len(CHALLENGE_SUFFIX)]
            if _one_segment(event_id):
                return intake.queue_challenge, (event_id,), "GET /api/events/{id}/queue/challenge", False
        elif path.endswith(QUEUE_SUFFIX):
            event_id = path[len(EVENTS_PREFIX):-len(QUEUE_SUFFIX)]
            if _one_segment(event_id):
                return intake.queue_line, (event_id,), "GET /api/events/{id}/queue", False
    return None


SEATS_SUFFIX = "/seats"
BOOKING_PREFIX = "/api/bookings/"
ReadRoute = tuple[reads.Read, str, str]  # the read, its path parameter, its name in telemetry


def _read_route(request: Request) -> ReadRoute | None:
    """The read this door answers itself (GET of an event, its seat map, a booking without ?wait); None
    for everything else (HEAD, websocket handshakes and long polls are relayed)."""
    if request.method != "GET" or request.upgrade is not None:
        return None
    path = request.path
    if path.startswith(EVENTS_PREFIX):
        rest = path[len(EVENTS_PREFIX):]
        if rest.endswith(SEATS_SUFFIX):
            event_id = rest[:-len(SEATS_SUFFIX)]
            if event_id and "/" not in event_id:
                return reads.seats, event_id, "GET /api/events/{id}/seats"
        elif rest and "/" not in rest:
            return reads.event, rest, "GET /api/events/{id}"
    elif path.startswith(BOOKING_PREFIX):
        booking_id = path[len(BOOKING_PREFIX):]
        if booking_id and "/" not in booking_id and reads.query_value(request.query, "wait") is None:
            return reads.booking, booking_id, "GET /api/bookings/{id}"
    return None


def _problem_bytes(status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A problem+json answer that closes the connection (refusals, 408, 503)."""
    code = "invalid_request" if status == 505 else http_code(status)  # 505: the client's fault, not ours
    body = problem(status, code, HTTPStatus(status).phrase, detail)
    return serialize(status, intake.PROBLEM, headers, orjson.dumps(body), keep_alive=False)


class IntakeDoor:
    """Serves the public listener: intake routes here, everything else relayed to Hypercorn."""

    def __init__(self, service: BookingService, upstream: str) -> None:
        settings = service.settings
        self.service = service
        self.upstream = upstream  # Hypercorn's private Unix socket
        self.limits = Limits(max_head_bytes=settings.max_head_bytes, max_headers=settings.max_headers,
                             max_target_bytes=settings.max_target_bytes, max_body_bytes=settings.max_body_bytes)
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.idle_timeout = settings.idle_timeout
        self.max_connections = settings.max_connections
        self.closing = trio.Event()
        self.connections = 0  # open connections (the cap counts these)
        self.busy_answers = 0  # connections over the cap being answered 503
        self._waiting: set[_Connection] = set()  # connections waiting for bytes from their client
        # how often deadlines are checked: they pass at most this late
        self.tick = min(0.25, self.header_timeout / 4, self.body_timeout / 4, self.idle_timeout / 4)
        self._busy = _problem_bytes(503, "the server has too many open connections; retry shortly",
                                    (("retry-after", str(BUSY_RETRY_AFTER)),))

    async def serve(self, sock: socket.socket, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until `close()`, then let every connection finish its request in flight."""
        sock.setblocking(False)
        async with trio.open_nursery() as door:
            door.start_soon(self._enforce_deadlines)
            async with trio.open_nursery() as nursery:
                task_status.started()
                with trio.CancelScope() as accepting:
                    nursery.start_soon(self._stop_accepting, accepting)
                    await self._accept(sock, nursery)
                trio.lowlevel.notify_closing(sock)
                sock.close()
            door.cancel_scope.cancel()  # every connection is closed

    async def _stop_accepting(self, scope: trio.CancelScope) -> None:
        await self.closing.wait()
        scope.cancel()

    def close(self) -> None:
        """Stop accepting; idle keep-alive connections close now, busy ones after their answer."""
        self.closing.set()
        for connection in self._waiting:
            if connection.phase is Phase.IDLE:
                connection.scope.cancel()

    async def _enforce_deadlines(self) -> None:
        """Cancel the connections whose deadline passed while they wait for the client. One sweep every
        `tick` instead of a cancel scope per receive: that costs more than parsing a request."""
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            for connection in self._waiting:
                if connection.deadline <= now:
                    connection.scope.cancel()

    async def _accept(self, listening: socket.socket, nursery: trio.Nursery) -> None:
        failures, logged = 0, -ACCEPT_LOG_EVERY
        while True:
            try:
                raw = await _accept_one(listening)
            except OSError as exc:
                # out of descriptors (EMFILE/ENFILE) or kernel memory: wait for connections to close,
                # as trio.serve_listeners does; any other accept error is logged the same way and retried
                failures += 1
                now = trio.current_time()
                if now - logged >= ACCEPT_LOG_EVERY:
                    level = logging.WARNING if exc.errno in ACCEPT_CAPACITY_ERRNOS else logging.ERROR
                    log.log(level, "accept failed %d time(s): %s; retrying every %g s (%d connections open)",
                            failures, errno.errorcode.get(exc.errno or 0, exc), ACCEPT_BACKOFF, self.connections,
                            exc_info=level == logging.ERROR)
                    failures, logged = 0, now
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))  # (sets TCP_NODELAY)
            if self.connections >= self.max_connections:
                if self.busy_answers < MAX_BUSY_ANSWERS:
                    self.busy_answers += 1
                    nursery.start_soon(self._answer_busy, stream)
                else:
                    stream.socket.close()
                continue
            self.connections += 1
            nursery.start_soon(self._connection, stream, raw)

    async def _answer_busy(self, stream: trio.SocketStream) -> None:
        """503 + Retry-After to a connection over the cap, then close it."""
        try:
            with trio.move_on_after(BUSY_SECONDS):
                await stream.send_all(self._busy)
                await _linger(stream, BUSY_SECONDS / 2)
        except (*_GONE, OSError):
            pass
        finally:
            self.busy_answers -= 1
            self.service.telemetry.record_request(503, 0.0, "(over the connection cap)")
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream, raw: socket.socket) -> None:
        try:
            await _Connection(self, stream, raw).run()
        except _GONE:
            pass  # the client went away
        except Exception:  # never BaseException: Cancelled must go on
            log.exception("connection failed; it is closed, the server goes on")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)


async def _accept_one(listening: socket.socket) -> socket.socket:
    """The next connection of the (non-blocking) listening socket, as a non-blocking stdlib socket."""
    await trio.lowlevel.checkpoint()  # a backlog of connections must not starve the others
    while True:
        try:
            raw, _ = listening.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listening)
            continue
        raw.setblocking(False)
        return raw


async def _linger(stream: trio.SocketStream, seconds: float) -> None:
    """Half-close, then read and drop what the client still sends for a moment: closing with unread
    bytes would reset the connection, and the client could lose the answer just sent."""
    with trio.move_on_after(seconds):
        await stream.send_eof()
        taken = 0
        while taken < LINGER_BYTES:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            taken += len(data)


class _Connection:
    """One client connection: the core's events in, answers out, in order."""

    __slots__ = ("deadline", "door", "http", "phase", "phase_started", "raw", "scope", "stream", "unyielded",
                 "upstream", "upstream_used")

    def __init__(self, door: IntakeDoor, stream: trio.SocketStream, raw: socket.socket) -> None:
        self.door = door
        self.stream = stream  # for the rare paths (relay, linger, large bodies): trio's layers
        self.raw = raw  # the same socket, for the hot path: one recv or send per call, no wrapper layers
        self.unyielded = 0  # answers sent since this connection last waited for its client
        self.http = ServerConnection(door.limits)
        self.scope = trio.CancelScope()  # cancelled by the door when a deadline passed (or idle at shutdown)
        self.phase: str | None = None  # the phase whose deadline runs, since phase_started
        self.phase_started = 0.0
        self.deadline = math.inf  # while waiting for the client
        self.upstream: trio.SocketStream | None = None  # to Hypercorn, opened on the first relayed request
        self.upstream_used = False  # it carried a request already (Hypercorn may have closed it since)

    async def run(self) -> None:
        try:
            with self.scope:
                await self._serve()
            if self.scope.cancel_called and self.phase is not Phase.IDLE:  # too slow: 408
                door = self.door
                what, seconds = ("head", door.header_timeout) if self.phase is Phase.HEAD else \
                    ("body", door.body_timeout)
                await self._refuse(Refusal(408, f"the request {what} did not arrive within {seconds:g} s"))
            # (an idle connection closes quietly)
        finally:
            if self.upstream is not None:
                await trio.aclose_forcefully(self.upstream)

    async def _serve(self) -> None:
        http = self.http
        request: Request | None = None
        body: list[bytes] = []
        while True:
            event = http.next_event()
            if event is NEED_DATA:
                if not await self._receive():
                    return
            elif isinstance(event, Request):
                request = event
                if event.body is None:  # Data and END follow
                    body.clear()
                    continue
                self.phase = None  # the next request's deadlines start now
                if not await self._answer(event, event.body):
                    return
            elif isinstance(event, Data):
                body.append(event.data)
            elif event is END:
                assert request is not None
                self.phase = None
                if not await self._answer(request, b"".join(body)):
                    return
            elif isinstance(event, Refusal):
                await self._refuse(event)
                return
            else:
                assert event is CLOSED
                return

    async def _receive(self) -> bool:
        """Feed the core the client's next bytes; False when the connection is to close (a deadline
        passed, or idle at shutdown)."""
        door, http = self.door, self.http
        phase = http.phase
        if phase is not self.phase:
            self.phase, self.phase_started = phase, trio.current_time()
            if phase is Phase.IDLE:
                self.deadline = self.phase_started + door.idle_timeout
            elif phase is Phase.HEAD:
                self.deadline = self.phase_started + door.header_timeout
            else:
                self.deadline = self.phase_started + door.body_timeout
        if phase is Phase.IDLE and door.closing.is_set():
            return False
        if phase is Phase.BODY and http.take_continue():
            await self.stream.send_all(CONTINUE)
        door._waiting.add(self)
        try:
            data = await self._recv()
        finally:
            door._waiting.discard(self)
        if self.scope.cancel_called:  # the deadline passed as the bytes came: too late all the same
            return False
        http.receive_data(data)
        return True

    async def _recv(self) -> bytes:
        """The client's next bytes (b"" at its end of stream). Waits for the socket to be readable first:
        between two requests of a keep-alive client the socket is nearly always empty, so trying recv
        first would cost a failed syscall and an exception per request."""
        raw = self.raw
        self.unyielded = 0
        while True:
            await trio.lowlevel.wait_readable(raw)
            try:
                return raw.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc

    async def _send(self, data: bytes) -> None:
        """Send an answer: one send() takes a small one whole; the rest goes through trio's send_all,
        which waits for room. A pipelining client gets a checkpoint every few answers, so that its
        buffered requests cannot keep the loop from the other connections."""
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])
            self.unyielded = 0
            return
        self.unyielded += 1
        if self.unyielded >= UNYIELDED_ANSWERS:
            self.unyielded = 0
            await trio.lowlevel.checkpoint()

    async def _refuse(self, refusal: Refusal) -> None:
        self.door.service.telemetry.record_request(refusal.status, 0.0, "(refused)")
        try:
            await self.stream.send_all(_problem_bytes(refusal.status, refusal.detail, refusal.headers))
            await _linger(self.stream, LINGER_SECONDS)
        except _GONE:
            pass

    async def _answer(self, request: Request, body: bytes) -> bool:
        """Answer one complete request; True when the connection carries on."""
        door = self.door
        keep_alive = request.keep_alive and not door.closing.is_set()
        route = _route(request.method, request.path, request.query)
        if route is not None:
            clock = time.perf_counter()
            handler, params, name, json_body = route
            answer = await intake.answer(handler, door.service, intake.Call(request.headers, body, request.query),
                                         *params, json_body=json_body)
            door.service.telemetry.record_request(answer.status, time.perf_counter() - clock, name)
            keep_alive = keep_alive and not door.closing.is_set()
            await self._send(serialize(answer.status, answer.content_type, answer.headers,
                                       orjson.dumps(answer.body), keep_alive=keep_alive,
                                       http10=request.version == "1.0"))
            return keep_alive
        read = _read_route(request)
        if read is not None:
            clock = time.perf_counter()
            read_handler, param, name = read
            headers = request.headers
            reply = await reads.answer(read_handler, door.service, headers, param, request.query)
            door.service.telemetry.record_request(reply.status, time.perf_counter() - clock, name)
            keep_alive = keep_alive and not door.closing.is_set()
            large = len(reply.body) > LARGE_BODY
            await self._send(serialize(
                reply.status, reply.content_type,
                reads.finish(reply, door.service.settings.cors_origin_set, headers.get("origin")),
                reply.body, keep_alive=keep_alive, http10=request.version == "1.0", head_only=large))
            if large and reply.status != 304:
                await self.stream.send_all(reply.body)  # the cached bytes themselves, not a copy
            return keep_alive
        if request.form is TargetForm.ASTERISK:  # OPTIONS *: what the server as a whole allows
            door.service.telemetry.record_request(204, 0.0, "OPTIONS *")
            await self.stream.send_all(ASTERISK_ANSWER if keep_alive else
                                       ASTERISK_ANSWER[:-2] + b"connection: close\r\n\r\n")
            return keep_alive
        return await self._relay(request, body) and not door.closing.is_set()

    # ------------------------------------------------------------------ relaying to Hypercorn

    async def _relay(self, request: Request, body: bytes) -> bool:
        """Hypercorn answers this request; its bytes go to the client as they come. True when the
        connection carries on."""
        payload = upstream_request(request, body)
        leftover = b""
        for _attempt in range(2):
            reused = self.upstream is not None and self.upstream_used
            upstream = await self._open_upstream()
            if upstream is None:
                await self._refuse(Refusal(503, "the application server is not reachable"))
                return False
            framing = ResponseFraming(request.method)
            sent = await self._send_upstream(payload)
            if sent:
                self.upstream_used = True
                leftover = await self._forward_answer(upstream, framing)
            if sent and framing.complete and not framing.error:
                break
            await self._drop_upstream()
            if framing.forwarded:
                return False  # part of an answer went out: the client's connection cannot go on
            if not reused:  # a fresh connection that failed: Hypercorn is in trouble
                await self._refuse(Refusal(503, "the application server did not answer"))
                return False
            # else Hypercorn had closed the kept connection before it read the request: once more
        else:
            await self._refuse(Refusal(503, "the application server did not answer"))
            return False
        if framing.switched:
            await self._pipe(upstream, leftover)
            return False
        # a refused upgrade, or Hypercorn closes: so does the client's connection
        return request.upgrade is None and framing.keep_alive

    async def _open_upstream(self) -> trio.SocketStream | None:
        if self.upstream is None:
            try:
                self.upstream = await trio.open_unix_socket(self.door.upstream)
            except OSError:
                log.warning("relay: cannot connect to the application server", exc_info=True)
                return None
            self.upstream_used = False
        return self.upstream

    async def _drop_upstream(self) -> None:
        if self.upstream is not None:
            await trio.aclose_forcefully(self.upstream)
            self.upstream = None

    async def _send_upstream(self, payload: bytes) -> bool:
        assert self.upstream is not None
        with trio.move_on_after(UPSTREAM_SEND_SECONDS):
            try:
                await self.upstream.send_all(payload)
                return True
            except _GONE:
                return False
        return False

    async def _forward_answer(self, upstream: trio.SocketStream, framing: ResponseFraming) -> bytes:
        """Forward Hypercorn's answer to the client until it is complete; what Hypercorn sent after a 101."""
        while not framing.complete:
            try:
                data = await upstream.receive_some(READ_SIZE)
            except _GONE:
                data = b""
            taken = framing.feed(data)
            if taken:
                await self.stream.send_all(data if taken == len(data) else data[:taken])
            if framing.switched:
                return data[taken:]
        return b""

    async def _pipe(self, upstream: trio.SocketStream, leftover: bytes) -> None:
        """After 101 Switching Protocols: bytes both ways, unparsed, until either side closes."""
        client = self.stream
        if leftover:
            await client.send_all(leftover)
        early = self.http.trailing_data()  # what the client sent after its handshake

        async def to_upstream(done: trio.CancelScope) -> None:
            try:
                if early:
                    await upstream.send_all(early)
                while data := await client.receive_some(READ_SIZE):
                    await upstream.send_all(data)
                await upstream.send_eof()  # the client finished sending; Hypercorn's bytes still flow back
            except _GONE:
                done.cancel()

        async def to_client(done: trio.CancelScope) -> None:
            try:
                while data := await upstream.receive_some(READ_SIZE):
                    await client.send_all(data)
            except _GONE:
                pass
            done.cancel()  # Hypercorn closed: so does the client's connection

        async with trio.open_nursery() as nursery:
            nursery.start_soon(to_upstream, nursery.cancel_scope)
            nursery.start_soon(to_client, nursery.cancel_scope)
