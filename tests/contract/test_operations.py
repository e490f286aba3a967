"""Operations: health, readiness, metrics, OpenAPI, the page, static files, /ws frames."""

from __future__ import annotations

import json

import trio
from conftest import ADMIN_TOKEN, Harness, auth_reply
from trio_websocket import open_websocket_url


async def test_health_and_readiness(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).json() == {"status": "ok"}
    r = await harness.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "store": "ok", "queue": "ok", "lock": "ok"}


async def test_readiness_names_the_part_that_is_down(harness: Harness) -> None:
    await harness.service.store.close()
    r = await harness.client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "unavailable" and "store" in body["detail"]
    assert body["queue"] == "ok" and body["store"] != "ok"
    r = await harness.client.get("/api/events")
    assert r.status_code == 503 and r.json()["code"] == "unavailable"


async def test_metrics_are_prometheus_text(harness: Harness) -> None:
    event = await harness.create_event()
    await harness.book(event["id"], {"user_id": "u", "quantity": 1})
    r = await harness.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert '# TYPE ticketblitz_http_requests_total counter' in text
    assert 'ticketblitz_http_requests_total{code="202",route="POST /api/events/{id}/bookings"} 1.0' in text
    assert 'ticketblitz_http_request_duration_seconds_bucket{le="+Inf",route="POST /api/events/{id}/bookings"}' in text
    assert "ticketblitz_queue_depth" in text


async def test_openapi_describes_every_route(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/api/events", "/api/events/{event_id}", "/api/events/{event_id}/seats",
                 "/api/events/{event_id}/bookings", "/api/bookings/{booking_id}",
                 "/api/bookings/{booking_id}/confirm", "/api/bookings/{booking_id}/cancel",
                 "/api/book-async", "/book", "/api/book-secure", "/api/book-naive", "/api/seats",
                 "/api/random-seat", "/health", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    booking_post = paths["/api/events/{event_id}/bookings"]["post"]
    assert {"202", "200", "409", "422", "429", "503"} <= set(booking_post["responses"])
    assert "BookingIn" in json.dumps(booking_post["requestBody"])
    docs = await harness.client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_page_and_static_files_cannot_escape(harness: Harness) -> None:
    page = await harness.client.get("/")
    assert page.status_code == 200 and "TicketBlitz" in page.text
    assert (await harness.client.get("/static/index.html")).status_code == 200
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml", "/static/..%2fpyproject.toml",
                 "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static//etc/passwd", "/static/nope.js"):
        r = await harness.client.get(path, follow_redirects=True)  # "//" is redirected inside /static/
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_ws_sends_snapshot_then_booking_and_stats_frames(harness: Harness) -> None:
    event = await harness.create_event()
    url = harness.url.replace("http://", "ws://") + f"/ws?event={event['id']}"
    async with open_websocket_url(url) as ws:
        snapshot = json.loads(await ws.get_message())
        assert snapshot["type"] == "snapshot" and "ts" in snapshot
        assert [e["id"] for e in snapshot["events"]] == [event["id"]]
        await ws.send_message(json.dumps({"type": "auth", "token": ADMIN_TOKEN}))  # booking ids are for admins
        assert await auth_reply(ws) == {"type": "auth", "ok": True}
        r = await harness.book(event["id"], {"user_id": "u", "quantity": 1})
        seen: dict[str, dict] = {}
        with trio.fail_after(10):
            while not {"booking", "seat", "stats", "queue"} <= set(seen):
                message = json.loads(await ws.get_message())
                for frame in message["frames"] if message["type"] == "batch" else [message]:
                    seen.setdefault(frame["type"], frame)
        assert seen["booking"]["id"] == r.json()["id"]
        assert seen["seat"]["event_id"] == event["id"]
        assert {"requests_per_s", "latency_ms", "queue_lag", "holds_expired"} <= set(seen["stats"])
