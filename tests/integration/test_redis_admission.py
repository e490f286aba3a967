"""Edge admission against a real Redis: the rules of EdgeInventory (tests/unit/test_inventory.py) run as
ONE test body against both RedisAdmission and InProcessAdmission, then what only Redis has: pending
records, one round trip per batch, rebuild from a real store after FLUSHDB, several processes at once,
and a Redis that stalls (a TCP proxy that stops forwarding) or is cut off.

Needs TICKETBLITZ_REDIS_URL (`eval "$(bash scripts/services.sh env)"`) and fails, never skips, without
it. Works in its own database (conftest_redis.ADMISSION_DB), emptied before each test.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
import trio
from conftest_redis import ADMISSION_DB, client, flushdb, redis_test_url
from tcp_proxy import TcpProxy

from ticketblitz.adapters.memory_admission import InProcessAdmission
from ticketblitz.adapters.redis_admission import (
    READY_KEY,
    RedisAdmission,
    _admit_request,
    abandoned_key,
    edge_key,
    pending_key,
)
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.codec import booking_to_json
from ticketblitz.domain.errors import BookingError, LimitExceeded, SeatUnavailable, SoldOut, Unavailable
from ticketblitz.domain.model import Booking, BookingStatus, Event, Section, new_event_id
from ticketblitz.domain.rules import SeatPicker, decide, seat_map
from ticketblitz.ports import AdmitItem, AdmitResult, PendingRecord

EVT = "evt_1"


# ---------------------------------------------------------------------- the adapters under test
@dataclass
class Stock:
    """One event's bookkeeping, read the same way from either adapter."""

    remaining: int
    taken: dict[str, str]  # seat -> booking id
    per_user: dict[str, int]


def booking(booking_id: str, user: str, quantity: int = 0, seats: Sequence[str] = (), *, event: str = EVT,
            key: str | None = None, fingerprint: str | None = None) -> Booking:
    """A pending booking: `quantity` seats, or the named `seats`."""
    return Booking(id=booking_id, event_id=event, user_id=user, quantity=quantity or len(seats),
                   requested_seats=tuple(seats), idempotency_key=key, fingerprint=fingerprint)


class Edge:
    """An Admission adapter with one-booking helpers and a read of its state for the assertions."""

    def __init__(self, admission: InProcessAdmission | RedisAdmission, raw: redis.Redis | None) -> None:
        self.admission = admission
        self.raw = raw  # the Redis adapter's database, read directly

    async def add_event(self, available: int = 10, max_per_user: int = 4, event: str = EVT) -> None:
        await self.admission.add_event(event, available, max_per_user)

    async def admit(self, b: Booking, *, force: bool = False) -> BookingError | None:
        (result,) = await self.admission.admit([AdmitItem(b, force=force)])
        assert result.repeat_of is None
        return result.error

    async def settle(self, b: Booking, held: Sequence[str]) -> bool:
        """The store decided `b`: held on `held`, or rejected when empty."""
        status = BookingStatus.HELD if held else BookingStatus.REJECTED
        (first,) = await self.admission.settle([replace(b, status=status, seat_ids=tuple(held))])
        return first

    async def release(self, b: Booking, seats: Sequence[str]) -> None:
        await self.admission.release([replace(b, status=BookingStatus.CANCELLED, seat_ids=tuple(seats))])

    async def withdraw(self, b: Booking) -> None:
        await self.admission.withdraw([b])

    async def abandon(self, *bookings: Booking) -> None:
        await self.admission.abandon(bookings)

    async def mark_queued(self, *bookings: Booking) -> None:
        await self.admission.mark_queued(bookings)

    def key_owner(self, key: str, event: str = EVT) -> str | None:
        """The booking an Idempotency-Key names at the edge now."""
        if isinstance(self.admission, InProcessAdmission):
            owner = self.admission._keys.get((event, key))
            return owner[0] if owner else None
        assert self.raw is not None
        value = self.raw.hget(edge_key(event, "keys"), key)
        return str(value).split(" ")[0] if value else None

    def stock(self, event: str = EVT) -> Stock:
        if isinstance(self.admission, InProcessAdmission):
            s = self.admission.inventory.stock(event)
            return Stock(s.remaining, dict(s.taken), dict(s.per_user))
        return Stock(
            int(self._hash(edge_key(event, "stock"))["remaining"]),
            self._hash(edge_key(event, "taken")),
            {user: int(n) for user, n in self._hash(edge_key(event, "users")).items()},
        )

    def _hash(self, key: str) -> dict[str, str]:
        assert self.raw is not None
        return {str(name): str(value) for name, value in self.raw.hgetall(key).items()}

    def has_reservation(self, booking_id: str, event: str = EVT) -> bool:
        if isinstance(self.admission, InProcessAdmission):
            return self.admission.inventory.has_reservation(booking_id)
        assert self.raw is not None
        return bool(self.raw.hexists(edge_key(event, "res"), booking_id))


@pytest.fixture
def url() -> str:
    return redis_test_url(ADMISSION_DB)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.close()


async def open_redis_admission(url: str, store: SqliteStore, **options: Any) -> RedisAdmission:
    """A RedisAdmission as a server process starts it: open, then ensure from the store."""
    admission = RedisAdmission(url, **options)
    await admission.open()
    await admission.ensure(store)
    return admission


@pytest.fixture(params=["in-process", "redis"])
async def edge(request: pytest.FixtureRequest, url: str, store: SqliteStore) -> AsyncIterator[Edge]:
    if request.param == "in-process":
        memory = InProcessAdmission()
        await memory.ensure(store)
        yield Edge(memory, None)
        return
    admission = await open_redis_admission(url, store)
    yield Edge(admission, client(url))
    await admission.close()


@pytest.fixture
async def redis_edge(url: str, store: SqliteStore) -> AsyncIterator[Edge]:
    admission = await open_redis_admission(url, store)
    yield Edge(admission, client(url))
    await admission.close()


# ---------------------------------------------------------------------- EdgeInventory's rules, both adapters
async def test_admit_reserves_quantity_and_named_seats(edge: Edge) -> None:
    await edge.add_event()
    assert await edge.admit(booking("b1", "u", 2)) is None
    assert await edge.admit(booking("b2", "v", seats=("A-1-1", "A-1-2"))) is None
    assert edge.stock() == Stock(6, {"A-1-1": "b2", "A-1-2": "b2"}, {"u": 2, "v": 2})
    assert edge.has_reservation("b1") and edge.has_reservation("b2")


async def test_add_event_twice_keeps_the_counters(edge: Edge) -> None:
    await edge.add_event(available=10)
    assert await edge.admit(booking("b1", "u", 2)) is None
    await edge.add_event(available=10)  # another process learns the event
    assert edge.stock().remaining == 8


