"""Limits and doors that stay shut: long-poll and websocket caps, CORS only for listed origins, security
headers on the page, an empty admin token that opens nothing. Embedded adapters, both HTTP doors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from conftest import ADMIN, Harness, make_settings
from trio_websocket import ConnectionRejected, open_websocket_url

from ticketblitz.config import Settings

ALLOWED = "https://tickets.example"


@pytest.fixture
def adapter_set() -> str:
    return "embedded"


@pytest.fixture
def settings(tmp_path: Any, door: str) -> Iterator[Settings]:
    yield make_settings(tmp_path, intake_door=door == "door", max_long_polls=2, max_ws_subscribers=2,
                        cors_origins=f"{ALLOWED}, http://localhost:3000")


async def test_long_polls_beyond_the_cap_get_429_at_once(harness: Harness) -> None:
    event = await harness.create_event()
    # a booking that stays pending while we look: another owner holds its seat's lock
    lease = await harness.service.locks.acquire(event["id"], ["A-1-1"], "blocker", 60_000)
    assert lease is not None
    r = await harness.book(event["id"], {"user_id": "u", "seat_ids": ["A-1-1"]})
    booking_id = r.json()["id"]
    results: list[httpx.Response] = []

    async def wait_long() -> None:
        results.append(await harness.get_booking(booking_id, wait=3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_long)
        nursery.start_soon(wait_long)
        with trio.fail_after(5):
            while harness.service.waiters.active < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        third = await harness.get_booking(booking_id, wait=3)
        assert third.status_code == 429 and third.json()["code"] == "rate_limited"
        assert third.headers["retry-after"] == "1"
        plain = await harness.get_booking(booking_id)  # a read without wait is never capped
        assert plain.status_code == 200
    assert [r.status_code for r in results] == [200, 200]
    assert harness.service.waiters.active == 0 and len(harness.service.waiters) == 0  # nothing left behind
    await harness.service.locks.release(lease)
    assert (await harness.settle(booking_id))["status"] == "held"


async def test_websocket_subscribers_beyond_the_cap_are_refused(harness: Harness) -> None:
    url = harness.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url) as one, open_websocket_url(url) as two:
        await one.get_message()
        await two.get_message()
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(url):
                pass
        assert refused.value.status_code == 503
    with trio.fail_after(5):  # the places come back once they hang up
        while harness.service.telemetry.subscribers:  # noqa: ASYNC110
            await trio.sleep(0.02)
    async with open_websocket_url(url) as three:
        assert "snapshot" in await three.get_message()


async def test_cors_is_closed_except_for_listed_origins(harness: Harness) -> None:
    event = await harness.create_event()
    body = {"user_id": "u", "quantity": 1}
    path = f"/api/events/{event['id']}/bookings"
    evil = await harness.client.post(path, json=body, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 202 and "access-control-allow-origin" not in evil.headers
    ok = await harness.client.post(path, json={**body, "user_id": "v"}, headers={"Origin": ALLOWED})
    assert ok.status_code == 202 and ok.headers["access-control-allow-origin"] == ALLOWED
    assert "Origin" in ok.headers["vary"]
    for origin, allowed in ((ALLOWED, True), ("https://evil.example", False)):
        pre = await harness.client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code < 300
        assert ("access-control-allow-origin" in pre.headers) is allowed
        if allowed:
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert "content-type" in pre.headers["access-control-allow-headers"].lower()
    read = await harness.client.get(f"/api/events/{event['id']}", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in read.headers


async def test_the_page_carries_security_headers(harness: Harness) -> None:
    page = await harness.client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    api = await harness.client.get("/api/events")
    assert api.headers["x-content-type-options"] == "nosniff"


async def test_an_empty_admin_token_opens_nothing(tmp_path: Any, nursery: trio.Nursery) -> None:
    from functools import partial

    from ticketblitz.server import build_service, serve

    settings = make_settings(tmp_path, admin_token="")
    service = build_service(settings)
    running = await nursery.start(partial(serve, settings, service=service))
    body = {"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}]}
    async with httpx.AsyncClient(base_url=running.url) as client:
        for header in ({"Authorization": "Bearer"}, {"Authorization": ""}):  # (httpx sends no trailing space)
            r = await client.post("/api/events", json=body, headers=header)
            assert r.status_code in (401, 403), (header, r.status_code)
        r = await client.post("/api/events", json=body, headers=ADMIN)
        assert r.status_code == 403
        assert (await client.get("/api/bookings/bkg_x", headers={"Authorization": "Bearer"})).status_code == 401
        assert (await client.get("/api/events")).json() == {"events": []}
    running.stop.set()
