"""Flash-sale load driver for a TicketBlitz server on this machine (127.0.0.1 only).

It creates a fresh event, opens one TCP connection per simulated fan, waits until every connection is
up, then releases all of them at once: each fan sends ONE booking request and reads the full answer.
Afterwards it long-polls every accepted booking until it is decided and checks the invariants of
API.md (counts, seat map, no seat in two bookings) over the event's final state.

The burst uses raw trio sockets and a minimal HTTP/1.1 client (httptools' parser when installed), so
that the driver spends little CPU per request and the server, not the driver, is what gets measured.
Run `python bench/flash.py --help` (and `... flash --help`, `... hot --help`) for every option.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio

try:
    import httptools
except ImportError:  # the driver still works, with the slower pure-Python parser below
    httptools = None

ALLOWED_HOST = "127.0.0.1"
MAX_CLIENTS = 20_000  # bounded in count: far beyond what one process on this machine needs
MAX_SEATS = 200_000  # the API's per-event limit
MAX_DIMENSION = 1000  # rows and seats_per_row are 1..1000 per section
MAX_PER_USER = 4
HOLD_SECONDS = 3600  # no hold may lapse during a run: a run is bounded far below an hour
LONG_POLL_MAX = 30  # the API's limit for ?wait=
FD_MARGIN = 64  # descriptors for stdio, the setup connection and trio's own wakeup pipes
ROUTES = ("bookings", "book-async", "book-secure", "book-naive")
REJECT_REASONS = {"seat_unavailable", "sold_out", "limit_exceeded"}


# ====================================================================== HTTP/1.1 client


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response, or the connection ended before one was complete."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    keep_alive: bool

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class _HttptoolsParser:
    """Response parser on httptools (the C parser uvicorn uses): a few microseconds per response."""

    __slots__ = ("_body", "_parser", "complete")

    def __init__(self) -> None:
        self._body = bytearray()
        self.complete = False
        self._parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"bad response: {exc}") from exc

    def response(self) -> HttpResponse:
        return HttpResponse(self._parser.get_status_code(), bytes(self._body), self._parser.should_keep_alive())


class _SimpleParser:
    """Fallback without httptools: status line and headers, then exactly Content-Length body bytes.
    Enough for this server, which always sends Content-Length."""

    __slots__ = ("_buffer", "_keep_alive", "_length", "_status", "complete")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None  # body length, known once the headers are in
        self._status = 0
        self._keep_alive = True
        self.complete = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if self._length is None:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            self._parse_head(bytes(self._buffer[:head_end]).decode("latin-1"))
            del self._buffer[: head_end + 4]
        self.complete = len(self._buffer) >= (self._length or 0)

    def _parse_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line!r}")
        self._status = int(parts[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        if "content-length" not in headers:
            raise ProtocolError("response without Content-Length (the fallback parser needs it)")
        self._length = int(headers["content-length"])
        self._keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"

    def response(self) -> HttpResponse:
        return HttpResponse(self._status, bytes(self._buffer[: self._length or 0]), self._keep_alive)


ResponseParser = _HttptoolsParser if httptools is not None else _SimpleParser


def build_request(method: str, path: str, port: int, body: Any = None, *, token: str | None = None,
                  keep_alive: bool = True) -> bytes:
    """The request's bytes, written once up front so that sending costs one syscall and no formatting."""
    payload = orjson.dumps(body) if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {ALLOWED_HOST}:{port}", "Accept: application/json",
             f"Content-Length: {len(payload)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


