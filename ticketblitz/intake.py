"""The booking intake routes as plain functions of (service, path parameter, Idempotency-Key header,
raw body) → Answer. Both HTTP doors call these, so the lean Trio door and the Quart app give exactly
the same answers: same validation, same service call, same JSON, same problem+json."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .domain.errors import BookingError, InvalidRequest
from .domain.model import BookingRequest
from .domain.rules import request_fingerprint, seat_at_position
from .representation import booking_json, problem, problem_of
from .schemas import BookingIn, CompatBookingIn, parse_body, parse_idempotency_key
from .service import BookingService

log = logging.getLogger("ticketblitz.intake")

JSON = "application/json"
PROBLEM = "application/problem+json"


@dataclass(slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON


def error_answer(error: BookingError) -> Answer:
    status, body, headers = problem_of(error)
    return Answer(status, body, headers, PROBLEM)


def unexpected_answer() -> Answer:
    return Answer(503, problem(503, "unavailable", "Service unavailable",
                               "the server could not complete the request; nothing was changed"),
                  {}, PROBLEM)


async def create_booking(service: BookingService, event_id: str, key_header: str | None, raw: bytes) -> Answer:
    """POST /api/events/{event_id}/bookings."""
    key = parse_idempotency_key(key_header)
    body = parse_body(BookingIn, raw)
    booking, created = await service.request_booking(BookingRequest(
        event_id=event_id, user_id=body.user_id, quantity=body.quantity or len(body.seat_ids or ()),
        seat_ids=tuple(body.seat_ids or ()), idempotency_key=key, fingerprint=body.fingerprint(),
    ))
    return Answer(202 if created else 200, booking_json(booking), {"Location": f"/api/bookings/{booking.id}"})


async def _compat_request(service: BookingService, key_header: str | None, raw: bytes,
                          admission: str) -> BookingRequest:
    key = parse_idempotency_key(key_header)
    body = parse_body(CompatBookingIn, raw)
    event = await service.compat_event(body.eventId)
    seat = seat_at_position(event, body.seatNumber)
    if seat is None:
        raise InvalidRequest(f"seatNumber: event {event.id} has {event.capacity} seats", field="seatNumber")
    return BookingRequest(
        event_id=event.id, user_id=body.userId, quantity=1, seat_ids=(seat.id,), idempotency_key=key,
        fingerprint=request_fingerprint(body.userId, (seat.id,), None), admission=admission,
    )


async def book_async(service: BookingService, key_header: str | None, raw: bytes) -> Answer:
    """POST /api/book-async and /book: the original's queued path, no edge refusals."""
    booking, created = await service.request_booking(await _compat_request(service, key_header, raw, "queue"))
    body = {"status": "Pending", "message": "Request queued" if created else "Request already queued",
            "booking": booking_json(booking)}
    return Answer(202 if created else 200, body, {"Location": f"/api/bookings/{booking.id}"})


async def book_secure(service: BookingService, key_header: str | None, raw: bytes) -> Answer:
    """POST /api/book-secure: seat lock, then store write."""
    booking = await service.book_now(await _compat_request(service, key_header, raw, "edge"), lock=True)
    return Answer(200, {"success": True, "bookingId": booking.id, "booking": booking_json(booking)})


async def book_naive(service: BookingService, key_header: str | None, raw: bytes) -> Answer:
    """POST /api/book-naive: read, then conditional write."""
    booking = await service.book_now(await _compat_request(service, key_header, raw, "queue"), lock=False)
    return Answer(200, {"success": True, "bookingId": booking.id, "booking": booking_json(booking)})


COMPAT_ROUTES = {
    "/api/book-async": book_async,
    "/book": book_async,
    "/api/book-secure": book_secure,
    "/api/book-naive": book_naive,
}


async def answer(route: Any, *args: Any) -> Answer:
    """Run one intake route, mapping domain errors (and surprises) to problem+json."""
    try:
        result: Answer = await route(*args)
        return result
    except BookingError as exc:
        return error_answer(exc)
    except Exception:
        log.exception("unexpected error in intake route %s", getattr(route, "__name__", route))
        return unexpected_answer()
