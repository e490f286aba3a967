"""`ticketblitz flash-sale --waiting-room`: many cheap fans through an event's waiting room (docs/API.md,
"Waiting room (TicketBlitz 1.2)"), and the same sale without one (`run_sale(..., settings=None)`, the
benchmark's comparison).

A fan is a small record and one trio task; fans share a bounded pool of keep-alive connections
(`pool.ConnectionPool`), borrowed for one request at a time, so 50,000 fans never mean 50,000 sockets.
With a waiting room each fan, at its arrival time (spread over `arrival_seconds`, in a seeded random
order):

1. when the event asks for a proof (`challenge_bits > 0`): `GET /api/events/{id}/queue/challenge`, then
   solves it (`pow.solve`; above `INLINE_BITS` in a worker thread);
2. `POST /api/events/{id}/queue` -> its ticket (and the ticket's secret);
3. waits for its turn: one watcher reads the public line (`GET /api/events/{id}/queue`) every
   `WATCH_EVERY` s for all fans. A fan near the head of the line (position <= admitted_through +
   `near_window`) long-polls its ticket (`GET /api/queue/{ticket}?wait=N`, Bearer secret; N = its eta,
   1..LONG_WAIT s, at most half the pool at once); a fan whose
   turn the line says has come (position <= admitted_through, or the line sold out) reads it with
   `?wait=0` (a long poll that arrives after the change would wait for a *further* change, so the
   watcher also cuts a long poll still open `CUT_GRACE` s after the line passed its fan); any other fan
   sleeps until the watcher wakes it (or `FALLBACK` s pass, fewer than `FALLBACK_PER_SECOND` such reads
   for all fans, then it reads its ticket anyway);
4. once `admitted`: `POST /api/events/{id}/bookings` quantity 1 with `Queue-Pass`, long-polls the
   booking until it is decided, and confirms a held booking (or, for the `abandon` fraction of fans,
   lets the hold lapse, which admits the next in line).

Without a waiting room each fan does only step 4, without a pass. Arrival = when the fan's first request
was sent. The report (`SaleReport`) has the joins, the final ticket states, the passes, the bookings, the
order check, fairness (`fairness.overtakes`) and API.md's invariants (`verify.verify`).
"""

from __future__ import annotations

import heapq
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import trio

from . import pow as proof_of_work
from .burst import BurstSummary, cpu_seconds, parse_json, percentile_ms
from .client import (
    ALLOWED_HOST,
    HttpResponse,
    KeepAliveConnection,
    ProtocolError,
    build_request,
    fetch_json,
    parse_target,
    socket_error_kind,
)
from .fairness import Overtakes, issue_inversions, overtakes, prefix_order
from .pool import Answer, ConnectionPool
from .scenario import HOLD_SECONDS, MAX_PER_USER, SetupError, seat_layout
from .verify import Check, Verification, verify

MAX_QUEUE_FANS = 100_000  # fans share pooled connections: bounded by memory and time, not descriptors
MAX_CONNECTIONS = 5_000
POLL_CONCURRENCY = 200  # booking long polls at once (the flash sale's pollers: cli.POLL_CONCURRENCY)
LONG_WAIT = 10  # ?wait= of a fan near the head of the line (and of a booking's decision)
WATCH_EVERY = 0.05  # seconds between two reads of the public line
CUT_GRACE = 0.5  # seconds a long poll may stay open after the line passed its fan
FALLBACK = 30.0  # a sleeping fan reads its ticket at least about this often (jittered 0.5..1.5 x) ...
FALLBACK_PER_SECOND = 100  # ... or less often, so that all fans' fallback reads stay under this rate
# the pool serves the fans whose seat is at stake first, then those whose turn may have come, then the rest
PRIORITY = {"book": 0, "decision": 0, "confirm": 0, "read": 0, "poll": 1, "fallback": 2, "join": 2,
            "challenge": 2}
REQUEST_SLACK = 10.0  # client timeout = the long poll's wait + this
ATTEMPTS = 5  # per request, on socket errors, 429 and 503
RETRY_PAUSE = 0.5
FINAL = frozenset({"admitted", "sold_out", "expired"})
MODES = ("fifo", "lottery")
BOOK_RETRY = 1.0  # seconds (jittered) between two booking attempts of an admitted fan told sold_out
INLINE_BITS = 10  # proofs up to this many bits are solved in the event loop, larger ones in a worker thread
LAPSE_SLACK = 3.0  # seconds after an abandoned hold's expires_at for the sweeper to have expired it
SENDER_START_SECONDS = 90.0  # for the burst sender to open its connections and say when it starts


# ====================================================================== settings


