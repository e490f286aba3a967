"""The original TicketBlitz routes: same bodies, same shapes, plus our booking."""

from __future__ import annotations

from conftest import Harness
from invariants import check_invariants

from ticketblitz.server import seed_demo


async def test_routes_default_to_the_demo_event(harness: Harness) -> None:
    await harness.create_event(name="Created before the demo")
    demo, created = await seed_demo(harness.service)
    assert created and demo.capacity == 10_000
    r = await harness.client.post("/api/book-async", json={"userId": "alice", "seatNumber": 10_000})
    assert r.status_code == 202
    body = r.json()
    assert (body["status"], body["message"]) == ("Pending", "Request queued")
    assert body["booking"]["event_id"] == demo.id
    assert body["booking"]["seat_ids"] == ["A-100-100"]
    assert (await harness.settle(body["booking"]["id"]))["status"] == "held"
    seats = (await harness.client.get("/api/seats")).json()
    assert seats["eventId"] == demo.id
    assert seats["seats"][0] == {"number": 1, "id": "A-1-1", "status": "AVAILABLE"}
    assert seats["seats"][-1] == {"number": 10_000, "id": "A-100-100", "status": "LOCKED"}


async def test_without_demo_the_newest_event_is_used(harness: Harness) -> None:
    r = await harness.client.get("/api/seats")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    await harness.create_event(name="old")
    newest = await harness.create_event(name="new", rows=1, seats_per_row=2)
    r = await harness.client.post("/book", json={"userId": "bob", "seatNumber": 2})
    assert r.status_code == 202
    assert r.json()["booking"]["event_id"] == newest["id"]
    assert r.json()["booking"]["seat_ids"] == ["A-1-2"]
    r = await harness.client.post("/book", json={"userId": "bob", "seatNumber": 3})
    assert r.status_code == 422 and r.json()["field"] == "seatNumber"


async def test_book_async_queues_even_what_the_edge_would_refuse(harness: Harness) -> None:
    event = await harness.create_event(rows=1, seats_per_row=1)
    ids = []
    for user in ("a", "b", "c"):
        r = await harness.client.post("/api/book-async",
                                      json={"userId": user, "seatNumber": 1, "eventId": event["id"]})
        assert r.status_code == 202
        ids.append(r.json()["booking"]["id"])
    results = await harness.settle_all(ids)
    assert sorted(b["status"] for b in results) == ["held", "rejected", "rejected"]
    await check_invariants(harness, event["id"])


async def test_book_secure_holds_then_refuses(harness: Harness) -> None:
    event = await harness.create_event()
    body = {"userId": "alice", "seatNumber": 11, "eventId": event["id"]}
    r = await harness.client.post("/api/book-secure", json=body)
    assert r.status_code == 200
    payload = r.json()
    assert payload["success"] is True
    assert payload["bookingId"] == payload["booking"]["id"]
    assert payload["booking"]["status"] == "held" and payload["booking"]["seat_ids"] == ["A-2-1"]
    r = await harness.client.post("/api/book-secure", json={**body, "userId": "bob"})
    assert r.status_code == 409 and r.json()["code"] == "seat_unavailable"
    assert r.headers["content-type"].startswith("application/problem+json")
    await check_invariants(harness, event["id"])


async def test_book_naive_cannot_double_book(harness: Harness) -> None:
    event = await harness.create_event()
    body = {"userId": "alice", "seatNumber": 1, "eventId": event["id"]}
    assert (await harness.client.post("/api/book-naive", json=body)).status_code == 200
    r = await harness.client.post("/api/book-naive", json={**body, "userId": "bob"})
    assert r.status_code == 409 and r.json()["code"] == "seat_unavailable"
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"]["held"] == 1


async def test_random_seat_and_health(harness: Harness) -> None:
    event = await harness.create_event(rows=1, seats_per_row=2, max_per_user=2)
    r = await harness.client.get("/api/random-seat", params={"eventId": event["id"]})
    assert r.json() == {"number": 1, "id": "A-1-1", "status": "AVAILABLE"}
    for n in (1, 2):
        await harness.client.post("/api/book-secure", json={"userId": "u", "seatNumber": n, "eventId": event["id"]})
    r = await harness.client.get("/api/random-seat", params={"eventId": event["id"]})
    assert r.status_code == 409 and r.json()["code"] == "sold_out"
    assert (await harness.client.get("/health")).json() == {"status": "ok"}
    r = await harness.client.get("/api/seats", params={"eventId": "evt_missing"})
    assert r.status_code == 404
