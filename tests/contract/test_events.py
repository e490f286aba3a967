"""Events: organizer-only creation, reads, the seat map."""

from __future__ import annotations

from conftest import ADMIN, Harness

EVENT = {"name": "Eras Tour — Night 1", "venue": "Stadium", "starts_at": "2027-06-01T19:00:00Z",
         "sections": [{"name": "A", "rows": 10, "seats_per_row": 20, "price_cents": 12000},
                      {"name": "B2", "rows": 2, "seats_per_row": 3, "price_cents": 0}],
         "max_per_user": 6, "hold_seconds": 300}


async def test_create_event_needs_the_admin_token(harness: Harness) -> None:
    r = await harness.client.post("/api/events", json=EVENT)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "unauthorized"
    r = await harness.client.post("/api/events", json=EVENT, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await harness.client.get("/api/events")
    assert r.json() == {"events": []}


async def test_create_event_answers_201_with_location_and_the_event(harness: Harness) -> None:
    r = await harness.client.post("/api/events", json=EVENT, headers=ADMIN)
    assert r.status_code == 201
    event = r.json()
    assert r.headers["location"] == f"/api/events/{event['id']}"
    assert event["id"].startswith("evt_")
    assert event["capacity"] == 206
    assert event["counts"] == {"available": 206, "held": 0, "sold": 0}
    assert event["sections"] == EVENT["sections"]
    assert (event["name"], event["venue"], event["starts_at"]) == (EVENT["name"], "Stadium", "2027-06-01T19:00:00Z")
    assert (event["max_per_user"], event["hold_seconds"]) == (6, 300)
    assert event["created_at"].endswith("Z")
    assert (await harness.event(event["id"])) == event
    listing = (await harness.client.get("/api/events")).json()["events"]
    assert [e["id"] for e in listing] == [event["id"]]


async def test_defaults_and_time_zone_normalisation(harness: Harness) -> None:
    body = {"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}],
            "starts_at": "2027-06-01T21:00:00+02:00"}
    event = (await harness.client.post("/api/events", json=body, headers=ADMIN)).json()
    assert (event["max_per_user"], event["hold_seconds"], event["venue"]) == (4, 600, None)
    assert event["starts_at"] == "2027-06-01T19:00:00Z"


async def test_seat_map_lists_every_seat_in_order(harness: Harness) -> None:
    event = (await harness.client.post("/api/events", json=EVENT, headers=ADMIN)).json()
    r = await harness.client.get(f"/api/events/{event['id']}/seats")
    assert r.status_code == 200
    body = r.json()
    assert body["event_id"] == event["id"]
    seats = body["seats"]
    assert len(seats) == 206
    assert seats[0] == {"id": "A-1-1", "section": "A", "row": 1, "number": 1, "status": "available"}
    assert seats[199]["id"] == "A-10-20"
    assert seats[200] == {"id": "B2-1-1", "section": "B2", "row": 1, "number": 1, "status": "available"}
    assert seats[-1]["id"] == "B2-2-3"


async def test_unknown_event_is_404_problem(harness: Harness) -> None:
    for path in ("/api/events/evt_nope", "/api/events/evt_nope/seats"):
        r = await harness.client.get(path)
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"
        assert "evt_nope" in r.json()["detail"]