async def test_sold_out_when_remaining_is_below_quantity(edge: Edge) -> None:
    await edge.add_event(available=3)
    assert await edge.admit(booking("b1", "u", 2)) is None
    refusal = await edge.admit(booking("b2", "v", 2))
    assert isinstance(refusal, SoldOut)
    assert refusal.code == "sold_out" and refusal.status == 409 and EVT in refusal.detail
    assert not edge.has_reservation("b2")
    assert edge.stock().remaining == 1
    assert await edge.admit(booking("b3", "v", 1)) is None
    assert isinstance(await edge.admit(booking("b4", "w", 1)), SoldOut)


async def test_sold_out_event_from_the_start(edge: Edge) -> None:
    await edge.add_event(available=0)
    assert isinstance(await edge.admit(booking("b1", "u", 1)), SoldOut)


async def test_seat_unavailable_for_a_taken_seat(edge: Edge) -> None:
    await edge.add_event()
    assert await edge.admit(booking("b1", "u", seats=("A-1-1",))) is None
    refusal = await edge.admit(booking("b2", "v", seats=("A-1-2", "A-1-1")))
    assert isinstance(refusal, SeatUnavailable)
    assert "A-1-1" in refusal.detail and EVT in refusal.detail
    assert not edge.has_reservation("b2")
    assert edge.stock() == Stock(9, {"A-1-1": "b1"}, {"u": 1})


async def test_named_seats_beyond_remaining_are_seat_unavailable(edge: Edge) -> None:
    await edge.add_event(available=2)
    assert await edge.admit(booking("b1", "u", 2)) is None
    assert isinstance(await edge.admit(booking("b2", "v", seats=("A-1-5",))), SeatUnavailable)


async def test_limit_exceeded_counts_pending_and_held(edge: Edge) -> None:
    await edge.add_event(max_per_user=4)
    assert await edge.admit(booking("b1", "u", 2)) is None  # pending
    b2 = booking("b2", "u", seats=("A-1-1",))
    assert await edge.admit(b2) is None
    assert await edge.settle(b2, ("A-1-1",))  # now held
    refusal = await edge.admit(booking("b3", "u", 2))
    assert isinstance(refusal, LimitExceeded)
    assert refusal.code == "limit_exceeded" and "u" in refusal.detail and "4" in refusal.detail
    assert await edge.admit(booking("b4", "u", 1)) is None  # exactly max_per_user
    assert isinstance(await edge.admit(booking("b5", "u", 1)), LimitExceeded)
    assert await edge.admit(booking("b6", "someone-else", 4)) is None


async def test_limit_is_checked_before_availability(edge: Edge) -> None:
    await edge.add_event(available=1, max_per_user=2)
    assert isinstance(await edge.admit(booking("b1", "u", 3)), LimitExceeded)


async def test_force_lets_a_refused_request_through_reserving_nothing(edge: Edge) -> None:
    await edge.add_event(available=1)
    assert await edge.admit(booking("b1", "u", seats=("A-1-1",))) is None
    before = edge.stock()
    b2 = booking("b2", "v", seats=("A-1-1",))
    assert await edge.admit(b2, force=True) is None
    assert edge.has_reservation("b2")
    assert edge.stock() == before
    assert await edge.settle(b2, ())  # the store rejects it: nothing was reserved, nothing comes back
    assert edge.stock() == before


async def test_force_on_an_acceptable_request_reserves_as_usual(edge: Edge) -> None:
    await edge.add_event()
    assert await edge.admit(booking("b1", "u", 2), force=True) is None
    assert edge.stock() == Stock(8, {}, {"u": 2})


async def test_forced_booking_held_by_the_store_is_counted_at_settle(edge: Edge) -> None:
    await edge.add_event(available=1)
    b1, b2 = booking("b1", "u", 1), booking("b2", "v", seats=("A-1-1",))
    assert await edge.admit(b1) is None
    assert await edge.admit(b2, force=True) is None
    assert await edge.settle(b2, ("A-1-1",))  # the store served the forced one
    assert await edge.settle(b1, ())  # and refused the other
    assert edge.stock() == Stock(0, {"A-1-1": "b2"}, {"v": 1})


async def test_settle_moves_a_quantity_reservation_to_held_seats(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 2)
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-3", "A-1-4"))
    assert edge.stock() == Stock(8, {"A-1-3": "b1", "A-1-4": "b1"}, {"u": 2})
    assert not edge.has_reservation("b1")


async def test_rejected_booking_gives_back_its_reservation(edge: Edge) -> None:
    await edge.add_event()
    b1, b2 = booking("b1", "u", seats=("A-1-1", "A-1-2")), booking("b2", "u", 1)
    assert await edge.admit(b1) is None
    assert await edge.admit(b2) is None
    assert await edge.settle(b1, ())
    assert edge.stock() == Stock(9, {}, {"u": 1})
    assert await edge.settle(b2, ())
    assert edge.stock() == Stock(10, {}, {})
    assert await edge.admit(booking("b3", "v", seats=("A-1-1",))) is None


async def test_second_settle_of_the_same_booking_is_a_no_op(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 2)
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1", "A-1-2")) is True
    after_first = edge.stock()
    assert await edge.settle(b1, ("A-1-1", "A-1-2")) is False
    assert await edge.settle(b1, ()) is False
    assert edge.stock() == after_first
    # twice in one batch: the first settles, the second is a redelivery
    b2 = booking("b2", "v", 1)
    assert await edge.admit(b2) is None
    held = replace(b2, status=BookingStatus.HELD, seat_ids=("A-1-3",))
    assert await edge.admission.settle([held, held]) == [True, False]


async def test_settle_of_a_booking_the_edge_lost_counts_its_seats_once(edge: Edge) -> None:
    """The edge was rebuilt (Redis restarted empty) while a booking was only in the queue: when the store
    decides it, the seats it holds are counted as taken, once; a rejected one changes nothing."""
    await edge.add_event()
    lost = booking("lost-in-a-rebuild", "u", 2)
    assert await edge.settle(lost, ("A-1-1", "A-1-2")) is True
    assert edge.stock() == Stock(8, {"A-1-1": lost.id, "A-1-2": lost.id}, {"u": 2})
    assert await edge.settle(lost, ("A-1-1", "A-1-2")) is False  # a redelivery
    assert await edge.settle(booking("rejected-one", "v", 1), ()) is False
    assert edge.stock() == Stock(8, {"A-1-1": lost.id, "A-1-2": lost.id}, {"u": 2})
    err = await edge.admit(booking("late", "w", seats=("A-1-2",)))
    assert err is not None and err.code == "seat_unavailable"


async def test_release_returns_seats(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 3)
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1", "A-1-2", "A-1-3"))
    await edge.release(b1, ("A-1-1", "A-1-2"))
    assert edge.stock() == Stock(9, {"A-1-3": "b1"}, {"u": 1})
    await edge.release(b1, ("A-1-3",))
    assert edge.stock() == Stock(10, {}, {})
    assert await edge.admit(booking("b2", "u", seats=("A-1-1", "A-1-2", "A-1-3", "A-1-4"))) is None


