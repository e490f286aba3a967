"""/ws telemetry against a real server: every frame type of docs/API.md with its members, from real steps
(intake, edge, queue, locks, store, expiry), admin and anonymous forms; /metrics parsed as Prometheus text."""

from __future__ import annotations

import json
from typing import Any

import trio
from conftest import ADMIN, ADMIN_TOKEN, Harness, auth_reply
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, open_websocket_url

PRIVATE = {"id", "booking_id", "booking_ids", "user_id", "owner", "owners", "secret"}
FRAME_MEMBERS = {
    "event": {"event_id", "name", "capacity"},
    "http": {"answers"},
    "admission": {"event_id", "verdict", "count"},
    "queue": {"action", "count", "partition", "offset", "lag"},
    "lock": {"action", "event_id", "seats", "fence"},
    "store": {"action", "op", "event_id", "count"},
    "booking": {"event_id", "status", "reason", "seat_ids"},
    "seat": {"event_id", "status", "seats", "seat"},
    "hold": {"action", "event_id", "seats"},
    "loadgen": {"state", "event_id", "users", "seats", "route"},
    "stats": {"window_s", "processes", "requests_per_s", "decisions_per_s", "admissions_per_s", "queue_per_s",
              "locks_per_s", "locks_contended_per_s", "store_per_s", "queue_lag", "latency_ms", "holds_expired",
              "holds_expired_per_s", "frames_dropped", "dropped", "subscribers", "totals"},
}


