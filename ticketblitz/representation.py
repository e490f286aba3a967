"""The JSON shapes of API.md, built from domain objects. Both HTTP doors answer with these."""

from __future__ import annotations

from typing import Any

import orjson

from .domain import waiting_room
from .domain.errors import BookingError
from .domain.model import Booking, BookingStatus, Counts, Event, Seat, SeatStatus
from .domain.waiting_room import Line, Ticket, TicketStatus
from .telemetry import iso_time

# codes of problem+json answers that come from HTTP itself rather than from the booking rules
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "invalid_request", 408: "invalid_request", 411: "invalid_request", 413: "payload_too_large",
              414: "invalid_request", 415: "unsupported_media_type", 431: "invalid_request", 503: "unavailable",
              505: "invalid_request"}


def http_code(status: int) -> str:
    return HTTP_CODES.get(status, "invalid_request" if status < 500 else "unavailable")


COMPAT_STATUS = {SeatStatus.AVAILABLE: "AVAILABLE", SeatStatus.HELD: "LOCKED", SeatStatus.SOLD: "BOOKED"}


def event_json(event: Event) -> dict[str, Any]:
    counts = event.counts or Counts(event.capacity, 0, 0)
    body: dict[str, Any] = {
        "id": event.id,
        "name": event.name,
        "venue": event.venue,
        "starts_at": event.starts_at,
        "capacity": event.capacity,
        "max_per_user": event.max_per_user,
        "hold_seconds": event.hold_seconds,
        "sections": [
            {"name": s.name, "rows": s.rows, "seats_per_row": s.seats_per_row, "price_cents": s.price_cents}
            for s in event.sections
        ],
        "counts": {"available": counts.available, "held": counts.held, "sold": counts.sold},
        "created_at": iso_time(event.created_at),
    }
    if event.sale_starts_at is not None:
        body["sale_starts_at"] = iso_time(event.sale_starts_at)
    if event.waiting_room is not None:
        body["waiting_room"] = event.waiting_room.as_json()
    return body


def ticket_json(ticket: Ticket, line: Line, pass_token: str | None, secret: str | None = None) -> dict[str, Any]:
    """The ticket object of the waiting room (docs/API.md); `secret` only in the join's answer."""
    body: dict[str, Any] = {
        "id": ticket.id,
        "event_id": ticket.event_id,
        "user_id": ticket.user_id,
        "status": ticket.status.value,
        "position": ticket.position,
        "ahead": waiting_room.ahead(ticket, line),
        "eta_seconds": waiting_room.eta_seconds(ticket, line),
        "pass": pass_token if ticket.status is TicketStatus.ADMITTED else None,
        "pass_expires_at": (iso_time(ticket.pass_expires_at) if ticket.status is TicketStatus.ADMITTED
                            and ticket.pass_expires_at is not None else None),
        "created_at": iso_time(ticket.created_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def booking_json(booking: Booking, secret: str | None = None) -> dict[str, Any]:
    """The booking object of API.md; `secret` only in the answer that created it (or repeats it)."""
    body = {
        "id": booking.id,
        "event_id": booking.event_id,
        "user_id": booking.user_id,
        # while pending, the seats asked for; once decided, the seats given (none when rejected)
        "seat_ids": list(booking.requested_seats if booking.status is BookingStatus.PENDING else booking.seat_ids),
        "quantity": booking.quantity,
        "status": booking.status.value,
        "reason": booking.reason,
        "expires_at": iso_time(booking.expires_at) if booking.expires_at is not None else None,
        "created_at": iso_time(booking.created_at),
        "updated_at": iso_time(booking.updated_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def seat_json(seat: Seat) -> dict[str, Any]:
    return {"id": seat.id, "section": seat.section, "row": seat.row, "number": seat.number,
            "status": seat.status.value}


def compat_seat_json(seat: Seat) -> dict[str, Any]:
    return {"number": seat.position, "id": seat.id, "status": COMPAT_STATUS[seat.status]}


def problem(status: int, code: str, title: str, detail: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "code": code, "detail": detail}
    if field is not None:
        body["field"] = field
    return body


def problem_of(error: BookingError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, problem+json body and extra headers for a domain error: the one mapping to HTTP."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = problem(error.status, error.code, error.title, error.detail, error.field)
    component = getattr(error, "component", None)
    if component is not None:
        body["component"] = component
    return error.status, body, headers


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