async def test_release_for_an_unknown_event_is_ignored(edge: Edge) -> None:
    await edge.add_event()
    await edge.release(booking("b1", "u", 1, event="evt_gone"), ("A-1-1",))
    assert edge.stock().remaining == 10


async def test_withdraw_undoes_an_admission(edge: Edge) -> None:
    await edge.add_event(available=2)
    b1 = booking("b1", "u", seats=("A-1-1", "A-1-2"))
    assert await edge.admit(b1) is None
    await edge.withdraw(b1)
    assert edge.stock() == Stock(2, {}, {})
    assert not edge.has_reservation("b1")
    assert await edge.admit(booking("b2", "v", seats=("A-1-1", "A-1-2"))) is None


async def test_withdraw_of_a_forced_admission_changes_nothing(edge: Edge) -> None:
    await edge.add_event(available=0)
    b1 = booking("b1", "u", 1)
    assert await edge.admit(b1, force=True) is None
    await edge.withdraw(b1)
    assert edge.stock() == Stock(0, {}, {})


async def test_held_seat_stays_taken_when_a_rejected_booking_had_named_it(edge: Edge) -> None:
    """The store's picker gave the quantity booking the seat a later named booking reserved; the named one
    is rejected. The seat is held, so the edge must keep refusing it."""
    await edge.add_event(available=10)
    quantity, named = booking("quantity", "u", 1), booking("named", "v", seats=("A-1-1",))
    assert await edge.admit(quantity) is None
    assert await edge.admit(named) is None
    assert await edge.settle(quantity, ("A-1-1",))
    assert await edge.settle(named, ())  # rejected: seat_unavailable
    assert edge.stock() == Stock(9, {"A-1-1": "quantity"}, {"u": 1})
    assert isinstance(await edge.admit(booking("b3", "w", seats=("A-1-1",))), SeatUnavailable)


# ---------------------------------------------------------------------- Idempotency-Keys, both adapters
async def test_a_repeated_key_returns_the_earlier_booking(edge: Edge) -> None:
    await edge.add_event()
    first = booking("b1", "u", 2, key="k1", fingerprint="fp-1")
    assert await edge.admit(first) is None
    # the repeat (even with another body) reserves nothing and names the first booking and its fingerprint
    results = await edge.admission.admit([AdmitItem(booking("b2", "u", 3, key="k1", fingerprint="fp-2")),
                                          AdmitItem(booking("b3", "u", 1, key="k2", fingerprint="fp:with:colons")),
                                          AdmitItem(booking("b4", "u", 1, key="k2"))])
    assert results == [AdmitResult(repeat_of="b1", repeat_fingerprint="fp-1"), AdmitResult(),
                       AdmitResult(repeat_of="b3", repeat_fingerprint="fp:with:colons")]
    assert edge.stock() == Stock(7, {}, {"u": 3})
    # a key belongs to one event
    await edge.add_event(event="evt_2")
    assert await edge.admit(booking("b5", "u", 1, key="k1", event="evt_2")) is None


async def test_a_refused_request_does_not_take_its_key(edge: Edge) -> None:
    await edge.add_event(available=1)
    assert isinstance(await edge.admit(booking("b1", "u", 2, key="k1")), SoldOut)
    assert await edge.admit(booking("b2", "u", 1, key="k1")) is None


async def test_a_key_without_fingerprint_repeats_with_none(edge: Edge) -> None:
    await edge.add_event()
    assert await edge.admit(booking("b1", "u", 1, key="k1")) is None
    (result,) = await edge.admission.admit([AdmitItem(booking("b2", "u", 1, key="k1"))])
    assert result == AdmitResult(repeat_of="b1", repeat_fingerprint=None)


async def test_withdraw_frees_only_its_own_key(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 1, key="k1", fingerprint="fp")
    assert await edge.admit(b1) is None
    await edge.withdraw(booking("b9", "u", 1, key="k1"))  # lost the key to b1: b1 keeps it
    (result,) = await edge.admission.admit([AdmitItem(booking("b2", "u", 1, key="k1"))])
    assert result.repeat_of == "b1"
    await edge.withdraw(b1)
    assert await edge.admit(booking("b3", "u", 1, key="k1")) is None


