"""Bookings: queueing, decisions, idempotency, long-poll, confirm, cancel, holds, limits."""

from __future__ import annotations

import trio
from conftest import ADMIN, Harness
from invariants import check_invariants


async def test_quantity_booking_is_queued_then_held_with_adjacent_seats(harness: Harness) -> None:
    event = await harness.create_event(rows=3, seats_per_row=5)
    r = await harness.book(event["id"], {"user_id": "u-42", "quantity": 3})
    assert r.status_code == 202
    pending = r.json()
    assert r.headers["location"] == f"/api/bookings/{pending['id']}"
    assert pending["id"].startswith("bkg_")
    assert (pending["status"], pending["seat_ids"], pending["quantity"]) == ("pending", [], 3)
    assert (pending["event_id"], pending["user_id"], pending["reason"], pending["expires_at"]) == (
        event["id"], "u-42", None, None)
    held = await harness.settle(pending["id"])
    assert held["status"] == "held"
    assert held["seat_ids"] == ["A-1-1", "A-1-2", "A-1-3"]
    assert held["expires_at"] is not None and held["expires_at"] > held["created_at"]
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"] == {"available": 12, "held": 3, "sold": 0}


async def test_best_available_prefers_adjacent_seats_in_one_row(harness: Harness) -> None:
    event = await harness.create_event(rows=2, seats_per_row=4, max_per_user=4)
    first = await harness.book(event["id"], {"user_id": "a", "seat_ids": ["A-1-2"]})
    await harness.settle(first.json()["id"])
    r = await harness.book(event["id"], {"user_id": "b", "quantity": 3})
    held = await harness.settle(r.json()["id"])
    assert held["seat_ids"] == ["A-2-1", "A-2-2", "A-2-3"]  # row 1 has three seats, but not together


async def test_named_seats_held_then_confirmed_then_sold(harness: Harness) -> None:
    event = await harness.create_event()
    r = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-2", "A-1-1"]})
    assert r.status_code == 202
    assert r.json()["seat_ids"] == ["A-1-1", "A-1-2"]
    booking = await harness.settle(r.json()["id"])
    assert booking["status"] == "held"
    r = await harness.confirm(booking['id'])
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    again = await harness.confirm(booking['id'])
    assert again.status_code == 200 and again.json()["status"] == "confirmed"  # idempotent
    cancel = await harness.cancel(booking['id'])
    assert cancel.status_code == 409 and cancel.json()["code"] == "invalid_transition"
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"] == {"available": 98, "held": 0, "sold": 2}


async def test_cancel_releases_the_seats(harness: Harness) -> None:
    event = await harness.create_event()
    r = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-1"]})
    booking = await harness.settle(r.json()["id"])
    r = await harness.cancel(booking['id'])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await harness.confirm(booking['id'])
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    r = await harness.cancel(booking['id'])
    assert r.status_code == 409
    # the seat can be booked again, by someone else
    r = await harness.book(event["id"], {"user_id": "u2", "seat_ids": ["A-1-1"]})
    assert (await harness.settle(r.json()["id"]))["status"] == "held"
    await check_invariants(harness, event["id"])


async def test_edge_refuses_a_held_seat_at_once(harness: Harness) -> None:
    event = await harness.create_event()
    r = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-1"]})
    await harness.settle(r.json()["id"])
    r = await harness.book(event["id"], {"user_id": "u2", "seat_ids": ["A-1-1", "A-1-2"]})
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "seat_unavailable"
    summary = await check_invariants(harness, event["id"])
    assert len(summary["bookings"]) == 1  # the refusal created nothing


async def test_sold_out_answers_409_and_creates_nothing(harness: Harness) -> None:
    event = await harness.create_event(rows=1, seats_per_row=3)
    r = await harness.book(event["id"], {"user_id": "u1", "quantity": 3})
    await harness.settle(r.json()["id"])
    r = await harness.book(event["id"], {"user_id": "u2", "quantity": 1})
    assert r.status_code == 409 and r.json()["code"] == "sold_out"
    summary = await check_invariants(harness, event["id"])
    assert len(summary["bookings"]) == 1


