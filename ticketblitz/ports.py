"""The three ports the booking service talks to. Each has an embedded adapter (SQLite, in-process)
and a distributed one (PostgreSQL, Kafka, Redis) that implement the same methods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .domain.errors import BookingError
from .domain.model import Booking, Event, Seat, SeatStatus
from .domain.waiting_room import Line, Tick, Ticket

Fences = Mapping[tuple[str, str], int]  # (event_id, seat_id) -> fencing number of the lock held on it


@dataclass(slots=True)
class EdgeSnapshot:
    """What the store says admission must start from: per event the free seats and the limit, the seats
    held or sold per (event, user), and the bookings still pending."""

    events: list[tuple[str, int, int]] = field(default_factory=list)  # (event_id, available, max_per_user)
    owned: list[tuple[str, str, str, str]] = field(default_factory=list)  # (event_id, user_id, seat_id, booking_id)
    pending: list[Booking] = field(default_factory=list)
    keys: list[tuple[str, str, str, str]] = field(default_factory=list)  # (event_id, key, booking_id, fingerprint)


class Store(Protocol):
    """The source of truth. Every method is one transaction; writes are conditional. Errors of the
    backend (timeouts, lost connections) surface as `Unavailable(component="store")`."""

    name: str

    async def open(self) -> None:
        """Connect and run the versioned migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the backend answers now."""

    async def create_event(self, event: Event) -> Event:
        """Insert the event and one row per seat (map order); returns it with counts all available."""

    async def get_event(self, event_id: str) -> Event | None:
        """The event with its current counts."""

    async def list_events(self) -> list[Event]:
        """Every event in creation order, with counts."""

    async def seats(self, event_id: str) -> list[Seat]:
        """The seat map in order, with each seat's status."""

    async def get_booking(self, booking_id: str) -> Booking | None: ...

    async def bookings_of_event(self, event_id: str) -> list[Booking]:
        """Every booking of the event (tests and invariant checks)."""

    async def insert_pending(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        """Insert pending bookings in one transaction. Per booking: None when inserted, else the stored
        booking that already has its id or its (event, Idempotency-Key)."""

    async def pending_bookings(self, limit: int) -> list[Booking]:
        """Bookings still pending, oldest first (the embedded queue resumes from them)."""

    async def decide(self, bookings: Sequence[Booking], now: float, *, insert: bool = False,
                     fences: Fences | None = None) -> list[Booking]:
        """Decide pending bookings in one transaction, in order, with `rules.decide`: claim seats by
        conditional writes (`status = 'available'`), hold them until now + hold_seconds, or reject with
        a reason. A booking no longer pending is returned as stored (a redelivery changes nothing).
        With `insert`, bookings not yet stored are inserted first (an id already stored is not an
        error); one whose Idempotency-Key belongs to another booking yields that other booking.
        `fences`: the fencing numbers of the seat locks held; a named booking whose number is not above
        the one its seat last recorded is stale (its lease lapsed) and is returned still pending."""

    async def fence_floor(self) -> int:
        """The highest fencing number any seat recorded (lock services start counting above it)."""

    async def confirm(self, booking_id: str, now: float) -> tuple[Booking, bool]:
        """Held and not lapsed → confirmed, seats sold; (booking, changed). Confirmed → (booking, False).
        Otherwise InvalidTransition; unknown id → NotFound."""

    async def cancel(self, booking_id: str, now: float) -> Booking:
        """Held → cancelled, seats available, and marked *edge due* (see `edge_due`) in the same
        transaction. Otherwise InvalidTransition; unknown id → NotFound."""

    async def expire_lapsed(self, now: float, limit: int) -> list[Booking]:
        """Up to `limit` held bookings with expires_at <= now → expired, seats available, each marked
        *edge due* in the same transaction; returns them."""

    async def edge_due(self, older_than: float, limit: int) -> list[Booking]:
        """The transactional outbox of edge releases: up to `limit` cancelled or expired bookings whose
        release at the edge is not yet confirmed (`edge_done`) and whose `updated_at` <= older_than,
        oldest first. What a crash between a commit and its edge release leaves behind."""

    async def edge_done(self, booking_ids: Sequence[str]) -> None:
        """The edge released these bookings' seats: take them out of the outbox (unknown ids: ignored)."""

    async def reject(self, bookings: Sequence[Booking], reason: str, now: float, *, insert: bool = False,
                     keep_key: bool = True) -> list[tuple[Booking, bool]]:
        """Record bookings as `rejected` with `reason` (no seats), in one transaction: a stored pending
        booking becomes rejected; with `insert`, one not stored yet is inserted rejected (with its
        Idempotency-Key) when `keep_key`, else only its *tombstone* is recorded: no booking row, and a
        later `decide(insert=True)` of that id answers it rejected and stores nothing. A booking stored
        with another status is left as it is; a new one whose Idempotency-Key belongs to another booking
        yields that booking, unchanged. Per booking, (the booking as stored now, whether this call or a
        tombstone rejected it). NotFound when a booking is not stored and `insert` is false, or (keeping
        its key) its event does not exist.

        Used for dead letters (`processing_failed`, key kept: a repeat finds the final state) and for
        tombstones of an enqueue whose outcome is unknown (the client heard 503, so no booking may
        appear: a Kafka copy that did get written is decided rejected and stored nowhere, and the
        client's retry with its Idempotency-Key books afresh)."""

    # ---- the waiting room (docs/API.md "Waiting room"; adapters/waiting_room_sql.py)
    async def queue_join(self, event_id: str, joins: Sequence[tuple[str, str, str]],
                         now: float) -> tuple[list[tuple[Ticket, bool]], Line] | None:
        """Join (ticket id, user id, secret hash) in order in one transaction: each user's ticket and
        whether it is new, and the line after; None when the event has no waiting room."""
        ...

    async def queue_tick(self, event_id: str, now: float) -> Tick | None:
        """One admitter step of the event's line; None when it has none."""
        ...

    async def queue_ticket(self, ticket_id: str) -> tuple[Ticket, Line] | None: ...

    async def queue_line(self, event_id: str) -> Line | None: ...

    async def queue_admission_order(self, event_id: str) -> list[tuple[int, float]]:
        """(position, admitted_at) of every ticket ever admitted, by position."""
        ...

    async def server_key(self, candidate: bytes) -> bytes:
        """The deployment's key for booking secrets: stores `candidate` unless a key is stored already,
        and returns the stored one (every process of a deployment gets the same key)."""

    async def seat_map_json(self, event_id: str, form: str) -> bytes | None:
        """The seat map document as JSON bytes, built by the database in one call off the Trio thread
        (None: no such event). form "api": `{"event_id": …, "seats": [{"id", "section", "row", "number",
        "status"}, …]}`; form "compat": `{"eventId": …, "seats": [{"number", "id", "status"}, …]}`
        with status AVAILABLE / LOCKED / BOOKED. Seats in map order."""

    async def seat_statuses(self, event_id: str, seat_ids: Sequence[str]) -> dict[str, SeatStatus]:
        """The status of just these seats (unknown ids are left out)."""

    async def first_available(self, event_id: str) -> Seat | None:
        """The first available seat in map order, or None."""

    async def edge_snapshot(self) -> EdgeSnapshot:
        """One consistent view for rebuilding edge admission."""


class BookingQueue(Protocol):
    """Carries accepted booking requests from intake to the consumers, durably."""

    name: str
    # True when `enqueue` is the store's own insert (embedded): a failed enqueue wrote nothing. False
    # (Kafka): a failed produce may still have been written, so the caller must settle the doubt.
    durable_in_store: bool
    # (partition, offset) of the last message produced / taken, where the queue knows them (telemetry;
    # the in-process queue has no partitions and counts its line's positions since start as offsets)
    produced_at: tuple[int | None, int | None]
    consumed_at: tuple[int | None, int | None]

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def depth(self) -> int: ...

    async def enqueue(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        """Make the bookings durable and deliverable before returning; per booking None, or the stored
        booking that already has its id or Idempotency-Key. Unavailable when it could not (see
        `durable_in_store` for what a failure may have left behind)."""

    async def requeue(self, bookings: Sequence[Booking]) -> None:
        """Make sure these accepted, undecided bookings are on their way to a consumer (a repeat found one
        that may be in no queue): embedded, back in line unless already there or being decided; Kafka,
        produced again (a duplicate is harmless: deciding is idempotent). Unavailable when it could not."""

    async def take_batch(self, max_items: int) -> list[Booking]: ...
    async def ack(self, bookings: Sequence[Booking]) -> None: ...
    async def retry(self, bookings: Sequence[Booking]) -> None: ...

    async def dead_letter(self, bookings: Sequence[Booking], reason: str) -> None:
        """Set aside bookings that failed every attempt (poison), after the store recorded them rejected:
        they are no longer delivered (Kafka: copied to the dead-letter topic, then acked; embedded:
        dropped from the line). If the set-aside cannot be written they stay queued, never dropped."""
        ...


class SeatLocks(Protocol):
    """Short leases on seats that keep concurrent writers off the same rows (never the guarantee)."""

    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def acquire(self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int) -> SeatLease | None: ...
    async def acquire_each(
        self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int
    ) -> dict[str, SeatLease]:
        """Lock each seat on its own, in one round trip; the leases of the seats that were free."""
        ...

    async def release(self, lease: SeatLease) -> None:
        """Compare-and-delete: frees the seats only while they still carry the lease's token."""

    async def release_many(self, leases: Iterable[SeatLease]) -> None:
        """`release` for many leases in one round trip."""

    async def raise_fence(self, floor: int) -> None:
        """Make the next fencing numbers greater than `floor` (after a restart or a loss of the counter)."""


@dataclass(frozen=True, slots=True)
class SeatLease:
    """Locks held on some seats: `token` proves ownership at unlock, `fence` orders writers."""

    event_id: str
    seats: tuple[str, ...]
    owner: str
    token: str
    fence: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class AdmitItem:
    """One booking request at the edge: the pending booking it would become, and whether it is queued
    even when refused (the original's /api/book-async reserves nothing then)."""

    booking: Booking
    force: bool = False


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A booking the edge accepted that the store may not have yet (Kafka mode): `queued` once the queue
    acknowledged it (`mark_queued`), `admitted_at` the wall-clock time of its admission."""

    booking: Booking
    queued: bool
    admitted_at: float


@dataclass(frozen=True, slots=True)
class AdmitResult:
    """Admitted (both None), refused (`error`), or an Idempotency-Key repeat of `repeat_of`."""

    error: BookingError | None = None
    repeat_of: str | None = None
    repeat_fingerprint: str | None = None


class Admission(Protocol):
    """Edge admission: a fast forecast of what the store will decide (stock, named seats, per-user
    counts, Idempotency-Keys), so that the crowd that cannot be served hears 409 at once. A cache of
    the store, rebuilt from it; never the guarantee."""

    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def ensure(self, store: Store) -> None:
        """Rebuild from `store.edge_snapshot()` when the state is missing (at start, after a loss)."""

    async def add_event(self, event_id: str, available: int, max_per_user: int) -> None: ...

    async def admit(self, items: Sequence[AdmitItem]) -> list[AdmitResult]:
        """Admit in order, each item one atomic step, all in one round trip; reserves what it admits
        and records its Idempotency-Key and pending record (not queued). Unavailable when the answer
        was not heard: the script may have run (the caller then `abandon`s the batch)."""

    async def mark_queued(self, bookings: Sequence[Booking]) -> None:
        """The queue acknowledged these bookings: their pending records say so, and `abandon` leaves
        them alone from now on. Unknown or settled ones are ignored."""

    async def abandon(self, bookings: Sequence[Booking]) -> None:
        """Undo the admission of bookings whose enqueue failed or whose admission is in doubt, unless
        they were marked queued meanwhile. Idempotent: admissions that never happened change nothing."""

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        """Undo the admission of bookings, queued or not (they lost their Idempotency-Key to another
        booking, or were rejected by a dead letter); forget their key unless it names another booking."""

    async def settle(self, decided: Sequence[Booking]) -> list[bool]:
        """The store decided: seats held replace the reservation, the pending record goes. True where this
        call settled the booking (False: settled before, a redelivery)."""

    async def release(self, bookings: Sequence[Booking]) -> None:
        """Seats of held bookings came back (cancelled or expired). Idempotent: frees only the seats the
        edge still counts as taken by that booking, so a retried or repeated release changes nothing."""

    async def invalidate(self) -> None:
        """Forget the edge state, so that the next call rebuilds it from the store (a follow-up that
        cannot land any other way)."""

    async def stale_admissions(self, older_than: float, limit: int) -> list[Booking]:
        """Bookings admitted at or before `older_than` (wall clock) and never marked queued: what an intake
        that died between admission and enqueue left behind (Kafka mode; the embedded adapter has none)."""

    async def pending(self, booking_id: str) -> PendingRecord | None:
        """A booking accepted but not yet settled, as the edge recorded it (Kafka mode), else None. The
        embedded adapter has none: the embedded queue stores bookings before it answers."""
