"""A message that can never be decided (a booking for no event, as a broken producer would send it) is
dead-lettered: it leaves the queue, it does not hold up the bookings behind it, and nobody ever sees it
`pending`. Both adapter sets, real services (the embedded queue durable in SQLite; Kafka). A poison
booking the store can record is answered `rejected/processing_failed` (tests/unit/test_service_parts.py)."""

from __future__ import annotations

import time

import pytest
import trio
from conftest import ADMIN, Harness

from ticketblitz.domain.model import Booking, new_booking_id


@pytest.fixture
def door() -> str:
    return "door"  # the queue is under test here, not the HTTP front


async def test_poison_booking_is_dead_lettered(harness: Harness) -> None:
    event = await harness.create_event()
    service = harness.service
    now = time.time()
    poison = Booking(id=new_booking_id(), event_id="evt_that_never_existed", user_id="u", quantity=1,
                     requested_seats=("A-1-1",), created_at=now, updated_at=now)
    await service.queue.requeue([poison])  # straight into the queue, past intake

    good = await harness.book(event["id"], {"user_id": "v", "quantity": 1})
    assert (await harness.settle(good.json()["id"]))["status"] == "held"  # not held up by the poison
    with trio.fail_after(30):
        while service.telemetry.queue["dead_lettered"] < 1:  # noqa: ASYNC110 - counters have no event
            await trio.sleep(0.2)
    assert service.telemetry.queue["dead_lettered"] == 1
    with trio.fail_after(10):
        while service.queue.depth() > 0:  # noqa: ASYNC110 - the queue's depth has no event of its own
            await trio.sleep(0.05)  # nothing left in flight: a drain does not wait out its grace period
    r = await harness.client.get(f"/api/bookings/{poison.id}", headers=ADMIN)
    assert r.status_code == 404, r.text  # it names no event: nowhere to keep it but the dead letters
