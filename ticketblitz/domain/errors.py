"""Errors of the booking domain. They are values: the HTTP layer maps them to problem+json in one place."""

from __future__ import annotations


class BookingError(Exception):
    """Base of every refusal the booking rules can give."""

    code = "invalid_request"
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidRequest(BookingError):
    """A value is well-formed JSON but breaks a rule of the schema or of the event (422)."""

    code = "invalid_request"
    status = 422
    title = "Invalid request"


class MalformedRequest(BookingError):
    """The body is not JSON at all (400)."""

    code = "invalid_request"
    status = 400
    title = "Malformed request"


class Unauthorized(BookingError):
    """No credential where one is needed (401)."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(BookingError):
    """A credential that does not open this door (403)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(BookingError):
    code = "not_found"
    status = 404
    title = "Not found"


class SoldOut(BookingError):
    code = "sold_out"
    status = 409
    title = "Sold out"


class SeatUnavailable(BookingError):
    code = "seat_unavailable"
    status = 409
    title = "Seat unavailable"


class LimitExceeded(BookingError):
    code = "limit_exceeded"
    status = 409
    title = "Limit exceeded"


class IdempotencyConflict(BookingError):
    code = "idempotency_conflict"
    status = 422
    title = "Idempotency key reused with a different body"


class InvalidTransition(BookingError):
    code = "invalid_transition"
    status = 409
    title = "Invalid transition"


class RateLimited(BookingError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(BookingError):
    """A backing service cannot take the request now; nothing was accepted (503)."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, component: str = "store", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.component = component
        self.retry_after = retry_after


class QueueRequired(BookingError):
    """A booking on a waiting-room event without a `Queue-Pass` (403)."""

    code = "queue_required"
    status = 403
    title = "Queue pass required"


class PassInvalid(BookingError):
    """A `Queue-Pass` that is forged, expired, or for another user or event (403)."""

    code = "pass_invalid"
    status = 403
    title = "Queue pass invalid"


class NoWaitingRoom(BookingError):
    code = "no_waiting_room"
    status = 409
    title = "No waiting room"


class SaleNotStarted(BookingError):
    """A booking request before the event's `sale_starts_at` (403: not allowed yet; the queued compat
    path refuses nothing with 409)."""

    code = "sale_not_started"
    status = 403
    title = "Sale not started"


class ProofRequired(BookingError):
    code = "proof_required"
    status = 422
    title = "Proof of work required"


class ProofInvalid(BookingError):
    code = "proof_invalid"
    status = 422
    title = "Proof of work invalid"


REJECTION_ERRORS: dict[str, type[BookingError]] = {
    "sold_out": SoldOut,
    "seat_unavailable": SeatUnavailable,
    "limit_exceeded": LimitExceeded,
}
