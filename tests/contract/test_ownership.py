"""A booking belongs to the holder of its secret (API 1.1, "Who may do what"): the secret comes only with
the answer that created the booking (and its Idempotency-Key repeats), and reading, long-polling,
confirming or cancelling needs it (or the admin token)."""

from __future__ import annotations

import json
import re

import trio
from conftest import ADMIN, Harness, auth_reply
from invariants import check_invariants
from trio_websocket import open_websocket_url

SECRET = re.compile(r"^[A-Za-z0-9_-]{22,}$")  # URL-safe, at least 128 bits


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_the_secret_comes_once_and_opens_only_its_booking(harness: Harness) -> None:
    event = await harness.create_event()
    mine = await harness.book(event["id"], {"user_id": "u1", "seat_ids": ["A-1-1"]})
    theirs = await harness.book(event["id"], {"user_id": "u2", "seat_ids": ["A-1-2"]})
    assert mine.status_code == theirs.status_code == 202
    secret, other = mine.json()["secret"], theirs.json()["secret"]
    assert SECRET.match(secret) and secret != other
    booking_id = mine.json()["id"]
    held = await harness.settle(booking_id)
    assert "secret" not in held  # only the answer that created it carries it
    await harness.settle(theirs.json()["id"])  # held too before it is cancelled below (409 while pending)

    # no Authorization header: 401, whether or not the booking exists
    for path in (f"/api/bookings/{booking_id}", "/api/bookings/bkg_nope", f"/api/bookings/{booking_id}?wait=5"):
        r = await harness.client.get(path)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
    for action in ("confirm", "cancel"):
        r = await harness.client.post(f"/api/bookings/{booking_id}/{action}")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    # another form of Authorization carries no secret: 401 as well
    r = await harness.client.get(f"/api/bookings/{booking_id}", headers={"Authorization": f"Basic {secret}"})
    assert r.status_code == 401

    # someone else's secret, a made-up one, an empty one: 404 worded the same as for no booking at all
    missing = await harness.client.get("/api/bookings/bkg_nope", headers=bearer(secret))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    for wrong in (other, secret[:-1], secret + "x", "x" * 64):
        r = await harness.client.get(f"/api/bookings/{booking_id}", headers=bearer(wrong))
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert r.json()["detail"] == missing.json()["detail"].replace("bkg_nope", booking_id)
    for action in ("confirm", "cancel"):
        r = await harness.client.post(f"/api/bookings/{booking_id}/{action}", headers=bearer(other))
        assert r.status_code == 404
    assert (await harness.get_booking(booking_id)).json()["status"] == "held"  # nothing changed

    # the holder and the admin token may
    r = await harness.client.get(f"/api/bookings/{booking_id}", headers=bearer(secret))
    assert r.status_code == 200 and r.json()["status"] == "held" and "secret" not in r.json()
    r = await harness.client.get(f"/api/bookings/{booking_id}", headers=ADMIN)
    assert r.status_code == 200
    r = await harness.client.post(f"/api/bookings/{booking_id}/confirm", headers=bearer(secret))
    assert r.status_code == 200 and r.json()["status"] == "confirmed" and "secret" not in r.json()
    r = await harness.client.post(f"/api/bookings/{theirs.json()['id']}/cancel", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # secrets appear in no list or seat map
    for path in ("/api/events", f"/api/events/{event['id']}", f"/api/events/{event['id']}/seats"):
        text = (await harness.client.get(path)).text
        assert secret not in text and other not in text
    await check_invariants(harness, event["id"])


async def test_a_stranger_cannot_cancel_or_long_poll_the_crowd(harness: Harness) -> None:
    event = await harness.create_event()
    answers = [await harness.book(event["id"], {"user_id": f"fan{i}", "quantity": 1}) for i in range(5)]
    ids = [a.json()["id"] for a in answers]
    await harness.settle_all(ids)
    scalper = (await harness.book(event["id"], {"user_id": "scalper", "quantity": 1})).json()
    stranger = scalper["secret"]
    for booking_id in ids:
        assert (await harness.client.post(f"/api/bookings/{booking_id}/cancel", headers=bearer(stranger))
                ).status_code == 404
        with trio.fail_after(5):  # refused at once, not after the wait
            r = await harness.client.get(f"/api/bookings/{booking_id}", params={"wait": 30}, headers=bearer(stranger))
        assert r.status_code == 404
    # the scalper's own booking is decided too, so that the event's counts and its seat map are read
    # over a settled state (a decision between the two reads would make them disagree)
    await harness.settle_all([scalper["id"]])
    summary = await check_invariants(harness, event["id"])
    assert summary["statuses"]["cancelled"] == 0


async def test_repeats_and_compat_routes_carry_the_secret(harness: Harness) -> None:
    event = await harness.create_event()
    first = await harness.book(event["id"], {"user_id": "u1", "quantity": 2}, key="order-7")
    again = await harness.book(event["id"], {"user_id": "u1", "quantity": 2}, key="order-7")
    assert again.status_code == 200 and again.json()["secret"] == first.json()["secret"]
    r = await harness.client.post("/api/book-async", json={"userId": "c1", "seatNumber": 50, "eventId": event["id"]})
    assert r.status_code == 202
    queued = r.json()["booking"]
    assert SECRET.match(queued["secret"])
    r = await harness.client.post("/api/book-secure", json={"userId": "c2", "seatNumber": 60, "eventId": event["id"]})
    assert r.status_code == 200
    held = r.json()["booking"]
    assert held["status"] == "held" and SECRET.match(held["secret"])
    r = await harness.client.post(f"/api/bookings/{held['id']}/cancel", headers=bearer(held["secret"]))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await harness.client.get(f"/api/bookings/{queued['id']}", params={"wait": 10},
                                 headers=bearer(queued["secret"]))
    assert r.status_code == 200 and r.json()["status"] == "held"
    await check_invariants(harness, event["id"])


async def _frames_until(ws: object, kinds: set[str], seconds: float = 10) -> list[dict]:
    """The frames received until every kind was seen (a tick's `batch` message unwrapped)."""
    frames: list[dict] = []
    with trio.fail_after(seconds):
        while not kinds <= {f["type"] for f in frames}:
            message = json.loads(await ws.get_message())  # type: ignore[attr-defined]
            frames.extend(message["frames"] if message["type"] == "batch" else [message])
    return frames


async def test_anonymous_telemetry_carries_no_booking_or_user_ids(harness: Harness) -> None:
    event = await harness.create_event()
    url = harness.url.replace("http://", "ws://") + f"/ws?event={event['id']}"
    async with open_websocket_url(url) as anonymous, open_websocket_url(url) as admin, \
            open_websocket_url(url) as pretender:
        for ws in (anonymous, admin, pretender):
            assert json.loads(await ws.get_message())["type"] == "snapshot"
        await admin.send_message(json.dumps({"type": "auth", "token": ADMIN["Authorization"].split()[1]}))
        await pretender.send_message(json.dumps({"type": "auth", "token": "guess"}))
        assert await auth_reply(admin) == {"type": "auth", "ok": True}
        assert await auth_reply(pretender) == {"type": "auth", "ok": False}
        r = await harness.book(event["id"], {"user_id": "visible-only-to-admins", "seat_ids": ["A-3-3"]})
        booking_id, secret = r.json()["id"], r.json()["secret"]
        seen = {name: await _frames_until(ws, {"booking", "seat", "lock"})
                for name, ws in (("anonymous", anonymous), ("admin", admin), ("pretender", pretender))}
    for name in ("anonymous", "pretender"):
        text = json.dumps(seen[name])
        assert booking_id not in text and "visible-only-to-admins" not in text and secret not in text, name
        booking_frames = [f for f in seen[name] if f["type"] == "booking"]
        assert booking_frames and all("id" not in f and "user_id" not in f for f in booking_frames)
        assert all("owner" not in f for f in seen[name] if f["type"] == "lock")
        assert any(f["type"] == "seat" and f.get("seat") == "A-3-3" for f in seen[name])  # seats are public
    admin_text = json.dumps(seen["admin"])
    assert booking_id in admin_text and "visible-only-to-admins" in admin_text and secret not in admin_text
