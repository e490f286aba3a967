"""The invariants of API.md, checked over the final state of an event (seat map, counts, bookings)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ticketblitz.domain.model import REJECTION_REASONS, Booking

OWNING = {"held", "confirmed"}


def assert_invariants(event: dict[str, Any], seats: dict[str, str], bookings: Sequence[Booking],
                      *, allow_pending: bool = False) -> dict[str, Any]:
    """Invariants 1, 2, 4 and 5 (3: no booking left pending) over one event; returns a summary."""
    # 1. a seat belongs to at most one held/confirmed booking, and seat statuses agree with the bookings
    owner: dict[str, str] = {}
    for b in bookings:
        if b.status.value in OWNING:
            assert len(b.seat_ids) == b.quantity, f"{b.id} holds {len(b.seat_ids)} seats for quantity {b.quantity}"
            for seat in b.seat_ids:
                assert seat not in owner, f"seat {seat} sold twice: {owner[seat]} and {b.id}"
                owner[seat] = b.id
                expected = "held" if b.status.value == "held" else "sold"
                assert seats[seat] == expected, f"seat {seat} is {seats[seat]} but booking {b.id} is {b.status}"
        else:
            assert b.status.value != "pending" or allow_pending, f"booking {b.id} still pending"
    for seat, status in seats.items():
        if status != "available":
            assert seat in owner, f"seat {seat} is {status} without an owning booking"

    # 2. counts add up to capacity and agree with the seat map and with the bookings
    counts = event["counts"]
    tally = Counter(seats.values())
    assert counts["available"] + counts["held"] + counts["sold"] == event["capacity"] == len(seats)
    assert counts == {"available": tally["available"], "held": tally["held"], "sold": tally["sold"]}
    assert counts["held"] == sum(b.quantity for b in bookings if b.status.value == "held")
    assert counts["sold"] == sum(b.quantity for b in bookings if b.status.value == "confirmed")

    # 4. no user holds more than max_per_user seats in the event
    per_user: Counter[str] = Counter()
    for b in bookings:
        if b.status.value in OWNING:
            per_user[b.user_id] += b.quantity
    if per_user:
        user, most = per_user.most_common(1)[0]
        assert most <= event["max_per_user"], f"user {user} holds {most} > {event['max_per_user']}"

    # 5. one Idempotency-Key never yields two bookings
    keys = Counter(b.idempotency_key for b in bookings if b.idempotency_key is not None)
    assert all(n == 1 for n in keys.values()), f"keys with several bookings: {[k for k, n in keys.items() if n > 1]}"

    # rejected bookings say why and hold nothing
    for b in bookings:
        if b.status.value == "rejected":
            assert b.reason in REJECTION_REASONS, f"{b.id} rejected for {b.reason!r}"
            assert b.seat_ids == ()
    return {"counts": counts, "statuses": Counter(b.status.value for b in bookings), "bookings": bookings}


async def check_invariants(h: Any, event_id: str, *, allow_pending: bool = False) -> dict[str, Any]:
    """Through the server's HTTP answers (event, seat map) and its store's bookings."""
    event = await h.event(event_id)
    seats_r = await h.client.get(f"/api/events/{event_id}/seats")
    assert seats_r.status_code == 200
    seats = {s["id"]: s["status"] for s in seats_r.json()["seats"]}
    bookings = await h.service.store.bookings_of_event(event_id)
    return assert_invariants(event, seats, bookings, allow_pending=allow_pending)


async def check_store_invariants(store: Any, event_id: str) -> dict[str, Any]:
    """Straight from a store (e.g. the PostgreSQL that several server processes share)."""
    event = await store.get_event(event_id)
    assert event is not None and event.counts is not None
    as_dict = {"capacity": event.capacity, "max_per_user": event.max_per_user,
               "counts": {"available": event.counts.available, "held": event.counts.held, "sold": event.counts.sold}}
    seats = {s.id: s.status.value for s in await store.seats(event_id)}
    return assert_invariants(as_dict, seats, await store.bookings_of_event(event_id))
