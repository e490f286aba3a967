"""Unit tests of edge admission (`ticketblitz.domain.inventory.EdgeInventory`): the in-memory forecast
that refuses at once what the store cannot serve. No I/O: every method is one synchronous step."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from ticketblitz.domain.errors import LimitExceeded, SeatUnavailable, SoldOut
from ticketblitz.domain.inventory import EdgeInventory
from ticketblitz.domain.model import Booking, Event, Section
from ticketblitz.domain.rules import SeatPicker, decide, seat_map

EVT = "evt_1"


def inventory(available: int = 10, max_per_user: int = 4) -> EdgeInventory:
    inv = EdgeInventory()
    inv.add_event(EVT, available=available, max_per_user=max_per_user)
    return inv


# ---------------------------------------------------------------- admission
def test_unknown_and_known_events() -> None:
    inv = inventory()
    assert inv.knows(EVT)
    assert not inv.knows("evt_other")
    stock = inv.stock(EVT)
    assert (stock.remaining, stock.max_per_user, set(stock.taken), stock.per_user) == (10, 4, set(), {})


def test_admit_reserves_quantity_and_named_seats() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    assert inv.admit("b2", EVT, "v", 2, ("A-1-1", "A-1-2"), force=False) is None
    stock = inv.stock(EVT)
    assert stock.remaining == 6
    assert set(stock.taken) == {"A-1-1", "A-1-2"}
    assert stock.per_user == {"u": 2, "v": 2}
    assert inv.has_reservation("b1") and inv.has_reservation("b2")


def test_sold_out_when_remaining_is_below_quantity() -> None:
    inv = inventory(available=3)
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    refusal = inv.admit("b2", EVT, "v", 2, (), force=False)
    assert isinstance(refusal, SoldOut)
    assert refusal.code == "sold_out" and refusal.status == 409
    assert not inv.has_reservation("b2")
    assert inv.stock(EVT).remaining == 1
    assert inv.admit("b3", EVT, "v", 1, (), force=False) is None
    assert inv.stock(EVT).remaining == 0
    assert isinstance(inv.check(EVT, "w", 1, ()), SoldOut)


def test_sold_out_event_from_the_start() -> None:
    inv = inventory(available=0)
    assert isinstance(inv.check(EVT, "u", 1, ()), SoldOut)


def test_seat_unavailable_for_a_taken_seat() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 1, ("A-1-1",), force=False) is None
    refusal = inv.admit("b2", EVT, "v", 2, ("A-1-2", "A-1-1"), force=False)
    assert isinstance(refusal, SeatUnavailable)
    assert "A-1-1" in refusal.detail
    assert not inv.has_reservation("b2")
    assert set(inv.stock(EVT).taken) == {"A-1-1"}
    assert inv.stock(EVT).remaining == 9
    assert "v" not in inv.stock(EVT).per_user


def test_named_seats_beyond_remaining_are_seat_unavailable() -> None:
    inv = inventory(available=2)
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    assert isinstance(inv.check(EVT, "v", 1, ("A-1-5",)), SeatUnavailable)


def test_limit_exceeded_counts_pending_and_held() -> None:
    inv = inventory(max_per_user=4)
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None  # pending
    assert inv.admit("b2", EVT, "u", 1, ("A-1-1",), force=False) is None  # pending
    inv.settle("b2", ("A-1-1",))  # now held
    refusal = inv.admit("b3", EVT, "u", 2, (), force=False)
    assert isinstance(refusal, LimitExceeded)
    assert refusal.code == "limit_exceeded"
    assert inv.admit("b4", EVT, "u", 1, (), force=False) is None  # exactly max_per_user
    assert isinstance(inv.check(EVT, "u", 1, ()), LimitExceeded)
    assert inv.check(EVT, "someone-else", 4, ()) is None


def test_limit_is_checked_before_availability() -> None:
    inv = inventory(available=1, max_per_user=2)
    assert isinstance(inv.check(EVT, "u", 3, ()), LimitExceeded)


def test_force_lets_a_refused_request_through_reserving_nothing() -> None:
    inv = inventory(available=1)
    assert inv.admit("b1", EVT, "u", 1, ("A-1-1",), force=False) is None
    before = (inv.stock(EVT).remaining, set(inv.stock(EVT).taken), dict(inv.stock(EVT).per_user))
    assert inv.admit("b2", EVT, "v", 1, ("A-1-1",), force=True) is None
    assert inv.has_reservation("b2")
    stock = inv.stock(EVT)
    assert (stock.remaining, set(stock.taken), stock.per_user) == before
    # the store decides it: rejected gives nothing back, because nothing was reserved
    inv.settle("b2", ())
    assert (stock.remaining, set(stock.taken), stock.per_user) == before


def test_force_on_an_acceptable_request_reserves_as_usual() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, (), force=True) is None
    assert inv.stock(EVT).remaining == 8
    assert inv.stock(EVT).per_user == {"u": 2}


def test_forced_booking_held_by_the_store_is_counted_at_settle() -> None:
    inv = inventory(available=1)
    assert inv.admit("b1", EVT, "u", 1, (), force=False) is None
    assert inv.admit("b2", EVT, "v", 1, ("A-1-1",), force=True) is None
    inv.settle("b2", ("A-1-1",))  # the store served the forced one
    inv.settle("b1", ())  # and refused the other
    stock = inv.stock(EVT)
    assert stock.remaining == 0
    assert set(stock.taken) == {"A-1-1"}
    assert stock.per_user == {"v": 1}


# ---------------------------------------------------------------- settle / release / withdraw
def test_settle_moves_a_quantity_reservation_to_held_seats() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    inv.settle("b1", ("A-1-3", "A-1-4"))
    stock = inv.stock(EVT)
    assert stock.remaining == 8
    assert set(stock.taken) == {"A-1-3", "A-1-4"}
    assert stock.per_user == {"u": 2}
    assert not inv.has_reservation("b1")


def test_settle_of_a_named_reservation_keeps_the_seats_taken() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, ("A-1-1", "A-1-2"), force=False) is None
    inv.settle("b1", ("A-1-1", "A-1-2"))
    stock = inv.stock(EVT)
    assert (stock.remaining, set(stock.taken), stock.per_user) == (8, {"A-1-1", "A-1-2"}, {"u": 2})


def test_rejected_booking_gives_back_its_reservation() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, ("A-1-1", "A-1-2"), force=False) is None
    assert inv.admit("b2", EVT, "u", 1, (), force=False) is None
    inv.settle("b1", ())
    stock = inv.stock(EVT)
    assert stock.remaining == 9
    assert set(stock.taken) == set()
    assert stock.per_user == {"u": 1}
    inv.settle("b2", ())
    assert (stock.remaining, set(stock.taken), stock.per_user) == (10, set(), {})
    assert inv.check(EVT, "v", 1, ("A-1-1",)) is None


def test_second_settle_of_the_same_booking_is_a_no_op() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    inv.settle("b1", ("A-1-1", "A-1-2"))
    snapshot = (inv.stock(EVT).remaining, set(inv.stock(EVT).taken), dict(inv.stock(EVT).per_user))
    inv.settle("b1", ("A-1-1", "A-1-2"))
    inv.settle("b1", ())
    stock = inv.stock(EVT)
    assert (stock.remaining, set(stock.taken), stock.per_user) == snapshot


def test_settle_of_an_unknown_booking_is_a_no_op() -> None:
    inv = inventory()
    inv.settle("never-admitted", ("A-1-1",))
    assert (inv.stock(EVT).remaining, set(inv.stock(EVT).taken), inv.stock(EVT).per_user) == (10, set(), {})


def test_release_returns_seats() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 3, (), force=False) is None
    inv.settle("b1", ("A-1-1", "A-1-2", "A-1-3"))
    inv.release("b1", EVT, "u", ("A-1-1", "A-1-2"))
    stock = inv.stock(EVT)
    assert stock.remaining == 9
    assert set(stock.taken) == {"A-1-3"}
    assert stock.per_user == {"u": 1}
    inv.release("b1", EVT, "u", ("A-1-3",))
    assert (stock.remaining, set(stock.taken), stock.per_user) == (10, set(), {})
    assert inv.check(EVT, "u", 4, ("A-1-1", "A-1-2", "A-1-3", "A-1-4")) is None


def _counts(inv: EdgeInventory) -> tuple[int, dict[str, str], dict[str, int]]:
    stock = inv.stock(EVT)
    return stock.remaining, dict(stock.taken), dict(stock.per_user)


def test_a_second_release_changes_nothing() -> None:
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, (), force=False) is None
    inv.settle("b1", ("A-1-1", "A-1-2"))
    assert inv.release("b1", EVT, "u", ("A-1-1", "A-1-2")) == ("A-1-1", "A-1-2")
    after_first = _counts(inv)
    assert after_first == (10, {}, {})
    assert inv.release("b1", EVT, "u", ("A-1-1", "A-1-2")) == ()
    assert _counts(inv) == after_first


def test_a_repeated_release_leaves_a_seat_taken_meanwhile_alone() -> None:
    """Released, then booked by someone else, then the first release is retried: the new owner keeps it."""
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 1, ("A-1-1",), force=False) is None
    inv.settle("b1", ("A-1-1",))
    inv.release("b1", EVT, "u", ("A-1-1",))
    assert inv.admit("b2", EVT, "v", 1, ("A-1-1",), force=False) is None
    before = _counts(inv)
    assert inv.release("b1", EVT, "u", ("A-1-1",)) == ()
    assert _counts(inv) == before == (9, {"A-1-1": "b2"}, {"v": 1})
    assert isinstance(inv.check(EVT, "w", 1, ("A-1-1",)), SeatUnavailable)


def test_a_release_counts_only_the_seats_still_taken() -> None:
    """Half of the seats were released already (a partial retry): only the other half moves the counts."""
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 3, (), force=False) is None
    inv.settle("b1", ("A-1-1", "A-1-2", "A-1-3"))
    inv.release("b1", EVT, "u", ("A-1-1",))
    assert inv.release("b1", EVT, "u", ("A-1-1", "A-1-2", "A-1-2", "A-9-9")) == ("A-1-2",)
    assert _counts(inv) == (9, {"A-1-3": "b1"}, {"u": 1})


def test_a_release_after_a_rebuild_changes_nothing() -> None:
    """The store cancelled b1 and a rebuild read it: the rebuilt edge already counts its seats free."""
    inv = EdgeInventory()
    inv.add_event(EVT, available=9, max_per_user=4)  # 10 seats, A-1-5 held by b2
    inv.restore("b2", EVT, "v", ("A-1-5",))
    before = _counts(inv)
    assert inv.release("b1", EVT, "u", ("A-1-1", "A-1-2")) == ()
    assert inv.release("b2-other", EVT, "v", ("A-1-5",)) == ()  # a seat another booking holds: untouched
    assert _counts(inv) == before


def test_a_release_gives_back_a_reservation_whose_settle_never_landed() -> None:
    """Decided held and cancelled in the store while the edge still had it pending: the edge ends clean."""
    inv = inventory()
    assert inv.admit("b1", EVT, "u", 2, ("A-1-1", "A-1-2"), force=False) is None
    assert inv.release("b1", EVT, "u", ("A-1-1", "A-1-2")) == ()
    assert not inv.has_reservation("b1")
    assert _counts(inv) == (10, {}, {})
    inv.settle("b1", ("A-1-1", "A-1-2"))  # the late settle finds nothing left to change
    assert _counts(inv) == (10, {}, {})


def test_release_for_an_unknown_event_is_ignored() -> None:
    inv = inventory()
    inv.release("b1", "evt_gone", "u", ("A-1-1",))
    assert inv.stock(EVT).remaining == 10


def test_withdraw_undoes_an_admission() -> None:
    inv = inventory(available=2)
    assert inv.admit("b1", EVT, "u", 2, ("A-1-1", "A-1-2"), force=False) is None
    inv.withdraw("b1")
    stock = inv.stock(EVT)
    assert (stock.remaining, set(stock.taken), stock.per_user) == (2, set(), {})
    assert not inv.has_reservation("b1")
    assert inv.admit("b2", EVT, "v", 2, ("A-1-1", "A-1-2"), force=False) is None


def test_withdraw_of_a_forced_admission_changes_nothing() -> None:
    inv = inventory(available=0)
    assert inv.admit("b1", EVT, "u", 1, (), force=True) is None
    inv.withdraw("b1")
    assert (inv.stock(EVT).remaining, inv.stock(EVT).per_user) == (0, {})


def test_held_seat_stays_taken_when_a_rejected_booking_had_named_it() -> None:
    """A quantity booking queued first may be given the seat a later named booking reserved (the store's
    picker does not know edge reservations); the named one is then rejected. The seat is held, so the
    edge must keep refusing it."""
    inv = inventory(available=10)
    assert inv.admit("quantity", EVT, "u", 1, (), force=False) is None
    assert inv.admit("named", EVT, "v", 1, ("A-1-1",), force=False) is None
    inv.settle("quantity", ("A-1-1",))  # best available was A-1-1
    inv.settle("named", ())  # rejected: seat_unavailable
    stock = inv.stock(EVT)
    assert stock.remaining == 9
    assert stock.per_user == {"u": 1}
    assert "A-1-1" in set(stock.taken)
    assert isinstance(inv.check(EVT, "w", 1, ("A-1-1",)), SeatUnavailable)


# ---------------------------------------------------------------- rebuild
def test_restore_and_restore_pending_rebuild_the_state() -> None:
    inv = EdgeInventory()
    # the store says: 10 seats, 3 held/sold (A-1-1, A-1-2 by u; A-1-3 by v), so 7 available
    inv.add_event(EVT, available=7, max_per_user=4)
    inv.restore("h1", EVT, "u", ("A-1-1",))
    inv.restore("h1", EVT, "u", ("A-1-2",))
    inv.restore("h2", EVT, "v", ("A-1-3",))
    inv.restore_pending("p1", EVT, "u", 1, ())
    inv.restore_pending("p2", EVT, "w", 2, ("A-2-1", "A-2-2"))
    stock = inv.stock(EVT)
    assert stock.remaining == 4
    assert set(stock.taken) == {"A-1-1", "A-1-2", "A-1-3", "A-2-1", "A-2-2"}
    assert stock.per_user == {"u": 3, "v": 1, "w": 2}
    assert inv.has_reservation("p1") and inv.has_reservation("p2")
    assert isinstance(inv.check(EVT, "u", 2, ()), LimitExceeded)
    assert isinstance(inv.check(EVT, "x", 1, ("A-1-3",)), SeatUnavailable)
    # the pending ones settle like any admitted booking
    inv.settle("p2", ())
    inv.settle("p1", ("A-3-1",))
    assert stock.remaining == 6
    assert set(stock.taken) == {"A-1-1", "A-1-2", "A-1-3", "A-3-1"}
    assert stock.per_user == {"u": 3, "v": 1}


# ---------------------------------------------------------------- randomized bookkeeping
@dataclass
class _Pending:
    booking: Booking
    forced: bool


def _event(rng: random.Random, max_per_user: int) -> Event:
    sections = tuple(Section(f"S{i}", rng.randint(1, 3), rng.randint(1, 6)) for i in range(rng.randint(1, 3)))
    return Event(id=EVT, name="n", sections=sections, max_per_user=max_per_user)


@pytest.mark.parametrize("seed", range(30))
def test_random_operations_keep_remaining_and_per_user_exact(seed: int) -> None:
    rng = random.Random(seed)
    max_per_user = rng.randint(1, 4)
    event = _event(rng, max_per_user)
    all_ids = [r.id for r in seat_map(event)]
    users = [f"u{i}" for i in range(rng.randint(1, 5))]
    inv = EdgeInventory()
    inv.add_event(EVT, available=event.capacity, max_per_user=max_per_user)

    held: dict[str, tuple[str, tuple[str, ...]]] = {}  # booking id -> (user, seats), as the store has them
    pending: dict[str, _Pending] = {}
    released: dict[str, tuple[str, tuple[str, ...]]] = {}  # cancelled or expired, as the store has them
    next_id = 0

    def check_invariants() -> None:
        stock = inv.stock(EVT)
        held_count = sum(len(seats) for _, seats in held.values())
        reserved = {b: p for b, p in pending.items() if not p.forced}
        assert stock.remaining == event.capacity - held_count - sum(p.booking.quantity for p in reserved.values())
        expected: dict[str, int] = {}
        for user, seats in held.values():
            expected[user] = expected.get(user, 0) + len(seats)
        for p in reserved.values():
            expected[p.booking.user_id] = expected.get(p.booking.user_id, 0) + p.booking.quantity
        assert stock.per_user == {u: n for u, n in expected.items() if n > 0}
        owned = [s for _, seats in held.values() for s in seats]
        assert len(owned) == len(set(owned))

    for _ in range(200):
        op = rng.random()
        if op < 0.5:
            next_id += 1
            booking_id = f"b{next_id}"
            user = rng.choice(users)
            if rng.random() < 0.5:
                seats = tuple(sorted(rng.sample(all_ids, rng.randint(1, min(max_per_user, len(all_ids))))))
                quantity = len(seats)
            else:
                seats = ()
                quantity = rng.randint(1, max_per_user)
            force = rng.random() < 0.2
            would_refuse = inv.check(EVT, user, quantity, seats)
            refusal = inv.admit(booking_id, EVT, user, quantity, seats, force=force)
            if refusal is not None:
                assert not force
                assert type(refusal) is type(would_refuse)
                assert not inv.has_reservation(booking_id)
            else:
                assert inv.has_reservation(booking_id)
                pending[booking_id] = _Pending(
                    Booking(id=booking_id, event_id=EVT, user_id=user, quantity=quantity, requested_seats=seats),
                    forced=force and would_refuse is not None,
                )
        elif op < 0.8 and pending:
            booking_id = rng.choice(sorted(pending))
            p = pending.pop(booking_id)
            # the store decides from its own state, in any order; sometimes it refuses anyway
            owned_seats = {s for _, seats in held.values() for s in seats}
            picker = SeatPicker(r for r in seat_map(event) if r.id not in owned_seats)
            user_owned = sum(len(seats) for user, seats in held.values() if user == p.booking.user_id)
            decision = decide(p.booking, event, user_owned, picker)
            got = decision.seats if decision.held and rng.random() < 0.9 else ()
            if got:
                held[booking_id] = (p.booking.user_id, got)
            inv.settle(booking_id, got)
            assert not inv.has_reservation(booking_id)
            inv.settle(booking_id, got)  # a redelivered decision changes nothing
        elif op < 0.9 and released:
            # a retried or repeated release of a booking released before: never changes anything
            booking_id = rng.choice(sorted(released))
            user, seats = released[booking_id]
            before = (inv.stock(EVT).remaining, dict(inv.stock(EVT).taken), dict(inv.stock(EVT).per_user))
            assert inv.release(booking_id, EVT, user, seats) == ()
            assert (inv.stock(EVT).remaining, dict(inv.stock(EVT).taken), dict(inv.stock(EVT).per_user)) == before
        elif held:
            booking_id = rng.choice(sorted(held))
            user, seats = held.pop(booking_id)
            assert inv.release(booking_id, EVT, user, seats) == seats
            released[booking_id] = (user, seats)
        check_invariants()
