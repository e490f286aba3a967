"""Races: hundreds of concurrent requests started in one nursery, then the invariants over the final state."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import trio
from conftest import Harness
from invariants import check_invariants


@pytest.fixture
def door() -> str:
    """Races go through the production front, the Trio intake door (the contract suite covers both)."""
    return "door"


async def fire(n: int, request: Any) -> list[httpx.Response]:
    """Start `n` requests at once (request(i) -> awaitable response); all answers, in order."""
    answers: list[httpx.Response | None] = [None] * n

    async def one(i: int) -> None:
        answers[i] = await request(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def codes(answers: list[httpx.Response]) -> Counter[int]:
    return Counter(a.status_code for a in answers)


async def test_1000_fans_for_100_seats(harness: Harness) -> None:
    event = await harness.create_event(rows=10, seats_per_row=10)
    answers = await fire(1000, lambda i: harness.book(event["id"], {"user_id": f"fan-{i}", "quantity": 1}))
    got = codes(answers)
    assert set(got) <= {202, 409}, got
    assert all(a.json()["code"] == "sold_out" for a in answers if a.status_code == 409)
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    decided = await harness.settle_all(accepted)
    held = [b for b in decided if b["status"] == "held"]
    assert len(held) == 100
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"] == {"available": 0, "held": 100, "sold": 0}
    assert len({s for b in held for s in b["seat_ids"]}) == 100


async def test_300_fans_for_one_named_seat(harness: Harness) -> None:
    event = await harness.create_event()
    answers = await fire(300, lambda i: harness.book(event["id"], {"user_id": f"fan-{i}", "seat_ids": ["A-5-5"]}))
    got = codes(answers)
    assert set(got) <= {202, 409}, got
    decided = await harness.settle_all([a.json()["id"] for a in answers if a.status_code == 202])
    assert sum(b["status"] == "held" for b in decided) == 1
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"]["held"] == 1


async def test_300_fans_for_one_seat_through_every_original_route(harness: Harness) -> None:
    event = await harness.create_event()
    for route, seat in (("/api/book-async", 1), ("/api/book-secure", 2), ("/api/book-naive", 3)):
        answers = await fire(300, lambda i, route=route, seat=seat: harness.client.post(
            route, json={"userId": f"{route}-{i}", "seatNumber": seat, "eventId": event["id"]}))
        got = codes(answers)
        if route == "/api/book-async":
            assert got == {202: 300}
            decided = await harness.settle_all([a.json()["booking"]["id"] for a in answers])
            assert Counter(b["status"] for b in decided) == {"held": 1, "rejected": 299}
        else:
            assert got[200] == 1, (route, got)
            assert set(got) <= {200, 409, 429}, (route, got)
    summary = await check_invariants(harness, event["id"])
    assert summary["counts"]["held"] == 3


async def test_30_concurrent_repeats_of_one_idempotency_key(harness: Harness) -> None:
    event = await harness.create_event()
    body = {"user_id": "u", "quantity": 2}
    answers = await fire(30, lambda i: harness.book(event["id"], body, key="same-key"))
    got = codes(answers)
    assert got == {202: 1, 200: 29}, got
    assert len({a.json()["id"] for a in answers}) == 1
    await harness.settle(answers[0].json()["id"])
    summary = await check_invariants(harness, event["id"])
    assert len(summary["bookings"]) == 1 and summary["counts"]["held"] == 2


async def test_one_user_racing_past_max_per_user(harness: Harness) -> None:
    event = await harness.create_event(max_per_user=4)
    answers = await fire(60, lambda i: harness.book(event["id"], {"user_id": "scalper", "quantity": 1}))
    got = codes(answers)
    assert got == {202: 4, 409: 56}, got
    assert all(a.json()["code"] == "limit_exceeded" for a in answers if a.status_code == 409)
    # and past the edge: the original's queued route lets everything through to the store
    more = await fire(60, lambda i: harness.client.post(
        "/api/book-async", json={"userId": "scalper2", "seatNumber": i + 21, "eventId": event["id"]}))
    decided = await harness.settle_all([a.json()["booking"]["id"] for a in more])
    assert sum(b["status"] == "held" for b in decided) == 4
    assert {b["reason"] for b in decided if b["status"] == "rejected"} == {"limit_exceeded"}
    await harness.settle_all([a.json()["id"] for a in answers if a.status_code == 202])
    await check_invariants(harness, event["id"])


async def test_mixed_crowd_with_cancels_and_confirms(harness: Harness) -> None:
    """Named seats, quantities, confirms and cancels all at once: the invariants hold at the end."""
    event = await harness.create_event(rows=5, seats_per_row=10, max_per_user=3)

    async def buyer(i: int) -> httpx.Response:
        if i % 3 == 0:
            r = await harness.book(event["id"], {"user_id": f"u{i % 40}", "seat_ids": [f"A-{1 + i % 5}-{1 + i % 10}"]})
        else:
            r = await harness.book(event["id"], {"user_id": f"u{i % 40}", "quantity": 1 + i % 2})
        if r.status_code == 202:
            b = await harness.settle(r.json()["id"])
            if b["status"] == "held":
                action = "confirm" if i % 2 else "cancel"
                await (harness.confirm(b["id"]) if action == "confirm" else harness.cancel(b["id"]))
        return r

    answers = await fire(400, buyer)
    assert set(codes(answers)) <= {202, 409}
    await check_invariants(harness, event["id"])
