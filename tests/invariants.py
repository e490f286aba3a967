"""The six invariants of API.md, checked over the final state of an event (HTTP answers + store rows)."""

from __future__ import annotations

from collections import Counter
from typing import Any

OWNING = {"held", "confirmed"}


async def check_invariants(h: Any, event_id: str, *, allow_pending: bool = False) -> dict[str, Any]:
    """Assert invariants 1-5 for one event; returns a summary (counts, bookings by status)."""
    event = await h.event(event_id)
    seats_r = await h.client.get(f"/api/events/{event_id}/seats")
    assert seats_r.status_code == 200
    seats = {s["id"]: s["status"] for s in seats_r.json()["seats"]}
    bookings = await h.service.store.bookings_of_event(event_id)

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

    # rejected bookings say why
    for b in bookings:
        if b.status.value == "rejected":
            assert b.reason in {"seat_unavailable", "sold_out", "limit_exceeded"}
            assert b.seat_ids == ()
    return {"counts": counts, "statuses": Counter(b.status.value for b in bookings), "bookings": bookings}
