"""Bookings as bytes, for the queue (Kafka records) and the edge (Redis pending records).

A Kafka record of the booking topic is an *envelope* of the bookings one intake tick sent to one
partition, `{"v": 2, "bookings": [<booking>, ...]}`; a record written before envelopes (and a Redis
pending record) is one booking object. `bookings_from_json` reads both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .domain.model import Booking, BookingStatus

_FIELDS = ("id", "event_id", "user_id", "quantity")
ENVELOPE_VERSION = 2  # "v" of an envelope; a bare booking object (no "v") is the version before


def booking_to_json(booking: Booking) -> bytes:
    return orjson.dumps(_booking_data(booking))


def envelope_to_json(bookings: Sequence[Booking]) -> bytes:
    """One record's value for these bookings, in order."""
    return orjson.dumps({"v": ENVELOPE_VERSION, "bookings": [_booking_data(b) for b in bookings]})


def bookings_from_json(raw: bytes | str) -> list[Booking]:
    """The bookings of an envelope, or the one booking of a record of before envelopes; ValueError when
    `raw` is neither or any booking in it is invalid (the record is poison as a whole)."""
    data = _loads(raw)
    if "v" not in data:
        return [_booking_from_data(data)]
    if data["v"] != ENVELOPE_VERSION:
        raise ValueError(f"unknown envelope version {data['v']!r}")
    items = data.get("bookings")
    if not isinstance(items, list) or not items:
        raise ValueError("an envelope without bookings")
    bookings: list[Booking] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"booking {n}: not a JSON object")
        try:
            bookings.append(_booking_from_data(item))
        except ValueError as exc:
            raise ValueError(f"booking {n}: {exc}") from None
    return bookings


def _booking_data(booking: Booking) -> dict[str, Any]:
    return {
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
    }


def booking_from_json(raw: bytes | str) -> Booking:
    """The booking, or ValueError when `raw` is not one (a poison message)."""
    return _booking_from_data(_loads(raw))


def _loads(raw: bytes | str) -> dict[str, Any]:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _booking_from_data(data: dict[str, Any]) -> Booking:
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
