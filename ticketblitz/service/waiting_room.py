"""The waiting room (docs/API.md, "Waiting room"): joins batched into one store transaction per tick,
an admitter that ticks every line, long-polls on tickets, and the pass check of the booking routes.

The state is the store's (SQLite embedded, PostgreSQL distributed: `adapters/waiting_room_sql.py`), so a
restart or a crashed worker loses no place in line and any worker answers any ticket. Every process runs
the admitter; the store serializes their ticks on the line's row, and the rate is the line's own token
bucket, so two processes admit no faster than one.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..config import Settings
from ..domain import ownership
from ..domain import waiting_room as rules
from ..domain.errors import (
    BookingError,
    NotFound,
    NoWaitingRoom,
    PassInvalid,
    ProofInvalid,
    ProofRequired,
    QueueRequired,
    RateLimited,
    SaleNotStarted,
    Unauthorized,
    Unavailable,
)
from ..domain.model import Event
from ..domain.waiting_room import Line, Ticket, TicketStatus
from ..ports import Store
from ..telemetry import Telemetry, iso_time
from .catalog import EventCatalog
from .keys import SecretIssuer
from .waiters import Waiters

log = logging.getLogger("ticketblitz.waiting_room")

TICK = 0.1  # seconds between two admitter ticks of every line
REFRESH = 2.0  # seconds between two looks for lines made by other processes
MAX_JOIN_BATCH = 2000  # joins in one store transaction
MAX_JOINS_WAITING = 50_000  # joins waiting for their transaction; beyond: 429
SECRET_PURPOSE = "ticketblitz queue ticket"
SOLD_OUT_TICK = 1.0  # seconds between two ticks of a sold-out line
WATCH_FALLBACK = 5.0  # a waiting long-poll looks at the store at least this often


@dataclass(slots=True)
class _Join:
    event_id: str
    ticket_id: str
    user_id: str
    digest: str
    done: trio.Event = field(default_factory=trio.Event)
    result: tuple[Ticket, bool, Line] | None = None
    error: BookingError | None = None


@dataclass(frozen=True, slots=True)
class Joined:
    ticket: Ticket
    line: Line
    created: bool
    secret: str


class WaitingRoomService:
    def __init__(self, settings: Settings, store: Store, catalog: EventCatalog, secrets: SecretIssuer,
                 waiters: Waiters, telemetry: Telemetry, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.secrets = secrets
        self.waiters = waiters
        self.telemetry = telemetry
        self.clock = clock
        self._seen: dict[str, tuple[Line, float]] = {}  # event id -> (its line at this process's last tick, when)
        # event id -> (the newest line this process saw, from a tick or a batch of joins, when): what reads
        # answer, so that a fan who was just answered 201 is counted in the next read of the line
        self._latest: dict[str, tuple[Line, float]] = {}
        self._tracked: set[str] = set()  # events whose lines this process ticks
        # long-polls of waiting tickets: ticket id -> its event, set when the line reaches its position (or
        # draws its pre-queue, or sells out); per line a heap of (position, ticket id), and the pre-queue's
        self._watched: dict[str, trio.Event] = {}
        self._heaps: dict[str, list[tuple[int, str]]] = {}
        self._prequeue: dict[str, set[str]] = {}
        self._joins: list[_Join] = []
        self._join_wake = trio.Event()
        self._key: bytes | None = None

    @property
    def lines(self) -> dict[str, Line]:
        """Event id -> the line as of this process's last tick."""
        return {event_id: line for event_id, (line, _) in self._seen.items()}

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = rules.room_key(self.secrets.key)
        return self._key

    # ------------------------------------------------------------------ lifetime
    def track(self, event: Event) -> None:
        if event.waiting_room is not None:
            self._tracked.add(event.id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._join_loop)
            nursery.start_soon(self._admit_loop)
            task_status.started()

    async def _refresh(self) -> None:
        for event in await self.store.list_events():
            self.catalog.remember(event)
            self.track(event)

    async def _admit_loop(self) -> None:
        next_refresh = 0.0
        while True:
            now = trio.current_time()
            if now >= next_refresh:
                try:
                    await self._refresh()
                except Unavailable as exc:
                    log.warning("waiting room: could not list events: %s", exc.detail)
                next_refresh = now + REFRESH
            for event_id in sorted(self._tracked):
                seen = self._seen.get(event_id)
                if seen is not None and seen[0].sold_out and now - seen[1] < SOLD_OUT_TICK:
                    continue  # a sold-out line admits nothing more: its passes' expiry is counted once a second
                try:
                    await self.tick(event_id)
                except Unavailable as exc:
                    log.warning("waiting room: tick of %s failed, next tick retries: %s", event_id, exc.detail)
                except Exception:  # a surprise stays in this tick: the line is the store's, the next tick retries
                    log.exception("waiting room: tick of %s failed", event_id)
            self.telemetry.queue_waiting = sum(line.waiting for line, _ in self._seen.values())
            await trio.sleep(TICK)

    async def tick(self, event_id: str) -> Line | None:
        """One admitter step of one line (also what tests call to move a line by hand)."""
        result = await self.store.queue_tick(event_id, self.clock())
        if result is None:
            self._tracked.discard(event_id)
            return None
        seen = self._seen.get(event_id)
        before = seen[0] if seen is not None else None
        line = result.line
        self._seen[event_id] = (line, trio.current_time())
        self._saw(line)
        joins = line.joined - (before.joined if before is not None else 0)
        if result.changed or joins or before is None:
            self.telemetry.line(line.as_json(), admits=result.admitted, joins=max(0, joins),
                                expired=result.expired, sold_out=result.sold_out)
            self._wake(line)
        if result.sold_out:
            log.info("waiting room %s sold out: %d tickets told at once", event_id, result.sold_out)
        return line

    def _watch(self, ticket: Ticket) -> trio.Event:
        """The event set when this waiting ticket may have changed (one per ticket, shared by its polls)."""
        event = self._watched.get(ticket.id)
        if event is None:
            event = self._watched[ticket.id] = trio.Event()
            if ticket.position is None:
                self._prequeue.setdefault(ticket.event_id, set()).add(ticket.id)
            else:
                heapq.heappush(self._heaps.setdefault(ticket.event_id, []), (ticket.position, ticket.id))
        return event

    def _wake(self, line: Line) -> None:
        """Wake the long-polls whose tickets the line just reached: each is woken once, not every tick."""
        woken: list[str] = []
        heap = self._heaps.get(line.event_id)
        if heap:
            reach = line.last_position if line.sold_out else line.admitted_through
            while heap and heap[0][0] <= reach:
                woken.append(heapq.heappop(heap)[1])
        if line.opened:
            woken.extend(self._prequeue.pop(line.event_id, ()))
        for ticket_id in woken:
            event = self._watched.pop(ticket_id, None)
            if event is not None:
                event.set()

    # ------------------------------------------------------------------ joining
    async def _room_of(self, event_id: str) -> Event:
        event = await self.catalog.known(event_id)
        if event.waiting_room is None:
            raise NoWaitingRoom(f"event {event_id} has no waiting room")
        return event

    async def challenge(self, event_id: str) -> dict[str, object]:
        event = await self._room_of(event_id)
        assert event.waiting_room is not None
        challenge, expires = rules.issue_challenge(self.key, event_id, self.clock())
        return {"event_id": event_id, "challenge": challenge, "bits": event.waiting_room.challenge_bits,
                "expires_at": iso_time(expires)}

    def secret_of(self, ticket_id: str, user_id: str) -> str:
        """A ticket's secret: derived, so that the `200` of a repeated join hands the same one back."""
        return ownership.derived_secret(self.secrets.key, ticket_id, f"{SECRET_PURPOSE}\x1f{user_id}")

    async def join(self, event_id: str, user_id: str, challenge: str | None, proof: str | None) -> Joined:
        event = await self._room_of(event_id)
        room = event.waiting_room
        assert room is not None
        if room.challenge_bits > 0:
            wrong = rules.check_proof(self.key, challenge, proof, event_id=event_id, user_id=user_id,
                                      bits=room.challenge_bits, now=self.clock())
            if wrong == "missing":
                raise ProofRequired(f"challenge/proof: event {event_id} asks for a proof of work of "
                                    f"{room.challenge_bits} bits (GET /api/events/{event_id}/queue/challenge)",
                                    field="proof")
            if wrong is not None:
                raise ProofInvalid(wrong, field=wrong.split(":", 1)[0])
        if len(self._joins) >= MAX_JOINS_WAITING:
            raise RateLimited("the waiting room is taking joins as fast as it can; retry shortly", retry_after=1)
        ticket_id = rules.new_ticket_id()
        secret = self.secret_of(ticket_id, user_id)
        pending = _Join(event_id, ticket_id, user_id, ownership.secret_hash(secret))
        self._joins.append(pending)
        self._join_wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        ticket, created, line = pending.result
        # a repeated join gets its first ticket, whose secret is derived from that ticket's id
        return Joined(ticket, line, created, secret if ticket.id == ticket_id else self.secret_of(ticket.id, user_id))

    async def _join_loop(self) -> None:
        while True:
            await self._join_wake.wait()
            self._join_wake = trio.Event()
            while self._joins:
                batch, self._joins = self._joins[:MAX_JOIN_BATCH], self._joins[MAX_JOIN_BATCH:]
                by_event: dict[str, list[_Join]] = {}
                for join in batch:
                    by_event.setdefault(join.event_id, []).append(join)
                for event_id, joins in by_event.items():
                    await self._join_batch(event_id, joins)

    async def _join_batch(self, event_id: str, joins: list[_Join]) -> None:
        # shielded: the transaction's outcome must reach its joiners (the store call has its own deadline)
        with trio.CancelScope(shield=True):
            try:
                done = await self.store.queue_join(
                    event_id, [(j.ticket_id, j.user_id, j.digest) for j in joins], self.clock())
            except BookingError as exc:
                self._fail(joins, exc)
                return
            except Exception:  # a surprise fails this batch's joins (503: nothing was recorded), not the server
                log.exception("waiting room: a batch of %d joins failed", len(joins))
                self._fail(joins, Unavailable("the waiting room could not record the join; nothing was recorded"))
                return
        if done is None:
            self._fail(joins, NoWaitingRoom(f"event {event_id} has no waiting room"))
            return
        results, line = done
        self._saw(line)
        self.telemetry.joined(event_id, sum(1 for _, created in results if created))
        for join, (ticket, created) in zip(joins, results, strict=True):
            join.result = (ticket, created, line)
            join.done.set()

    @staticmethod
    def _fail(joins: list[_Join], error: BookingError) -> None:
        for join in joins:
            join.error = error
            join.done.set()

    def _saw(self, line: Line) -> None:
        """Keep `line` as the newest view unless the one kept is newer: a line only grows (joined,
        ticked_at, admitted, expired), so a tick that read the row before a batch of joins committed is
        older than that batch's line although it may be heard after it."""
        kept = self._latest.get(line.event_id)
        if kept is not None and (kept[0].joined > line.joined or kept[0].ticked_at > line.ticked_at
                                 or kept[0].admitted > line.admitted or kept[0].expired > line.expired):
            return
        self._latest[line.event_id] = (line, trio.current_time())

    # ------------------------------------------------------------------ reading
    async def line(self, event_id: str) -> Line:
        """The line: this process's newest view (its last tick, or a batch of joins after it) when less than
        two ticks old, else the store's."""
        await self._room_of(event_id)
        seen = self._latest.get(event_id)
        if seen is not None and trio.current_time() - seen[1] < 2 * TICK:
            return seen[0]
        line = await self.store.queue_line(event_id)
        if line is None:
            raise NotFound(f"event {event_id} has no line yet")
        return line

    async def _owned(self, ticket_id: str, credential: str | None) -> tuple[Ticket, Line]:
        if not credential:
            raise Unauthorized("a ticket is read with Authorization: Bearer <its secret>")
        found = await self.store.queue_ticket(ticket_id)
        if found is not None:
            ticket, line = found
            if ownership.is_token(self.settings.admin_token, credential) or ownership.holds(ticket.secret_hash,
                                                                                              credential):
                return rules.ticket_status(ticket, self.clock()), line
        raise NotFound(f"ticket {ticket_id} does not exist")

    def _may_change(self, ticket: Ticket) -> bool:
        """Whether this process's view of the line says the ticket may have changed (worth a store read)."""
        seen = self._seen.get(ticket.event_id)
        if seen is None or ticket.status is not TicketStatus.WAITING:
            return True
        line = seen[0]
        if line.sold_out:
            return True
        if ticket.position is None:
            return line.opened
        return line.admitted_through >= ticket.position

    async def ticket(self, ticket_id: str, credential: str | None, wait: float = 0.0) -> tuple[Ticket, Line]:
        """The ticket; with `wait` > 0, long-poll until its status or position changes."""
        ticket, line = await self._owned(ticket_id, credential)
        if wait <= 0 or ticket.status is not TicketStatus.WAITING:
            return ticket, line  # (an admitted ticket answers at once: a poll sent just after it was admitted
            #                      must not wait for the pass to expire)
        seen = (ticket.status, ticket.position)
        async with self.waiters.slot(min(wait, self.settings.max_wait)) as waiting:
            with waiting:
                while (ticket.status, ticket.position) == seen:
                    with trio.move_on_after(WATCH_FALLBACK):  # (a line this process does not tick yet)
                        await self._watch(ticket).wait()
                    if not self._may_change(ticket):
                        continue
                    ticket, line = await self._owned(ticket_id, credential)
        return ticket, line

    def pass_of(self, ticket: Ticket) -> str | None:
        return rules.issue_pass(self.key, ticket) if ticket.status is TicketStatus.ADMITTED else None

    # ------------------------------------------------------------------ the booking routes' gate
    def check_booking(self, event: Event, user_id: str, token: str | None) -> None:
        """Raise unless a booking request for `event` by `user_id` may go on (no store read)."""
        now = self.clock()
        if event.waiting_room is None:
            if event.sale_starts_at is not None and now < event.sale_starts_at:
                raise SaleNotStarted(f"event {event.id}: the sale starts in {math.ceil(event.sale_starts_at - now)} s")
            return
        verdict = rules.check_pass(self.key, token, event_id=event.id, user_id=user_id, now=now)
        if verdict is rules.PassVerdict.MISSING:
            raise QueueRequired(f"event {event.id} sells through its waiting room: join POST /api/events/{event.id}"
                                "/queue, then book with the header Queue-Pass: <pass>")
        if verdict is rules.PassVerdict.INVALID:
            raise PassInvalid("Queue-Pass: forged, expired, or for another user or event")