class Reader:
    """Every frame one websocket received, batches unwrapped."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.messages = 0
        self.arrived = trio.Event()  # set (and replaced) at each message

    async def run(self) -> None:
        while True:
            message = json.loads(await self.ws.get_message())
            self.messages += 1
            self.frames.extend(message["frames"] if message["type"] == "batch" else [message])
            self.arrived.set()
            self.arrived = trio.Event()

    async def until(self, check: Any, seconds: float = 15) -> list[dict[str, Any]]:
        with trio.fail_after(seconds):
            while not (found := [f for f in self.frames if check(f)]):
                await self.arrived.wait()
        return found


async def test_every_frame_type_from_real_steps(harness: Harness) -> None:
    url = harness.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url) as admin_ws, open_websocket_url(url) as anon_ws, \
            trio.open_nursery() as nursery:
        snapshot = json.loads(await admin_ws.get_message())
        assert snapshot["type"] == "snapshot" and {"ts", "events", "stats", "processes"} <= set(snapshot)
        assert snapshot["processes"] >= 1 and snapshot["stats"]["type"] == "stats"
        assert json.loads(await anon_ws.get_message())["type"] == "snapshot"
        await admin_ws.send_message(json.dumps({"type": "auth", "token": ADMIN_TOKEN}))
        assert await auth_reply(admin_ws) == {"type": "auth", "ok": True}
        admin, anon = Reader(admin_ws), Reader(anon_ws)
        nursery.start_soon(admin.run)
        nursery.start_soon(anon.run)

        event = await harness.create_event(hold_seconds=60)
        eid = event["id"]
        r = await harness.book(eid, {"user_id": "fan-1", "seat_ids": ["A-1-1"]})
        assert r.status_code == 202
        held = await harness.settle(r.json()["id"])
        assert held["status"] == "held"
        # (a seat that changes twice within one tick is sent with its last status only: see it held first)
        await admin.until(lambda f: f["type"] == "seat" and f["status"] == "held" and "A-1-1" in f["seats"])
        naive = await harness.client.post("/api/book-naive", json={"userId": "fan-2", "seatNumber": 1, "eventId": eid})
        assert naive.status_code == 409
        # the queued path takes every request: the store refuses the second write of a seat (a conflict)
        queued = await harness.post("/api/book-async", {"userId": "fan-4", "seatNumber": 1, "eventId": eid})
        assert queued.status_code == 202
        assert (await harness.settle(queued.json()["booking"]["id"]))["status"] == "rejected"
        r2 = await harness.book(eid, {"user_id": "fan-3", "seat_ids": ["A-1-2"]})
        second = await harness.settle(r2.json()["id"])
        await admin.until(lambda f: f["type"] == "seat" and f["status"] == "held" and "A-1-2" in f["seats"])
        assert (await harness.confirm(second["id"])).status_code == 200
        harness.service.telemetry.publish("loadgen", state="started", event_id=eid, users=1, seats=1,
                                          route="bookings")
        harness.clock.advance(120)  # the first hold lapses; the sweeper expires it
        await admin.until(lambda f: f["type"] == "hold")

        def of(kind: str, **members: Any) -> Any:
            return lambda f: f["type"] == kind and all(f.get(k) == v for k, v in members.items())

        found = {
            "event": await admin.until(of("event", event_id=eid)),
            "http": await admin.until(of("http")),
            "admission": await admin.until(of("admission", event_id=eid, verdict="admitted")),
            "queue": await admin.until(of("queue", action="consumed")),
            "lock": await admin.until(of("lock", event_id=eid, action="acquired")),
            "store": await admin.until(of("store", event_id=eid, action="commit", op="hold")),
            "booking": await admin.until(of("booking", event_id=eid, status="held")),
            "seat": await admin.until(of("seat", event_id=eid, status="held")),
            "hold": await admin.until(of("hold", event_id=eid)),
            "loadgen": await admin.until(of("loadgen", event_id=eid)),
            "stats": await admin.until(of("stats")),
        }
        for kind, frames in found.items():
            assert FRAME_MEMBERS[kind] <= set(frames[0]), (kind, frames[0])
            assert frames[0]["ts"].endswith("Z") and "process" in frames[0], frames[0]
        await admin.until(of("queue", action="produced"))
        for action in ("attempt", "released"):
            await admin.until(of("lock", event_id=eid, action=action))
        await admin.until(of("store", event_id=eid, action="conflict", op="hold"))
        await admin.until(of("store", event_id=eid, action="commit", op="confirm"))
        await admin.until(of("store", event_id=eid, action="commit", op="expire"))
        await admin.until(of("seat", event_id=eid, status="sold"))
        await admin.until(of("seat", event_id=eid, status="available"))
        assert any("A-1-1" in f["seats"] for f in await admin.until(of("hold", event_id=eid)))
        assert (await admin.until(of("lock", action="acquired", event_id=eid)))[0]["fence"] is not None
        assert found["booking"][0]["id"] == held["id"] and found["booking"][0]["user_id"] == "fan-1"
        assert found["admission"][0]["booking_id"]
        routes = {a["route"] for f in await admin.until(of("http")) for a in f["answers"]}
        assert "POST /api/events/{id}/bookings" in routes and "POST /api/book-naive" in routes
        stats = await admin.until(lambda f: f["type"] == "stats" and f["totals"]["bookings"].get("held", 0) >= 2)
        assert stats[-1]["totals"]["store"]["conflict"] >= 1
        await anon.until(of("hold", event_id=eid))
        await anon.until(of("stats"))
        nursery.cancel_scope.cancel()
    for frame in anon.frames:
        assert PRIVATE.isdisjoint(frame), frame
    assert any(f["type"] == "booking" for f in anon.frames) and any(f["type"] == "lock" for f in anon.frames)
    assert "fan-1" not in json.dumps(anon.frames) and held["id"] not in json.dumps(anon.frames)
    # one message per tick: far fewer messages than frames
    assert admin.messages < len(admin.frames)


async def test_metrics_parse_and_agree_with_the_answers(harness: Harness) -> None:
    event = await harness.create_event()
    for i in range(3):
        r = await harness.book(event["id"], {"user_id": f"u{i}", "quantity": 1})
        assert r.status_code == 202
    r = await harness.client.post("/api/events", json={}, headers=ADMIN)
    assert r.status_code == 422
    text = (await harness.client.get("/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    booked = (("code", "202"), ("route", "POST /api/events/{id}/bookings"))
    assert samples[("ticketblitz_http_requests_total", booked)] == 3
    assert samples[("ticketblitz_http_requests_total", (("code", "422"), ("route", "POST /api/events")))] == 1
    assert samples[("ticketblitz_http_request_duration_seconds_count",
                    (("route", "POST /api/events/{id}/bookings"),))] == 3
    assert samples[("ticketblitz_admissions_total", (("verdict", "admitted"),))] == 3
    assert samples[("ticketblitz_queue_messages_total", (("action", "produced"),))] == 3
    assert samples[("ticketblitz_booking_decisions_total", (("status", "pending"),))] == 3
    for gauge in ("ticketblitz_queue_depth", "ticketblitz_ws_subscribers", "ticketblitz_accepting"):
        assert (gauge, ()) in samples
