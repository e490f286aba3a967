"""Unit tests of input validation at the HTTP edge (`ticketblitz.schemas`): what is 400, what is 422 and
which field it names, and what parses. No server: `parse_body` is the one function both HTTP doors call."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ticketblitz.domain.errors import BookingError, InvalidRequest, MalformedRequest
from ticketblitz.domain.rules import seat_map
from ticketblitz.schemas import (
    BookingIn,
    CompatBookingIn,
    EventIn,
    parse_body,
    parse_idempotency_key,
    parse_wait,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def raw(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def event_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "Eras Tour — Night 1", "sections": [{"name": "A", "rows": 2, "seats_per_row": 3}]}
    body.update(changes)
    return body


def sections(*specs: tuple[str, int, int]) -> list[dict[str, Any]]:
    return [{"name": n, "rows": r, "seats_per_row": s} for n, r, s in specs]


# ---------------------------------------------------------------- 400: not JSON
MALFORMED = [
    b"",
    b"   ",
    b"\n",
    b"{",
    b"{'user_id': 'u', 'quantity': 1}",
    b'{"user_id": "u", "quantity": 1,}',
    b'{"user_id": "u", "quantity": 1}{}',
    b"user_id=u&quantity=1",
    b"\xff\xfe\x00",
    b'{"user_id": "\xff\xfe", "quantity": 1}',
    b'{"user_id": "\xc3", "quantity": 1}',  # truncated UTF-8 sequence
    b"[1, 2",
]


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("model", [BookingIn, EventIn])
def test_non_json_bodies_are_400(model: type, body: bytes) -> None:
    with pytest.raises(MalformedRequest) as info:
        parse_body(model, body)
    assert info.value.status == 400
    assert info.value.code == "invalid_request"


# ---------------------------------------------------------------- 422: booking bodies
BAD_BOOKINGS: list[tuple[Any, str]] = [
    # not an object
    ([], "body"),
    ([{"user_id": "u", "quantity": 1}], "body"),
    ("u", "body"),
    (1, "body"),
    (None, "body"),
    (True, "body"),
    # wrong types
    ({"user_id": 42, "quantity": 1}, "user_id"),
    ({"user_id": None, "quantity": 1}, "user_id"),
    ({"user_id": ["u"], "quantity": 1}, "user_id"),
    ({"user_id": "u", "quantity": "2"}, "quantity"),
    ({"user_id": "u", "quantity": 2.5}, "quantity"),
    ({"user_id": "u", "quantity": 2.0}, "quantity"),
    ({"user_id": "u", "quantity": True}, "quantity"),
    ({"user_id": "u", "quantity": [2]}, "quantity"),
    ({"user_id": "u", "seat_ids": "A-1-1"}, "seat_ids"),
    ({"user_id": "u", "seat_ids": ["A-1-1", 5]}, "seat_ids[1]"),
    # bounds
    ({"user_id": "u", "quantity": 0}, "quantity"),
    ({"user_id": "u", "quantity": -1}, "quantity"),
    ({"user_id": "u", "quantity": 21}, "quantity"),
    ({"user_id": "u", "quantity": 10**30}, "quantity"),
    ({"user_id": "", "quantity": 1}, "user_id"),
    ({"user_id": "x" * 65, "quantity": 1}, "user_id"),
    ({"user_id": "a\x00b", "quantity": 1}, "user_id"),
    ({"user_id": "a\nb", "quantity": 1}, "user_id"),
    ({"user_id": "\t", "quantity": 1}, "user_id"),
    ({"user_id": "a\x1fb", "quantity": 1}, "user_id"),
    ({"user_id": "a\x7fb", "quantity": 1}, "user_id"),
    ({"user_id": "u", "seat_ids": []}, "seat_ids"),
    ({"user_id": "u", "seat_ids": [f"A-1-{n}" for n in range(1, 22)]}, "seat_ids"),
    # malformed seat ids
    ({"user_id": "u", "seat_ids": ["A-0-1"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": ["A-1-1", "A-1"]}, "seat_ids[1]"),
    ({"user_id": "u", "seat_ids": ["A-1-01"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": ["A 1 1"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": ["A-1-1\n"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": ["ABCDEFGHIJKLMNOPQ-1-1"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": ["A-10000-1"]}, "seat_ids[0]"),
    ({"user_id": "u", "seat_ids": [""]}, "seat_ids[0]"),
    # unknown extra field
    ({"user_id": "u", "quantity": 1, "seatNumber": 1}, "seatNumber"),
    ({"user_id": "u", "quantity": 1, "event_id": "evt_1"}, "event_id"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BOOKINGS, ids=[repr(b)[:60] for b, _ in BAD_BOOKINGS])
def test_bad_booking_bodies_are_422_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(BookingIn, raw(body))
    assert info.value.status == 422
    assert info.value.code == "invalid_request"
    assert info.value.field == field
    assert field in info.value.detail


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u"},
        {"user_id": "u", "seat_ids": None, "quantity": None},
        {"user_id": "u", "quantity": 1, "seat_ids": ["A-1-1"]},
        {"user_id": "u", "quantity": None},
    ],
)
def test_booking_needs_exactly_one_of_seat_ids_or_quantity(body: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(BookingIn, raw(body))
    assert info.value.field is not None
    assert "seat_ids" in info.value.field and "quantity" in info.value.field


def test_booking_seat_ids_must_be_distinct() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(BookingIn, raw({"user_id": "u", "seat_ids": ["A-1-1", "A-1-2", "A-1-1"]}))
    assert info.value.field == "seat_ids"
    assert "distinct" in info.value.detail


def test_booking_missing_user_id_names_it() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(BookingIn, raw({"quantity": 1}))
    assert info.value.field == "user_id"


@pytest.mark.parametrize(
    ("body", "user_id", "seat_ids", "quantity"),
    [
        ({"user_id": "u-42", "quantity": 2}, "u-42", None, 2),
        ({"user_id": "u-42", "quantity": 1}, "u-42", None, 1),
        ({"user_id": "u-42", "quantity": 20}, "u-42", None, 20),
        ({"user_id": "u-42", "seat_ids": ["A-1-1", "A-1-2"]}, "u-42", ["A-1-1", "A-1-2"], None),
        ({"user_id": "u", "seat_ids": ["VIP9-1000-1000"]}, "u", ["VIP9-1000-1000"], None),
        ({"user_id": "ünïcødé-😀", "quantity": 1}, "ünïcødé-😀", None, 1),
        ({"user_id": "x" * 64, "quantity": 1}, "x" * 64, None, 1),
        ({"user_id": "😀" * 64, "quantity": 1}, "😀" * 64, None, 1),
        ({"user_id": " spaced user ", "quantity": 1}, " spaced user ", None, 1),
        ({"user_id": "u", "quantity": 3, "seat_ids": None}, "u", None, 3),
        ({"user_id": "u", "seat_ids": [f"A-1-{n}" for n in range(1, 21)]}, "u", [f"A-1-{n}" for n in range(1, 21)],
         None),
    ],
)
def test_valid_booking_bodies_parse(body: Any, user_id: str, seat_ids: list[str] | None, quantity: int | None) -> None:
    parsed = parse_body(BookingIn, raw(body))
    assert (parsed.user_id, parsed.seat_ids, parsed.quantity) == (user_id, seat_ids, quantity)


def test_valid_booking_body_with_surrounding_whitespace_and_escapes() -> None:
    parsed = parse_body(BookingIn, b' \n{"user_id": "\\u00fc\\ud83d\\ude00", "quantity": 1}\n ')
    assert parsed.user_id == "ü😀"


def test_booking_fingerprint_ignores_seat_order() -> None:
    a = parse_body(BookingIn, raw({"user_id": "u", "seat_ids": ["A-1-2", "A-1-1"]}))
    b = parse_body(BookingIn, raw({"user_id": "u", "seat_ids": ["A-1-1", "A-1-2"]}))
    c = parse_body(BookingIn, raw({"user_id": "u", "quantity": 2}))
    d = parse_body(BookingIn, raw({"user_id": "v", "quantity": 2}))
    assert a.fingerprint() == b.fingerprint()
    assert len({a.fingerprint(), c.fingerprint(), d.fingerprint()}) == 3


# ---------------------------------------------------------------- 422: event bodies
BAD_EVENTS: list[tuple[Any, str]] = [
    ([], "body"),
    ("event", "body"),
    (3, "body"),
    (None, "body"),
    ({"sections": sections(("A", 1, 1))}, "name"),
    (event_body(name=""), "name"),
    (event_body(name="x" * 201), "name"),
    (event_body(name=5), "name"),
    (event_body(name="a\nb"), "name"),
    (event_body(venue="v" * 201), "venue"),
    (event_body(venue=7), "venue"),
    ({"name": "n"}, "sections"),
    (event_body(sections=[]), "sections"),
    (event_body(sections=sections(*((f"S{i}", 1, 1) for i in range(51)))), "sections"),
    (event_body(sections="A"), "sections"),
    (event_body(sections=sections(("A", 1, 1), ("B", 1, 1), ("A", 2, 2))), "sections"),
    (event_body(sections=sections(("A", 0, 1))), "sections[0].rows"),
    (event_body(sections=sections(("A", 1, 1), ("B", 1001, 1))), "sections[1].rows"),
    (event_body(sections=sections(("A", 1, 0))), "sections[0].seats_per_row"),
    (event_body(sections=sections(("A", 1, 1001))), "sections[0].seats_per_row"),
    (event_body(sections=sections(("A", 1000, 201))), "sections"),
    (event_body(sections=sections(("A", 1000, 100), ("B", 1000, 100), ("C", 1, 1))), "sections"),
    (event_body(sections=sections(("", 1, 1))), "sections[0].name"),
    (event_body(sections=sections(("A-B", 1, 1))), "sections[0].name"),
    (event_body(sections=sections(("x" * 17, 1, 1))), "sections[0].name"),
    (event_body(sections=sections(("Ä", 1, 1))), "sections[0].name"),
    (event_body(sections=[{"name": "A", "rows": "1", "seats_per_row": 1}]), "sections[0].rows"),
    (event_body(sections=[{"name": "A", "rows": 1.5, "seats_per_row": 1}]), "sections[0].rows"),
    (event_body(sections=[{"name": "A", "rows": 1, "seats_per_row": 1, "price_cents": -1}]),
     "sections[0].price_cents"),
    (event_body(sections=[{"name": "A", "rows": 1, "seats_per_row": 1, "colour": "red"}]), "sections[0].colour"),
    (event_body(sections=[{"name": "A", "rows": 1}]), "sections[0].seats_per_row"),
    (event_body(max_per_user=0), "max_per_user"),
    (event_body(max_per_user=21), "max_per_user"),
    (event_body(max_per_user="4"), "max_per_user"),
    (event_body(hold_seconds=4), "hold_seconds"),
    (event_body(hold_seconds=3601), "hold_seconds"),
    (event_body(hold_seconds=600.0), "hold_seconds"),
    (event_body(starts_at="tomorrow"), "starts_at"),
    (event_body(starts_at="2027-06-01"), "starts_at"),
    (event_body(starts_at="2027-13-01T19:00:00Z"), "starts_at"),
    (event_body(starts_at="2027-06-01T25:00:00Z"), "starts_at"),
    (event_body(starts_at="2027-06-01T19:00:00"), "starts_at"),
    (event_body(starts_at="2027-06-01T19:00:00.5"), "starts_at"),
    (event_body(starts_at=[2027, 6, 1]), "starts_at"),
    (event_body(capacity=10), "capacity"),
    (event_body(id="evt_mine"), "id"),
]


@pytest.mark.parametrize(("body", "field"), BAD_EVENTS, ids=[repr(b)[:70] for b, _ in BAD_EVENTS])
def test_bad_event_bodies_are_422_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(EventIn, raw(body))
    assert info.value.status == 422
    assert info.value.field == field
    assert field in info.value.detail


def test_event_total_seats_at_the_limit_is_fine() -> None:
    parsed = parse_body(EventIn, raw(event_body(sections=sections(("A", 1000, 100), ("B", 1000, 100)))))
    assert sum(s.rows * s.seats_per_row for s in parsed.sections) == 200_000


def test_event_defaults() -> None:
    parsed = parse_body(EventIn, raw({"name": "n", "sections": sections(("A", 1, 1))}))
    assert (parsed.max_per_user, parsed.hold_seconds, parsed.venue, parsed.starts_at) == (4, 600, None, None)
    assert parsed.sections[0].price_cents == 0


def test_event_bounds_inclusive() -> None:
    body = event_body(
        name="x" * 200,
        sections=sections(*((f"S{i}", 1, 1) for i in range(49)), ("Z" * 16, 1000, 1)),
        max_per_user=20,
        hold_seconds=3600,
    )
    parsed = parse_body(EventIn, raw(body))
    assert len(parsed.sections) == 50
    assert parse_body(EventIn, raw(event_body(max_per_user=1, hold_seconds=5))).hold_seconds == 5


# ---------------------------------------------------------------- EventIn.to_event
def test_to_event_builds_sections_and_settings() -> None:
    body = {
        "name": "Eras Tour — Night 1", "venue": "Stadium", "starts_at": "2027-06-01T19:00:00Z",
        "sections": [{"name": "A", "rows": 10, "seats_per_row": 20, "price_cents": 12000},
                     {"name": "B", "rows": 2, "seats_per_row": 5}],
        "max_per_user": 6, "hold_seconds": 120,
    }
    event = parse_body(EventIn, raw(body)).to_event(now=1234.5)
    assert event.id.startswith("evt_")
    assert event.name == "Eras Tour — Night 1"
    assert event.venue == "Stadium"
    assert event.starts_at == "2027-06-01T19:00:00Z"
    assert [(s.name, s.rows, s.seats_per_row, s.price_cents) for s in event.sections] == [
        ("A", 10, 20, 12000), ("B", 2, 5, 0)]
    assert event.capacity == 210
    assert (event.max_per_user, event.hold_seconds, event.created_at) == (6, 120, 1234.5)
    ids = [r.id for r in seat_map(event)]
    assert ids[0] == "A-1-1" and ids[199] == "A-10-20" and ids[200] == "B-1-1" and ids[-1] == "B-2-5"


def test_to_event_ids_are_fresh() -> None:
    spec = parse_body(EventIn, raw(event_body()))
    assert spec.to_event(0.0).id != spec.to_event(0.0).id


@pytest.mark.parametrize(
    ("starts_at", "expected"),
    [
        ("2027-06-01T19:00:00Z", "2027-06-01T19:00:00Z"),
        ("2027-06-01T19:00:00z", "2027-06-01T19:00:00Z"),
        ("2027-06-01T19:00:00+00:00", "2027-06-01T19:00:00Z"),
        ("2027-06-01T21:00:00+02:00", "2027-06-01T19:00:00Z"),
        ("2027-06-01T19:00:00-05:30", "2027-06-02T00:30:00Z"),
        ("2027-01-01T00:30:00+01:00", "2026-12-31T23:30:00Z"),
    ],
)
def test_to_event_normalizes_starts_at_to_utc(starts_at: str, expected: str) -> None:
    event = parse_body(EventIn, raw(event_body(starts_at=starts_at))).to_event(0.0)
    assert event.starts_at == expected


@pytest.mark.parametrize(
    "starts_at",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "0005-06-01T12:00:00Z",  # a year below 1000
    ],
)
def test_extreme_starts_at_is_refused_or_kept_rfc3339(starts_at: str) -> None:
    """A bad request never produces a 5xx: an accepted `starts_at` must convert to RFC 3339 UTC."""
    try:
        spec = parse_body(EventIn, raw(event_body(starts_at=starts_at)))
    except InvalidRequest as exc:
        assert exc.field == "starts_at"
        return
    event = spec.to_event(0.0)
    assert event.starts_at is not None
    assert RFC3339_UTC.match(event.starts_at), event.starts_at


# ---------------------------------------------------------------- compat body
def test_compat_body_parses_and_ignores_extra_fields() -> None:
    parsed = parse_body(CompatBookingIn, raw({"userId": "u-1", "seatNumber": 7, "extra": {"x": 1}, "ts": 1}))
    assert (parsed.userId, parsed.seatNumber, parsed.eventId) == ("u-1", 7, None)
    parsed = parse_body(CompatBookingIn, raw({"userId": "u-1", "seatNumber": 200_000, "eventId": "evt_1"}))
    assert (parsed.seatNumber, parsed.eventId) == (200_000, "evt_1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"userId": "u", "seatNumber": 0}, "seatNumber"),
        ({"userId": "u", "seatNumber": -3}, "seatNumber"),
        ({"userId": "u", "seatNumber": 200_001}, "seatNumber"),
        ({"userId": "u", "seatNumber": "1"}, "seatNumber"),
        ({"userId": "u", "seatNumber": 1.5}, "seatNumber"),
        ({"userId": "u", "seatNumber": True}, "seatNumber"),
        ({"userId": "u"}, "seatNumber"),
        ({"seatNumber": 1}, "userId"),
        ({"userId": "", "seatNumber": 1}, "userId"),
        ({"userId": 5, "seatNumber": 1}, "userId"),
        ({"userId": "u", "seatNumber": 1, "eventId": ""}, "eventId"),
        ({"userId": "u", "seatNumber": 1, "eventId": 3}, "eventId"),
        ([], "body"),
    ],
)
def test_compat_body_rejects(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(CompatBookingIn, raw(body))
    assert info.value.field == field


def test_compat_body_not_json_is_400() -> None:
    with pytest.raises(MalformedRequest):
        parse_body(CompatBookingIn, b"userId=u&seatNumber=1")


# ---------------------------------------------------------------- headers and query
@pytest.mark.parametrize("key", [None, "k", "x" * 128, "order-42:attempt 1", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"])
def test_idempotency_key_accepted(key: str | None) -> None:
    assert parse_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 129, "ключ", "café", "a\tb", "a\nb", "\x00", "a\x7f", "😀"])
def test_idempotency_key_refused(key: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_idempotency_key(key)
    assert info.value.field == "Idempotency-Key"
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0.0), ("", 0.0), ("0", 0.0), ("2.5", 2.5), ("30", 30.0), ("1", 1.0), ("0.001", 0.001)],
)
def test_wait_accepted(value: str | None, expected: float) -> None:
    assert parse_wait(value) == expected


@pytest.mark.parametrize("value", ["-1", "-0.5", "31", "30.01", "abc", "nan", "NaN", "inf", "-inf", "1e9", "2s", "0x1"])
def test_wait_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_wait(value)
    assert info.value.field == "wait"


@pytest.mark.parametrize("body", [b"NaN", b"Infinity", b'{"user_id": "u", "quantity": NaN}'])
def test_non_standard_json_numbers_are_refused(body: bytes) -> None:
    with pytest.raises(BookingError) as info:
        parse_body(BookingIn, body)
    assert info.value.status in (400, 422)


def test_every_refusal_is_a_booking_error_with_a_4xx_status() -> None:
    bodies = [b"", b"{", raw([]), raw({"user_id": 1, "quantity": 1}), raw({"user_id": "u"})]
    for body in bodies:
        with pytest.raises(BookingError) as info:
            parse_body(BookingIn, body)
        assert 400 <= info.value.status < 500
