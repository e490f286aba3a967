"""The hot reads (seat map, event, booking): ETag / 304, gzip, the compact seat-map form, and the same
answers from both doors (the lean door answers these itself; Hypercorn + Quart does in the other run)."""

from __future__ import annotations

import gzip
from typing import Any

import trio
from conftest import ADMIN, Harness

IDENTITY = {"Accept-Encoding": "identity"}
EVENT = {"name": "Reads night", "max_per_user": 6, "hold_seconds": 300,
         "sections": [{"name": "A", "rows": 3, "seats_per_row": 4, "price_cents": 100},
                      {"name": "B", "rows": 2, "seats_per_row": 2, "price_cents": 0}]}


def answered_by_the_door(harness: Harness, headers: Any) -> None:
    """The lean door answers the reads itself (Hypercorn would add its `server` header)."""
    if harness.service.settings.intake_door:
        assert "server" not in headers, headers


async def created(harness: Harness) -> dict[str, Any]:
    r = await harness.client.post("/api/events", json=EVENT, headers=ADMIN)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_seat_map_has_an_etag_and_answers_304_while_unchanged(harness: Harness) -> None:
    event = await created(harness)
    path = f"/api/events/{event['id']}/seats"
    r = await harness.client.get(path, headers=IDENTITY)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answered_by_the_door(harness, r.headers)
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert r.headers["cache-control"] == "no-cache"
    assert "Accept-Encoding" in r.headers["vary"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-encoding" not in r.headers
    assert len(r.json()["seats"]) == 16
    again = await harness.client.get(path, headers=IDENTITY)
    assert again.headers["etag"] == etag and again.content == r.content
    for match in (etag, f'W/{etag}', f'"nope", {etag}', "*"):
        same = await harness.client.get(path, headers={**IDENTITY, "If-None-Match": match})
        assert same.status_code == 304, match
        assert same.content == b"" and same.headers["etag"] == etag
        assert same.headers["cache-control"] == "no-cache"
    other = await harness.client.get(path, headers={**IDENTITY, "If-None-Match": '"nope"'})
    assert other.status_code == 200 and other.content == r.content
    # a change: a new tag, and the old one gets the whole map again
    booking = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-2"]})
    await harness.settle(booking.json()["id"])
    changed = await harness.client.get(path, headers={**IDENTITY, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["seats"][1] == {"id": "A-1-2", "section": "A", "row": 1, "number": 2, "status": "held"}


async def test_seat_map_is_gzip_when_asked(harness: Harness) -> None:
    event = await created(harness)
    path = f"/api/events/{event['id']}/seats"
    plain = await harness.client.get(path, headers=IDENTITY)
    for asked in ("gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*"):
        async with harness.client.stream("GET", path, headers={"Accept-Encoding": asked}) as r:
            raw = b"".join([chunk async for chunk in r.aiter_raw()])
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip", asked
        assert r.headers["content-type"] == "application/json"
        assert "Accept-Encoding" in r.headers["vary"]
        assert gzip.decompress(raw) == plain.content
        assert r.headers["etag"] != plain.headers["etag"]  # another representation, another strong tag
        zipped_tag = r.headers["etag"]
    for refused in ("identity", "gzip;q=0", "*;q=0", "br"):
        r = await harness.client.get(path, headers={"Accept-Encoding": refused})
        assert "content-encoding" not in r.headers and r.content == plain.content, refused
    # either tag revalidates either representation
    for tag in (zipped_tag, plain.headers["etag"]):
        for encoding in ("gzip", "identity"):
            r = await harness.client.get(path, headers={"Accept-Encoding": encoding, "If-None-Match": tag})
            assert r.status_code == 304 and r.content == b""


async def test_compact_seat_map_has_one_character_per_seat(harness: Harness) -> None:
    event = await created(harness)
    path = f"/api/events/{event['id']}/seats"
    r = await harness.client.get(path, params={"form": "compact"}, headers=IDENTITY)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answered_by_the_door(harness, r.headers)
    assert r.json() == {"event_id": event["id"], "form": "compact", "sections": [
        {"name": "A", "rows": 3, "seats_per_row": 4, "status": "a" * 12},
        {"name": "B", "rows": 2, "seats_per_row": 2, "status": "a" * 4}]}
    etag = r.headers["etag"]
    assert etag != (await harness.client.get(path, headers=IDENTITY)).headers["etag"]
    held = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-2-3", "B-2-1"]})
    await harness.settle(held.json()["id"])
    sold = await harness.book(event["id"], {"user_id": "u2", "seat_ids": ["A-1-1"]})
    await harness.settle(sold.json()["id"])
    assert (await harness.confirm(sold.json()["id"])).status_code == 200
    r = await harness.client.get(path, params={"form": "compact"}, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    sections = r.json()["sections"]
    assert sections[0]["status"] == "s" + "a" * 5 + "h" + "a" * 5
    assert sections[1]["status"] == "aaha"
    same = await harness.client.get(path, params={"form": "compact"}, headers={"If-None-Match": r.headers["etag"]})
    assert same.status_code == 304 and same.content == b""


async def test_seat_map_form_and_unknown_event_are_problems(harness: Harness) -> None:
    event = await created(harness)
    r = await harness.client.get(f"/api/events/{event['id']}/seats", params={"form": "xml"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "form" and r.json()["code"] == "invalid_request"
    assert (await harness.client.get(f"/api/events/{event['id']}/seats", params={"form": "api"})).status_code == 200
    for path in ("/api/events/evt_nope/seats?form=compact", "/api/events/evt_nope", "/api/events/evt_nope/seats"):
        r = await harness.client.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", path
        assert r.json()["code"] == "not_found" and r.headers["x-content-type-options"] == "nosniff"
        answered_by_the_door(harness, r.headers)


async def test_event_read_is_answered_with_the_api_headers(harness: Harness) -> None:
    event = await created(harness)
    r = await harness.client.get(f"/api/events/{event['id']}")
    assert r.status_code == 200 and r.json() == event
    assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
    assert "etag" not in r.headers
    answered_by_the_door(harness, r.headers)


async def test_booking_read_needs_its_secret_and_matches_the_long_poll_bytes(harness: Harness) -> None:
    event = await created(harness)
    booking = (await harness.book(event["id"], {"user_id": "u1", "quantity": 2})).json()
    await harness.settle(booking["id"])
    path = f"/api/bookings/{booking['id']}"
    r = await harness.client.get(path, headers=harness.owner(booking["id"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    answered_by_the_door(harness, r.headers)
    assert r.json()["id"] == booking["id"] and "secret" not in r.json()
    polled = await harness.client.get(path, params={"wait": "0"}, headers=harness.owner(booking["id"]))
    assert polled.status_code == 200 and polled.content == r.content  # (the long poll: Quart, both runs)
    assert (await harness.client.get(path, headers=ADMIN)).content == r.content
    anonymous = await harness.client.get(path)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.json()["code"] == "unauthorized"
    for wrong in ("Bearer nope", "Basic abc"):
        r = await harness.client.get(path, headers={"Authorization": wrong})
        assert r.status_code in (401, 404) and r.headers["content-type"] == "application/problem+json"
    stranger = await harness.client.get(path, headers={"Authorization": "Bearer nope"})
    missing = await harness.client.get("/api/bookings/bkg_nope", headers={"Authorization": "Bearer nope"})
    assert stranger.status_code == missing.status_code == 404
    assert stranger.json()["code"] == missing.json()["code"] == "not_found"


async def read_both_ways(harness: Harness, booking_id: str) -> dict[str, Any]:
    """The booking read (the door's in the door run) and the long poll's `?wait=0` (Quart): the same bytes."""
    path = f"/api/bookings/{booking_id}"
    r = await harness.client.get(path, headers=harness.owner(booking_id))
    assert r.status_code == 200, r.text
    answered_by_the_door(harness, r.headers)
    polled = await harness.client.get(path, params={"wait": "0"}, headers=harness.owner(booking_id))
    assert polled.status_code == 200 and polled.content == r.content
    return dict(r.json())


async def test_booking_read_shows_a_status_change_at_the_next_read(harness: Harness) -> None:
    event = await created(harness)
    ids = []
    for user, seat in (("u1", "A-1-1"), ("u2", "A-1-2"), ("u3", "A-1-3")):
        booking = (await harness.book(event["id"], {"user_id": user, "seat_ids": [seat]})).json()
        assert (await harness.settle(booking["id"]))["status"] == "held"
        ids.append(booking["id"])
    confirmed, cancelled, expired = ids
    for booking_id in ids:  # read (and so kept) while held
        assert (await read_both_ways(harness, booking_id))["status"] == "held"
        assert (await read_both_ways(harness, booking_id))["status"] == "held"
    assert (await harness.confirm(confirmed)).status_code == 200
    assert (await read_both_ways(harness, confirmed))["status"] == "confirmed"
    assert (await harness.cancel(cancelled)).status_code == 200
    assert (await read_both_ways(harness, cancelled))["status"] == "cancelled"
    harness.clock.advance(EVENT["hold_seconds"] + 1)
    assert [b.id for b in await harness.service.expire_lapsed_holds()] == [expired]
    assert (await read_both_ways(harness, expired))["status"] == "expired"
    assert (await read_both_ways(harness, confirmed))["status"] == "confirmed"


async def test_booking_read_shows_another_process_change_within_one_tick(harness: Harness) -> None:
    event = await created(harness)
    booking = (await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["B-1-1"]})).json()
    assert (await harness.settle(booking["id"]))["status"] == "held"
    assert (await read_both_ways(harness, booking["id"]))["status"] == "held"
    # the store changed behind this service's back, as another process's confirm would change it
    await harness.service.store.confirm(booking["id"], harness.clock())
    await trio.sleep(harness.service.settings.seat_map_max_age)
    assert (await read_both_ways(harness, booking["id"]))["status"] == "confirmed"