# ---------------------------------------------------------------------- abandon, mark_queued, release, both adapters
async def test_abandon_undoes_an_admission_the_queue_never_acknowledged(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", seats=("A-1-1", "A-1-2"), key="k1", fingerprint="fp")
    assert await edge.admit(b1) is None
    await edge.abandon(b1)
    assert edge.stock() == Stock(10, {}, {})
    assert not edge.has_reservation("b1") and edge.key_owner("k1") is None
    assert await edge.admit(booking("b2", "v", seats=("A-1-1",), key="k1")) is None  # the retry books afresh


async def test_abandon_leaves_a_queued_booking_alone(edge: Edge) -> None:
    await edge.add_event()
    b1, b2 = booking("b1", "u", 2, key="k1"), booking("b2", "v", 1, key="k2")
    assert await edge.admit(b1) is None
    assert await edge.admit(b2) is None
    await edge.mark_queued(b1)
    await edge.abandon(b1, b2)
    assert edge.stock() == Stock(8, {}, {"u": 2})
    assert edge.has_reservation("b1") and not edge.has_reservation("b2")
    assert edge.key_owner("k1") == "b1" and edge.key_owner("k2") is None
    assert await edge.settle(b1, ("A-1-1", "A-1-2"))  # decided as usual


async def test_abandon_is_idempotent_and_harmless_for_admissions_that_never_happened(edge: Edge) -> None:
    await edge.add_event(available=2)
    b1 = booking("b1", "u", 1, key="k1")
    assert await edge.admit(b1) is None
    refused = booking("b2", "v", 3)
    assert isinstance(await edge.admit(refused), SoldOut)
    repeat = booking("b3", "u", 1, key="k1")  # a repeat of b1's key: admitted nothing
    (result,) = await edge.admission.admit([AdmitItem(repeat)])
    assert result.repeat_of == "b1"
    await edge.abandon(refused, repeat, booking("never", "w", 1))
    assert edge.stock() == Stock(1, {}, {"u": 1}) and edge.key_owner("k1") == "b1"
    await edge.abandon(b1)
    await edge.abandon(b1)
    assert edge.stock() == Stock(2, {}, {}) and edge.key_owner("k1") is None


async def test_mark_queued_and_abandon_leave_settled_bookings_alone(edge: Edge) -> None:
    """A produce that timed out may still have been written, and decided before the abandon came."""
    await edge.add_event()
    b1 = booking("b1", "u", 1, key="k1")
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1",))
    await edge.mark_queued(b1, booking("never", "v", 1))
    await edge.abandon(b1)  # settled: nothing left to undo, its seat stays taken, its key names it
    assert edge.stock() == Stock(9, {"A-1-1": "b1"}, {"u": 1})
    assert edge.key_owner("k1") == "b1"


async def test_withdraw_undoes_even_a_queued_booking(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 2, key="k1")
    assert await edge.admit(b1) is None
    await edge.mark_queued(b1)
    await edge.withdraw(b1)
    assert edge.stock() == Stock(10, {}, {}) and edge.key_owner("k1") is None


async def test_a_second_release_changes_nothing(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 2)
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1", "A-1-2"))
    await edge.release(b1, ("A-1-1", "A-1-2"))
    assert edge.stock() == Stock(10, {}, {})
    await edge.release(b1, ("A-1-1", "A-1-2"))
    assert edge.stock() == Stock(10, {}, {})


async def test_a_repeated_release_leaves_a_seat_taken_meanwhile_alone(edge: Edge) -> None:
    await edge.add_event()
    b1, b2 = booking("b1", "u", seats=("A-1-1",)), booking("b2", "v", seats=("A-1-1",))
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1",))
    await edge.release(b1, ("A-1-1",))
    assert await edge.admit(b2) is None
    await edge.release(b1, ("A-1-1",))  # retried: b2 keeps the seat, the counters do not move
    assert edge.stock() == Stock(9, {"A-1-1": "b2"}, {"v": 1})
    assert isinstance(await edge.admit(booking("b3", "w", seats=("A-1-1",))), SeatUnavailable)


async def test_a_release_counts_only_the_seats_still_taken(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", 3)
    assert await edge.admit(b1) is None
    assert await edge.settle(b1, ("A-1-1", "A-1-2", "A-1-3"))
    await edge.release(b1, ("A-1-1",))
    await edge.release(b1, ("A-1-1", "A-1-2", "A-1-2", "A-9-9"))
    assert edge.stock() == Stock(9, {"A-1-3": "b1"}, {"u": 1})


async def test_a_release_gives_back_a_reservation_whose_settle_never_landed(edge: Edge) -> None:
    await edge.add_event()
    b1 = booking("b1", "u", seats=("A-1-1", "A-1-2"))
    assert await edge.admit(b1) is None
    await edge.release(b1, ("A-1-1", "A-1-2"))  # held and cancelled in the store; the edge never heard
    assert edge.stock() == Stock(10, {}, {}) and not edge.has_reservation("b1")
    assert await edge.settle(b1, ("A-1-1", "A-1-2")) is False  # the late settle changes nothing
    assert edge.stock() == Stock(10, {}, {})


async def test_invalidate_rebuilds_from_the_store_at_the_next_call(edge: Edge, store: SqliteStore) -> None:
    event, stamped = await _store_with_history(store)
    await edge.admission.invalidate()  # the edge was built before the store had this history
    assert await edge.settle(booking("unknown", "z", 1, event=event.id), ()) is False
    rebuilt = edge.stock(event.id)
    assert rebuilt.remaining == 3
    edge_only = booking("edge-only", "y", 2, event=event.id, key="k-y")
    assert await edge.admit(edge_only) is None  # admitted, never stored (its enqueue failed, say)
    await edge.release(stamped["held_v"], ("A-1-1", "A-1-2"))  # a release the store never made
    assert edge.stock(event.id) != rebuilt
    await edge.admission.invalidate()
    assert await edge.settle(booking("unknown", "z", 1, event=event.id), ()) is False  # the next call rebuilds
    assert edge.stock(event.id) == rebuilt
    assert not edge.has_reservation("edge-only", event.id) and edge.key_owner("k-y", event.id) is None
    assert edge.key_owner("k-w", event.id) == "bkg_pending_w"


# ---------------------------------------------------------------------- randomized, both side by side
@pytest.mark.parametrize("seed", range(8))
async def test_random_operations_answer_like_the_in_process_adapter(seed: int, url: str, store: SqliteStore) -> None:
    """The same random admits, queue acknowledgements, settles (decided by the real rules), releases (also
    repeated), withdraws and abandons on both adapters: the same answers and the same bookkeeping after
    every step."""
    rng = random.Random(seed)
    max_per_user = rng.randint(1, 4)
    sections = tuple(Section(f"S{i}", rng.randint(1, 3), rng.randint(1, 6)) for i in range(rng.randint(1, 3)))
    event = Event(id=EVT, name="n", sections=sections, max_per_user=max_per_user)
    seat_ids = [r.id for r in seat_map(event)]
    users = [f"u{i}" for i in range(rng.randint(1, 5))]
    memory = Edge(InProcessAdmission(), None)
    await memory.admission.ensure(store)
    admission = await open_redis_admission(url, store)
    red = Edge(admission, client(url))
    for e in (memory, red):
        await e.add_event(available=event.capacity, max_per_user=max_per_user)

    pending: dict[str, Booking] = {}
    queued: set[str] = set()
    held: dict[str, tuple[Booking, tuple[str, ...]]] = {}
    released: dict[str, tuple[Booking, tuple[str, ...]]] = {}
    for step in range(200):
        op = rng.random()
        if op < 0.4:
            user = rng.choice(users)
            seats: tuple[str, ...] = ()
            if rng.random() < 0.5:
                seats = tuple(sorted(rng.sample(seat_ids, rng.randint(1, min(max_per_user, len(seat_ids))))))
            key = f"k{rng.randint(1, 30)}" if rng.random() < 0.3 else None
            b = booking(f"b{step}", user, len(seats) or rng.randint(1, max_per_user), seats, key=key,
                        fingerprint=user if key else None)
            items = [AdmitItem(b, force=rng.random() < 0.2)]
            (expected,), (got,) = [await e.admission.admit(items) for e in (memory, red)]
            assert (type(got.error), got.repeat_of, got.repeat_fingerprint) == (
                type(expected.error), expected.repeat_of, expected.repeat_fingerprint)
            assert (got.error and got.error.detail) == (expected.error and expected.error.detail)
            if got.error is None and got.repeat_of is None:
                pending[b.id] = b
        elif op < 0.5 and pending:
            b = pending[rng.choice(sorted(pending))]
            queued.add(b.id)
            for e in (memory, red):
                await e.mark_queued(b)
        elif op < 0.65 and pending:
            b = pending.pop(rng.choice(sorted(pending)))
            queued.discard(b.id)
            owned = {s for _, ss in held.values() for s in ss}
            picker = SeatPicker(r for r in seat_map(event) if r.id not in owned)
            user_owned = sum(len(ss) for hb, ss in held.values() if hb.user_id == b.user_id)
            decision = decide(b, event, user_owned, picker)
            got_seats = decision.seats if decision.held and rng.random() < 0.9 else ()
            if got_seats:
                held[b.id] = (b, got_seats)
            assert [await e.settle(b, got_seats) for e in (memory, red)] == [True, True]
        elif op < 0.7 and pending:
            b = pending.pop(rng.choice(sorted(pending)))
            queued.discard(b.id)
            for e in (memory, red):
                await e.withdraw(b)
        elif op < 0.8 and pending:
            # an enqueue failed (or an admit's answer was lost): undone unless the queue has it
            b = pending[rng.choice(sorted(pending))]
            if b.id not in queued:
                del pending[b.id]
            for e in (memory, red):
                await e.abandon(b)
        elif op < 0.9 and released:
            b, ss = released[rng.choice(sorted(released))]  # a retried release: changes nothing
            before = red.stock()
            for e in (memory, red):
                await e.release(b, ss)
            assert red.stock() == before
        elif held:
            b, ss = held.pop(rng.choice(sorted(held)))
            released[b.id] = (b, ss)
            for e in (memory, red):
                await e.release(b, ss)
        assert red.stock() == memory.stock()
        for booking_id in pending:
            assert red.has_reservation(booking_id) and memory.has_reservation(booking_id)
    await admission.close()


# ---------------------------------------------------------------------- Redis only
async def test_admitted_bookings_have_a_pending_record(url: str, store: SqliteStore) -> None:
    clock = iter([1_800_000_000.25, 1_800_000_005.5])
    admission = await open_redis_admission(url, store, pending_ttl_s=600, clock=lambda: next(clock))
    raw = client(url)
    await admission.add_event(EVT, 10, 4)
    b1 = replace(booking("b1", "u", seats=("A-1-1",), key="k1", fingerprint="fp"), secret_hash="ab" * 32)
    b2, b3 = booking("b2", "v", 2), booking("b3", "w", 9)
    results = await admission.admit([AdmitItem(b1), AdmitItem(b2), AdmitItem(b3)])
    assert [r.error is None for r in results] == [True, True, False]
    assert await admission.pending("b1") == PendingRecord(b1, queued=False, admitted_at=1_800_000_000.25)
    assert await admission.pending("b2") == PendingRecord(b2, queued=False, admitted_at=1_800_000_000.25)
    assert await admission.pending("b3") is None  # refused: never queued
    assert raw.hgetall(pending_key("b1")) == {"booking": booking_to_json(b1).decode(), "queued": "0",
                                              "admitted_at": "1800000000.25"}
    assert 590 <= raw.ttl(pending_key("b1")) <= 600

    before = admission._link.round_trips
    await admission.mark_queued([b1, b2, b3])
    assert admission._link.round_trips == before + 1
    assert await admission.pending("b1") == PendingRecord(b1, queued=True, admitted_at=1_800_000_000.25)
    assert await admission.pending("b3") is None  # not created by mark_queued
    assert 590 <= raw.ttl(pending_key("b1")) <= 600  # marking keeps the record's TTL

    await admission.settle([replace(b1, status=BookingStatus.HELD, seat_ids=("A-1-1",))])
    await admission.withdraw([b2])
    assert await admission.pending("b1") is None and await admission.pending("b2") is None
    await admission.close()


async def test_stale_admissions_are_the_old_ones_never_marked_queued(url: str, store: SqliteStore) -> None:
    """What an intake that died between admission and enqueue leaves: found by age, oldest first."""
    now = [100.0]
    admission = await open_redis_admission(url, store, clock=lambda: now[0])
    raw = client(url)
    await admission.add_event(EVT, 10, 4)
    bs = [booking(f"b{i}", f"u{i}", 1) for i in range(5)]
    for i, b in enumerate(bs):
        now[0] = 100.0 * (i + 1)
        assert await admission.admit([AdmitItem(b)]) == [AdmitResult()]
    await admission.mark_queued([bs[1]])  # the queue has it: never stale
    before = admission._link.round_trips
    assert await admission.stale_admissions(250.0, 10) == [bs[0]]
    assert admission._link.round_trips == before + 1
    assert await admission.stale_admissions(300.0, 10) == [bs[0], bs[2]]  # at or before: inclusive
    assert await admission.stale_admissions(1000.0, 2) == [bs[0], bs[2]]
    await admission.settle([replace(bs[0], status=BookingStatus.HELD, seat_ids=("A-1-1",))])
    await admission.abandon([bs[2]])
    await admission.withdraw([bs[3]])
    raw.delete(pending_key("b4"))  # its record expired: its index entry is dropped when met
    assert await admission.stale_admissions(1000.0, 10) == []
    assert raw.zcard("tb:admitted") == 0
    await admission.close()


async def test_a_pending_record_of_the_old_format_reads_as_queued(redis_edge: Edge) -> None:
    """Written by a process of before `queued` (a plain string): such records were only kept once queued."""
    b1 = booking("b1", "u", 1)
    assert redis_edge.raw is not None
    redis_edge.raw.set(pending_key("b1"), booking_to_json(b1), ex=600)
    assert await redis_edge.admission.pending("b1") == PendingRecord(b1, queued=True, admitted_at=0.0)
    await redis_edge.add_event()
    await redis_edge.mark_queued(b1)  # not a hash: left as it is
    await redis_edge.abandon(b1)  # read as queued: left alone
    assert redis_edge.raw.get(pending_key("b1")) == booking_to_json(b1).decode()
    redis_edge.raw.set(pending_key("b9"), b"not a booking")
    assert await redis_edge.admission.pending("b9") is None


async def test_a_batch_of_abandons_and_marks_is_one_round_trip_each(redis_edge: Edge) -> None:
    admission = redis_edge.admission
    assert isinstance(admission, RedisAdmission)
    await redis_edge.add_event(available=500)
    batch = [booking(f"b{i}", f"u{i}", 1, key=f"k{i}") for i in range(400)]
    await admission.admit([AdmitItem(b) for b in batch])
    before = admission._link.round_trips
    await admission.mark_queued(batch[:200])
    await admission.abandon(batch)
    assert admission._link.round_trips == before + 2
    assert redis_edge.stock().remaining == 500 - 200


async def test_the_same_admit_run_twice_admits_once(redis_edge: Edge) -> None:
    """A client that resends a request after a lost connection: the script runs again, with no new effect."""
    admission = redis_edge.admission
    assert isinstance(admission, RedisAdmission)
    await redis_edge.add_event()
    items = [AdmitItem(booking("b1", "u", 2, key="k1", fingerprint="fp")), AdmitItem(booking("b2", "v", 1))]
    args = [orjson.dumps([_admit_request(item) for item in items]), 600, "1800000000.0"]
    first = await admission._edit(admission._admit, args, "admit")
    again = await admission._edit(admission._admit, args, "admit")
    assert first == again == ["ok", "ok"]
    assert redis_edge.stock() == Stock(7, {}, {"u": 2, "v": 1})


async def test_an_admit_arriving_after_its_abandon_changes_nothing(redis_edge: Edge) -> None:
    """Abandoned before its admit ran (the request was still in the network): a tombstone refuses it."""
    admission = redis_edge.admission
    assert isinstance(admission, RedisAdmission) and redis_edge.raw is not None
    await redis_edge.add_event()
    late = booking("b1", "u", seats=("A-1-1",), key="k1")
    await redis_edge.abandon(late)
    assert 0 < redis_edge.raw.ttl(abandoned_key("b1")) <= admission.abandoned_ttl_s
    (result,) = await admission.admit([AdmitItem(late)])
    assert isinstance(result.error, Unavailable) and "abandoned" in result.error.detail
    assert redis_edge.stock() == Stock(10, {}, {})
    assert redis_edge.key_owner("k1") is None and await admission.pending("b1") is None
    # the tombstone is for that booking only: the client's retry (a new booking) is admitted
    assert await redis_edge.admit(booking("b2", "u", seats=("A-1-1",), key="k1")) is None


async def test_an_unknown_event_is_unavailable_and_reserves_nothing(redis_edge: Edge) -> None:
    await redis_edge.add_event()
    results = await redis_edge.admission.admit([AdmitItem(booking("b1", "u", 1, event="evt_unknown")),
                                                AdmitItem(booking("b2", "u", 1))])
    assert isinstance(results[0].error, Unavailable) and results[0].error.status == 503
    assert "evt_unknown" in results[0].error.detail
    assert results[1] == AdmitResult()
    assert await redis_edge.admission.pending("b1") is None


async def test_a_second_process_does_not_reset_an_event(redis_edge: Edge, url: str, store: SqliteStore) -> None:
    await redis_edge.add_event(available=10)
    assert await redis_edge.admit(booking("b1", "u", 3)) is None
    other = await open_redis_admission(url, store)
    await other.add_event(EVT, 10, 4)
    assert redis_edge.stock().remaining == 7
    await other.close()


async def test_settle_and_release_publish_seat_updates(redis_edge: Edge, url: str) -> None:
    await redis_edge.add_event()
    event = f"evt_pub_{time.monotonic_ns()}"  # channels are server-wide: our own event id filters them
    await redis_edge.add_event(event=event)
    subscriber = client(url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("seat-updates")
    b1, b2 = booking("b1", "u", 2, event=event), booking("b2", "v", 1, event=event)
    assert await redis_edge.admit(b1) is None
    assert await redis_edge.admit(b2) is None
    await redis_edge.admission.settle([replace(b1, status=BookingStatus.HELD, seat_ids=("A-1-1", "A-1-2")),
                                       replace(b2, status=BookingStatus.REJECTED)])
    await redis_edge.release(b1, ("A-1-2",))

    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while len(messages) < 2 and time.monotonic() < deadline:
        message = await trio.to_thread.run_sync(lambda: subscriber.get_message(timeout=0.5))
        if message is not None and orjson.loads(message["data"])["event_id"] == event:
            messages.append(orjson.loads(message["data"]))
    subscriber.close()
    assert messages == [{"event_id": event, "seats": ["A-1-1", "A-1-2"], "status": "held"},
                        {"event_id": event, "seats": ["A-1-2"], "status": "available"}]


async def test_a_batch_of_1000_is_one_round_trip(redis_edge: Edge) -> None:
    admission = redis_edge.admission
    assert isinstance(admission, RedisAdmission)
    await redis_edge.add_event(available=600, max_per_user=4)
    items = [AdmitItem(booking(f"b{i}", f"u{i % 250}", 1, key=f"k{i}", fingerprint="fp")) for i in range(1000)]
    before = admission._link.round_trips
    start = time.perf_counter()
    results = await admission.admit(items)
    elapsed = time.perf_counter() - start
    assert admission._link.round_trips == before + 1
    print(f"\nadmit of 1,000 items in one Lua call: {elapsed * 1000:.1f} ms")
    errors = [type(r.error) for r in results]
    assert errors.count(type(None)) == 600 and errors.count(SoldOut) == 400
    assert redis_edge.stock().remaining == 0
    assert elapsed < 2.0


async def test_two_processes_admit_exactly_the_seats_there_are(url: str, store: SqliteStore) -> None:
    """1,000 single-seat requests from two processes at once, in batches of 20, on 100 seats."""
    first, second = await open_redis_admission(url, store), await open_redis_admission(url, store)
    await first.add_event(EVT, 100, 4)
    admitted: list[str] = []

    async def send(admission: RedisAdmission, batch: list[Booking]) -> None:
        results = await admission.admit([AdmitItem(b) for b in batch])
        admitted.extend(b.id for b, r in zip(batch, results, strict=True) if r.error is None)

    requests = [booking(f"b{i}", f"user-{i}", 1) for i in range(1000)]
    async with trio.open_nursery() as nursery:
        for n, start in enumerate(range(0, 1000, 20)):
            nursery.start_soon(send, first if n % 2 else second, requests[start : start + 20])
    assert len(admitted) == 100
    assert Edge(first, client(url)).stock().remaining == 0
    await first.close()
    await second.close()


async def test_two_processes_never_admit_a_named_seat_twice(url: str, store: SqliteStore) -> None:
    first, second = await open_redis_admission(url, store), await open_redis_admission(url, store)
    await first.add_event(EVT, 100, 4)
    seats = [f"A-{r}-{n}" for r in range(1, 11) for n in range(1, 11)]
    rng = random.Random(7)
    requests = [booking(f"b{i}", f"user-{i}", seats=rng.sample(seats, rng.randint(1, 3))) for i in range(1000)]
    admitted: list[Booking] = []

    async def send(admission: RedisAdmission, batch: list[Booking]) -> None:
        results = await admission.admit([AdmitItem(b) for b in batch])
        admitted.extend(b for b, r in zip(batch, results, strict=True) if r.error is None)

    async with trio.open_nursery() as nursery:
        for n, start in enumerate(range(0, 1000, 20)):
            nursery.start_soon(send, first if n % 2 else second, requests[start : start + 20])
    named = [s for b in admitted for s in b.requested_seats]
    assert len(named) == len(set(named))
    stock = Edge(first, client(url)).stock()
    assert stock.remaining == 100 - len(named)
    assert stock.taken == {s: b.id for b in admitted for s in b.requested_seats}
    await first.close()
    await second.close()


# ---------------------------------------------------------------------- rebuild from the store
async def _store_with_history(store: SqliteStore) -> tuple[Event, dict[str, Booking]]:
    """An event of 10 seats (max 4 per user): two bookings held, three still pending (one with a key)."""
    event = Event(id=new_event_id(), name="Rebuild night", sections=(Section("A", 2, 5),), max_per_user=4)
    await store.create_event(event)
    now = time.time()
    bookings = {
        "held_u": booking("bkg_held_u", "u", 2, event=event.id),
        "held_v": booking("bkg_held_v", "v", seats=("A-1-1", "A-1-2"), event=event.id),
        "pending_w": booking("bkg_pending_w", "w", 1, event=event.id, key="k-w", fingerprint="fp-w"),
        "pending_x": booking("bkg_pending_x", "x", seats=("A-2-1",), event=event.id),
        "pending_u": booking("bkg_pending_u", "u", 1, event=event.id),
    }
    stamped = {name: replace(b, created_at=now + i, updated_at=now + i) for i, (name, b) in enumerate(bookings.items())}
    assert await store.insert_pending(list(stamped.values())) == [None] * len(stamped)
    decided = await store.decide([stamped["held_u"], stamped["held_v"]], now)
    assert [d.status for d in decided] == [BookingStatus.HELD, BookingStatus.HELD]
    return event, stamped


def _probes(event_id: str) -> list[AdmitItem]:
    """Requests whose answers depend on everything a rebuild must restore."""
    return [AdmitItem(b) for b in (
        booking("p1", "w", 1, event=event_id, key="k-w", fingerprint="fp-w"),  # repeat of a pending key
        booking("p2", "y", seats=("A-1-1",), event=event_id),  # held in the store
        booking("p3", "y", seats=("A-2-1",), event=event_id),  # reserved by a pending booking
        booking("p4", "u", 2, event=event_id),  # u: 2 held + 1 pending
        booking("p5", "y", 4, event=event_id),  # 10 - 4 owned - 3 pending = 3 left
        booking("p6", "z", 2, event=event_id),  # fine
    )]


async def test_rebuild_after_flushdb_answers_as_before(url: str, store: SqliteStore) -> None:
    event, stamped = await _store_with_history(store)
    memory = Edge(InProcessAdmission(), None)
    await memory.admission.ensure(store)
    admission = await open_redis_admission(url, store)  # the database is empty: built from the store
    red = Edge(admission, client(url))
    held_u = await store.get_booking("bkg_held_u")
    assert held_u is not None and len(held_u.seat_ids) == 2
    taken = {"A-1-1": "bkg_held_v", "A-1-2": "bkg_held_v", "A-2-1": "bkg_pending_x"}
    taken.update(dict.fromkeys(held_u.seat_ids, "bkg_held_u"))
    assert red.stock(event.id) == memory.stock(event.id) == Stock(3, taken, {"u": 3, "v": 2, "w": 1, "x": 1})

    flushdb(url)  # Redis lost everything while the server runs
    before = admission._link.round_trips
    expected = await memory.admission.admit(_probes(event.id))
    got = await admission.admit(_probes(event.id))  # notices, rebuilds from the store, admits
    assert admission._link.round_trips > before + 1
    assert [(type(r.error), r.repeat_of) for r in got] == [(type(r.error), r.repeat_of) for r in expected] == [
        (type(None), "bkg_pending_w"), (SeatUnavailable, None), (SeatUnavailable, None), (LimitExceeded, None),
        (SoldOut, None), (type(None), None),
    ]
    assert red.stock(event.id) == memory.stock(event.id)

    # the pending bookings settle against the rebuilt reservations exactly as in process
    pending = [stamped["pending_w"], stamped["pending_x"], stamped["pending_u"]]
    decided = await store.decide(pending, time.time())
    assert await admission.settle(decided) == await memory.admission.settle(decided) == [True, True, True]
    assert red.stock(event.id) == memory.stock(event.id)
    await admission.close()


async def test_a_loss_noticed_by_settle_rebuilds_too(url: str, store: SqliteStore) -> None:
    event, stamped = await _store_with_history(store)
    admission = await open_redis_admission(url, store)
    flushdb(url)
    (decided,) = await store.decide([stamped["pending_u"]], time.time())
    # the snapshot already has it decided: nothing left to settle, and its seat is known taken
    assert await admission.settle([decided]) == [False]
    stock = Edge(admission, client(url)).stock(event.id)
    assert all(stock.taken[s] == decided.id for s in decided.seat_ids)
    await admission.close()


async def test_two_processes_after_a_loss_rebuild_once_and_agree(url: str, store: SqliteStore) -> None:
    event, _ = await _store_with_history(store)
    first, second = await open_redis_admission(url, store), await open_redis_admission(url, store)
    flushdb(url)
    results: list[AdmitResult] = []

    async def admit_one(admission: RedisAdmission, booking_id: str) -> None:
        results.extend(await admission.admit([AdmitItem(booking(booking_id, booking_id, 1, event=event.id))]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(admit_one, first, "p1")
        nursery.start_soon(admit_one, second, "p2")
    assert results == [AdmitResult(), AdmitResult()]
    assert Edge(first, client(url)).stock(event.id).remaining == 3 - 2
    assert client(url).exists("tb:edge:rebuild") == 0
    await first.close()
    await second.close()


async def test_a_process_waits_for_another_ones_rebuild_and_takes_over(url: str, store: SqliteStore) -> None:
    """Another process holds the rebuild lock and dies without finishing: this one waits, then rebuilds."""
    event, _ = await _store_with_history(store)
    admission = await open_redis_admission(url, store)
    flushdb(url)
    raw = client(url)
    raw.set("tb:edge:rebuild", "another-process", px=30_000)  # another process is rebuilding...

    def finish_later() -> None:  # ...and dies: its lock goes away, no ready marker
        time.sleep(0.3)
        raw.delete("tb:edge:rebuild")

    threading.Thread(target=finish_later).start()
    start = time.monotonic()
    (result,) = await admission.admit([AdmitItem(booking("p1", "p1", 1, event=event.id))])
    assert result == AdmitResult()
    assert time.monotonic() - start >= 0.25
    await admission.close()


async def test_rebuild_of_a_large_event_matches_the_in_process_adapter(url: str, store: SqliteStore) -> None:
    """3,000 seats owned (hashes written in several commands), 500 pending bookings, 500 keys."""
    event = Event(id=new_event_id(), name="Big night", sections=(Section("A", 100, 50),), max_per_user=20)
    await store.create_event(event)
    now = time.time()
    held = [replace(booking(f"bkg_h{i}", f"u{i}", 20, event=event.id), created_at=now) for i in range(150)]
    pending = [replace(booking(f"bkg_p{i}", f"w{i}", 1, event=event.id, key=f"k{i}", fingerprint="fp"),
                       created_at=now + 1) for i in range(500)]
    await store.insert_pending(held + pending)
    assert all(d.status is BookingStatus.HELD for d in await store.decide(held, now))
    memory = Edge(InProcessAdmission(), None)
    await memory.admission.ensure(store)
    start = time.perf_counter()
    admission = await open_redis_admission(url, store)
    print(f"\nrebuild of 3,000 owned seats + 500 pending + 500 keys: {(time.perf_counter() - start) * 1000:.0f} ms")
    red = Edge(admission, client(url))
    assert red.stock(event.id) == memory.stock(event.id)
    assert len(red.stock(event.id).taken) == 3000 and red.stock(event.id).remaining == 2000 - 500
    assert all(red.has_reservation(b.id, event.id) for b in pending)
    (result,) = await admission.admit([AdmitItem(booking("again", "w7", 1, event=event.id, key="k7"))])
    assert result == AdmitResult(repeat_of="bkg_p7", repeat_fingerprint="fp")
    await admission.close()


async def test_a_rebuilder_that_lost_its_lock_writes_nothing(url: str, store: SqliteStore) -> None:
    admission = RedisAdmission(url)
    raw = client(url)
    raw.set("tb:edge:rebuild", "another-process", px=30_000)  # our lock lapsed and another process took it
    with pytest.raises(Unavailable):
        await trio.to_thread.run_sync(admission._write_chunk, [("HSET", edge_key(EVT, "stock"), "remaining", 1)],
                                      "our-token")
    assert raw.exists(edge_key(EVT, "stock")) == 0
    assert raw.get("tb:edge:rebuild") == "another-process"
    await admission.close()


# ---------------------------------------------------------------------- a Redis that stalls or is cut off
STALL_TIMEOUT = 2.0  # the adapters' Redis timeout in these tests


@pytest.fixture
async def proxy(url: str, nursery: trio.Nursery) -> TcpProxy:
    """A TCP proxy between the adapter under test and the test's Redis."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    started = TcpProxy(parts.hostname, parts.port)
    await nursery.start(started.run)
    return started


def through(proxy: TcpProxy, url: str) -> str:
    return urlsplit(url)._replace(netloc=proxy.address).geturl()


def evalsha_calls(raw: redis.Redis) -> int:
    stats: Any = raw.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def warm_admission(proxy: TcpProxy, url: str, store: SqliteStore) -> RedisAdmission:
    """An adapter through the proxy that already ran its scripts once (loaded, connection pooled)."""
    admission = await open_redis_admission(through(proxy, url), store, timeout=STALL_TIMEOUT)
    await admission.add_event(EVT, 10, 4)
    (warm,) = await admission.admit([AdmitItem(booking("warm", "w", 1))])
    assert warm == AdmitResult()
    return admission


def assert_nothing_left_of(raw: redis.Redis, batch: Sequence[Booking]) -> None:
    for b in batch:
        assert not raw.hexists(edge_key(EVT, "res"), b.id), b.id
        assert raw.exists(pending_key(b.id)) == 0, b.id
    assert raw.hgetall(edge_key(EVT, "keys")) == {}
    assert raw.hgetall(edge_key(EVT, "taken")) == {}
    assert raw.hget(edge_key(EVT, "stock"), "remaining") == "9"  # only the warm-up booking
    assert raw.hgetall(edge_key(EVT, "users")) == {"w": "1"}


async def test_an_admit_whose_reply_stalls_is_unavailable_and_abandon_undoes_it(
        url: str, store: SqliteStore, proxy: TcpProxy) -> None:
    """Redis runs the script, its answer stalls: the adapter says Unavailable within its timeout (never
    retried, which would double the wait), and abandoning the batch afterwards leaves nothing behind."""
    raw = client(url)
    admission = await warm_admission(proxy, url, store)
    batch = [booking("b1", "u", 2, key="k1", fingerprint="fp"), booking("b2", "v", seats=("A-1-1",), key="k2")]

    proxy.freeze(replies_only=True)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await admission.admit([AdmitItem(b) for b in batch])
    elapsed = time.monotonic() - started
    print(f"\nadmit with a stalled reply: Unavailable after {elapsed:.2f}s (timeout {STALL_TIMEOUT}s)")
    assert caught.value.component == "lock"
    assert STALL_TIMEOUT * 0.9 <= elapsed < STALL_TIMEOUT + 1.0
    # the script did run: reservations, keys and pending records nobody was told about
    assert all(raw.hexists(edge_key(EVT, "res"), b.id) for b in batch)
    assert raw.hget(edge_key(EVT, "keys"), "k1") == "b1 fp"
    assert raw.hget(pending_key("b1"), "queued") == "0"

    proxy.thaw()
    await admission.abandon(batch)
    assert_nothing_left_of(raw, batch)
    # the client's retry with the same Idempotency-Key books afresh instead of finding a booking in no queue
    (retry,) = await admission.admit([AdmitItem(booking("b3", "u", 2, key="k1", fingerprint="fp"))])
    assert retry == AdmitResult()
    await admission.close()


async def test_an_admit_delayed_past_its_abandon_changes_nothing_when_it_arrives(
        url: str, store: SqliteStore, proxy: TcpProxy) -> None:
    """The request itself stalls in the network: Unavailable, the batch is abandoned (over another path)
    before the admit ran, and when the held request finally reaches Redis, it runs and changes nothing."""
    raw = client(url)
    admission = await warm_admission(proxy, url, store)
    batch = [booking("b1", "u", 2, key="k1", fingerprint="fp"), booking("b2", "v", seats=("A-1-1",))]

    proxy.freeze()
    with pytest.raises(Unavailable):
        await admission.admit([AdmitItem(b) for b in batch])
    assert not raw.hexists(edge_key(EVT, "res"), "b1")  # held in the network: not run yet
    direct = await open_redis_admission(url, store)
    await direct.abandon(batch)
    calls = evalsha_calls(raw)

    proxy.thaw()  # the held admit goes on to Redis now
    with trio.fail_after(10):
        while evalsha_calls(raw) == calls:  # noqa: ASYNC110 - a server-side counter has no event
            await trio.sleep(0.05)
    assert_nothing_left_of(raw, batch)
    await direct.close()
    await admission.close()


async def test_connections_that_redis_closed_are_replaced_at_once(redis_edge: Edge) -> None:
    """A connection error (here: Redis dropped every client, as at a restart) is retried once on a new
    connection; the scripts give the same answer when that retry runs them a second time."""
    await redis_edge.add_event()
    assert await redis_edge.admit(booking("b1", "u", 1)) is None
    assert redis_edge.raw is not None
    redis_edge.raw.client_kill_filter(_type="normal", skipme=True)
    assert await redis_edge.admit(booking("b2", "v", 1)) is None
    assert redis_edge.stock().remaining == 8


async def test_an_invalidate_that_cannot_reach_redis_is_done_by_the_next_call(
        url: str, store: SqliteStore, proxy: TcpProxy) -> None:
    event, _ = await _store_with_history(store)
    admission = await open_redis_admission(through(proxy, url), store, timeout=STALL_TIMEOUT)
    red = Edge(admission, client(url))
    rebuilt = red.stock(event.id)
    assert await red.admit(booking("edge-only", "y", 2, event=event.id)) is None
    await proxy.cut()
    await admission.invalidate()  # never raises: remembered instead
    assert red.raw is not None and red.raw.exists(READY_KEY) == 1
    await proxy.restore()
    assert await red.settle(booking("unknown", "z", 1, event=event.id), ()) is False
    assert red.stock(event.id) == rebuilt and not red.has_reservation("edge-only", event.id)
    await admission.close()


# ---------------------------------------------------------------------- failures
async def test_a_lost_state_without_a_store_is_unavailable(url: str) -> None:
    admission = RedisAdmission(url)
    await admission.open()
    await admission.add_event(EVT, 10, 4)  # counters but no ready marker: nobody rebuilt yet
    with pytest.raises(Unavailable) as caught:
        await admission.admit([AdmitItem(booking("b1", "u", 1))])
    assert caught.value.component == "lock"
    await admission.close()


async def test_unreachable_redis_is_unavailable() -> None:
    admission = RedisAdmission("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    for call in (admission.ping(), admission.admit([AdmitItem(booking("b1", "u", 1))]), admission.pending("b1")):
        with pytest.raises(Unavailable) as caught:
            await call
        assert caught.value.component == "lock"
