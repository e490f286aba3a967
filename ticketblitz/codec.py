"""Bookings as bytes, for the queue (Kafka messages) and the edge (Redis pending records)."""

from __future__ import annotations

from typing import Any

import orjson

from .domain.model import Booking, BookingStatus

_FIELDS = ("id", "event_id", "user_id", "quantity")


def booking_to_json(booking: Booking) -> bytes:
    return orjson.dumps({
        "id": booking.id,
        "event_id": booking.event_id,
        "user_id": booking.user_id,
        "quantity": booking.quantity,
        "requested_seats": list(booking.requested_seats),
        "seat_ids": list(booking.seat_ids),
        "status": booking.status.value,
        "reason": booking.reason,
        "expires_at": booking.expires_at,
        "created_at": booking.created_at,
        "updated_at": booking.updated_at,
        "idempotency_key": booking.idempotency_key,
        "fingerprint": booking.fingerprint,
        "secret_hash": booking.secret_hash,
    })


def booking_from_json(raw: bytes | str) -> Booking:
    """The booking, or ValueError when `raw` is not one (a poison message)."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for name in _FIELDS:
        if name not in data:
            raise ValueError(f"missing {name}")
    try:
        booking = Booking(
            id=_text(data["id"]),
            event_id=_text(data["event_id"]),
            user_id=_text(data["user_id"]),
            quantity=int(data["quantity"]),
            requested_seats=tuple(_text(s) for s in data.get("requested_seats") or ()),
            seat_ids=tuple(_text(s) for s in data.get("seat_ids") or ()),
            status=BookingStatus(data.get("status", "pending")),
            reason=data.get("reason"),
            expires_at=_number(data.get("expires_at")),
            created_at=float(data.get("created_at") or 0.0),
            updated_at=float(data.get("updated_at") or 0.0),
            idempotency_key=data.get("idempotency_key"),
            fingerprint=data.get("fingerprint"),
            secret_hash=_optional_text(data.get("secret_hash")),  # absent in messages of before API 1.1
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad booking: {exc}") from None
    if booking.quantity < 1 or (booking.requested_seats and len(booking.requested_seats) != booking.quantity):
        raise ValueError("bad booking: quantity does not match the seats")
    return booking


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