async def connect(port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port. Plain trio.socket: no name resolution, no happy eyeballs,
    so ten thousand of these cost little."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((ALLOWED_HOST, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def read_response(stream: trio.SocketStream) -> HttpResponse:
    """Read one whole response (status, headers, body) from the stream."""
    parser = ResponseParser()
    while not parser.complete:
        data = await stream.receive_some(65536)
        if not data:
            raise ProtocolError("connection closed before a complete response")
        parser.feed(data)
    return parser.response()


class KeepAliveConnection:
    """One persistent connection for sequential requests (setup, verification, long polls). It
    reconnects when the server has closed it, and retries once when a reused connection turns out stale."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stream: trio.SocketStream | None = None

    async def request(self, raw: bytes) -> HttpResponse:
        for attempt in (1, 2):
            reused = self._stream is not None
            if self._stream is None:
                self._stream = await connect(self._port)
            try:
                await self._stream.send_all(raw)
                response = await read_response(self._stream)
            except (trio.BrokenResourceError, ProtocolError):
                await self.aclose()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection: retry fresh
                    continue
                raise
            if not response.keep_alive:
                await self.aclose()
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


def socket_error_kind(phase: str, exc: BaseException) -> str:
    """A short, countable name for a socket failure: connect_refused, receive_reset, send_EPIPE, ..."""
    if isinstance(exc, ProtocolError):
        return f"{phase}_closed_early" if "closed" in str(exc) else "bad_response"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return f"{phase}_refused"
    if isinstance(cause, ConnectionResetError):
        return f"{phase}_reset"
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"{phase}_{errno.errorcode.get(cause.errno, cause.errno)}"
    return f"{phase}_{type(exc).__name__}"


# ====================================================================== scenario set-up


@dataclass(slots=True)
class Target:
    """Where the server listens; only 127.0.0.1 is accepted."""

    port: int


def parse_target(url: str) -> Target:
    """`http://127.0.0.1:PORT`; anything else is refused: this driver only ever loads this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"--url {url!r}: only http:// is supported")
    if parts.hostname != ALLOWED_HOST:
        raise ValueError(f"--url {url!r}: refusing host {parts.hostname!r}; only {ALLOWED_HOST} may be loaded")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"--url {url!r}: give only scheme, host and port")
    return Target(parts.port or 80)


