"""Plain data of the booking domain: events, seats, bookings. No I/O here."""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass, field, replace

from .waiting_room import WaitingRoom

SEAT_ID_RE = re.compile(r"^([A-Za-z0-9]{1,16})-([1-9][0-9]{0,3})-([1-9][0-9]{0,3})$")


class BookingStatus(enum.StrEnum):
    PENDING = "pending"
    HELD = "held"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class SeatStatus(enum.StrEnum):
    AVAILABLE = "available"
    HELD = "held"
    SOLD = "sold"


# Which seat status a booking status gives its seats; bookings not listed own no seats.
SEAT_STATUS_OF_BOOKING = {BookingStatus.HELD: SeatStatus.HELD, BookingStatus.CONFIRMED: SeatStatus.SOLD}
# Why a booking was rejected. `processing_failed`: it could not be processed after retries (dead-lettered).
REJECTION_REASONS = frozenset({"seat_unavailable", "sold_out", "limit_exceeded", "processing_failed"})
FINAL_STATUSES = frozenset(
    {BookingStatus.CONFIRMED, BookingStatus.REJECTED, BookingStatus.EXPIRED, BookingStatus.CANCELLED}
)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(8)


def new_booking_id() -> str:
    return "bkg_" + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    rows: int
    seats_per_row: int
    price_cents: int = 0

    @property
    def capacity(self) -> int:
        return self.rows * self.seats_per_row


@dataclass(frozen=True, slots=True)
class Counts:
    available: int
    held: int
    sold: int

    @property
    def total(self) -> int:
        return self.available + self.held + self.sold


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    name: str
    sections: tuple[Section, ...]
    max_per_user: int = 4
    hold_seconds: int = 600
    venue: str | None = None
    starts_at: str | None = None
    created_at: float = 0.0
    counts: Counts | None = None
    sale_starts_at: float | None = None  # epoch seconds; bookings (or the line) open then
    waiting_room: WaitingRoom | None = None

    @property
    def capacity(self) -> int:
        return sum(s.capacity for s in self.sections)

    def with_counts(self, counts: Counts) -> Event:
        return replace(self, counts=counts)


@dataclass(frozen=True, slots=True)
class SeatRef:
    """A seat's place in the event's seat map; `position` is its 1-based order (the compat `seatNumber`)."""

    id: str
    section: str
    row: int
    number: int
    position: int


@dataclass(frozen=True, slots=True)
class Seat:
    id: str
    section: str
    row: int
    number: int
    position: int
    status: SeatStatus


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    event_id: str
    user_id: str
    quantity: int
    seat_ids: tuple[str, ...] = ()
    requested_seats: tuple[str, ...] = ()
    status: BookingStatus = BookingStatus.PENDING
    reason: str | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    idempotency_key: str | None = None
    fingerprint: str | None = None
    # sha256 (hex) of the booking's secret: whoever presents the secret owns the booking (API 1.1)
    secret_hash: str | None = None

    @property
    def is_named(self) -> bool:
        """True when the user asked for specific seats rather than a quantity."""
        return bool(self.requested_seats)


@dataclass(frozen=True, slots=True)
class BookingRequest:
    """A validated request for seats: exactly one of `seat_ids` or `quantity` (then seat_ids is empty)."""

    event_id: str
    user_id: str
    quantity: int
    seat_ids: tuple[str, ...] = ()
    idempotency_key: str | None = None
    fingerprint: str | None = None
    # "edge": refuse at once what cannot be served; "queue": always queue (the original /api/book-async).
    admission: str = "edge"
    extra: dict[str, object] = field(default_factory=dict)
