"""The three ports the booking service talks to. Each has an embedded adapter (SQLite, in-process)
and a distributed one (PostgreSQL, Kafka, Redis) that implement the same methods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .domain.errors import BookingError
from .domain.model import Booking, Event, Seat

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
        """Held → cancelled, seats available. Otherwise InvalidTransition; unknown id → NotFound."""

    async def expire_lapsed(self, now: float, limit: int) -> list[Booking]:
        """Up to `limit` held bookings with expires_at <= now → expired, seats available; returns them."""

    async def edge_snapshot(self) -> EdgeSnapshot:
        """One consistent view for rebuilding edge admission."""


class BookingQueue(Protocol):
    """Carries accepted booking requests from intake to the consumers, durably."""

    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def depth(self) -> int: ...
    async def enqueue(self, bookings: Sequence[Booking]) -> list[Booking | None]: ...
    async def take_batch(self, max_items: int) -> list[Booking]: ...
    async def ack(self, bookings: Sequence[Booking]) -> None: ...
    async def retry(self, bookings: Sequence[Booking]) -> None: ...

    async def dead_letter(self, bookings: Sequence[Booking], reason: str) -> None:
        """Set aside bookings that fail every attempt (poison), so they stop blocking the others."""
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
        and records its Idempotency-Key and pending record."""

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        """Undo the admission of bookings that were never accepted (or lost their key to another)."""

    async def settle(self, decided: Sequence[Booking]) -> list[bool]:
        """The store decided: seats held replace the reservation. True where this call settled the
        booking (False: settled before, a redelivery)."""

    async def release(self, bookings: Sequence[Booking]) -> None:
        """Seats of held bookings came back (cancelled or expired)."""

    async def pending(self, booking_id: str) -> Booking | None:
        """A booking accepted but not yet in the store (queued in Kafka), else None."""

    async def record_rejected(self, booking: Booking) -> None:
        """A booking the store could not take (dead-lettered): answer reads with this final state."""