async def test_per_user_limit_counts_pending_and_held(harness: Harness) -> None:
    event = await harness.create_event(max_per_user=3)
    r = await harness.book(event["id"], {"user_id": "greedy", "quantity": 2})
    assert r.status_code == 202
    r2 = await harness.book(event["id"], {"user_id": "greedy", "quantity": 2})
    assert r2.status_code == 409 and r2.json()["code"] == "limit_exceeded"
    r3 = await harness.book(event["id"], {"user_id": "greedy", "quantity": 1})
    assert r3.status_code == 202
    await harness.settle_all([r.json()["id"], r3.json()["id"]])
    r4 = await harness.book(event["id"], {"user_id": "greedy", "seat_ids": ["A-9-9"]})
    assert r4.status_code == 409 and r4.json()["code"] == "limit_exceeded"
    r5 = await harness.book(event["id"], {"user_id": "greedy", "quantity": 4})
    assert r5.status_code == 422 and r5.json()["field"] == "quantity"  # more than max_per_user in one booking
    await check_invariants(harness, event["id"])


async def test_idempotency_key_replays_and_conflicts(harness: Harness) -> None:
    event = await harness.create_event()
    body = {"user_id": "u1", "seat_ids": ["A-1-1", "A-1-2"]}
    first = await harness.book(event["id"], body, key="k-1")
    assert first.status_code == 202
    same = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-2", "A-1-1"]}, key="k-1")
    assert same.status_code == 200
    assert same.json()["id"] == first.json()["id"]
    other = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-3"]}, key="k-1")
    assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"
    assert same.json()["secret"] == first.json()["secret"]  # a repeat hands the same secret back
    decided = await harness.settle(first.json()["id"])
    replay = await harness.book(event["id"], body, key="k-1")
    assert replay.status_code == 200 and replay.json() == {**decided, "secret": first.json()["secret"]}
    # keys are scoped to the event
    event2 = await harness.create_event(name="Other night")
    elsewhere = await harness.book(event2["id"], body, key="k-1")
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first.json()["id"]
    summary = await check_invariants(harness, event["id"])
    assert len(summary["bookings"]) == 1


async def test_long_poll_answers_when_decided_or_after_the_wait(harness: Harness) -> None:
    event = await harness.create_event()
    r = await harness.book(event["id"], {"user_id": "u1", "quantity": 1})
    start = trio.current_time()
    got = await harness.get_booking(r.json()["id"], wait=10)
    assert got.json()["status"] == "held"
    assert trio.current_time() - start < 5
    plain = await harness.get_booking(r.json()["id"])
    assert plain.json()["status"] == "held"
    missing = await harness.get_booking("bkg_nope", wait=1)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    for path in ("/api/bookings/bkg_nope/confirm", "/api/bookings/bkg_nope/cancel"):
        r = await harness.client.post(path, headers=ADMIN)
        assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_hold_expires_and_seats_return(harness: Harness) -> None:
    event = await harness.create_event(hold_seconds=5)
    r = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-1"]})
    booking = await harness.settle(r.json()["id"])
    assert booking["status"] == "held"
    harness.clock.advance(5.0)  # exactly at expires_at the hold has lapsed
    r = await harness.confirm(booking['id'])
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    with trio.fail_after(10):  # the sweeper runs every 50 ms in tests
        while (await harness.get_booking(booking["id"])).json()["status"] != "expired":  # noqa: ASYNC110
            await trio.sleep(0.02)
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"]["available"] == 100
    assert harness.service.telemetry.holds_expired == 1
    # the edge took the seat back too: someone else gets it
    r = await harness.book(event["id"], {"user_id": "u2", "seat_ids": ["A-1-1"]})
    assert (await harness.settle(r.json()["id"]))["status"] == "held"


async def test_hold_within_its_time_can_be_confirmed(harness: Harness) -> None:
    event = await harness.create_event(hold_seconds=5)
    r = await harness.book(event["id"], {"user_id": "u1", "quantity": 2})
    booking = await harness.settle(r.json()["id"])
    harness.clock.advance(4.9)
    expired = await harness.service.expire_lapsed_holds()
    assert expired == []
    r = await harness.confirm(booking['id'])
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    harness.clock.advance(3600)
    assert await harness.service.expire_lapsed_holds() == []  # confirmed seats never lapse
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"]["sold"] == 2


async def test_rejected_booking_says_why(harness: Harness) -> None:
    """`/api/book-async` queues without edge refusals: the decision carries the reason."""
    event = await harness.create_event(rows=1, seats_per_row=2, max_per_user=1)
    results = []
    for user, seat in (("a", 1), ("b", 1), ("a", 2)):
        body = {"userId": user, "seatNumber": seat, "eventId": event["id"]}
        r = await harness.client.post("/api/book-async", json=body)
        assert r.status_code == 202
        results.append(await harness.settle(r.json()["booking"]["id"]))
    assert [b["status"] for b in results] == ["held", "rejected", "rejected"]
    assert [b["reason"] for b in results] == [None, "seat_unavailable", "limit_exceeded"]
    assert results[1]["seat_ids"] == []
    await check_invariants(harness, event["id"])
