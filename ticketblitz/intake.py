"""The booking intake routes as plain functions of (service, call, path parameters) → Answer, where
the call is the request's headers and raw body. Both HTTP doors call these through `answer`, so the
lean Trio door and the Quart app give exactly the same answers: same media-type check (415), same
validation, same service call, same JSON, same problem+json, same CORS headers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .domain.errors import BookingError, InvalidRequest
from .domain.model import BookingRequest
from .domain.rules import request_fingerprint, seat_at_position
from .policy import bearer, check_json_body, cors_headers
from .reads import query_value
from .representation import booking_json, problem, problem_of, ticket_json
from .schemas import BookingIn, CompatBookingIn, JoinIn, parse_body, parse_idempotency_key, parse_wait
from .service import Accepted, BookingService

log = logging.getLogger("ticketblitz.intake")

JSON = "application/json"
PROBLEM = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Call:
    """What an intake route reads of an HTTP request: its headers (lower-case names) and raw body."""

    headers: Mapping[str, str]
    body: bytes
    query: str = ""  # the raw query string (the queue's GET routes read `wait`)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


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


async def create_booking(service: BookingService, call: Call, event_id: str) -> Answer:
    """POST /api/events/{event_id}/bookings."""
    key = parse_idempotency_key(call.idempotency_key)
    body = parse_body(BookingIn, call.body)
    service.waiting_room.check_booking(await service.catalog.known(event_id), body.user_id,
                                       call.headers.get("queue-pass"))
    accepted = await service.request_booking(BookingRequest(
        event_id=event_id, user_id=body.user_id, quantity=body.quantity or len(body.seat_ids or ()),
        seat_ids=tuple(body.seat_ids or ()), idempotency_key=key, fingerprint=body.fingerprint(),
    ))
    booking = accepted.booking
    return Answer(202 if accepted.created else 200, booking_json(booking, accepted.secret),
                  {"Location": f"/api/bookings/{booking.id}"})


async def _compat_request(service: BookingService, call: Call, admission: str) -> BookingRequest:
    key = parse_idempotency_key(call.idempotency_key)
    body = parse_body(CompatBookingIn, call.body)
    event = await service.compat_event(body.eventId)
    service.waiting_room.check_booking(event, body.userId, call.headers.get("queue-pass"))
    seat = seat_at_position(event, body.seatNumber)
    if seat is None:
        raise InvalidRequest(f"seatNumber: event {event.id} has {event.capacity} seats", field="seatNumber")
    return BookingRequest(
        event_id=event.id, user_id=body.userId, quantity=1, seat_ids=(seat.id,), idempotency_key=key,
        fingerprint=request_fingerprint(body.userId, (seat.id,), None), admission=admission,
    )


async def book_async(service: BookingService, call: Call) -> Answer:
    """POST /api/book-async and /book: the original's queued path, no edge refusals."""
    accepted = await service.request_booking(await _compat_request(service, call, "queue"))
    booking = accepted.booking
    body = {"status": "Pending", "message": "Request queued" if accepted.created else "Request already queued",
            "booking": booking_json(booking, accepted.secret)}
    return Answer(202 if accepted.created else 200, body, {"Location": f"/api/bookings/{booking.id}"})


async def book_secure(service: BookingService, call: Call) -> Answer:
    """POST /api/book-secure: seat lock, then store write."""
    return _booked(await service.book_now(await _compat_request(service, call, "edge"), lock=True))


async def book_naive(service: BookingService, call: Call) -> Answer:
    """POST /api/book-naive: read, then conditional write."""
    return _booked(await service.book_now(await _compat_request(service, call, "queue"), lock=False))


def _booked(done: Accepted) -> Answer:
    """The original's answer of its synchronous routes, plus our booking (with its secret)."""
    booking = done.booking
    return Answer(200, {"success": True, "bookingId": booking.id, "booking": booking_json(booking, done.secret)})


# ---------------------------------------------------------------------- the waiting room (API 1.2)
async def join_queue(service: BookingService, call: Call, event_id: str) -> Answer:
    """POST /api/events/{event_id}/queue."""
    body = parse_body(JoinIn, call.body)
    joined = await service.waiting_room.join(event_id, body.user_id, body.challenge, body.proof)
    ticket = joined.ticket
    return Answer(201 if joined.created else 200,
                  ticket_json(ticket, joined.line, service.waiting_room.pass_of(ticket), joined.secret),
                  {"Location": f"/api/queue/{ticket.id}"})


async def queue_ticket(service: BookingService, call: Call, ticket_id: str) -> Answer:
    """GET /api/queue/{ticket_id} (`?wait=N` long-polls)."""
    wait = parse_wait(query_value(call.query, "wait"))
    ticket, line = await service.waiting_room.ticket(ticket_id, bearer(call.headers.get("authorization")), wait)
    return Answer(200, ticket_json(ticket, line, service.waiting_room.pass_of(ticket)))


async def queue_line(service: BookingService, call: Call, event_id: str) -> Answer:
    """GET /api/events/{event_id}/queue: the line in public numbers."""
    return Answer(200, (await service.waiting_room.line(event_id)).as_json())


async def queue_challenge(service: BookingService, call: Call, event_id: str) -> Answer:
    """GET /api/events/{event_id}/queue/challenge."""
    return Answer(200, await service.waiting_room.challenge(event_id))


async def booking_long_poll(service: BookingService, call: Call, booking_id: str) -> Answer:
    """GET /api/bookings/{booking_id}?wait=N: answered by the door too (a flash sale's fans all poll)."""
    wait = parse_wait(query_value(call.query, "wait"))
    return Answer(200, booking_json(await service.booking(booking_id, bearer(call.headers.get("authorization")), wait)))


COMPAT_ROUTES = {
    "/api/book-async": book_async,
    "/book": book_async,
    "/api/book-secure": book_secure,
    "/api/book-naive": book_naive,
}


async def answer(route: Any, service: BookingService, call: Call, *params: str, json_body: bool = True) -> Answer:
    """Run one intake route: the body must be JSON (415), domain errors (and surprises) become
    problem+json, and an origin the operator allowed gets its CORS headers."""
    try:
        if json_body:
            check_json_body(call.headers.get("content-type"))
        result: Answer = await route(service, call, *params)
    except BookingError as exc:
        result = error_answer(exc)
    except Exception:
        log.exception("unexpected error in intake route %s", getattr(route, "__name__", route))
        result = unexpected_answer()
    cors = cors_headers(service.settings.cors_origin_set, call.headers.get("origin"))
    if cors:
        result.headers.update(cors)
    return result
