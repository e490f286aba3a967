"""The booking domain: plain data and rules, free of I/O."""

from .errors import (
    BookingError,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    LimitExceeded,
    MalformedRequest,
    NotFound,
    RateLimited,
    SeatUnavailable,
    SoldOut,
    Unavailable,
)
from .inventory import EdgeInventory
from .model import Booking, BookingRequest, BookingStatus, Counts, Event, Seat, SeatRef, SeatStatus, Section
from .rules import Decision, SeatPicker, decide

__all__ = [
    "Booking",
    "BookingError",
    "BookingRequest",
    "BookingStatus",
    "Counts",
    "Decision",
    "EdgeInventory",
    "Event",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvalidTransition",
    "LimitExceeded",
    "MalformedRequest",
    "NotFound",
    "RateLimited",
    "Seat",
    "SeatPicker",
    "SeatRef",
    "SeatStatus",
    "SeatUnavailable",
    "Section",
    "SoldOut",
    "Unavailable",
    "decide",
]
