"""The booking service: a thin facade over the parts (intake batcher, decider, hold sweeper, edge
follow-ups) for the HTTP doors, plus the reads and the transitions. Plain Trio code, no Quart."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from ..config import Settings
from ..domain import ownership, rules
from ..domain.errors import (
    REJECTION_ERRORS,
    BookingError,
    InvalidTransition,
    NotFound,
    RateLimited,
    SeatUnavailable,
    Unauthorized,
    Unavailable,
)
from ..domain.model import Booking, BookingRequest, BookingStatus, Event, Seat, SeatStatus, new_booking_id
from ..ports import Admission, AdmitItem, BookingQueue, SeatLease, SeatLocks, Store
from ..telemetry import Telemetry, verdict_of
from .batcher import Accepted, IntakeBatcher
from .bookingreads import BookingAnswers
from .catalog import EventCatalog
from .decider import Decider, store_outcome, unlock
from .followups import EdgeFollowUps
from .keys import SecretIssuer
from .seatmaps import SeatMap, SeatMaps
from .sweeper import HoldSweeper
from .waiters import Waiters
from .waiting_room import WaitingRoomService

SEAT_MAP_FORMS = ("api", "compat")


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
        self.telemetry = telemetry or Telemetry.from_settings(settings, clock)
        self.telemetry.queue_depth = queue.depth
        self.catalog = EventCatalog(store, admission)
        self.secrets = SecretIssuer()
        self.waiters = Waiters(settings.max_long_polls)
        self.seat_maps = SeatMaps(store, settings.seat_map_max_age)
        self.booking_answers = BookingAnswers(settings.seat_map_max_age)
        # a repeat requeues a booking whose first request may have died after this long; an admission never
        # marked queued twice as long after is an orphan of a crash
        requeue_after = settings.produce_timeout + settings.store_timeout + 2.0
        self.followups = EdgeFollowUps(store, admission, clock, deadline=settings.lock_timeout + settings.store_timeout,
                                       orphan_after=2 * requeue_after)
        self.intake = IntakeBatcher(settings, store, queue, admission, self.catalog, self.followups, self.secrets,
                                    self.telemetry, clock, requeue_after=requeue_after)
        self.decider = Decider(settings, store, queue, locks, admission, self.followups, self.waiters,
                               self.seat_maps, self.telemetry, clock, self.booking_answers)
        self.waiting_room = WaitingRoomService(settings, store, self.catalog, self.secrets, self.waiters,
                                               self.telemetry, clock)
        self.sweeper = HoldSweeper(settings, store, self.followups, self.seat_maps, self.telemetry, clock,
                                   self.booking_answers)
        self.telemetry.gauges.update({
            "queue_depth": lambda: float(queue.depth()),
            "ws_subscribers": lambda: float(len(self.telemetry.subscribers)),
            "accepting": lambda: 1.0 if self.accepting else 0.0,
            "intake_waiting": lambda: float(self.intake.waiting()),
            "long_polls": lambda: float(self.waiters.active),
            "followups_pending": lambda: float(self.followups.pending()),
            "booking_answers_kept": lambda: float(len(self.booking_answers)),
        })

    @property
    def accepting(self) -> bool:
        return self.intake.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        was, self.intake.accepting = self.intake.accepting, value
        if was and not value:
            self.waiters.close()  # stopping: long-polls answer now, so that their connections can close
        elif value:
            self.waiters.closed = False

    # ================================================================== lifetime
    async def open(self) -> None:
        """Open the adapters, learn the events, rebuild admission from the store, load the secret key."""
        await self.store.open()
        await self.queue.open()
        await self.locks.open()
        await self.admission.open()
        await self.catalog.load()
        await self.admission.ensure(self.store)
        await self.locks.raise_fence(await self.store.fence_floor())
        await self.secrets.load(self.settings, self.store)
        self.accepting = True

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.admission.close()
            await self.locks.close()
            await self.queue.close()
            await self.store.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The parts' tasks for the serving lifetime, each started (and stopped) with this nursery."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.intake.run)
            await nursery.start(self.decider.run)
            await nursery.start(self.sweeper.run)
            await nursery.start(self.followups.run)
            await nursery.start(self.waiting_room.run)
            await nursery.start(self.telemetry.run)
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
    async def create_event(self, event: Event) -> Event:
        created = await self.store.create_event(event)
        self.seat_maps.changed(created.id)  # (a read of the id before it existed may be kept)
        self.catalog.remember(created)
        self.waiting_room.track(created)
        await self.admission.add_event(created.id, created.capacity, created.max_per_user)
        self.telemetry.publish("event", event_id=created.id, name=created.name, capacity=created.capacity)
        return created

    async def event(self, event_id: str) -> Event:
        """The event with its current counts, or NotFound."""
        event = await self.store.get_event(event_id)
        if event is None:
            raise NotFound(f"event {event_id} does not exist")
        return event

    async def event_document(self, event_id: str) -> bytes:
        """The event's JSON document (API.md), kept like the seat maps: at most one tick stale for changes
        made by other processes, fresh for this one's; NotFound for an unknown event."""
        document = await self.seat_maps.get(event_id, "event")
        if document is None:
            raise NotFound(f"event {event_id} does not exist")
        return document.body

    async def events(self) -> list[Event]:
        return await self.store.list_events()

    async def seat_map(self, event_id: str, form: str = "api") -> bytes:
        """The seat map document as JSON bytes (form "api" or "compat"), at most one build stale."""
        document = await self.seat_maps.document(event_id, form)
        if document is None:
            raise NotFound(f"event {event_id} does not exist")
        return document

    async def seat_map_of(self, event_id: str, form: str = "api") -> SeatMap:
        """The seat map with its ETag and gzip encoding (form "api", "compat" or "compact"), at most one
        build stale; NotFound for an unknown event."""
        seat_map = await self.seat_maps.get(event_id, form)
        if seat_map is None:
            raise NotFound(f"event {event_id} does not exist")
        return seat_map

    async def first_available_seat(self, event_id: str) -> Seat | None:
        await self.catalog.known(event_id)
        return await self.store.first_available(event_id)

    async def compat_event(self, event_id: str | None) -> Event:
        """The event the original's routes mean: the one named, else the demo event, else the newest."""
        return await self.catalog.compat(event_id)

    # ================================================================== intake
    async def request_booking(self, request: BookingRequest) -> Accepted:
        """Queue a booking request durably: the booking, whether it was created now (else an
        Idempotency-Key repeat) and its secret. Raises the domain error otherwise."""
        return await self.intake.submit(request)

    async def book_now(self, request: BookingRequest, *, lock: bool) -> Accepted:
        """Decide a named-seat request at once (the original's /api/book-secure and /api/book-naive).

        With `lock` the seat lock is taken first (429 when another request holds it) and the edge may
        refuse at once; without it the requested seats are read, then written conditionally. Either way
        the store's conditional write is what keeps a seat single.
        """
        if not self.accepting:
            raise Unavailable("the server is shutting down", component="store")
        event = await self.catalog.known(request.event_id)
        request = rules.fit_request_to_event(event, request)
        now = self.clock()
        booking_id = new_booking_id()
        secret, digest = self.secrets.issue(booking_id, None)
        booking = Booking(
            id=booking_id, event_id=request.event_id, user_id=request.user_id, quantity=request.quantity,
            requested_seats=request.seat_ids, created_at=now, updated_at=now, secret_hash=digest,
        )
        lease: SeatLease | None = None
        if lock:
            lease = await self._lock(booking)
            if lease is None:
                raise RateLimited(f"seat {', '.join(request.seat_ids)} is being booked by another request",
                                  retry_after=1)
        try:
            if not lock:
                statuses = await self.store.seat_statuses(request.event_id, request.seat_ids)
                if any(statuses.get(s) is not SeatStatus.AVAILABLE for s in request.seat_ids):
                    raise SeatUnavailable(f"seat {', '.join(request.seat_ids)} is already taken")
            decided = await self._decide_now(booking, force=not lock)
        finally:
            if lease is not None:
                await unlock(self.locks, [lease], self.settings.lock_timeout, self.telemetry)
        if decided.status is BookingStatus.REJECTED:
            raise REJECTION_ERRORS.get(decided.reason or "", SeatUnavailable)(
                f"seat {', '.join(request.seat_ids)} is already taken"
                if decided.reason == "seat_unavailable"
                else f"booking refused: {decided.reason}"
            )
        return Accepted(decided, True, secret)

    async def _decide_now(self, booking: Booking, *, force: bool) -> Booking:
        """Admit, decide and settle one booking at once; what is in doubt after a failure is resolved."""
        try:
            (admitted,) = await self.admission.admit([AdmitItem(booking, force=force)])
        except Unavailable:
            self.telemetry.admission("unavailable", booking.event_id, booking.quantity, booking.id)
            await self.followups.abandon([booking])  # the script may have run
            raise
        self.telemetry.admission(verdict_of(admitted.error), booking.event_id, booking.quantity, booking.id)
        if admitted.error is not None:
            raise admitted.error
        # the commit and its follow-ups belong together: shielded (each call has its own deadline)
        with trio.CancelScope(shield=True):
            try:
                (decided,) = await self.store.decide([booking], self.clock(), insert=True)
                self.seat_maps.changed(booking.event_id)
                self.booking_answers.changed(booking.id)
            except Exception:
                # the store may have committed before failing to answer: the tombstone makes it certain
                # (a booking stored already is settled; one that is not is recorded rejected, and abandoned)
                await self.followups.tombstone([booking])
                raise
            await self.followups.settle([decided])
        self.telemetry.stored(*store_outcome(decided), decided.event_id, [decided.id])
        self.telemetry.booking(decided)
        if decided.status is BookingStatus.HELD:
            self.telemetry.seats(decided.event_id, decided.seat_ids, "held")
        self.waiters.notify(decided.id)
        return decided

    async def _lock(self, booking: Booking) -> SeatLease | None:
        """All the seat locks of a named booking at once, or None when another holder has one of them."""
        seats, owner = booking.requested_seats, booking.user_id
        self.telemetry.lock("attempt", booking.event_id, seats, owner)
        try:
            with trio.fail_after(self.settings.lock_timeout):
                lease = await self.locks.acquire(booking.event_id, seats, owner, self.settings.lock_ttl_ms)
        except trio.TooSlowError:
            raise Unavailable("the lock service did not answer in time", component="lock") from None
        self.telemetry.lock("acquired" if lease is not None else "contended", booking.event_id, seats, owner,
                            lease.fence if lease is not None else None)
        return lease

    # ================================================================== reads and transitions
    async def _find(self, booking_id: str) -> Booking | None:
        """The booking from the store, else the one accepted but still only queued (Kafka mode)."""
        stored = await self.store.get_booking(booking_id)
        if stored is not None:
            return stored
        record = await self.admission.pending(booking_id)
        if record is not None:
            return record.booking
        # a consumer may have stored and settled it between the two reads: the store has it now
        return await self.store.get_booking(booking_id)

    async def _owned(self, booking_id: str, credential: str | None) -> Booking:
        """The booking, for the holder of its secret or the admin token (API 1.1): Unauthorized without
        a credential; NotFound, worded the same whether or not the booking exists, for a wrong one."""
        if not credential:
            raise Unauthorized("a booking is read, confirmed or cancelled with Authorization: Bearer <its secret>")
        booking = await self._find(booking_id)
        if booking is not None and (ownership.is_token(self.settings.admin_token, credential)
                                    or ownership.holds(booking.secret_hash, credential)):
            return booking
        raise NotFound(f"booking {booking_id} does not exist")

    async def booking_answer(self, booking_id: str, credential: str | None) -> bytes:
        """The booking's answer bytes (`GET /api/bookings/{id}` without `?wait`), from the kept answers when
        one is fresh (BookingAnswers: at most one tick stale for other processes' changes, dropped on this
        one's), else from the store; the credential check is `_owned`'s, on the kept secret hash."""
        if not credential:
            raise Unauthorized("a booking is read, confirmed or cancelled with Authorization: Bearer <its secret>")
        kept = await self.booking_answers.read(booking_id, self._find)
        if kept is not None and (ownership.is_token(self.settings.admin_token, credential)
                                 or ownership.holds(kept.secret_hash, credential)):
            return kept.body
        raise NotFound(f"booking {booking_id} does not exist")

    async def booking(self, booking_id: str, credential: str | None, wait: float = 0.0) -> Booking:
        """The booking; with `wait` > 0, long-poll until it leaves `pending` or the time is up."""
        booking = await self._owned(booking_id, credential)
        if booking.status is not BookingStatus.PENDING or wait <= 0:
            return booking
        async with self.waiters.slot(min(wait, self.settings.max_wait)) as waiting:
            with waiting:
                while booking.status is BookingStatus.PENDING:
                    with self.waiters.watch(booking_id) as decided, trio.move_on_after(0.5):
                        await decided.wait()  # (decided by another process: we learn it from the store)
                    booking = await self._find(booking_id) or booking
        return booking

    async def confirm(self, booking_id: str, credential: str | None) -> Booking:
        found = await self._owned(booking_id, credential)
        if found.status is BookingStatus.PENDING:
            raise InvalidTransition(f"booking {booking_id} is pending; only a held booking can be confirmed")
        with trio.CancelScope(shield=True):  # a client hanging up does not undo a purchase half-way
            booking, changed = await self.store.confirm(booking_id, self.clock())
            self.seat_maps.changed(booking.event_id)
            self.booking_answers.changed(booking_id)
        if changed:
            self.telemetry.stored("commit", "confirm", booking.event_id, [booking.id])
            self.telemetry.booking(booking)
            self.telemetry.seats(booking.event_id, booking.seat_ids, "sold")
        return booking

    async def cancel(self, booking_id: str, credential: str | None) -> Booking:
        found = await self._owned(booking_id, credential)
        if found.status is BookingStatus.PENDING:
            raise InvalidTransition(f"booking {booking_id} is pending; only a held booking can be cancelled")
        # the commit and its edge release belong together: a client that hangs up half-way must not leave
        # the edge counting the seats as taken (the store's outbox catches a crash in between)
        with trio.CancelScope(shield=True):
            booking = await self.store.cancel(booking_id, self.clock())
            self.seat_maps.changed(booking.event_id)
            self.booking_answers.changed(booking_id)
            await self.followups.release([booking])
        self.telemetry.stored("commit", "cancel", booking.event_id, [booking.id])
        self.telemetry.booking(booking)
        self.telemetry.seats(booking.event_id, booking.seat_ids, "available")
        return booking

    async def expire_lapsed_holds(self) -> list[Booking]:
        """Expire every hold past its `expires_at`; their seats become available again."""
        return await self.sweeper.expire_lapsed_holds()

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