def seat_layout(seats: int) -> tuple[int, int]:
    """(rows, seats_per_row) of one section holding exactly `seats` seats, each dimension 1..1000:
    one row up to 1000 seats, else rows of 100 when that divides, else the widest exact row."""
    if seats <= MAX_DIMENSION:
        return 1, seats
    widths = [w for w in range(MAX_DIMENSION, 0, -1) if seats % w == 0 and seats // w <= MAX_DIMENSION]
    if not widths:
        raise ValueError(f"--seats {seats}: no rows x seats_per_row (each <= {MAX_DIMENSION}) makes exactly that")
    width = 100 if 100 in widths else widths[0]
    return seats // width, width


async def create_event(conn: KeepAliveConnection, port: int, token: str, name: str, seats: int) -> dict[str, Any]:
    """POST /api/events: a fresh event with exactly `seats` seats in section A."""
    rows, per_row = seat_layout(seats)
    body = {"name": name, "venue": "bench", "max_per_user": MAX_PER_USER, "hold_seconds": HOLD_SECONDS,
            "sections": [{"name": "A", "rows": rows, "seats_per_row": per_row, "price_cents": 0}]}
    response = await conn.request(build_request("POST", "/api/events", port, body, token=token))
    if response.status != 201:
        raise RuntimeError(f"creating the event answered {response.status}: {response.body[:300]!r}")
    event: dict[str, Any] = response.json()
    if event["capacity"] != seats:
        raise RuntimeError(f"event {event['id']} has {event['capacity']} seats, asked for {seats}")
    return event


@dataclass(slots=True)
class Scenario:
    """What every fan asks for: `hot` = all the same named seat, `flash` = best available."""

    kind: str  # "flash" or "hot"
    route: str
    clients: int
    seats: int
    quantity: int

    def request_for(self, fan: int, event_id: str, port: int) -> bytes:
        """Fan `fan`'s single request (Connection: close, since it is the connection's only request)."""
        user = f"fan-{fan}"
        if self.route == "bookings":
            body: dict[str, Any] = ({"user_id": user, "seat_ids": ["A-1-1"]} if self.kind == "hot"
                                    else {"user_id": user, "quantity": self.quantity})
            return build_request("POST", f"/api/events/{event_id}/bookings", port, body, keep_alive=False)
        seat_number = 1 if self.kind == "hot" else fan % self.seats + 1
        body = {"userId": user, "seatNumber": seat_number, "eventId": event_id}
        return build_request("POST", f"/api/{self.route}", port, body, keep_alive=False)


# ====================================================================== the burst


@dataclass(slots=True)
class ClientResult:
    """One fan's outcome. `status` 0 means no answer; `error` then names the socket failure."""

    status: int = 0
    body: bytes = b""
    error: str | None = None
    latency: float | None = None  # seconds from the release to the complete response
    sent_at: float | None = None  # trio clock when the request was fully written
    done_at: float | None = None  # trio clock when the answer (or the failure) came


class Barrier:
    """Every fan checks in once connected (or failed); the release is one trio.Event set for all."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_arrived = trio.Event()
        self.release = trio.Event()
        self.released_at = math.inf
        self.deadline = math.inf  # per-request deadline, fixed at release

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()

    def open(self, answer_timeout: float) -> None:
        self.released_at = trio.current_time()
        self.deadline = self.released_at + answer_timeout
        self.release.set()


async def run_fan(port: int, raw: bytes, barrier: Barrier, connect_deadline: float, result: ClientResult) -> None:
    """Connect, wait for the release, send one request, read the full answer, close."""
    stream = None
    with trio.move_on_at(connect_deadline) as connecting:
        try:
            stream = await connect(port)
        except OSError as exc:
            result.error = socket_error_kind("connect", exc)
    if connecting.cancelled_caught:
        result.error = "connect_timeout"
    barrier.arrive()
    if stream is None:
        result.done_at = trio.current_time()
        return
    async with stream:
        await barrier.release.wait()
        phase = "send"
        with trio.move_on_at(barrier.deadline) as answering:
            try:
                await stream.send_all(raw)
                result.sent_at = trio.current_time()
                phase = "receive"
                response = await read_response(stream)
            except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                result.error = socket_error_kind(phase, exc)
            else:
                result.status, result.body = response.status, response.body
                result.latency = trio.current_time() - barrier.released_at
        if answering.cancelled_caught:
            result.error = f"{phase}_timeout"
        result.done_at = trio.current_time()


@dataclass(slots=True)
class BurstRun:
    results: list[ClientResult]
    connect_seconds: float
    released_at: float  # trio clock
    ended_at: float  # trio clock: the last answer or failure
    cpu_seconds: float  # driver CPU spent from the release to the end of the burst


async def run_burst(scenario: Scenario, port: int, event_id: str, connect_timeout: float,
                    answer_timeout: float) -> BurstRun:
    """Open every connection concurrently, release all fans at once, wait for every answer."""
    raws = [scenario.request_for(i, event_id, port) for i in range(scenario.clients)]
    results = [ClientResult() for _ in raws]
    barrier = Barrier(scenario.clients)
    started = trio.current_time()
    connect_deadline = started + connect_timeout
    async with trio.open_nursery() as nursery:
        for raw, result in zip(raws, results, strict=True):
            nursery.start_soon(run_fan, port, raw, barrier, connect_deadline, result)
        await barrier.all_arrived.wait()  # bounded: every connect gives up at connect_deadline
        connect_seconds = trio.current_time() - started
        cpu_before = cpu_seconds()
        barrier.open(answer_timeout)
    cpu_after = cpu_seconds()
    ended = max((r.done_at for r in results if r.done_at is not None), default=barrier.released_at)
    return BurstRun(results, connect_seconds, barrier.released_at, max(ended, barrier.released_at),
                    cpu_after - cpu_before)


# ====================================================================== analysis of the answers


def booking_of(body: Any) -> dict[str, Any] | None:
    """The booking in a 2xx body: the body itself (/api/...), or its `booking` member (compat routes)."""
    if isinstance(body, dict):
        inner = body.get("booking", body)
        if isinstance(inner, dict) and "id" in inner:
            return inner
    return None


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is empty or not JSON (counted, never fatal, in a burst)."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def percentile_ms(sorted_seconds: list[float], pct: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_seconds:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))
    return round(sorted_seconds[rank - 1] * 1000, 1)


@dataclass(slots=True)
class BurstSummary:
    clients: int
    connected: int
    connect_seconds: float
    burst_seconds: float
    answered: int
    requests_per_second: float
    send_spread_ms: float | None  # how long after the release the last request was fully written
    statuses: dict[str, int]
    problem_codes: dict[str, int]
    latency_ms: dict[str, float | None]
    socket_errors: dict[str, int]
    success_without_booking: int  # 2xx answers whose body carried no booking object
    driver_cpu_burst_seconds: float
    driver_cpu_per_request_us: float | None


def summarize_burst(run: BurstRun) -> tuple[BurstSummary, list[dict[str, Any]]]:
    """Counts, latencies and errors of the burst, plus the bookings its 2xx answers carried."""
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    bookings: list[dict[str, Any]] = []
    without_booking = 0
    for result in run.results:
        if result.error is not None:
            errors[result.error] += 1
            continue
        statuses[str(result.status)] += 1
        body = parse_json(result.body)
        if result.status >= 400:
            codes[body.get("code", "?") if isinstance(body, dict) else "?"] += 1
        elif (booking := booking_of(body)) is not None:
            bookings.append(booking)
        else:
            without_booking += 1  # a 2xx we cannot follow up: verification must not pass silently
    latencies = sorted(r.latency for r in run.results if r.latency is not None)
    sent = [r.sent_at for r in run.results if r.sent_at is not None]
    answered = len(latencies)
    burst_seconds = run.ended_at - run.released_at
    summary = BurstSummary(
        clients=len(run.results),
        connected=sum(1 for r in run.results if not (r.error or "").startswith("connect_")),
        connect_seconds=round(run.connect_seconds, 3),
        burst_seconds=round(burst_seconds, 3),
        answered=answered,
        requests_per_second=round(answered / burst_seconds, 1) if burst_seconds > 0 else 0.0,
        send_spread_ms=round((max(sent) - run.released_at) * 1000, 1) if sent else None,
        statuses=dict(sorted(statuses.items())),
        problem_codes=dict(codes.most_common()),
        latency_ms={f"p{p}": percentile_ms(latencies, p) for p in (50, 90, 99)}
        | {"max": round(latencies[-1] * 1000, 1) if latencies else None},
        socket_errors=dict(errors.most_common()),
        success_without_booking=without_booking,
        driver_cpu_burst_seconds=round(run.cpu_seconds, 3),
        driver_cpu_per_request_us=round(run.cpu_seconds / len(run.results) * 1e6, 1) if run.results else None,
    )
    return summary, bookings


# ====================================================================== waiting for decisions


@dataclass(slots=True)
class DecideResult:
    undecided: list[str]  # still pending (or never read) at the deadline
    time_to_all_decided: float | None  # seconds from the end of the burst to the last decision seen
    server_last_decision: float | None  # same, from the bookings' updated_at (server clock)
    polls: int
    poll_errors: dict[str, int]


def wall_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def await_decisions(port: int, pending: list[str], burst_end: float, burst_end_wall: float,
                          concurrency: int, decide_timeout: float, token: str,
                          ) -> tuple[DecideResult, dict[str, dict[str, Any]]]:
    """Long-poll every pending booking (`?wait=`) from `concurrency` keep-alive connections until each
    is decided or the deadline passes; returns the summary and the last booking object seen per id.
    A booking still pending after one poll goes to the back of the line, so one slow booking never
    starves the others."""
    line = deque(pending)
    final: dict[str, dict[str, Any]] = {}
    seen_at: dict[str, float] = {}
    errors: Counter[str] = Counter()
    polls = 0
    deadline = trio.current_time() + decide_timeout

    async def poller() -> None:
        nonlocal polls
        conn = KeepAliveConnection(port)
        try:
            while line and trio.current_time() < deadline:
                booking_id = line.popleft()
                wait = max(0, min(LONG_POLL_MAX, math.floor(deadline - trio.current_time())))
                # reading a booking needs its secret or the admin token (API 1.1)
                raw = build_request("GET", f"/api/bookings/{booking_id}?wait={wait}", port, token=token)
                polls += 1
                try:
                    with trio.fail_after(wait + 10):
                        response = await conn.request(raw)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, ProtocolError) as exc:
                    errors["timeout" if isinstance(exc, trio.TooSlowError) else socket_error_kind("poll", exc)] += 1
                    line.append(booking_id)
                    await conn.aclose()
                    await trio.sleep(0.1)  # a failing server must not turn this loop into a busy spin
                    continue
                booking = parse_json(response.body) if response.status == 200 else None
                if not isinstance(booking, dict) or "status" not in booking:
                    errors[f"status_{response.status}"] += 1
                    line.append(booking_id)
                    await trio.sleep(0.1)  # same: a 404/503 answer must not become a tight loop
                    continue
                final[booking_id] = booking
                if booking["status"] == "pending":
                    line.append(booking_id)
                else:
                    seen_at[booking_id] = trio.current_time()
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, len(pending))):
            nursery.start_soon(poller)
    undecided = [b for b in pending if b not in seen_at]
    server_times = [wall_seconds(final[b]["updated_at"]) for b in seen_at]
    return DecideResult(
        undecided=undecided,
        time_to_all_decided=round(max(seen_at.values()) - burst_end, 3) if seen_at and not undecided else None,
        server_last_decision=round(max(server_times) - burst_end_wall, 3) if server_times else None,
        polls=polls,
        poll_errors=dict(errors),
    ), final


# ====================================================================== verification


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Verification:
    ok: bool
    counts: dict[str, int]
    seat_map: dict[str, int]
    accepted: int
    held: int
    held_seats: int
    rejected: dict[str, int]
    still_pending: int
    oversold: int
    checks: list[Check]
    warnings: list[str]


async def fetch_json(conn: KeepAliveConnection, port: int, path: str) -> Any:
    response = await conn.request(build_request("GET", path, port))
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {response.body[:300]!r}")
    return response.json()


def verify(event: dict[str, Any], seats: list[dict[str, Any]], bookings: dict[str, dict[str, Any]],
           undecided: list[str], seats_asked: int, burst: BurstSummary) -> Verification:
    """API.md's invariants over one event that only this run booked: every booking of the event is one
    the burst got back, so the seat map must be exactly what those bookings hold."""
    counts = event["counts"]
    capacity = event["capacity"]
    tally = Counter(s["status"] for s in seats)
    seat_map = {k: tally.get(k, 0) for k in ("available", "held", "sold")}
    statuses = Counter(b["status"] for b in bookings.values())
    owning = [b for b in bookings.values() if b["status"] in ("held", "confirmed")]
    claims = Counter(seat for b in owning for seat in b["seat_ids"])
    oversold = sum(1 for n in claims.values() if n > 1)
    held_bookings = [b for b in owning if b["status"] == "held"]
    held_seats = {seat for b in held_bookings for seat in b["seat_ids"]}
    map_held = {s["id"] for s in seats if s["status"] == "held"}
    rejected = Counter(b.get("reason") or "?" for b in bookings.values() if b["status"] == "rejected")
    per_user: Counter[str] = Counter()
    for b in owning:
        per_user[b["user_id"]] += len(b["seat_ids"])

    def check(name: str, ok: bool, detail: str) -> Check:
        return Check(name, bool(ok), detail)

    checks = [
        check("capacity", capacity == seats_asked == len(seats),
              f"capacity {capacity}, asked {seats_asked}, seat map {len(seats)}"),
        check("counts sum to capacity", sum(counts.values()) == capacity, f"{counts} vs {capacity}"),
        check("counts equal seat map", counts == seat_map, f"counts {counts}, seat map {seat_map}"),
        check("held+sold <= capacity", counts["held"] + counts["sold"] <= capacity, f"{counts}"),
        check("held bookings' seats = counts.held", sum(len(b["seat_ids"]) for b in held_bookings) == counts["held"],
              f"{sum(len(b['seat_ids']) for b in held_bookings)} seats in held bookings, counts.held {counts['held']}"),
        check("held seats = seat map's held seats", held_seats == map_held,
              f"{len(held_seats - map_held)} held by bookings only, {len(map_held - held_seats)} held in map only"),
        check("no seat in two bookings (oversold)", oversold == 0, f"{oversold} seats claimed more than once"),
        check("every booking has its quantity of seats",
              all(len(b["seat_ids"]) == b["quantity"] for b in owning), "held/confirmed seat_ids vs quantity"),
        check("no user over max_per_user", max(per_user.values(), default=0) <= event["max_per_user"],
              f"most seats for one user: {max(per_user.values(), default=0)}"),
        check("rejections give a reason", set(rejected) <= REJECT_REASONS, f"reasons {dict(rejected)}"),
        check("every 2xx carried a booking", burst.success_without_booking == 0,
              f"{burst.success_without_booking} 2xx answers without a booking"),
        check("every 202 left pending", not undecided and statuses.get("pending", 0) == 0,
              f"{len(undecided)} still pending or unread"),
    ]
    warnings = []
    turned_away_sold_out = burst.problem_codes.get("sold_out", 0)
    if counts["available"] and turned_away_sold_out:
        warnings.append(f"{turned_away_sold_out} fans were told sold_out while {counts['available']} seats "
                        "are still available")
    return Verification(
        ok=all(c.ok for c in checks), counts=dict(counts), seat_map=seat_map, accepted=len(bookings),
        held=statuses.get("held", 0), held_seats=len(held_seats), rejected=dict(rejected),
        still_pending=len(undecided), oversold=oversold, checks=checks, warnings=warnings,
    )


# ====================================================================== one whole run


@dataclass(slots=True)
class Report:
    scenario: str
    route: str
    url: str
    event_id: str
    seats: int
    quantity: int
    burst: BurstSummary
    decisions: DecideResult | None
    verification: Verification
    driver_cpu_total_seconds: float
    passed: bool = False
    exit_reasons: list[str] = field(default_factory=list)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit(needed: int) -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (one descriptor per fan); fail early if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise ValueError(f"{needed} file descriptors needed but the hard limit is {soft} (raise `ulimit -Hn`)")
    return soft


async def run(args: argparse.Namespace, scenario: Scenario, target: Target) -> Report:
    """Create the event, burst, wait for decisions, verify."""
    port = target.port
    setup = KeepAliveConnection(port)
    name = f"flash {scenario.kind} {scenario.route} {scenario.clients}x{scenario.seats} {time.strftime('%H:%M:%S')}"
    with trio.fail_after(args.connect_timeout + 30):
        event = await create_event(setup, port, args.admin_token, name, scenario.seats)
    await setup.aclose()  # idle during the burst: the server would time it out anyway
    print(f"event {event['id']}: {scenario.seats} seats; opening {scenario.clients} connections ...",
          file=sys.stderr, flush=True)

    burst_run = await run_burst(scenario, port, event["id"], args.connect_timeout, args.timeout)
    burst_end_wall = time.time() - (trio.current_time() - burst_run.ended_at)
    burst, answered_bookings = summarize_burst(burst_run)

    pending = [b["id"] for b in answered_bookings if b["status"] == "pending"]
    decisions = None
    bookings = {b["id"]: b for b in answered_bookings}
    if pending:
        print(f"burst done; waiting for {len(pending)} decisions ...", file=sys.stderr, flush=True)
        decisions, final = await await_decisions(port, pending, burst_run.ended_at, burst_end_wall,
                                                 args.poll_concurrency, args.decide_timeout, args.admin_token)
        bookings.update(final)

    with trio.fail_after(60):
        final_event = await fetch_json(setup, port, f"/api/events/{event['id']}")
        seats = (await fetch_json(setup, port, f"/api/events/{event['id']}/seats"))["seats"]
    await setup.aclose()
    verification = verify(final_event, seats, bookings, decisions.undecided if decisions else [],
                          scenario.seats, burst)
    return Report(
        scenario=scenario.kind, route=scenario.route, url=args.url, event_id=event["id"], seats=scenario.seats,
        quantity=scenario.quantity, burst=burst, decisions=decisions, verification=verification,
        driver_cpu_total_seconds=round(cpu_seconds(), 3),
    )


def judge(report: Report, allow_socket_errors: bool) -> None:
    """Pass only when the invariants hold and (unless allowed) no socket failed."""
    if not report.verification.ok:
        report.exit_reasons.append("verification failed")
    if report.burst.socket_errors and not allow_socket_errors:
        report.exit_reasons.append("socket errors (use --allow-socket-errors to accept them)")
    report.passed = not report.exit_reasons


# ====================================================================== output


def _counter_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def render(report: Report) -> str:
    """The human summary."""
    b, v, d = report.burst, report.verification, report.decisions
    lat = b.latency_ms
    lines = [
        f"TicketBlitz {report.scenario}: route {report.route}, event {report.event_id} ({report.seats} seats), "
        f"{b.clients} clients" + (f", quantity {report.quantity}" if report.route == "bookings" else ""),
        f"connect       {b.connected}/{b.clients} connected in {b.connect_seconds:.2f} s",
        f"burst         {b.burst_seconds:.2f} s, {b.answered} answered, {b.requests_per_second:.0f} req/s"
        + (f"; all sent within {b.send_spread_ms} ms of the release" if b.send_spread_ms is not None else ""),
        f"statuses      {_counter_text(b.statuses)}",
        f"codes         {_counter_text(b.problem_codes)}",
        f"latency ms    p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"socket errors {_counter_text(b.socket_errors)}",
        f"accepted      {v.accepted}, held {v.held} ({v.held_seats} seats), rejected after queueing "
        f"{sum(v.rejected.values())} ({_counter_text(v.rejected)}), still pending {v.still_pending}",
        f"event counts  {_counter_text(v.counts)} (seat map {_counter_text(v.seat_map)})",
        f"oversold      {v.oversold}",
    ]
    if d is not None:
        decided = (f"all in {d.time_to_all_decided:.3f} s after the burst" if d.time_to_all_decided is not None
                   else f"NOT all: {len(d.undecided)} still pending")
        server = f"{d.server_last_decision:+.3f} s" if d.server_last_decision is not None else "none seen"
        lines.append(f"decided       {decided} (server's last decision {server}; "
                     f"{d.polls} polls, poll errors {_counter_text(d.poll_errors)})")
    else:
        lines.append("decided       nothing was pending after the burst")
    lines.append(f"driver CPU    {report.driver_cpu_total_seconds:.2f} s total, {b.driver_cpu_burst_seconds:.2f} s "
                 f"during the burst ({b.driver_cpu_per_request_us} us/request)")
    lines.extend(f"warning       {w}" for w in v.warnings)
    lines.extend(f"FAILED check  {c.name}: {c.detail}" for c in v.checks if not c.ok)
    lines.append(f"verify        {'OK' if v.ok else 'FAILED'}")
    lines.append(f"result        {'PASS' if report.passed else 'FAIL: ' + '; '.join(report.exit_reasons)}")
    return "\n".join(lines)


def write_json(report: Report, path: str) -> None:
    with open(path, "wb") as out:
        out.write(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2) + b"\n")


# ====================================================================== command line


def _positive(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: must be between {low:g} and {high:g}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser, default_clients: int) -> None:
    p.add_argument("--clients", type=_positive(int, 1, MAX_CLIENTS), default=default_clients,
                   help=f"fans, each on its own TCP connection, one request each (default {default_clients}, "
                        f"at most {MAX_CLIENTS})")
    p.add_argument("--seats", type=_positive(int, 1, MAX_SEATS), default=100,
                   help="seats of the fresh event: one section A of rows x seats_per_row (each <= 1000) holding "
                        "exactly this many, so a prime above 1000 is refused (default 100)")
    p.add_argument("--route", choices=ROUTES, default="bookings",
                   help="bookings = POST /api/events/{id}/bookings (202 + decision later); book-async = the "
                        "original's queued route (always 202); book-secure / book-naive = the original's "
                        "synchronous routes (200 = already held). Compat routes send "
                        "{userId, seatNumber, eventId} with seatNumber = i mod seats + 1 (hot: 1). "
                        "Default bookings")
    p.add_argument("--connect-timeout", type=_positive(float, 0.1, 60), default=10.0,
                   help="seconds for ALL connections to be up before the release; keep it under the server's "
                        "keep-alive timeout (15 s), which closes connections idle that long (default 10)")
    p.add_argument("--timeout", type=_positive(float, 0.1, 600), default=60.0,
                   help="seconds from the release for every answer; later ones count as *_timeout socket "
                        "errors (default 60)")
    p.add_argument("--decide-timeout", type=_positive(float, 1, 600), default=60.0,
                   help="seconds after the burst for every 202 booking to leave pending (default 60; "
                        "API.md promises 30)")
    p.add_argument("--poll-concurrency", type=_positive(int, 1, 1000), default=200,
                   help="keep-alive connections long-polling GET /api/bookings/{id}?wait=30 (default 200)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--allow-socket-errors", action="store_true",
                   help="exit 0 despite socket errors (refused, reset, timeouts) when verification passed")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="flash.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="""what a run does:
  1. POST /api/events (admin token) -> a fresh event with exactly --seats seats, max_per_user 4
  2. opens --clients TCP connections concurrently (RLIMIT_NOFILE soft limit raised to the hard limit)
  3. once all are connected (or failed): every fan sends its ONE request at the same moment
     and reads the full answer; latency = release -> complete answer
  4. long-polls GET /api/bookings/{id}?wait=30 for every 202 until none is pending
  5. GET /api/events/{id} and /seats; checks: counts sum to capacity and match the seat map,
     held+sold <= capacity, held bookings' seats = counts.held = the map's held seats,
     no seat in two held/confirmed bookings (oversold = 0), no 202 left pending
exit status: 0 when verification passed and no socket failed (see --allow-socket-errors), else 1;
2 for bad arguments or when the run could not be set up.

examples:
  python bench/flash.py --admin-token t flash --clients 2000 --seats 100
  python bench/flash.py hot --clients 1000
  python bench/flash.py flash --clients 500 --seats 100 --route book-async --json out.json""",
    )
    top.add_argument("--url", default="http://127.0.0.1:8000",
                     help=f"the server; only http://{ALLOWED_HOST}:PORT is accepted (default http://127.0.0.1:8000)")
    top.add_argument("--admin-token", default=os.environ.get("TICKETBLITZ_ADMIN_TOKEN"),
                     help="organizer token to create the event (default: env TICKETBLITZ_ADMIN_TOKEN)")
    sub = top.add_subparsers(dest="scenario", required=True, metavar="{flash,hot}")
    flash = sub.add_parser("flash", help="N fans each ask for the best available --quantity seats",
                           description="N fans each ask for --quantity best-available seats of a fresh event.")
    _add_common(flash, 2000)
    flash.add_argument("--quantity", type=_positive(int, 1, MAX_PER_USER), default=1,
                       help=f"seats per request, 1..{MAX_PER_USER} (route bookings only; default 1)")
    hot = sub.add_parser("hot", help="N fans all ask for the same seat A-1-1",
                         description="N fans all ask for the same named seat A-1-1 (seat_ids, or seatNumber 1 "
                                     "on the compat routes) of a fresh event.")
    _add_common(hot, 1000)
    return top


def scenario_of(args: argparse.Namespace) -> Scenario:
    quantity = getattr(args, "quantity", 1)
    if args.route != "bookings" and quantity != 1:
        raise ValueError(f"--quantity {quantity}: the compat route {args.route} books one numbered seat")
    return Scenario(args.scenario, args.route, args.clients, args.seats, quantity)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        target = parse_target(args.url)
        scenario = scenario_of(args)
        seat_layout(scenario.seats)
        if not args.admin_token:
            raise ValueError("--admin-token (or env TICKETBLITZ_ADMIN_TOKEN) is needed to create the event")
        raise_fd_limit(scenario.clients + args.poll_concurrency + FD_MARGIN)
    except ValueError as exc:
        print(f"flash.py: {exc}", file=sys.stderr)
        return 2
    try:
        report = trio.run(run, args, scenario, target)
    except (OSError, RuntimeError, ProtocolError, trio.TooSlowError) as exc:
        print(f"flash.py: could not run against {args.url}: {exc!r}", file=sys.stderr)
        return 2
    judge(report, args.allow_socket_errors)
    print(render(report))
    if args.json:
        write_json(report, args.json)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
