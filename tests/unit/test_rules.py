"""Unit tests of the booking rules (`ticketblitz.domain.rules`): seat maps, fitting requests, picking
seats, deciding queued bookings and status transitions. Pure functions only: no I/O, no clock."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from ticketblitz.domain.errors import InvalidRequest, InvalidTransition
from ticketblitz.domain.model import Booking, BookingRequest, BookingStatus, Event, SeatRef, Section
from ticketblitz.domain.rules import (
    Decision,
    SeatPicker,
    apply_decision,
    check_cancel,
    check_confirm,
    decide,
    fit_request_to_event,
    hold_lapsed,
    locate_seat,
    request_fingerprint,
    seat_at_position,
    seat_map,
)


def make_event(*sections: tuple[str, int, int], max_per_user: int = 4, hold_seconds: int = 600) -> Event:
    return Event(
        id="evt_test",
        name="Test night",
        sections=tuple(Section(name, rows, per_row) for name, rows, per_row in sections),
        max_per_user=max_per_user,
        hold_seconds=hold_seconds,
    )


def refs(event: Event, *ids: str) -> list[SeatRef]:
    found = [locate_seat(event, i) for i in ids]
    assert all(r is not None for r in found), ids
    return [r for r in found if r is not None]


def booking(
    *, quantity: int = 1, seats: tuple[str, ...] = (), status: BookingStatus = BookingStatus.PENDING,
    expires_at: float | None = None, user_id: str = "u-1",
) -> Booking:
    return Booking(
        id="bkg_test", event_id="evt_test", user_id=user_id, quantity=len(seats) or quantity,
        requested_seats=seats, status=status, expires_at=expires_at,
    )


THREE_SECTIONS = make_event(("A", 2, 3), ("B", 1, 2), ("C", 3, 1))


# ---------------------------------------------------------------- seat map
def test_seat_map_order_is_sections_then_rows_then_numbers() -> None:
    ids = [r.id for r in seat_map(THREE_SECTIONS)]
    assert ids == [
        "A-1-1", "A-1-2", "A-1-3", "A-2-1", "A-2-2", "A-2-3",
        "B-1-1", "B-1-2",
        "C-1-1", "C-2-1", "C-3-1",
    ]


def test_seat_map_positions_are_one_based_and_consecutive() -> None:
    seats = list(seat_map(THREE_SECTIONS))
    assert [r.position for r in seats] == list(range(1, THREE_SECTIONS.capacity + 1))
    assert len(seats) == THREE_SECTIONS.capacity == 11
    first = seats[0]
    assert (first.section, first.row, first.number) == ("A", 1, 1)
    b2 = seats[7]
    assert (b2.id, b2.section, b2.row, b2.number) == ("B-1-2", "B", 1, 2)


@pytest.mark.parametrize(
    ("position", "expected"),
    [(1, "A-1-1"), (3, "A-1-3"), (4, "A-2-1"), (6, "A-2-3"), (7, "B-1-1"), (8, "B-1-2"), (9, "C-1-1"), (11, "C-3-1")],
)
def test_seat_at_position_counts_across_sections(position: int, expected: str) -> None:
    ref = seat_at_position(THREE_SECTIONS, position)
    assert ref is not None
    assert ref.id == expected
    assert ref.position == position


@pytest.mark.parametrize("position", [0, -1, 12, 10_000])
def test_seat_at_position_out_of_range_is_none(position: int) -> None:
    assert seat_at_position(THREE_SECTIONS, position) is None


def test_seat_at_position_and_locate_seat_agree_with_the_seat_map() -> None:
    event = make_event(("A", 3, 4), ("VIP", 2, 5), ("Z9", 1, 1))
    for ref in seat_map(event):
        assert seat_at_position(event, ref.position) == ref
        assert locate_seat(event, ref.id) == ref


@pytest.mark.parametrize(
    "seat",
    [
        "",
        "A",
        "A-1",
        "A-1-1-1",
        "A-0-1",
        "A-1-0",
        "A-01-1",
        "A--1-1",
        "A-1-x",
        "a-1-1",  # section names are case sensitive
        "D-1-1",  # no such section
        "A-3-1",  # row beyond the section
        "A-1-4",  # number beyond the row
        "B-2-1",
        "C-1-2",
        "A_1_1",
        " A-1-1",
        "A-1-1 ",
        "A-1-1\n",
        "A-\u0661-1",  # a non-ASCII digit
    ],
)
def test_locate_seat_rejects_malformed_or_outside_ids(seat: str) -> None:
    assert locate_seat(THREE_SECTIONS, seat) is None


# ---------------------------------------------------------------- fit_request_to_event
def test_fit_request_orders_seat_ids_by_map_and_sets_quantity() -> None:
    event = make_event(("A", 2, 3), ("B", 1, 2), max_per_user=4)
    request = BookingRequest(event_id=event.id, user_id="u", quantity=0, seat_ids=("B-1-1", "A-2-1", "A-1-3"))
    fitted = fit_request_to_event(event, request)
    assert fitted.seat_ids == ("A-1-3", "A-2-1", "B-1-1")
    assert fitted.quantity == 3
    assert fitted.user_id == "u"


def test_fit_request_passes_a_quantity_request_within_the_limit() -> None:
    event = make_event(("A", 2, 3), max_per_user=4)
    request = BookingRequest(event_id=event.id, user_id="u", quantity=4)
    assert fit_request_to_event(event, request) == request


def test_fit_request_refuses_more_seat_ids_than_max_per_user() -> None:
    event = make_event(("A", 2, 3), max_per_user=2)
    request = BookingRequest(event_id=event.id, user_id="u", quantity=3, seat_ids=("A-1-1", "A-1-2", "A-1-3"))
    with pytest.raises(InvalidRequest) as info:
        fit_request_to_event(event, request)
    assert info.value.field == "seat_ids"
    assert info.value.status == 422
    assert "seat_ids" in info.value.detail


def test_fit_request_refuses_a_quantity_over_max_per_user() -> None:
    event = make_event(("A", 2, 3), max_per_user=2)
    with pytest.raises(InvalidRequest) as info:
        fit_request_to_event(event, BookingRequest(event_id=event.id, user_id="u", quantity=3))
    assert info.value.field == "quantity"


@pytest.mark.parametrize(
    ("seat_ids", "bad_index"),
    [(("Z-1-1",), 0), (("A-1-1", "A-9-9"), 1), (("A-1-1", "A-1-2", "B-1-1"), 2), (("a-1-1", "A-1-1"), 0)],
)
def test_fit_request_names_the_unknown_seat(seat_ids: tuple[str, ...], bad_index: int) -> None:
    event = make_event(("A", 2, 3), max_per_user=4)
    request = BookingRequest(event_id=event.id, user_id="u", quantity=len(seat_ids), seat_ids=seat_ids)
    with pytest.raises(InvalidRequest) as info:
        fit_request_to_event(event, request)
    assert info.value.field == f"seat_ids[{bad_index}]"
    assert seat_ids[bad_index] in info.value.detail


# ---------------------------------------------------------------- SeatPicker
def test_pick_prefers_an_adjacent_run_over_an_earlier_scattered_row() -> None:
    event = make_event(("A", 3, 5))
    # row 1 has 3 seats but none adjacent; row 2 has a run of 2; row 3 is full
    row3 = (f"A-3-{n}" for n in range(1, 6))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-3", "A-1-5", "A-2-1", "A-2-3", "A-2-4", *row3))
    assert picker.pick(2) == ("A-2-3", "A-2-4")
    assert picker.pick(3) == ("A-3-1", "A-3-2", "A-3-3")


def test_pick_takes_the_first_adjacent_run_in_map_order() -> None:
    event = make_event(("A", 1, 8), ("B", 1, 8))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-4", "A-1-5", "A-1-7", "A-1-8", "B-1-1", "B-1-2"))
    assert picker.pick(2) == ("A-1-4", "A-1-5")
    assert picker.pick(1) == ("A-1-1",)


def test_pick_without_a_run_uses_the_first_row_with_enough_seats() -> None:
    event = make_event(("A", 3, 6))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-3", "A-2-1", "A-2-3", "A-2-5", "A-3-2", "A-3-4", "A-3-6"))
    assert picker.pick(3) == ("A-2-1", "A-2-3", "A-2-5")


def test_pick_without_such_a_row_takes_the_first_seats_in_map_order() -> None:
    event = make_event(("A", 2, 4), ("B", 1, 4))
    picker = SeatPicker(refs(event, "B-1-1", "A-2-4", "A-1-1", "A-1-3", "B-1-3"))
    assert picker.pick(4) == ("A-1-1", "A-1-3", "A-2-4", "B-1-1")
    assert picker.pick(5) == ("A-1-1", "A-1-3", "A-2-4", "B-1-1", "B-1-3")


def test_pick_returns_none_when_too_few_seats_remain() -> None:
    event = make_event(("A", 1, 3))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-3"))
    assert picker.pick(3) is None
    assert SeatPicker([]).pick(1) is None


def test_pick_does_not_take() -> None:
    event = make_event(("A", 1, 3))
    picker = SeatPicker(seat_map(event))
    assert picker.pick(2) == ("A-1-1", "A-1-2")
    assert len(picker) == 3
    assert picker.pick(2) == ("A-1-1", "A-1-2")


def test_take_is_all_or_nothing() -> None:
    event = make_event(("A", 1, 4))
    picker = SeatPicker(seat_map(event))
    assert picker.take(["A-1-2"])
    assert len(picker) == 3
    assert not picker.take(["A-1-1", "A-1-2"])  # A-1-2 is gone: A-1-1 must stay
    assert "A-1-1" in picker
    assert len(picker) == 3
    assert not picker.take(["A-1-3", "Z-1-1"])
    assert "A-1-3" in picker
    assert picker.take(["A-1-1", "A-1-3", "A-1-4"])
    assert len(picker) == 0
    assert "A-1-1" not in picker
    assert picker.pick(1) is None


def test_picker_accepts_seats_in_any_order() -> None:
    event = make_event(("A", 2, 3))
    shuffled = list(seat_map(event))
    random.Random(7).shuffle(shuffled)
    assert SeatPicker(shuffled).pick(3) == ("A-1-1", "A-1-2", "A-1-3")


def _best_available(available: set[str], event: Event, quantity: int) -> tuple[str, ...] | None:
    """An independent, slow statement of 'best available' to check the picker against."""
    ordered = [r for r in seat_map(event) if r.id in available]
    if quantity > len(ordered):
        return None
    rows: dict[tuple[str, int], list[SeatRef]] = {}
    for r in ordered:
        rows.setdefault((r.section, r.row), []).append(r)
    for row in rows.values():
        for start in range(len(row) - quantity + 1):
            window = row[start : start + quantity]
            if all(b.number == a.number + 1 for a, b in itertools.pairwise(window)):
                return tuple(r.id for r in window)
    for row in rows.values():
        if len(row) >= quantity:
            return tuple(r.id for r in row[:quantity])
    return tuple(r.id for r in ordered[:quantity])


@pytest.mark.parametrize("seed", range(25))
def test_random_picks_never_hand_out_a_seat_twice(seed: int) -> None:
    rng = random.Random(seed)
    sections = [(f"S{i}", rng.randint(1, 5), rng.randint(1, 7)) for i in range(rng.randint(1, 4))]
    event = make_event(*sections)
    all_ids = [r.id for r in seat_map(event)]
    initially = rng.sample(all_ids, rng.randint(0, len(all_ids)))
    picker = SeatPicker(refs(event, *initially))
    available = set(initially)
    given: list[str] = []
    for _ in range(60):
        before = len(picker)
        assert before == len(available)
        if rng.random() < 0.7:
            quantity = rng.randint(1, 8)
            chosen = picker.pick(quantity)
            assert chosen == _best_available(available, event, quantity)
            if quantity > before:
                assert chosen is None
                continue
            assert chosen is not None
            assert len(chosen) == len(set(chosen)) == quantity
            assert picker.take(chosen)
        else:
            chosen = tuple(rng.sample(all_ids, rng.randint(1, min(3, len(all_ids)))))
            ok = picker.take(chosen)
            assert ok == all(s in available for s in chosen)
            if not ok:
                assert len(picker) == before
                continue
        assert len(picker) == before - len(chosen)
        assert not set(chosen) & set(given)
        assert all(s not in picker for s in chosen)
        given.extend(chosen)
        available -= set(chosen)
    assert len(given) == len(set(given))
    assert set(given) | available == set(initially)


# ---------------------------------------------------------------- decide
def test_decide_holds_named_seats_and_takes_them() -> None:
    event = make_event(("A", 1, 4))
    picker = SeatPicker(seat_map(event))
    decision = decide(booking(seats=("A-1-2", "A-1-3")), event, 0, picker)
    assert decision == Decision(seats=("A-1-2", "A-1-3"))
    assert decision.held
    assert "A-1-2" not in picker and "A-1-3" not in picker
    assert len(picker) == 2


def test_decide_holds_best_available_for_a_quantity() -> None:
    event = make_event(("A", 2, 3))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-3", "A-2-1", "A-2-2"))
    decision = decide(booking(quantity=2), event, 0, picker)
    assert decision.held
    assert decision.seats == ("A-2-1", "A-2-2")
    assert len(picker) == 2


@pytest.mark.parametrize(("owned", "quantity", "held"), [(0, 4, True), (2, 2, True), (3, 1, True), (3, 2, False),
                                                          (4, 1, False), (0, 5, False)])
def test_decide_limit_counts_what_the_user_already_owns(owned: int, quantity: int, held: bool) -> None:
    event = make_event(("A", 2, 10), max_per_user=4)
    picker = SeatPicker(seat_map(event))
    decision = decide(booking(quantity=quantity), event, owned, picker)
    assert decision.held is held
    if not held:
        assert decision == Decision(reason="limit_exceeded")
        assert len(picker) == 20  # nothing taken


def test_decide_limit_applies_to_named_seats_too() -> None:
    event = make_event(("A", 1, 10), max_per_user=2)
    picker = SeatPicker(seat_map(event))
    decision = decide(booking(seats=("A-1-1", "A-1-2")), event, 1, picker)
    assert decision.reason == "limit_exceeded"
    assert "A-1-1" in picker


def test_decide_named_seat_taken_is_seat_unavailable_and_takes_nothing() -> None:
    event = make_event(("A", 1, 4))
    picker = SeatPicker(seat_map(event))
    assert picker.take(["A-1-3"])
    decision = decide(booking(seats=("A-1-2", "A-1-3")), event, 0, picker)
    assert decision == Decision(reason="seat_unavailable")
    assert not decision.held
    assert decision.seats == ()
    assert "A-1-2" in picker


def test_decide_quantity_too_large_is_sold_out() -> None:
    event = make_event(("A", 1, 4))
    picker = SeatPicker(refs(event, "A-1-1", "A-1-4"))
    decision = decide(booking(quantity=3), event, 0, picker)
    assert decision == Decision(reason="sold_out")
    assert len(picker) == 2


def test_decide_in_sequence_never_overbooks() -> None:
    event = make_event(("A", 1, 5), max_per_user=4)
    picker = SeatPicker(seat_map(event))
    first = decide(booking(quantity=3, user_id="a"), event, 0, picker)
    second = decide(booking(quantity=3, user_id="b"), event, 0, picker)
    third = decide(booking(quantity=2, user_id="c"), event, 0, picker)
    assert first.seats == ("A-1-1", "A-1-2", "A-1-3")
    assert second.reason == "sold_out"
    assert third.seats == ("A-1-4", "A-1-5")
    assert len(picker) == 0


# ---------------------------------------------------------------- apply_decision
def test_apply_decision_held_sets_seats_and_expiry() -> None:
    event = make_event(("A", 1, 4), hold_seconds=90)
    pending = booking(quantity=2)
    held = apply_decision(pending, event, Decision(seats=("A-1-1", "A-1-2")), now=1000.0)
    assert held.status is BookingStatus.HELD
    assert held.seat_ids == ("A-1-1", "A-1-2")
    assert held.reason is None
    assert held.expires_at == 1090.0
    assert held.updated_at == 1000.0
    assert (held.id, held.user_id, held.quantity) == (pending.id, pending.user_id, pending.quantity)


@pytest.mark.parametrize("reason", ["seat_unavailable", "sold_out", "limit_exceeded"])
def test_apply_decision_rejected_gives_no_seats_and_the_reason(reason: str) -> None:
    event = make_event(("A", 1, 4))
    pending = replace(booking(seats=("A-1-1",)), seat_ids=("A-1-1",))
    rejected = apply_decision(pending, event, Decision(reason=reason), now=50.0)
    assert rejected.status is BookingStatus.REJECTED
    assert rejected.reason == reason
    assert rejected.seat_ids == ()
    assert rejected.updated_at == 50.0
    assert rejected.expires_at is None


# ---------------------------------------------------------------- transitions
def test_check_confirm_on_a_live_hold_is_true() -> None:
    assert check_confirm(booking(status=BookingStatus.HELD, expires_at=100.0), now=99.9) is True


def test_check_confirm_on_a_confirmed_booking_is_idempotent() -> None:
    assert check_confirm(booking(status=BookingStatus.CONFIRMED, expires_at=100.0), now=50.0) is False
    assert check_confirm(booking(status=BookingStatus.CONFIRMED, expires_at=100.0), now=500.0) is False


@pytest.mark.parametrize("now", [100.0, 100.5, 10_000.0])
def test_check_confirm_on_a_lapsed_hold_is_invalid(now: float) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_confirm(booking(status=BookingStatus.HELD, expires_at=100.0), now=now)
    assert info.value.status == 409
    assert info.value.code == "invalid_transition"


@pytest.mark.parametrize(
    "status", [BookingStatus.PENDING, BookingStatus.REJECTED, BookingStatus.EXPIRED, BookingStatus.CANCELLED]
)
def test_check_confirm_on_other_statuses_is_invalid(status: BookingStatus) -> None:
    with pytest.raises(InvalidTransition):
        check_confirm(booking(status=status, expires_at=100.0), now=0.0)


def test_check_cancel_only_on_held() -> None:
    check_cancel(booking(status=BookingStatus.HELD, expires_at=100.0))
    for status in BookingStatus:
        if status is BookingStatus.HELD:
            continue
        with pytest.raises(InvalidTransition):
            check_cancel(booking(status=status))


def test_hold_lapsed() -> None:
    held = booking(status=BookingStatus.HELD, expires_at=100.0)
    assert not hold_lapsed(held, 99.0)
    assert hold_lapsed(held, 100.0)
    assert hold_lapsed(held, 101.0)
    assert not hold_lapsed(booking(status=BookingStatus.HELD, expires_at=None), 1e12)
    for status in BookingStatus:
        if status is not BookingStatus.HELD:
            assert not hold_lapsed(booking(status=status, expires_at=100.0), 1e12)


def test_confirm_and_lapse_agree_on_the_boundary() -> None:
    held = booking(status=BookingStatus.HELD, expires_at=100.0)
    for now in (99.0, 99.999, 100.0, 100.001):
        lapsed = hold_lapsed(held, now)
        if lapsed:
            with pytest.raises(InvalidTransition):
                check_confirm(held, now)
        else:
            assert check_confirm(held, now)


# ---------------------------------------------------------------- request_fingerprint
def test_fingerprint_ignores_seat_order() -> None:
    assert request_fingerprint("u", ["A-1-2", "A-1-1"], None) == request_fingerprint("u", ["A-1-1", "A-1-2"], None)
    assert request_fingerprint("u", ("B-1-1", "A-1-1"), 2) == request_fingerprint("u", ["A-1-1", "B-1-1"], None)


def test_fingerprint_depends_on_user_seats_and_quantity() -> None:
    base = request_fingerprint("u", [], 2)
    assert base == request_fingerprint("u", [], 2)
    assert base != request_fingerprint("v", [], 2)
    assert base != request_fingerprint("u", [], 3)
    assert base != request_fingerprint("u", ["A-1-1", "A-1-2"], None)
    named = request_fingerprint("u", ["A-1-1"], None)
    assert named != request_fingerprint("u", ["A-1-2"], None)
    assert named != request_fingerprint("u", ["A-1-1", "A-1-2"], None)
    assert named != request_fingerprint("v", ["A-1-1"], None)


def test_fingerprint_is_a_short_hex_string() -> None:
    fp = request_fingerprint("ünïcødé-😀", ["A-1-1"], None)
    assert len(fp) == 32
    int(fp, 16)


def test_best_available_leaves_seats_named_by_waiting_bookings_when_it_can() -> None:
    from ticketblitz.domain.model import Booking
    from ticketblitz.domain.rules import named_seats

    event = Event(id="evt", name="e", sections=(Section("A", 2, 4),))
    waiting = [Booking(id="b1", event_id="evt", user_id="u", quantity=1, requested_seats=("A-1-1",))]
    picker = SeatPicker(seat_map(event))
    assert picker.pick(2, named_seats(waiting)) == ("A-1-2", "A-1-3")
    # when only named seats are left, they are still sold rather than refused
    small = SeatPicker(r for r in seat_map(event) if r.id in {"A-1-1", "A-1-2"})
    assert small.pick(2, frozenset({"A-1-1"})) == ("A-1-1", "A-1-2")


@pytest.mark.parametrize("seed", range(12))
def test_a_windowed_picker_picks_like_a_full_one(seed: int) -> None:
    """Stores hand the picker a window of the first free seats and load more on demand: the picks must
    be the same as with every free seat loaded."""
    rng = random.Random(seed)
    event = Event(id="evt", name="e", sections=(Section("A", 6, 7), Section("B", 3, 5)))
    refs = list(seat_map(event))
    free = [r for r in refs if rng.random() < 0.6]
    window = rng.choice([1, 3, 8])
    rest = list(free)

    def more() -> list[SeatRef]:
        chunk = rest[:window]
        del rest[:window]
        return chunk

    full, windowed = SeatPicker(free), SeatPicker([], more)
    windowed.extend()
    for _ in range(12):
        quantity = rng.randint(1, 5)
        avoid = frozenset(r.id for r in rng.sample(free, k=min(3, len(free))))
        expected = full.pick(quantity, avoid)
        assert windowed.pick(quantity, avoid) == expected
        if expected is not None:
            assert full.take(expected) and windowed.take(expected)
