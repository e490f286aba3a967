"""The booking service: plain Trio code that both HTTP doors call. It owns the intake batcher, the
consumer tasks and the hold sweeper, and talks to the store, queue and locks through their ports."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from .config import Settings
from .domain import rules
from .domain.errors import (
    REJECTION_ERRORS,
    BookingError,
    IdempotencyConflict,
    NotFound,
    RateLimited,
    SeatUnavailable,
    Unavailable,
)
from .domain.model import Booking, BookingRequest, BookingStatus, Event, Seat, SeatStatus, new_booking_id
from .ports import Admission, AdmitItem, BookingQueue, SeatLease, SeatLocks, Store
from .telemetry import Telemetry

log = logging.getLogger("ticketblitz.service")

DEMO_EVENT_ID = "evt_demo"
POISON_ATTEMPTS = 3


@dataclass(slots=True)
class _Ticket:
    """One booking request waiting in the intake batcher for its answer."""

    request: BookingRequest
    done: trio.Event = field(default_factory=trio.Event)
    booking: Booking | None = None
    created: bool = False
    error: BookingError | None = None

    def answer(self, booking: Booking | None = None, *, created: bool = False, error: BookingError | None = None):
        self.booking, self.created, self.error = booking, created, error
        self.done.set()


class BookingService:
    """Everything a booking needs, from intake to decision to expiry, behind a few coroutines."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: BookingQueue,
        locks: SeatLocks,
        admission: Admission,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.locks = locks
        self.admission = admission
        self.clock = clock
        self.telemetry = telemetry or Telemetry(clock)
        self.telemetry.queue_depth = queue.depth
        self._events: dict[str, Event] = {}  # immutable parts of events; counts come from the store
        self._latest_event: str | None = None
        self._waiters: dict[str, trio.Event] = {}
        self._failures: dict[str, int] = {}  # booking id -> failed attempts (poison detection)
        self._intake_send, self._intake_recv = trio.open_memory_channel[_Ticket](math.inf)
        self.accepting = False

    # ================================================================== lifetime
    async def open(self) -> None:
        """Open the adapters, learn the events and rebuild admission from the store."""
        await self.store.open()
        await self.queue.open()
        await self.locks.open()
        await self.admission.open()
        for event in await self.store.list_events():
            self._remember(event)
        await self.admission.ensure(self.store)
        await self.locks.raise_fence(await self.store.fence_floor())
        self.accepting = True

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.admission.close()
            await self.locks.close()
            await self.queue.close()
            await self.store.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background tasks of the serving lifetime: intake batcher, consumers, sweeper, telemetry."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._intake_loop, name="intake")
            for i in range(self.settings.consumers):
                nursery.start_soon(self._consumer_loop, i, name=f"consumer-{i}")
            nursery.start_soon(self._sweeper_loop, name="hold-sweeper")
            nursery.start_soon(self.telemetry.run, name="telemetry")
            task_status.started()

    async def drain(self, grace: float) -> bool:
        """Stop intake and wait (at most `grace` s) until the queue is empty; True when it emptied."""
        self.accepting = False
        with trio.move_on_after(grace):
            while self.queue.depth() > 0:  # noqa: ASYNC110 - the queue's depth has no event of its own
                await trio.sleep(0.05)
            return True
        return False

    # ================================================================== events
    def _remember(self, event: Event) -> None:
        self._events[event.id] = replace(event, counts=None)
        if self._latest_event is None or event.created_at >= self._events[self._latest_event].created_at:
            self._latest_event = event.id

    async def create_event(self, event: Event) -> Event:
        created = await self.store.create_event(event)
        self._remember(created)
        await self.admission.add_event(created.id, created.capacity, created.max_per_user)
        self.telemetry.publish("event", event_id=created.id, name=created.name, capacity=created.capacity)
        return created

    async def event(self, event_id: str) -> Event:
        """The event with its current counts, or NotFound."""
        event = await self.store.get_event(event_id)
        if event is None:
            raise NotFound(f"event {event_id} does not exist")
        return event

    async def events(self) -> list[Event]:
        return await self.store.list_events()

    async def seats(self, event_id: str) -> list[Seat]:
        await self._known_event(event_id)
        return await self.store.seats(event_id)

    async def _known_event(self, event_id: str) -> Event:
        event = self._events.get(event_id)
        if event is None:
            found = await self.store.get_event(event_id)  # created by another process
            if found is None:
                raise NotFound(f"event {event_id} does not exist")
            self._remember(found)
            if found.counts is not None:
                await self.admission.add_event(event_id, found.counts.available, found.max_per_user)
            event = self._events[event_id]
        return event

    async def compat_event(self, event_id: str | None) -> Event:
        """The event the original's routes mean: the one named, else the demo event, else the newest."""
        if event_id is not None:
            return await self._known_event(event_id)
        for candidate in (DEMO_EVENT_ID, self._latest_event):
            if candidate is not None and candidate in self._events:
                return self._events[candidate]
        raise NotFound("no event exists yet; create one with POST /api/events or run `ticketblitz seed`")

    # ================================================================== intake
    async def request_booking(self, request: BookingRequest) -> tuple[Booking, bool]:
        """Queue a booking request durably. Returns (booking, created): created is False when an
        Idempotency-Key repeat returns the earlier booking. Raises the domain error otherwise."""
        if not self.accepting:
            raise Unavailable("the server is shutting down; retry on another instance", component="queue")
        ticket = _Ticket(request)
        self._intake_send.send_nowait(ticket)
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.booking is not None
        return ticket.booking, ticket.created

    async def _intake_loop(self) -> None:
        """Take every request that arrived during one tick and make them durable in one transaction."""
        while True:
            batch = [await self._intake_recv.receive()]
            while len(batch) < self.settings.intake_batch:
                try:
                    batch.append(self._intake_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._admit_batch(batch)
            except Exception:
                log.exception("intake batch failed")
                for t in batch:
                    if not t.done.is_set():
                        t.answer(error=Unavailable("intake failed; nothing was accepted", component="queue"))

    async def _admit_batch(self, tickets: list[_Ticket]) -> None:
        now = self.clock()
        first_of_key: dict[tuple[str, str], _Ticket] = {}
        followers: list[tuple[_Ticket, _Ticket]] = []
        candidates: list[tuple[_Ticket, Booking]] = []
        room = self.settings.queue_limit - self.queue.depth()
        for t in tickets:
            try:
                event = await self._known_event(t.request.event_id)
                t.request = rules.fit_request_to_event(event, t.request)
            except BookingError as exc:
                t.answer(error=exc)
                continue
            r = t.request
            if r.idempotency_key is not None:
                first = first_of_key.get((r.event_id, r.idempotency_key))
                if first is not None:  # a concurrent repeat in the same tick waits for the first's answer
                    followers.append((t, first))
                    continue
                first_of_key[(r.event_id, r.idempotency_key)] = t
            if room <= 0:
                t.answer(error=RateLimited("the booking queue is full; retry shortly", retry_after=1))
                continue
            room -= 1
            candidates.append((t, Booking(
                id=new_booking_id(), event_id=r.event_id, user_id=r.user_id, quantity=r.quantity,
                requested_seats=r.seat_ids, status=BookingStatus.PENDING, created_at=now, updated_at=now,
                idempotency_key=r.idempotency_key, fingerprint=r.fingerprint,
            )))
        accepted: list[tuple[_Ticket, Booking]] = []
        if candidates:
            try:
                results = await self.admission.admit(
                    [AdmitItem(b, force=t.request.admission == "queue") for t, b in candidates])
            except Unavailable as exc:
                for t, _ in candidates:
                    t.answer(error=exc)
                results = []
            for (t, b), result in zip(candidates, results, strict=False):
                if result.repeat_of is not None:
                    await self._answer_repeat(t, result.repeat_of, result.repeat_fingerprint)
                elif result.error is not None:
                    t.answer(error=result.error)
                else:
                    accepted.append((t, b))
        if accepted:
            await self._enqueue(accepted)
        for follower, first in followers:
            if first.error is not None:
                follower.answer(error=first.error)
            elif first.booking is not None:
                await self._answer_repeat(follower, first.booking.id, first.booking.fingerprint)

    async def _enqueue(self, accepted: list[tuple[_Ticket, Booking]]) -> None:
        try:
            results = await self.queue.enqueue([b for _, b in accepted])
        except Unavailable as exc:
            await self.admission.withdraw([b for _, b in accepted])
            for t, _ in accepted:
                t.answer(error=exc)
            return
        produced = 0
        for (t, b), earlier in zip(accepted, results, strict=True):
            if earlier is not None:  # another process or path took the key first
                await self.admission.withdraw([b])
                await self._answer_repeat(t, earlier.id, earlier.fingerprint)
            else:
                produced += 1
                t.answer(b, created=True)
                self.telemetry.booking(b)
        self.telemetry.queued("produced", produced)

    async def _answer_repeat(self, ticket: _Ticket, booking_id: str, fingerprint: str | None) -> None:
        if fingerprint != ticket.request.fingerprint:
            ticket.answer(error=IdempotencyConflict(
                f"Idempotency-Key {ticket.request.idempotency_key!r} was used with a different body "
                f"(booking {booking_id})", field="Idempotency-Key"))
            return
        try:
            earlier = await self._find_booking(booking_id)
        except BookingError as exc:
            ticket.answer(error=exc)
            return
        if earlier is None:
            ticket.answer(error=Unavailable(f"booking {booking_id} is not readable yet; retry", component="store"))
        else:
            ticket.answer(earlier, created=False)

    async def _find_booking(self, booking_id: str) -> Booking | None:
        """The booking from the store, else the one accepted but still queued."""
        return await self.store.get_booking(booking_id) or await self.admission.pending(booking_id)

    # ================================================================== synchronous paths (compat)
    async def book_now(self, request: BookingRequest, *, lock: bool) -> Booking:
        """Decide a named-seat request at once (the original's /api/book-secure and /api/book-naive).

        With `lock` the seat lock is taken first (429 when another request holds it) and the edge may
        refuse at once; without it the store is read, then written conditionally. Either way the
        store's conditional write is what keeps a seat single.
        """
        if not self.accepting:
            raise Unavailable("the server is shutting down", component="store")
        event = await self._known_event(request.event_id)
        request = rules.fit_request_to_event(event, request)
        now = self.clock()
        booking = Booking(
            id=new_booking_id(), event_id=request.event_id, user_id=request.user_id,
            quantity=request.quantity, requested_seats=request.seat_ids, created_at=now, updated_at=now,
        )
        lease: SeatLease | None = None
        if lock:
            lease = await self._lock(booking)
            if lease is None:
                raise RateLimited(f"seat {', '.join(request.seat_ids)} is being booked by another request",
                                  retry_after=1)
        try:
            if not lock:
                seats = {s.id: s for s in await self.store.seats(request.event_id) if s.id in request.seat_ids}
                if any(seats[s].status is not SeatStatus.AVAILABLE for s in request.seat_ids):
                    raise SeatUnavailable(f"seat {', '.join(request.seat_ids)} is already taken")
            (admitted,) = await self.admission.admit([AdmitItem(booking, force=not lock)])
            if admitted.error is not None:
                raise admitted.error
            try:
                (decided,) = await self.store.decide([booking], self.clock(), insert=True)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.admission.withdraw([booking])
                raise
            await self._after_decision([booking], [decided])
        finally:
            if lease is not None:
                await self._unlock([lease])
        if decided.status is BookingStatus.REJECTED:
            raise REJECTION_ERRORS[decided.reason or "seat_unavailable"](
                f"seat {', '.join(request.seat_ids)} is already taken"
                if decided.reason == "seat_unavailable"
                else f"booking refused: {decided.reason}"
            )
        return decided

    # ================================================================== reads and transitions
    async def booking(self, booking_id: str, wait: float = 0.0) -> Booking:
        """The booking; with `wait` > 0, long-poll until it leaves `pending` or the time is up."""
        booking = await self._find_booking(booking_id)
        if booking is None:
            raise NotFound(f"booking {booking_id} does not exist")
        if booking.status is not BookingStatus.PENDING or wait <= 0:
            return booking
        with trio.move_on_after(min(wait, self.settings.max_wait)):
            while booking.status is BookingStatus.PENDING:
                waiter = self._waiters.setdefault(booking_id, trio.Event())
                with trio.move_on_after(0.5):  # decided by another process: we learn it from the store
                    await waiter.wait()
                booking = await self._find_booking(booking_id) or booking
        return booking

    async def confirm(self, booking_id: str) -> Booking:
        booking, changed = await self.store.confirm(booking_id, self.clock())
        if changed:
            self.telemetry.booking(booking)
            self.telemetry.seats(booking.event_id, booking.seat_ids, "sold")
        return booking

    async def cancel(self, booking_id: str) -> Booking:
        booking = await self.store.cancel(booking_id, self.clock())
        await self.admission.release([booking])
        self.telemetry.booking(booking)
        self.telemetry.seats(booking.event_id, booking.seat_ids, "available")
        return booking

    async def expire_lapsed_holds(self) -> list[Booking]:
        """Expire every hold past its `expires_at`; their seats become available again."""
        expired: list[Booking] = []
        while True:
            chunk = await self.store.expire_lapsed(self.clock(), 500)
            if chunk:
                await self.admission.release(chunk)
            for b in chunk:
                self.telemetry.holds_expired += 1
                self.telemetry.booking(b)
                self.telemetry.seats(b.event_id, b.seat_ids, "available")
            expired.extend(chunk)
            if len(chunk) < 500:
                return expired

    # ================================================================== background tasks
    async def _sweeper_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.sweep_interval)
            try:
                await self.expire_lapsed_holds()
            except Unavailable as exc:
                log.warning("hold sweep failed, will retry: %s", exc.detail)

    async def _consumer_loop(self, index: int) -> None:
        while True:
            batch = await self.queue.take_batch(self.settings.consumer_batch)
            self.telemetry.queued("consumed", len(batch), consumer=index)
            try:
                await self.decide_batch(batch, consumer=f"consumer-{index}")
            except Exception:
                log.exception("consumer-%d failed on a batch of %d; deciding them one by one", index, len(batch))
                await self._decide_one_by_one(batch, f"consumer-{index}")

    async def _decide_one_by_one(self, batch: Sequence[Booking], consumer: str) -> None:
        """After an unexpected failure: find the poison. A booking that fails `POISON_ATTEMPTS` times is
        dead-lettered (and its admission withdrawn); the others are decided or stay queued."""
        for booking in batch:
            try:
                await self.decide_batch([booking], consumer=consumer)
                self._failures.pop(booking.id, None)
            except Exception as exc:
                attempts = self._failures.get(booking.id, 0) + 1
                if attempts >= POISON_ATTEMPTS:
                    self._failures.pop(booking.id, None)
                    await self.queue.dead_letter([booking], f"{type(exc).__name__}: {exc}")
                    await self.admission.withdraw([booking])
                    # the store cannot take it: readers see it rejected (no seats given) instead of pending
                    await self.admission.record_rejected(replace(
                        booking, status=BookingStatus.REJECTED, reason="seat_unavailable", updated_at=self.clock()))
                    self.telemetry.queued("dead_lettered", 1, booking_id=booking.id)
                else:
                    self._failures[booking.id] = attempts
                    await self.queue.retry([booking])
                    await trio.sleep(0.5 * attempts)

    async def decide_batch(self, batch: Sequence[Booking], consumer: str = "consumer") -> None:
        """Lock named seats, decide the batch in one store transaction, ack, unlock, publish."""
        leases: dict[tuple[str, str], SeatLease] = {}
        try:
            try:
                await self._lock_batch(batch, consumer, leases)
            except Unavailable as exc:
                log.warning("seat locks unavailable, retrying a batch of %d: %s", len(batch), exc.detail)
                await self.queue.retry(batch)
                await trio.sleep(0.2)
                return
            ready = [b for b in batch if all((b.event_id, s) in leases for s in b.requested_seats)]
            later = [b for b in batch if not all((b.event_id, s) in leases for s in b.requested_seats)]
            try:
                # insert: a booking from Kafka is not in the store yet (embedded: it is, and stays as is)
                fences = {key: lease.fence for key, lease in leases.items()}
                decided = await self.store.decide(ready, self.clock(), insert=True, fences=fences) if ready else []
            except Unavailable as exc:
                log.warning("store refused a batch of %d, retrying: %s", len(ready), exc.detail)
                await self.queue.retry(ready)
                await trio.sleep(0.2)
                decided = []
            else:
                stale = [b for b in decided if b.status is BookingStatus.PENDING]
                if stale:  # our leases were older than a seat's last write: count above it, then retry
                    await self.locks.raise_fence(await self.store.fence_floor())
                    later.extend(stale)
                    done = {b.id for b in stale}
                    ready = [b for b in ready if b.id not in done]
                    decided = [b for b in decided if b.id not in done]
                await self.queue.ack(ready)
        finally:
            if leases:
                await self._unlock(list(leases.values()))
        if later:
            await self.queue.retry(later)
        if decided:
            await self._after_decision(ready, decided)

    async def _lock_batch(self, batch: Sequence[Booking], owner: str, leases: dict[tuple[str, str], SeatLease]) -> None:
        """Lock every seat named in the batch once (bookings of one batch share a seat's lock), retrying
        contended seats for up to lock_timeout; what stays contended is left out of `leases`."""
        wanted: dict[str, set[str]] = {}
        for b in batch:
            if b.requested_seats:
                wanted.setdefault(b.event_id, set()).update(b.requested_seats)
        if not wanted:
            return
        deadline = trio.current_time() + self.settings.lock_timeout
        while True:
            contended = 0
            for event_id, seats in wanted.items():
                missing = sorted(s for s in seats if (event_id, s) not in leases)
                if not missing:
                    continue
                self.telemetry.lock("attempt", event_id, missing, owner)
                try:
                    with trio.fail_after(self.settings.lock_timeout):
                        got = await self.locks.acquire_each(event_id, missing, owner, self.settings.lock_ttl_ms)
                except trio.TooSlowError:
                    raise Unavailable("the lock service did not answer in time", component="lock") from None
                for seat, lease in got.items():
                    leases[(event_id, seat)] = lease
                if got:
                    self.telemetry.lock("acquired", event_id, sorted(got), owner)
                if len(got) < len(missing):
                    contended += len(missing) - len(got)
                    self.telemetry.lock("contended", event_id, [s for s in missing if s not in got], owner)
            if not contended or trio.current_time() >= deadline:
                return
            await trio.sleep(0.01)

    async def _after_decision(self, asked: Sequence[Booking], decided: Sequence[Booking]) -> None:
        """Settle admission for what the store decided; publish and wake long-polls once per booking."""
        lost_key = [a for a, d in zip(asked, decided, strict=True) if a.id != d.id]
        if lost_key:  # their Idempotency-Key belonged to an earlier booking: nothing of theirs was stored
            await self.admission.withdraw(lost_key)
        mine = [d for a, d in zip(asked, decided, strict=True) if a.id == d.id]
        firsts = await self.admission.settle(mine)
        for b, first in zip(mine, firsts, strict=True):
            if not first:
                continue  # decided and settled before (a redelivery)
            self.telemetry.booking(b)
            if b.status is BookingStatus.HELD:
                self.telemetry.seats(b.event_id, b.seat_ids, "held")
            waiter = self._waiters.pop(b.id, None)
            if waiter is not None:
                waiter.set()

    async def _lock(self, booking: Booking) -> SeatLease | None:
        """All the seat locks of a named booking at once, or None when another holder has one of them."""
        seats, owner = booking.requested_seats, booking.user_id
        self.telemetry.lock("attempt", booking.event_id, seats, owner)
        try:
            with trio.fail_after(self.settings.lock_timeout):
                lease = await self.locks.acquire(booking.event_id, seats, owner, self.settings.lock_ttl_ms)
        except trio.TooSlowError:
            raise Unavailable("the lock service did not answer in time", component="lock") from None
        self.telemetry.lock("acquired" if lease is not None else "contended", booking.event_id, seats, owner)
        return lease

    async def _unlock(self, leases: list[SeatLease]) -> None:
        """Release leases in one round trip. Shielded so that a shutdown still unlocks; the deadline
        inside bounds a stuck lock service (the leases then lapse by their TTL)."""
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.lock_timeout) as scope:
                await self.locks.release_many(leases)
            failed = scope.cancelled_caught
        except Unavailable:
            failed = True
        action = "expired" if failed else "released"
        by_event: dict[str, list[str]] = {}
        for lease in leases:
            by_event.setdefault(lease.event_id, []).extend(lease.seats)
        for event_id, seats in by_event.items():
            self.telemetry.lock(action, event_id, seats, leases[0].owner)

    # ================================================================== health
    async def readiness(self) -> dict[str, str]:
        """Which of store, queue and lock answer now ('ok' or the error)."""
        status: dict[str, str] = {}
        for name, port in (("store", self.store), ("queue", self.queue), ("lock", self.locks)):
            try:
                with trio.fail_after(2.0):
                    await port.ping()
                status[name] = "ok"
            except (trio.TooSlowError, BookingError, OSError) as exc:
                status[name] = f"unreachable: {exc}"
        return status
