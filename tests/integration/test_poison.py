"""A booking that can never be decided (a poison message) is dead-lettered: it leaves the queue, it does
not hold up the bookings behind it, and readers no longer see it `pending`. Both adapter sets, real
services (the embedded queue is durable in SQLite; the distributed one is Kafka)."""

from __future__ import annotations

import sqlite3
import time

import pytest
import trio
from conftest import ADMIN, Harness

from ticketblitz.domain.model import Booking, new_booking_id


@pytest.fixture
def door() -> str:
    return "door"  # the queue is under test here, not the HTTP front


async def test_poison_booking_is_dead_lettered(harness: Harness, adapter_set: str) -> None:
    event = await harness.create_event()
    service = harness.service
    now = time.time()
    poison = Booking(id=new_booking_id(), event_id="evt_that_never_existed", user_id="u", quantity=1,
                     requested_seats=("A-1-1",), created_at=now, updated_at=now)
    if adapter_set == "embedded":
        # The embedded queue's entries are the store's pending rows: store one whose event is gone (its
        # row deleted behind the store's back), so that every attempt to decide it fails.
        doomed = await harness.create_event(name="Doomed night")
        poison = Booking(id=new_booking_id(), event_id=doomed["id"], user_id="u", quantity=1,
                         requested_seats=("A-1-1",), created_at=now, updated_at=now)
        assert await service.store.insert_pending([poison]) == [None]
        with sqlite3.connect(service.settings.db_path) as db:
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("DELETE FROM seats WHERE event_id = ?", (doomed["id"],))
            db.execute("DELETE FROM events WHERE id = ?", (doomed["id"],))
    await service.queue.requeue([poison])  # as a broken producer would have sent it

    good = await harness.book(event["id"], {"user_id": "v", "quantity": 1})
    assert (await harness.settle(good.json()["id"]))["status"] == "held"  # not held up by the poison
    with trio.fail_after(30):
        while service.telemetry.queue["dead_lettered"] < 1:  # noqa: ASYNC110 - counters have no event
            await trio.sleep(0.2)
    assert service.telemetry.queue["dead_lettered"] == 1
    assert service.queue.depth() == 0  # nothing left in flight: a drain does not wait out its grace

    r = await harness.client.get(f"/api/bookings/{poison.id}", headers=ADMIN)
    if adapter_set == "embedded":
        # stored pending, so the store records the final answer
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["reason"]) == ("rejected", "processing_failed")
    else:
        # only ever in Kafka, for an event the store does not have: nowhere to record it, and never pending
        assert r.status_code == 404 or (r.json()["status"], r.json()["reason"]) == ("rejected", "processing_failed")
