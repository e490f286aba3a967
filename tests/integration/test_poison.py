"""A booking the store can never take (a poison message) is dead-lettered and answered `rejected`,
and it does not hold up the bookings behind it. Distributed adapters, real services."""

from __future__ import annotations

import time

import pytest
import trio
from conftest import Harness

from ticketblitz.domain.model import Booking, new_booking_id


@pytest.fixture
def adapter_set() -> str:
    return "distributed"


@pytest.fixture
def door() -> str:
    return "door"


async def test_poison_booking_is_dead_lettered_and_rejected(harness: Harness) -> None:
    event = await harness.create_event()
    now = time.time()
    poison = Booking(id=new_booking_id(), event_id="evt_that_never_existed", user_id="u", quantity=1,
                     requested_seats=("A-1-1",), created_at=now, updated_at=now)
    await harness.service.queue.enqueue([poison])  # as a broken producer would have sent it
    good = await harness.book(event["id"], {"user_id": "v", "quantity": 1})
    assert (await harness.settle(good.json()["id"]))["status"] == "held"  # not held up by the poison
    with trio.fail_after(30):
        while True:
            r = await harness.client.get(f"/api/bookings/{poison.id}")
            if r.status_code == 200 and r.json()["status"] != "pending":
                break
            await trio.sleep(0.2)
    assert r.json()["status"] == "rejected" and r.json()["reason"] == "seat_unavailable"
    assert harness.service.telemetry.queue["dead_lettered"] == 1
