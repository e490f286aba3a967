"""Bookings as bytes (`ticketblitz.codec`): what Kafka messages and Redis pending records carry."""

from __future__ import annotations

import orjson
import pytest

from ticketblitz.codec import booking_from_json, booking_to_json, bookings_from_json, envelope_to_json
from ticketblitz.domain.model import Booking, BookingStatus

SECRET_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def booking(**changes: object) -> Booking:
    base: dict[str, object] = dict(
        id="bkg_1", event_id="evt_1", user_id="u-1", quantity=2, requested_seats=("A-1-1", "A-1-2"),
        created_at=1764000000.123456, updated_at=1764000000.5, idempotency_key="k-1", fingerprint="fp",
        secret_hash=SECRET_HASH)
    base.update(changes)
    return Booking(**base)  # type: ignore[arg-type]


def test_a_booking_round_trips_with_its_secret_hash() -> None:
    b = booking()
    assert booking_from_json(booking_to_json(b)) == b
    assert orjson.loads(booking_to_json(b))["secret_hash"] == SECRET_HASH


def test_a_decided_booking_round_trips() -> None:
    b = booking(status=BookingStatus.HELD, seat_ids=("A-1-1", "A-1-2"), expires_at=1764000600.0, secret_hash=None)
    assert booking_from_json(booking_to_json(b)) == b


def test_a_message_of_before_api_1_1_decodes_without_a_secret_hash() -> None:
    old = orjson.loads(booking_to_json(booking()))
    del old["secret_hash"]
    assert booking_from_json(orjson.dumps(old)) == booking(secret_hash=None)


@pytest.mark.parametrize("bad", [7, "", ["x"]])
def test_a_secret_hash_that_is_not_text_is_a_poison_message(bad: object) -> None:
    data = orjson.loads(booking_to_json(booking()))
    data["secret_hash"] = bad
    with pytest.raises(ValueError, match="bad booking"):
        booking_from_json(orjson.dumps(data))


def test_an_envelope_round_trips_its_bookings_in_order() -> None:
    sent = [booking(id=f"bkg_{n}") for n in range(5)]
    raw = envelope_to_json(sent)
    assert orjson.loads(raw)["v"] == 2
    assert bookings_from_json(raw) == sent


def test_a_record_of_before_envelopes_is_one_booking() -> None:
    assert bookings_from_json(booking_to_json(booking())) == [booking()]


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"v": 3, "bookings": []}', "unknown envelope version"),
    (b'{"v": 2, "bookings": []}', "without bookings"),
    (b'{"v": 2}', "without bookings"),
    (b'{"v": 2, "bookings": [7]}', "booking 0: not a JSON object"),
])
def test_a_record_that_is_no_envelope_nor_booking_is_poison(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        bookings_from_json(raw)


def test_one_invalid_booking_makes_the_whole_envelope_poison() -> None:
    data = orjson.loads(envelope_to_json([booking(id="bkg_a"), booking(id="bkg_b")]))
    del data["bookings"][1]["user_id"]
    with pytest.raises(ValueError, match="booking 1: missing user_id"):
        bookings_from_json(orjson.dumps(data))