@dataclass(frozen=True, slots=True)
class WaitingRoomSettings:
    mode: str = "fifo"
    admit_per_second: int = 2000
    pass_seconds: int = 30
    challenge_bits: int = 0
    sale_starts_in: float | None = None  # seconds after the event's creation; None: open at once

    def event_members(self, now: float) -> dict[str, Any]:
        members: dict[str, Any] = {"waiting_room": {
            "mode": self.mode, "admit_per_second": self.admit_per_second, "pass_seconds": self.pass_seconds,
            "challenge_bits": self.challenge_bits}}
        if self.sale_starts_in is not None:
            members["sale_starts_at"] = rfc3339(now + self.sale_starts_in)
        return members


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wall_of(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class SaleOptions:
    url: str
    admin_token: str
    fans: int
    seats: int
    settings: WaitingRoomSettings | None  # None: the same sale without a waiting room
    event_id: str | None = None  # an existing fresh event instead of a new one
    connections: int = 1000
    arrival_seconds: float = 1.0
    deadline_seconds: float = 120.0  # from the first arrival until every fan is done
    abandon: float = 0.0  # fraction of fans with a held booking who do not confirm it (it lapses)
    hold_seconds: int = HOLD_SECONDS
    seed: int = 1
    near_window: int | None = None  # None: admit_per_second x 4 x WATCH_EVERY, at least 50
    log: Callable[[str], None] | None = None
    # None: every request through the pool (above). N: each fan's FIRST request (its join; without a waiting
    # room its booking) is pre-encoded and sent on schedule by a second OS process (`sender`) over N
    # keep-alive connections, pipelined; the answers come back to this process, whose fans go on from there
    burst_connections: int | None = None


def sale_event_body(name: str, seats: int, settings: WaitingRoomSettings | None, hold_seconds: int,
                    now: float | None = None) -> dict[str, Any]:
    rows, per_row = seat_layout(seats)
    body: dict[str, Any] = {"name": name, "venue": "bench", "max_per_user": MAX_PER_USER,
                            "hold_seconds": hold_seconds,
                            "sections": [{"name": "A", "rows": rows, "seats_per_row": per_row, "price_cents": 0}]}
    if settings is not None:
        body |= settings.event_members(time.time() if now is None else now)
    return body


def arrival_offsets(fans: int, spread: float, seed: int) -> list[float]:
    """Fan i's arrival, seconds after the start: evenly spaced over `spread`, in a seeded random order
    of the fans (so that a fan's index says nothing about when it comes)."""
    order = list(range(fans))
    random.Random(seed).shuffle(order)
    offsets = [0.0] * fans
    step = spread / fans if fans else 0.0
    for rank, fan in enumerate(order):
        offsets[fan] = rank * step
    return offsets


def request_bytes(method: str, path: str, port: int, body: Any = None, *, token: str | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    """A keep-alive request (build_request's form) with extra headers."""
    raw = build_request(method, path, port, body, token=token)
    if not headers:
        return raw
    head, sep, payload = raw.partition(b"\r\n\r\n")
    extra = "".join(f"\r\n{k}: {v}" for k, v in headers.items()).encode("latin-1")
    return head + extra + sep + payload


# ====================================================================== the fans


def _timed_solve(challenge: str, user_id: str, bits: int) -> tuple[proof_of_work.Solution, float]:
    """The proof and the CPU seconds of this thread it took (not the wait for a worker thread)."""
    started = time.thread_time()
    solution = proof_of_work.solve(challenge, user_id, bits)
    return solution, time.thread_time() - started


@dataclass(slots=True)
class Fan:
    index: int
    user_id: str
    offset: float
    arrival: float | None = None  # trio clock: its first request was sent
    challenge_fetches: int = 0
    pow_tries: int = 0
    pow_seconds: float = 0.0
    join_status: int = 0
    join_code: str | None = None
    join_seconds: float | None = None  # the answer's latency (sent -> answered)
    join_answered_at: float | None = None
    ticket_id: str | None = None
    secret: str | None = None
    position: int | None = None
    eta: float | None = None  # the ticket's last eta_seconds
    status: str | None = None  # the ticket's last seen status
    final_at: float | None = None  # trio clock when a final status was first seen
    admitted_at: float | None = None
    pass_: str | None = None
    pass_issued_wall: float | None = None  # pass_expires_at - pass_seconds (server clock)
    polls: int = 0
    booking_status_code: int = 0
    booking_code: str | None = None
    booking_seconds: float | None = None
    booking_id: str | None = None
    booking_secret: str | None = None
    booking_status: str | None = None
    hold_expires_wall: float | None = None  # the held booking's expires_at
    pass_expires_wall: float | None = None
    booking_attempts: int = 0
    booked_at: float | None = None  # trio clock: the 202 came
    decided_at: float | None = None  # trio clock: the fan saw its booking leave pending
    decision_polls: int = 0
    first_refusal: str | None = None  # the problem code of an admitted fan's first refused booking
    offered: bool = False  # its booking was held at some point (it got a seat)
    confirmed: bool = False
    abandoned: bool = False
    error: str | None = None
    done_at: float | None = None


@dataclass(slots=True)
class SaleTally:
    """Live counts for the progress displays."""

    phase: str = "setup"
    fans: int = 0
    event_id: str | None = None
    arrived: int = 0
    joined: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    final: int = 0
    admitted: int = 0
    sold_out: int = 0
    booked: int = 0
    held: int = 0
    confirmed: int = 0
    done: int = 0
    join_latencies: list[float] = field(default_factory=list)

    def members(self) -> dict[str, Any]:
        lat = sorted(self.join_latencies)
        return {"event_id": self.event_id, "users": self.fans, "phase": self.phase, "arrived": self.arrived,
                "joined": self.joined, "by_code": dict(sorted(self.by_code.items())),
                "p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99), "final": self.final,
                "admitted": self.admitted, "sold_out": self.sold_out, "booked": self.booked, "held": self.held,
                "confirmed": self.confirmed, "done": self.done}


class Line:
    """The public line as the watcher last read it, and the fans sleeping until it reaches them."""

    def __init__(self, near_window: int) -> None:
        self.near_window = near_window
        self.admitted_through = 0
        self.sold_out = False
        self.open = False
        self.last: dict[str, Any] | None = None
        self.reads = 0
        self.latencies: list[float] = []  # seconds per read of the public line
        self.errors: Counter[str] = Counter()
        # (t, joined, waiting, admitted, outstanding, expired, admitted_through, sold_out) per read
        self.history: list[tuple[Any, ...]] = []
        self._heap: list[tuple[int, int]] = []  # (position, fan index): wake when near the head
        self._due_heap: list[tuple[int, int]] = []  # (position, fan index): wake only when admitted_through reaches it
        self._unknown: set[int] = set()  # sleeping fans without a position (lottery pre-queue)
        self._events: dict[int, trio.Event] = {}
        self._polls: dict[int, tuple[int | None, trio.CancelScope]] = {}
        self.cut = 0

    def due(self, fan: Fan) -> bool:
        if self.sold_out:
            return True
        if fan.position is None:
            return self.open
        return fan.position <= self.admitted_through

    def near(self, fan: Fan) -> bool:
        return fan.position is not None and fan.position <= self.admitted_through + self.near_window

    async def sleep(self, fan: Fan, seconds: float, until_due: bool = False) -> bool:
        """Until the line comes near the fan (True; with `until_due`, until it reaches the fan) or `seconds`
        pass (False)."""
        event = trio.Event()
        self._events[fan.index] = event
        if fan.position is None:
            self._unknown.add(fan.index)
        else:
            heapq.heappush(self._due_heap if until_due else self._heap, (fan.position, fan.index))
        try:
            with trio.move_on_after(seconds):
                await event.wait()
                return True
            return False
        finally:
            if self._events.get(fan.index) is event:
                del self._events[fan.index]
            self._unknown.discard(fan.index)

    def polling(self, fan: Fan, scope: trio.CancelScope | None) -> None:
        if scope is None:
            self._polls.pop(fan.index, None)
        else:
            self._polls[fan.index] = (fan.position, scope)

    def _wake(self, index: int) -> None:
        event = self._events.pop(index, None)
        if event is not None:
            event.set()

    def update(self, line: dict[str, Any], t: float) -> None:
        self.last = line
        self.reads += 1
        self.admitted_through = int(line.get("admitted_through") or 0)
        self.sold_out = bool(line.get("sold_out"))
        self.open = bool(line.get("open"))
        self.history.append((round(t, 3), line.get("joined"), line.get("waiting"), line.get("admitted"),
                             line.get("outstanding"), line.get("expired"), self.admitted_through,
                             self.sold_out))
        if self.sold_out:
            for index in list(self._events):
                self._wake(index)
            self._heap.clear()
            self._due_heap.clear()
        else:
            reach = self.admitted_through + self.near_window
            while self._heap and self._heap[0][0] <= reach:
                self._wake(heapq.heappop(self._heap)[1])
            while self._due_heap and self._due_heap[0][0] <= self.admitted_through:
                self._wake(heapq.heappop(self._due_heap)[1])
            if self.open:
                for index in list(self._unknown):
                    self._wake(index)
        cut_at = trio.current_time() + CUT_GRACE
        for position, scope in self._polls.values():
            if self.sold_out or (position is not None and position <= self.admitted_through):
                scope.deadline = min(scope.deadline, cut_at)

    def wake_all(self) -> None:
        for index in list(self._events):
            self._wake(index)


class Sale:
    """One run's shared state: the pool, the line, the fans, the counters."""

    def __init__(self, options: SaleOptions, port: int, event: dict[str, Any], tally: SaleTally) -> None:
        self.options = options
        self.port = port
        self.event = event
        self.event_id: str = event["id"]
        room = event.get("waiting_room") or {}
        self.waiting_room = options.settings is not None
        self.bits = int(room.get("challenge_bits") or 0)
        self.pass_seconds = float(room.get("pass_seconds") or 0)
        admit = int(room.get("admit_per_second") or 100)
        near = options.near_window if options.near_window is not None else max(50, math.ceil(admit * 4 * WATCH_EVERY))
        self.line = Line(near)
        self.pool = ConnectionPool(port, options.connections)
        # long polls may hold at most half the pool: the fans whose turn has come must find a connection
        self.long_polls = trio.CapacityLimiter(max(1, options.connections // 2))
        self.fallback = max(FALLBACK, options.fans / FALLBACK_PER_SECOND)
        self.tally = tally
        self.errors: Counter[str] = Counter()  # socket errors, timeouts, retried 429/503
        self.samples: dict[str, str] = {}  # the first body of each retried answer kind
        # booking decisions are long polls that Quart answers (the door relays them): at most as many at
        # once as the flash sale's pollers (POLL_CONCURRENCY), the rest of the pool serves the line
        self.decision_polls = trio.CapacityLimiter(POLL_CONCURRENCY)
        self.rng = random.Random(options.seed + 1)
        self.fans = [Fan(i, f"fan-{i}", o) for i, o in
                     enumerate(arrival_offsets(options.fans, options.arrival_seconds, options.seed))]
        self.t0 = 0.0
        self.deadline = math.inf
        self.wall_minus_trio = time.time() - trio.current_time()
        self.sender: dict[str, Any] | None = None  # the burst sender's own numbers (burst runs only)

    # ------------------------------------------------------------------ requests

    async def call(self, fan: Fan, raw: bytes, what: str, wait: float = 0.0) -> Answer | None:
        """One request with retries on socket errors, timeouts, 429 and 503; None when they ran out.
        The fan's arrival is set by its first send. Its priority in the pool is PRIORITY's."""
        sent: list[float] = []
        priority = PRIORITY.get(what, 2)
        for _ in range(ATTEMPTS):
            try:
                answer = await self.pool.request(raw, wait + REQUEST_SLACK, sent, priority)
            except trio.TooSlowError:
                self.errors[f"{what}_timeout"] += 1
            except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                self.errors[socket_error_kind(what, exc)] += 1
            else:
                if answer.response.status not in (429, 503):
                    return answer
                key = f"{what}_{answer.response.status}"
                self.errors[key] += 1
                self.samples.setdefault(key, answer.response.body[:300].decode("utf-8", "replace"))
            finally:
                if sent and fan.arrival is None and fan.index >= 0:
                    fan.arrival = sent[0]
                    self.tally.arrived += 1
            await trio.sleep(RETRY_PAUSE * (0.5 + self.rng.random()))
        return None

    # ------------------------------------------------------------------ one fan

    async def run_fan(self, fan: Fan, first: Answer | None = None, wait: bool = True) -> None:
        """The fan's whole sale; `first`: the answer to its first request, sent by the burst sender."""
        if wait:
            await trio.sleep_until(self.t0 + fan.offset)
        with trio.move_on_at(self.deadline):
            try:
                if self.waiting_room:
                    await self.join(fan, first)
                    if fan.ticket_id is not None:
                        await self.wait_turn(fan)
                    if fan.status == "admitted" and fan.pass_ is not None:
                        await self.book(fan)
                else:
                    await self.book(fan, first)
            finally:
                fan.done_at = trio.current_time()
                self.tally.done += 1

    def first_request(self, fan: Fan) -> bytes:
        """The fan's first request, as `join` / `book` send it (the burst sender's pre-encoded bytes)."""
        if self.waiting_room:
            return self.join_request({"user_id": fan.user_id})
        return self.booking_request(fan)

    def join_request(self, body: dict[str, str]) -> bytes:
        return request_bytes("POST", f"/api/events/{self.event_id}/queue", self.port, body)

    def booking_request(self, fan: Fan) -> bytes:
        headers = {"Idempotency-Key": f"wr-{fan.user_id}-{fan.booking_attempts}"}
        if fan.pass_ is not None:
            headers["Queue-Pass"] = fan.pass_
        return request_bytes("POST", f"/api/events/{self.event_id}/bookings", self.port,
                             {"user_id": fan.user_id, "quantity": 1}, headers=headers)

    async def solve(self, fan: Fan) -> tuple[str, str] | None:
        answer = await self.call(fan, request_bytes("GET", f"/api/events/{self.event_id}/queue/challenge",
                                                    self.port), "challenge")
        fan.challenge_fetches += 1
        if answer is None or answer.response.status != 200:
            fan.error = f"challenge answered {answer.response.status if answer else 'nothing'}"
            return None
        body = parse_json(answer.response.body)
        challenge, bits = str(body["challenge"]), int(body["bits"])
        if bits <= INLINE_BITS:  # about 2^bits hashes: a millisecond or so, less than a thread hop's wait
            solution, seconds = _timed_solve(challenge, fan.user_id, bits)
            await trio.lowlevel.checkpoint()
        else:
            solution, seconds = await trio.to_thread.run_sync(_timed_solve, challenge, fan.user_id, bits)
        fan.pow_seconds += seconds
        fan.pow_tries += solution.tries
        return challenge, solution.proof

    async def join(self, fan: Fan, first: Answer | None = None) -> None:
        for _ in range(2):  # a second time only when the challenge had expired meanwhile
            body: dict[str, Any] = {"user_id": fan.user_id}
            if first is not None:  # sent by the burst sender (no challenge: the bench refuses bits > 0 there)
                answer: Answer | None = first
                first = None
            else:
                if self.bits > 0:
                    proof = await self.solve(fan)
                    if proof is None:
                        return
                    body["challenge"], body["proof"] = proof
                answer = await self.call(fan, self.join_request(body), "join")
            if answer is None:
                fan.error = "join: no answer"
                return
            status, ticket = answer.response.status, parse_json(answer.response.body)
            fan.join_status, fan.join_seconds, fan.join_answered_at = status, answer.seconds, answer.answered_at
            self.tally.joined += 1
            self.tally.by_code[str(status)] += 1
            self.tally.join_latencies.append(answer.seconds)
            if status in (200, 201) and isinstance(ticket, dict) and "id" in ticket:
                fan.join_code = None
                fan.ticket_id, fan.secret = ticket["id"], ticket.get("secret")
                self.see_ticket(fan, ticket, answer.answered_at)
                return
            fan.join_code = ticket.get("code", "?") if isinstance(ticket, dict) else "?"
            if fan.join_code != "proof_invalid":
                return

    def see_ticket(self, fan: Fan, ticket: dict[str, Any], at: float) -> None:
        fan.status = ticket.get("status")
        eta = ticket.get("eta_seconds")
        fan.eta = float(eta) if isinstance(eta, (int, float)) else None
        if ticket.get("position") is not None:
            fan.position = int(ticket["position"])
        if ticket.get("pass"):
            fan.pass_ = ticket["pass"]
            expires = wall_of(ticket.get("pass_expires_at"))
            fan.pass_expires_wall = expires
            if expires is not None and fan.pass_issued_wall is None:
                fan.pass_issued_wall = expires - self.pass_seconds
        if fan.status in FINAL and fan.final_at is None:
            fan.final_at = at
            self.tally.final += 1
            if fan.status == "sold_out":
                self.tally.sold_out += 1
        if fan.status in ("admitted", "expired") and fan.admitted_at is None:
            fan.admitted_at = at
            self.tally.admitted += 1

    async def wait_turn(self, fan: Fan) -> None:
        assert fan.ticket_id is not None and fan.secret is not None
        path = f"/api/queue/{fan.ticket_id}?wait="
        while fan.status == "waiting":
            kind = "poll"
            if self.line.due(fan):
                wait = 0
            elif self.line.near(fan):
                try:
                    self.long_polls.acquire_on_behalf_of_nowait(fan.index)
                    # as long as the ticket's own eta (a lower bound) says, at least 1 s: a long poll that
                    # arrives just after the admission waits for the next change, so a short one near the front
                    wait = max(1, min(LONG_WAIT, math.floor(fan.eta))) if fan.eta is not None else 1
                except trio.WouldBlock:  # enough fans hold long polls: sleep until the line reaches this one
                    await self.line.sleep(fan, 0.5 + self.rng.random(), until_due=True)
                    continue
            elif await self.line.sleep(fan, self.fallback * (0.5 + self.rng.random())):
                continue  # woken: the line came near the fan; decide again
            else:
                wait, kind = 0, "fallback"  # the fallback read
            raw = request_bytes("GET", f"{path}{wait}", self.port, token=fan.secret)
            fan.polls += 1
            with trio.CancelScope() as scope:
                if wait:
                    self.line.polling(fan, scope)
                try:
                    answer = await self.call(fan, raw, kind, wait)
                finally:
                    self.line.polling(fan, None)
                    if wait:
                        self.long_polls.release_on_behalf_of(fan.index)
            if scope.cancelled_caught:
                self.line.cut += 1
                continue
            if answer is None:
                fan.error = "poll: no answer"
                return
            ticket = parse_json(answer.response.body)
            if answer.response.status != 200 or not isinstance(ticket, dict):
                fan.error = f"poll answered {answer.response.status}"
                return
            self.see_ticket(fan, ticket, answer.answered_at)

    def may_retry(self, fan: Fan) -> bool:
        """An admitted fan told sold_out / seat_unavailable tries again while its pass is valid and the
        line is not sold out (a seat may come back: a hold lapses or is cancelled)."""
        return (fan.pass_expires_wall is not None and time.time() + 2 * BOOK_RETRY < fan.pass_expires_wall
                and not self.line.sold_out and fan.booking_code in ("sold_out", "seat_unavailable"))

    async def book(self, fan: Fan, first: Answer | None = None) -> None:
        while True:
            raw = self.booking_request(fan)
            fan.booking_attempts += 1
            if first is not None:  # sent by the burst sender
                answer: Answer | None = first
                first = None
            else:
                answer = await self.call(fan, raw, "book")
            if answer is None:
                fan.error = "book: no answer"
                return
            status, booking = answer.response.status, parse_json(answer.response.body)
            if fan.booking_attempts == 1:
                fan.booking_status_code, fan.booking_seconds = status, answer.seconds
                self.tally.booked += 1
            if status in (200, 202) and isinstance(booking, dict) and "id" in booking:
                fan.booking_status_code, fan.booking_code = status, None
                fan.booked_at = answer.answered_at
                break
            fan.booking_status_code = status
            fan.booking_code = booking.get("code", "?") if isinstance(booking, dict) else "?"
            if fan.first_refusal is None:
                fan.first_refusal = fan.booking_code
            if fan.pass_ is None or not self.may_retry(fan):
                return
            await trio.sleep(BOOK_RETRY * (0.5 + self.rng.random()))
        fan.booking_id, fan.booking_secret = booking["id"], booking.get("secret")
        fan.booking_status = booking.get("status")
        while fan.booking_status == "pending":
            poll = request_bytes("GET", f"/api/bookings/{fan.booking_id}?wait={LONG_WAIT}", self.port,
                                 token=fan.booking_secret)
            async with self.decision_polls:
                answer = await self.call(fan, poll, "decision", LONG_WAIT)
            fan.decision_polls += 1
            decided = parse_json(answer.response.body) if answer is not None else None
            if answer is None or answer.response.status != 200 or not isinstance(decided, dict):
                fan.error = f"decision poll answered {answer.response.status if answer else 'nothing'}"
                return
            fan.booking_status = decided.get("status")
            if fan.booking_status != "pending":
                fan.decided_at = answer.answered_at
            fan.hold_expires_wall = wall_of(decided.get("expires_at"))
        if fan.booking_status != "held":
            return
        fan.offered = True
        self.tally.held += 1
        if self.rng.random() < self.options.abandon:
            fan.abandoned = True  # the hold lapses after hold_seconds and admits the next in line
            return
        confirm = request_bytes("POST", f"/api/bookings/{fan.booking_id}/confirm", self.port,
                                token=fan.booking_secret)
        answer = await self.call(fan, confirm, "confirm")
        confirmed = parse_json(answer.response.body) if answer is not None else None
        if answer is not None and answer.response.status == 200 and isinstance(confirmed, dict):
            fan.booking_status = confirmed.get("status")
            fan.confirmed = fan.booking_status == "confirmed"
            self.tally.confirmed += fan.confirmed
        else:
            fan.error = f"confirm answered {answer.response.status if answer else 'nothing'}"

    # ------------------------------------------------------------------ the burst sender

    async def burst(self, nursery: trio.Nursery, fans: trio.Nursery, connections: int) -> None:
        """Every fan's first request from the sender process (`sender.py`), on schedule; each fan goes on
        in this process (`run_fan` from its answer) as soon as its answer is read back. The watcher starts
        with the burst. A fan whose first request got no answer (its connection broke) goes on through
        the pool, with retries; its arrival stays when the sender sent it."""
        from . import sender as burst_sender  # here: `python -m ticketblitz.loadgen.sender` imports this module

        order = sorted(self.fans, key=lambda f: (f.offset, f.index))
        plan = burst_sender.Plan(self.port, connections, self.options.deadline_seconds,
                                 [(f.index, f.offset, self.first_request(f)) for f in order])
        shift = trio.current_time() - time.perf_counter()  # trio's clock is perf_counter + an offset
        with tempfile.TemporaryDirectory(prefix="tb-burst-") as tmp:
            path = Path(tmp) / "plan.pickle"
            burst_sender.write_plan(path, plan)
            proc = await trio.lowlevel.open_process([sys.executable, "-m", "ticketblitz.loadgen.sender", str(path)],
                                                    stdout=subprocess.PIPE)
            self.sender = {"pid": proc.pid, "command": f"{sys.executable} -m ticketblitz.loadgen.sender PLAN"}
            try:
                assert proc.stdout is not None
                limit = SENDER_START_SECONDS + self.options.arrival_seconds + self.options.deadline_seconds + 30
                with trio.move_on_after(limit):
                    await self._read_sender(proc.stdout, shift, nursery, fans)
            finally:
                if proc.returncode is None:
                    proc.kill()  # our own child, by its handle
                with trio.CancelScope(shield=True):
                    await proc.wait()
                self.sender["exit"] = proc.returncode

    async def _read_sender(self, stream: trio.abc.ReceiveStream, shift: float, nursery: trio.Nursery,
                           fans: trio.Nursery) -> None:
        buffer = bytearray()
        async for chunk in stream:
            buffer += chunk
            end = buffer.rfind(b"\n")
            if end < 0:
                continue
            lines = bytes(buffer[:end]).split(b"\n")
            del buffer[:end + 1]
            for line in lines:
                row = orjson.loads(line)
                if row[0] == "start":
                    self.t0 = row[1] + shift
                    self.deadline = self.t0 + self.options.arrival_seconds + self.options.deadline_seconds
                    if self.waiting_room:
                        nursery.start_soon(self.watch)
                    continue
                if row[0] == "done":
                    assert self.sender is not None
                    self.sender |= row[1]
                    continue
                index, sent, answered, status, body = row
                fan = self.fans[index]
                if sent is not None and fan.arrival is None:
                    fan.arrival = sent + shift
                    self.tally.arrived += 1
                if status:
                    first = Answer(HttpResponse(status, body.encode(), True), sent + shift, answered + shift)
                    fans.start_soon(self.run_fan, fan, first, False)
                else:
                    self.errors[f"burst_{body}"] += 1
                    fans.start_soon(self.run_fan, fan, None, False)

    # ------------------------------------------------------------------ the watcher

    async def watch(self) -> None:
        conn = KeepAliveConnection(self.port)
        raw = request_bytes("GET", f"/api/events/{self.event_id}/queue", self.port)
        try:
            while True:
                try:
                    started = trio.current_time()
                    with trio.fail_after(REQUEST_SLACK):
                        response = await conn.request(raw)
                    self.line.latencies.append(trio.current_time() - started)
                    line = parse_json(response.body)
                    if response.status == 200 and isinstance(line, dict):
                        self.line.update(line, trio.current_time() - self.t0)
                    else:
                        self.line.errors[f"status_{response.status}"] += 1
                except (OSError, trio.BrokenResourceError, ProtocolError, trio.TooSlowError) as exc:
                    self.line.errors[socket_error_kind("line", exc)] += 1
                    await conn.aclose()
                await trio.sleep(WATCH_EVERY)
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()


# ====================================================================== the run


@dataclass(slots=True)
class SaleReport:
    kind: str  # "waiting-room" | "direct"
    url: str
    event_id: str
    fans: int
    seats: int
    settings: dict[str, Any] | None
    connections: int
    arrival_seconds: float
    abandon: float
    hold_seconds: int
    arrivals: dict[str, Any]
    joins: dict[str, Any] | None
    tickets: dict[str, Any] | None
    admission: dict[str, Any] | None
    bookings: dict[str, Any]
    order: dict[str, Any] | None
    fairness: dict[str, Any]
    oversold: int
    verification: Verification
    probes: list[Check]
    requests: dict[str, Any]
    fan_errors: dict[str, int]
    driver_cpu_seconds: float
    wall_seconds: float
    line_history: list[tuple[Any, ...]] = field(default_factory=list)
    sender: dict[str, Any] | None = None  # the burst sender's numbers (SaleOptions.burst_connections)
    passed: bool = False
    exit_reasons: list[str] = field(default_factory=list)


def _ms(values: list[float]) -> dict[str, float | None]:
    s = sorted(values)
    return {"p50": percentile_ms(s, 50), "p90": percentile_ms(s, 90), "p99": percentile_ms(s, 99),
            "max": round(s[-1] * 1000, 1) if s else None}


def booking_summary(fans: list[Fan]) -> BurstSummary:
    """The booking requests' answers in the form `verify` reads (statuses, problem codes)."""
    tried = [f for f in fans if f.booking_status_code]
    statuses = Counter(str(f.booking_status_code) for f in tried)
    codes = Counter(f.booking_code for f in tried if f.booking_code is not None)
    without = sum(1 for f in tried if f.booking_status_code in (200, 202) and f.booking_id is None)
    lat = [f.booking_seconds for f in tried if f.booking_seconds is not None]
    return BurstSummary(clients=len(fans), connected=len(fans), connect_seconds=0.0, burst_seconds=0.0,
                        sent=len(tried), answered=len(tried), requests_per_second=0.0, send_spread_ms=None,
                        statuses=dict(sorted(statuses.items())), problem_codes=dict(codes.most_common()),
                        latency_ms=_ms(lat), socket_errors={}, success_without_booking=without,
                        driver_cpu_burst_seconds=0.0, driver_cpu_per_request_us=None)


def summarize(sale_kind: str, fans: list[Fan], t0: float, pass_seconds: float,
              line_history: list[tuple[Any, ...]] | None = None, wall_minus_trio: float = 0.0) -> dict[str, Any]:
    """The pure part of the report: arrivals, joins, final states, passes, bookings, order, fairness."""
    arrived = [f.arrival for f in fans if f.arrival is not None]
    out: dict[str, Any] = {"arrivals": {
        "arrived": len(arrived),
        "spread_s": round(max(arrived) - min(arrived), 3) if arrived else None,
        "late_p99_ms": percentile_ms(sorted(max(0.0, f.arrival - (t0 + f.offset)) for f in fans
                                            if f.arrival is not None), 99)}}
    booked = [f for f in fans if f.booking_status_code]
    out["bookings"] = {
        "requests": len(booked),
        "by_code": dict(sorted(Counter(str(f.booking_status_code) for f in booked).items())),
        "problem_codes": dict(Counter(f.booking_code for f in booked if f.booking_code).most_common()),
        "answer_ms": _ms([f.booking_seconds for f in booked if f.booking_seconds is not None]),
        # from the 202 to the fan seeing the decision (its long polls of GET /api/bookings/{id}?wait=N)
        "decision_seen_ms": _ms([f.decided_at - f.booked_at for f in fans
                                 if f.decided_at is not None and f.booked_at is not None]),
        "decision_polls": sum(f.decision_polls for f in fans),
        "held": sum(f.offered for f in fans),
        "confirmed": sum(f.confirmed for f in fans),
        "abandoned": sum(f.abandoned for f in fans),
        "final_status": dict(Counter(f.booking_status for f in fans if f.booking_status).most_common()),
    }
    out["fairness"] = overtakes((f.arrival, f.offered) for f in fans if f.arrival is not None).as_dict()
    if sale_kind != "waiting-room":
        out |= {"joins": None, "tickets": None, "admission": None, "order": None}
        return out
    joined = [f for f in fans if f.join_status]
    # joins answered per second, from the first request sent to the last join answered
    last_join = max((f.join_answered_at for f in joined if f.join_answered_at is not None), default=None)
    span = last_join - min(arrived) if last_join is not None and arrived else 0.0
    out["joins"] = {
        "answered": len(joined),
        "by_code": dict(sorted(Counter(str(f.join_status) for f in joined).items())),
        "problem_codes": dict(Counter(f.join_code for f in joined if f.join_code).most_common()),
        "answer_ms": _ms([f.join_seconds for f in joined if f.join_seconds is not None]),
        "from_arrival_ms": _ms([f.join_answered_at - f.arrival for f in joined
                                if f.join_answered_at is not None and f.arrival is not None]),
        "per_second": round(len(joined) / span, 1) if span > 0 else None,
        # the join phase on the wall clock (for the server's CPU over it): first request sent, last join answered
        "first_sent_wall": round(min(arrived) + wall_minus_trio, 3) if arrived else None,
        "last_answered_wall": round(last_join + wall_minus_trio, 3) if last_join is not None else None,
        "challenge_fetches": sum(f.challenge_fetches for f in fans),
        "pow_tries": sum(f.pow_tries for f in fans),
        "pow_seconds": round(sum(f.pow_seconds for f in fans), 3),
    }
    ticketed = [f for f in fans if f.ticket_id is not None]
    finals = Counter(f.status if f.final_at is not None else f"not final ({f.status})" for f in ticketed)
    all_final = bool(ticketed) and all(f.final_at is not None for f in ticketed)
    first = min(arrived) if arrived else t0
    last_final = max((f.final_at for f in ticketed if f.final_at is not None), default=None)
    server_empty = None  # the watcher's first read of the line sold out (every waiting ticket told at once)
    for sample in line_history or []:
        if sample[7]:
            server_empty = round(sample[0] - (first - t0), 3)
            break
    out["tickets"] = {
        "tickets": len(ticketed),
        "final_states": dict(finals.most_common()),
        "all_final": all_final,
        "time_to_all_final_s": round(last_final - first, 3) if all_final and last_final is not None else None,
        "line_empty_s": server_empty,
        "polls": sum(f.polls for f in fans),
    }
    admitted = [f for f in ticketed if f.admitted_at is not None]
    seen = [f.admitted_at for f in admitted if f.admitted_at is not None]
    lags = [f.admitted_at + wall_minus_trio - f.pass_issued_wall for f in admitted
            if f.admitted_at is not None and f.pass_issued_wall is not None]
    first_admit = min(seen, default=None)
    out["admission"] = {
        "passes_issued": len(admitted),
        # admitted fans whose booking with their pass was refused (4xx): at first, and in the end (a refused
        # fan tries again while its pass is valid)
        "admitted_refused_first": dict(Counter(f.first_refusal for f in admitted if f.first_refusal).most_common()),
        "admitted_refused": dict(Counter(f.booking_code or str(f.booking_status_code) for f in admitted
                                         if f.booking_status_code >= 400).most_common()),
        "booking_attempts": sum(f.booking_attempts for f in admitted),
        "sold_out_tickets": finals.get("sold_out", 0),
        "first_admission_s": round(first_admit - first, 3) if first_admit is not None else None,
        "seen_after_issue_ms": _ms([max(0.0, x) for x in lags]),
        "server_line": None,
    }
    positions = [f.position for f in admitted if f.position is not None]
    if all_final:
        ok, detail = prefix_order(positions)
        issued = [(f.position, f.pass_issued_wall) for f in admitted
                  if f.position is not None and f.pass_issued_wall is not None]
        out["order"] = {"checked": True, "ok": ok, "detail": detail,
                        "issue_inversions": issue_inversions(issued, tolerance=0.0)}
    else:
        out["order"] = {"checked": False, "ok": None, "detail": "not every fan saw its final state",
                        "issue_inversions": None}
    return out


async def _create(conn: KeepAliveConnection, port: int, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await conn.request(build_request("POST", "/api/events", port, body, token=token))
    if response.status in (401, 403):
        raise SetupError(f"creating the event: the server refused the admin token ({response.status}): pass "
                         "--admin-token or set TICKETBLITZ_ADMIN_TOKEN")
    if response.status != 201:
        raise SetupError(f"creating the event answered {response.status}: {response.body[:300]!r}")
    event: dict[str, Any] = response.json()
    return event


async def _probes(conn: KeepAliveConnection, port: int, event_id: str, pass_: str | None) -> list[Check]:
    """A booking without a pass and one with a forged pass must be refused (403) and create nothing."""
    checks = []
    path = f"/api/events/{event_id}/bookings"
    body = {"user_id": "probe-no-pass", "quantity": 1}
    answer = await conn.request(request_bytes("POST", path, port, body))
    code = (parse_json(answer.body) or {}).get("code") if answer.status >= 400 else None
    checks.append(Check("booking without Queue-Pass refused", answer.status == 403 and code == "queue_required",
                        f"{answer.status} {code}"))
    forged = (pass_ or "x.y")[:-2] + ("AA" if not (pass_ or "").endswith("AA") else "BB")
    answer = await conn.request(request_bytes("POST", path, port, {"user_id": "fan-0", "quantity": 1},
                                              headers={"Queue-Pass": forged}))
    code = (parse_json(answer.body) or {}).get("code") if answer.status >= 400 else None
    checks.append(Check("booking with a forged Queue-Pass refused", answer.status == 403 and code == "pass_invalid",
                        f"{answer.status} {code}"))
    return checks


async def run_sale(options: SaleOptions, tally: SaleTally | None = None,
                   on_started: Callable[[dict[str, Any]], None] | None = None) -> SaleReport:
    """Create (or check) the event, release the fans, wait until every fan is done or the deadline,
    read everything back and verify."""
    port = parse_target(options.url).port
    tally = tally if tally is not None else SaleTally()
    tally.fans = options.fans
    note = options.log or (lambda _: None)
    kind = "waiting-room" if options.settings is not None else "direct"
    setup = KeepAliveConnection(port)
    with trio.fail_after(60):
        if options.event_id is not None:
            event = await fetch_json(setup, port, f"/api/events/{options.event_id}")
            if event["counts"]["available"] != options.seats or event["capacity"] != options.seats:
                raise SetupError(f"--event-id {options.event_id}: needs a fresh event of {options.seats} seats")
            if (event.get("waiting_room") is None) == (options.settings is not None):
                raise SetupError(f"--event-id {options.event_id}: "
                                 + ("has no waiting room" if options.settings else "has a waiting room"))
        else:
            name = f"flash {kind} {options.fans}x{options.seats} {time.strftime('%H:%M:%S')}"
            event = await _create(setup, port, options.admin_token,
                                  sale_event_body(name, options.seats, options.settings, options.hold_seconds))
            if options.settings is not None and not isinstance(event.get("waiting_room"), dict):
                raise SetupError(f"the server created {event['id']} without a waiting room: does it speak API 1.2? "
                                 f"(the answer: {orjson.dumps(event)[:300]!r})")
    await setup.aclose()
    tally.event_id = event["id"]
    if on_started is not None:
        on_started(event)
    sale = Sale(options, port, event, tally)
    note(f"event {event['id']}: {options.seats} seats, {kind}; {options.fans} fans over "
         f"{options.arrival_seconds:g} s on at most {options.connections} connections ...")
    started_wall = time.time()
    cpu_before = cpu_seconds()
    tally.phase = "selling"
    async with trio.open_nursery() as nursery:
        if options.burst_connections is not None:
            async with trio.open_nursery() as fans:
                await sale.burst(nursery, fans, options.burst_connections)
        else:
            if sale.waiting_room:
                nursery.start_soon(sale.watch)
            # spawning 50,000 tasks takes about a second: the clock starts once they are all waiting
            sale.t0 = trio.current_time() + 0.2 + options.fans * 20e-6
            sale.deadline = sale.t0 + options.arrival_seconds + options.deadline_seconds
            async with trio.open_nursery() as fans:
                for fan in sale.fans:
                    fans.start_soon(sale.run_fan, fan)
        nursery.cancel_scope.cancel()
    sale.line.wake_all()
    lapsing = [f.hold_expires_wall for f in sale.fans if f.abandoned and f.hold_expires_wall is not None]
    if lapsing:  # let the abandoned holds lapse first, so that the state read back is a settled one
        tally.phase = "lapsing"
        wait = min(max(lapsing) - time.time() + LAPSE_SLACK, options.hold_seconds + LAPSE_SLACK)
        note(f"waiting {max(0.0, wait):.1f} s for {len(lapsing)} abandoned holds to lapse ...")
        await trio.sleep(max(0.0, wait))
    tally.phase = "verifying"
    note("every fan is done; reading the event back ...")
    verify_conn = KeepAliveConnection(port)
    with trio.fail_after(120):
        bookings = await _read_bookings(sale, options.admin_token)
        final_event = await fetch_json(verify_conn, port, f"/api/events/{sale.event_id}")
        seats = (await fetch_json(verify_conn, port, f"/api/events/{sale.event_id}/seats"))["seats"]
        line = await fetch_json(verify_conn, port, f"/api/events/{sale.event_id}/queue") if sale.waiting_room else None
        pass_ = next((f.pass_ for f in sale.fans if f.pass_), None)
        probes = await _probes(verify_conn, port, sale.event_id, pass_) if sale.waiting_room else []
    await verify_conn.aclose()
    await sale.pool.aclose()
    undecided = [b for b, v in bookings.items() if v.get("status") == "pending"]
    verification = verify(final_event, seats, bookings, undecided, options.seats, booking_summary(sale.fans))
    parts = summarize(kind, sale.fans, sale.t0, sale.pass_seconds, sale.line.history, sale.wall_minus_trio)
    if parts["admission"] is not None:
        admission = parts["admission"]
        admission["server_line"] = line
        admission["lapsed_holds"] = sum(1 for b in bookings.values() if b.get("status") == "expired")
        # passes beyond what the seats allow: seats + lapsed holds (each lapse admits one more)
        admission["passes_beyond_seats"] = admission["passes_issued"] - options.seats - admission["lapsed_holds"]
    tally.phase = "done"
    return SaleReport(
        kind=kind, url=options.url, event_id=sale.event_id, fans=options.fans, seats=options.seats,
        settings=event.get("waiting_room"), connections=options.connections,
        arrival_seconds=options.arrival_seconds, abandon=options.abandon, hold_seconds=int(event["hold_seconds"]),
        arrivals=parts["arrivals"], joins=parts["joins"], tickets=parts["tickets"], admission=parts["admission"],
        bookings=parts["bookings"], order=parts["order"], fairness=parts["fairness"],
        oversold=verification.oversold, verification=verification, probes=probes,
        requests={"total": sale.pool.requests, "connections_made": sale.pool.opened,
                  "connections_discarded": sale.pool.discarded, "retried": dict(sale.errors.most_common()),
                  "retried_answers": sale.samples,
                  "long_polls_cut": sale.line.cut, "line_reads": sale.line.reads,
                  "line_read_ms": _ms(sale.line.latencies),
                  "line_errors": dict(sale.line.errors)},
        fan_errors=dict(Counter(f.error.split(":")[0] if ":" in f.error else f.error
                                for f in sale.fans if f.error).most_common()),
        driver_cpu_seconds=round(cpu_seconds() - cpu_before, 3), wall_seconds=round(time.time() - started_wall, 3),
        line_history=sale.line.history, sender=sale.sender,
    )


async def _read_bookings(sale: Sale, token: str) -> dict[str, dict[str, Any]]:
    """Every booking the fans made, as the server has it now (holds may have lapsed since)."""
    found: dict[str, dict[str, Any]] = {}
    ids = [f.booking_id for f in sale.fans if f.booking_id is not None]

    async def read(booking_id: str) -> None:
        reader = Fan(-1, "reader", 0.0)
        answer = await sale.call(reader, request_bytes("GET", f"/api/bookings/{booking_id}", sale.port,
                                                       token=token), "read")
        body = parse_json(answer.response.body) if answer is not None else None
        if answer is not None and answer.response.status == 200 and isinstance(body, dict):
            found[booking_id] = body

    async with trio.open_nursery() as nursery:
        for booking_id in ids:
            nursery.start_soon(read, booking_id)
    return found


def judge_sale(report: SaleReport, allow_errors: bool = False) -> None:
    reasons = report.exit_reasons
    if not report.verification.ok:
        reasons.append("verification failed")
    if report.oversold:
        reasons.append(f"oversold {report.oversold}")
    if report.tickets is not None and not report.tickets["all_final"]:
        reasons.append("not every ticket reached a final state")
    if report.order is not None and report.order["checked"] and not report.order["ok"]:
        reasons.append("admission order is not position order")
    failed = [p.name for p in report.probes if not p.ok]
    if failed:
        reasons.append("probes failed: " + ", ".join(failed))
    if report.fan_errors and not allow_errors:
        reasons.append(f"fans failed: {report.fan_errors} (use --allow-socket-errors to accept them)")
    report.passed = not reasons


def report_json(report: SaleReport, history: bool = False) -> dict[str, Any]:
    doc = asdict(report)
    if not history:
        doc.pop("line_history")
    return doc


__all__ = ["ALLOWED_HOST", "MAX_CONNECTIONS", "MAX_QUEUE_FANS", "MODES", "Fan", "Overtakes", "SaleOptions",
           "SaleReport", "SaleTally", "WaitingRoomSettings", "arrival_offsets", "booking_summary", "judge_sale",
           "report_json", "request_bytes", "run_sale", "summarize"]
