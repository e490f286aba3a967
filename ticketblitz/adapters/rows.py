"""Rows of the stores' tables as domain objects: both stores select the same columns in the same
order; only how a list is stored differs (JSON text in SQLite, arrays and jsonb in PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..domain.model import Booking, BookingStatus, Counts, Event, Section
from ..domain.waiting_room import WaitingRoom

BOOKING_COLUMNS = (
    "id, event_id, user_id, quantity, requested, seat_ids, status, reason, expires_at, "
    "created_at, updated_at, idem_key, fingerprint, secret_hash"
)
BOOKING_COLUMN_COUNT = BOOKING_COLUMNS.count(",") + 1
EVENT_COLUMNS = ("id, name, venue, starts_at, sections, max_per_user, hold_seconds, created_at, available, held, sold, "
                 "sale_starts_at, waiting_room")


def booking_from_row(row: Sequence[Any], as_list: Callable[[Any], Iterable[Any]] = tuple) -> Booking:
    """A booking from BOOKING_COLUMNS; `as_list` decodes the stored seat lists."""
    return Booking(
        id=row[0],
        event_id=row[1],
        user_id=row[2],
        quantity=row[3],
        requested_seats=tuple(as_list(row[4])),
        seat_ids=tuple(as_list(row[5])),
        status=BookingStatus(row[6]),
        reason=row[7],
        expires_at=row[8],
        created_at=row[9],
        updated_at=row[10],
        idempotency_key=row[11],
        fingerprint=row[12],
        secret_hash=row[13],
    )


def event_from_row(row: Sequence[Any], as_list: Callable[[Any], Iterable[Any]] = tuple) -> Event:
    """An event from EVENT_COLUMNS with its counts; `as_list` decodes the stored sections."""
    return Event(
        id=row[0],
        name=row[1],
        venue=row[2],
        starts_at=row[3],
        sections=tuple(Section(**s) for s in as_list(row[4])),
        max_per_user=row[5],
        hold_seconds=row[6],
        created_at=row[7],
        counts=Counts(available=row[8], held=row[9], sold=row[10]),
        sale_starts_at=row[11],
        waiting_room=WaitingRoom.from_json(json.loads(row[12])) if row[12] else None,
    )


def waiting_room_text(event: Event) -> str | None:
    """How both stores keep an event's waiting room: JSON text, or NULL."""
    return json.dumps(event.waiting_room.as_json()) if event.waiting_room is not None else None


def rejected_booking(booking: Booking, reason: str, now: float, *, keep_key: bool = True) -> Booking:
    """`booking` as `Store.reject` records it: rejected with `reason`, no seats, its key only when kept."""
    return replace(booking, status=BookingStatus.REJECTED, reason=reason, seat_ids=(), updated_at=now,
                   idempotency_key=booking.idempotency_key if keep_key else None)
