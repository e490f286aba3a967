"""The intake batcher: every booking request that arrives during one tick is admitted at the edge in one
call and made durable in one enqueue, then each caller gets its answer.

What it promises: a `202` (created) only once the queue holds the booking; anything else is an answer
after which nothing stays reserved. Where an outcome is in doubt — an admission whose reply was lost, a
Kafka produce that failed but may have been written — it is made certain (the admission abandoned, the
booking tombstoned in the store) before or after answering, never left to chance. Back-pressure: a
bounded line of waiting requests (`429` beyond it) and a breaker that answers `503` at once for a moment
after the queue failed, instead of making every request wait out another deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..config import Settings
from ..domain import rules
from ..domain.errors import BookingError, IdempotencyConflict, RateLimited, Unavailable
from ..domain.model import Booking, BookingRequest, BookingStatus, new_booking_id
from ..ports import Admission, AdmitItem, BookingQueue, Store
from ..telemetry import Telemetry, verdict_of
from .catalog import EventCatalog
from .followups import EdgeFollowUps
from .keys import SecretIssuer

log = logging.getLogger("ticketblitz.intake")

BREAKER_OPEN_S = 1.0  # after a failed enqueue, answer 503 at once for this long, then try again


@dataclass(frozen=True, slots=True)
class Accepted:
    """An answer of intake: the booking, whether this request created it (202) or repeats it (200), and
    its secret (None on a repeat whose secret cannot be rebuilt)."""

    booking: Booking
    created: bool
    secret: str | None


@dataclass(slots=True)
class _Ticket:
    """One booking request waiting in the batcher for its answer."""

    request: BookingRequest
    done: trio.Event = field(default_factory=trio.Event)
    result: Accepted | None = None
    error: BookingError | None = None

    def succeed(self, result: Accepted) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: BookingError) -> None:
        self.error = error
        self.done.set()


class QueueBreaker:
    """After the queue failed, requests hear 503 at once for `open_for` seconds; then one batch tries."""

    def __init__(self, clock: Callable[[], float] = trio.current_time, open_for: float = BREAKER_OPEN_S) -> None:
        self._clock = clock
        self._open_for = open_for
        self._open_until = 0.0
        self.trips = 0

    def check(self) -> None:
        if self._clock() < self._open_until:
            raise Unavailable("the booking queue failed a moment ago; nothing was accepted, retry shortly",
                              component="queue")

    def trip(self) -> None:
        self.trips += 1
        self._open_until = self._clock() + self._open_for

    def heal(self) -> None:
        self._open_until = 0.0


class IntakeBatcher:
    def __init__(self, settings: Settings, store: Store, queue: BookingQueue, admission: Admission,
                 catalog: EventCatalog, followups: EdgeFollowUps, secrets: SecretIssuer, telemetry: Telemetry,
                 clock: Callable[[], float], *, requeue_after: float) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.admission = admission
        self.catalog = catalog
        self.followups = followups
        self.secrets = secrets
        self.telemetry = telemetry
        self.clock = clock
        self.breaker = QueueBreaker()
        self.accepting = False
        # a repeat finds its first request's booking admitted but not known to be queued: after this long
        # that request has surely ended (its produce and tombstone deadlines are over), so the booking
        # may be in no queue and is queued again (a duplicate is harmless)
        self.requeue_after = requeue_after
        self._send, self._recv = trio.open_memory_channel[_Ticket](settings.intake_limit)

    def waiting(self) -> int:
        """Requests in line for the next batches."""
        return self._recv.statistics().current_buffer_used

    # ------------------------------------------------------------------ the callers' side
    async def submit(self, request: BookingRequest) -> Accepted:
        """Queue a booking request durably, or raise the domain error that says why not."""
        if not self.accepting:
            raise Unavailable("the server is shutting down; retry on another instance", component="queue")
        self.breaker.check()
        ticket = _Ticket(request)
        try:
            self._send.send_nowait(ticket)
        except trio.WouldBlock:
            raise RateLimited(f"{self.settings.intake_limit} booking requests are waiting here already; "
                              "retry shortly", retry_after=1) from None
        # A caller that goes away still gets its request processed: the booking is made either way, and a
        # retry with the same Idempotency-Key finds it.
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    # ------------------------------------------------------------------ the task
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take every request that arrived during one tick and admit and enqueue them together."""
        task_status.started()
        while True:
            batch = [await self._recv.receive()]
            while len(batch) < self.settings.intake_batch:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            # Shielded: a batch's admission, enqueue and follow-ups belong together (each call has its
            # own deadline, so this ends); a shutdown waits for it instead of leaving it half done.
            with trio.CancelScope(shield=True):
                try:
                    await self.admit_batch(batch)
                except Exception:
                    log.exception("intake batch of %d failed", len(batch))
                    for t in batch:
                        if not t.done.is_set():
                            t.fail(Unavailable("intake failed; nothing was accepted", component="queue"))

    async def admit_batch(self, tickets: list[_Ticket]) -> None:
        now = self.clock()
        first_of_key: dict[tuple[str, str], _Ticket] = {}
        followers: list[tuple[_Ticket, _Ticket]] = []
        candidates: list[tuple[_Ticket, Booking, str]] = []
        room = self.settings.queue_limit - self.queue.depth()
        for t in tickets:
            try:
                event = await self.catalog.known(t.request.event_id)
                t.request = rules.fit_request_to_event(event, t.request)
            except BookingError as exc:
                t.fail(exc)
                continue
            r = t.request
            if r.idempotency_key is not None:
                first = first_of_key.get((r.event_id, r.idempotency_key))
                if first is not None:  # a concurrent repeat in the same tick waits for the first's answer
                    followers.append((t, first))
                    continue
                first_of_key[(r.event_id, r.idempotency_key)] = t
            if room <= 0:
                t.fail(RateLimited("the booking queue is full; retry shortly", retry_after=1))
                continue
            room -= 1
            booking_id = new_booking_id()
            secret, digest = self.secrets.issue(booking_id, r.idempotency_key)
            candidates.append((t, Booking(
                id=booking_id, event_id=r.event_id, user_id=r.user_id, quantity=r.quantity,
                requested_seats=r.seat_ids, status=BookingStatus.PENDING, created_at=now, updated_at=now,
                idempotency_key=r.idempotency_key, fingerprint=r.fingerprint, secret_hash=digest,
            ), secret))
        if candidates:
            await self._admit(candidates)
        for follower, first in followers:
            if first.error is not None:
                follower.fail(first.error)
            elif first.result is not None:
                b = first.result.booking
                await self._answer_repeat(follower, b.id, b.fingerprint)

    async def _admit(self, candidates: list[tuple[_Ticket, Booking, str]]) -> None:
        bookings = [b for _, b, _ in candidates]
        try:
            results = await self.admission.admit(
                [AdmitItem(b, force=t.request.admission == "queue") for t, b, _ in candidates])
        except Unavailable as exc:
            for b in bookings:
                self.telemetry.admission("unavailable", b.event_id, b.quantity, b.id)
            # the script may have run and only its answer been lost: undo whatever it did
            await self.followups.abandon(bookings)
            for t, _, _ in candidates:
                t.fail(exc)
            return
        accepted: list[tuple[_Ticket, Booking, str]] = []
        for (t, b, secret), result in zip(candidates, results, strict=True):
            self.telemetry.admission("repeat" if result.repeat_of is not None else verdict_of(result.error),
                                     b.event_id, b.quantity, b.id)
            if result.repeat_of is not None:
                await self._answer_repeat(t, result.repeat_of, result.repeat_fingerprint)
            elif result.error is not None:
                t.fail(result.error)
            else:
                accepted.append((t, b, secret))
        if accepted:
            await self._enqueue(accepted)

    async def _enqueue(self, accepted: list[tuple[_Ticket, Booking, str]]) -> None:
        bookings = [b for _, b, _ in accepted]
        try:
            results = await self.queue.enqueue(bookings)
        except Unavailable as exc:
            self.breaker.trip()
            await self._enqueue_failed(accepted, exc)
            return
        self.breaker.heal()
        if not self.queue.durable_in_store:
            await self.followups.mark_queued(bookings)
        produced = 0
        for (t, b, secret), earlier in zip(accepted, results, strict=True):
            if earlier is not None:  # another process or path took the key first
                await self.followups.withdraw([b])
                await self._answer_repeat(t, earlier.id, earlier.fingerprint)
            else:
                produced += 1
                t.succeed(Accepted(b, True, secret))
                self.telemetry.booking(b)
        partition, offset = self.queue.produced_at
        self.telemetry.queued("produced", produced, partition, offset)

    async def _enqueue_failed(self, accepted: list[tuple[_Ticket, Booking, str]], exc: Unavailable) -> None:
        """The queue refused: nothing was accepted. Embedded, nothing was written; Kafka, a produce may
        still have landed, so the store settles it (tombstone) before the 503 can be true."""
        bookings = [b for _, b, _ in accepted]
        if self.queue.durable_in_store:
            await self.followups.abandon(bookings)
            for t, _, _ in accepted:
                t.fail(exc)
            return
        resolved = await self.followups.tombstone(bookings)
        already = {b.id: b for b in resolved.accepted} if resolved is not None else {}
        for t, b, secret in accepted:
            stored = already.get(b.id)
            if stored is not None:  # a consumer had decided it already: it was accepted after all
                t.succeed(Accepted(stored, True, secret))
            else:
                t.fail(exc)

    async def _answer_repeat(self, ticket: _Ticket, booking_id: str, fingerprint: str | None) -> None:
        """An Idempotency-Key seen before: the earlier booking (200), made sure to be on its way."""
        key = ticket.request.idempotency_key
        if fingerprint != ticket.request.fingerprint:
            ticket.fail(IdempotencyConflict(
                f"Idempotency-Key {key!r} was used with a different body (booking {booking_id})",
                field="Idempotency-Key"))
            return
        try:
            earlier = await self.store.get_booking(booking_id)
            if earlier is not None:
                if earlier.status is BookingStatus.PENDING and self.queue.durable_in_store:
                    await self.queue.requeue([earlier])  # cheap, and certain: in line, whatever happened
                ticket.succeed(Accepted(earlier, False, self.secrets.recover(earlier, key)))
                return
            record = await self.admission.pending(booking_id)
            if record is None:
                # a consumer may have stored and settled it between the two reads
                earlier = await self.store.get_booking(booking_id)
                if earlier is None:
                    ticket.fail(Unavailable(f"booking {booking_id} is not readable yet; retry", component="store"))
                else:
                    ticket.succeed(Accepted(earlier, False, self.secrets.recover(earlier, key)))
                return
            if not record.queued:
                if self.clock() - record.admitted_at < self.requeue_after:
                    ticket.fail(Unavailable("the first request with this Idempotency-Key is still being queued; "
                                            "retry shortly", component="queue"))
                    return
                # its first request ended without knowing the queue has it: make sure it does
                await self.queue.requeue([record.booking])
                await self.followups.mark_queued([record.booking])
            ticket.succeed(Accepted(record.booking, False, self.secrets.recover(record.booking, key)))
        except BookingError as exc:
            ticket.fail(exc)
