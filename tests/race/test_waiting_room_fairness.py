"""Fairness of the waiting room across two workers, against the real PostgreSQL (no mocks, no skips).

Two `PostgresStore`s on one database are two workers' connection pools: each joins and ticks the same
line at the same time, as two server processes do (every process runs the admitter). The store's row
lock on the line is what serializes them; these tests check that it does:
- arrival order is real-time order: a join answered before another was sent has the lower position;
- positions are 1..N with no gap and no repeat, under joins racing from both workers;
- passes go out exactly in position order while both workers tick at once, at the line's rate, not twice it.
"""

from __future__ import annotations

import random
import time

import trio
from conftest import scratch_services

from ticketblitz.adapters.postgres_store import PostgresStore
from ticketblitz.domain.model import Event, Section, new_event_id
from ticketblitz.domain.waiting_room import WaitingRoom, new_ticket_id

RATE = 500  # passes per second of the line's clock


def room_event(now: float, seats: int) -> Event:
    return Event(id=new_event_id(), name="Fair night", sections=(Section("A", 1, seats),), max_per_user=1,
                 created_at=now, waiting_room=WaitingRoom(mode="fifo", admit_per_second=RATE, pass_seconds=600))


async def test_fifo_order_is_join_order_across_two_workers() -> None:
    with scratch_services() as services:
        one = PostgresStore(services["database_url"], timeout=10.0)
        two = PostgresStore(services["database_url"], timeout=10.0)
        async with trio.open_nursery() as nursery:  # both migrate at once: the migration lock orders them
            nursery.start_soon(one.open)
            nursery.start_soon(two.open)
        try:
            await _fifo_across(one, two)
        finally:
            await one.close()
            await two.close()


async def _fifo_across(one: PostgresStore, two: PostgresStore) -> None:
    now = time.time()
    event = await one.create_event(room_event(now, seats=1000))
    eid = event.id

    # 1. one after the other, alternating workers: positions in exactly that order
    for n in range(40):
        store = one if n % 2 == 0 else two
        joined = await store.queue_join(eid, [(new_ticket_id(), f"seq-{n}", "h")], now)
        assert joined is not None
        ((ticket, created),), _ = joined
        assert created and ticket.position == n + 1 and ticket.seq == n + 1

    # 2. racing: 16 tasks per worker, each joining batches of 1..8 users, one batch after another
    spans: list[tuple[float, float, list[int]]] = []  # (sent, answered, positions given)
    rng = random.Random(7)

    async def fan_task(store: PostgresStore, name: str) -> None:
        for batch in range(6):
            users = [f"{name}-{batch}-{k}" for k in range(rng.randint(1, 8))]
            sent = time.monotonic()
            joined = await store.queue_join(eid, [(new_ticket_id(), u, "h") for u in users], now)
            answered = time.monotonic()
            assert joined is not None
            tickets = joined[0]
            assert all(created for _, created in tickets)
            positions = [t.position for t, _ in tickets]
            assert positions == sorted(positions)  # a batch is recorded in its own order
            spans.append((sent, answered, [p for p in positions if p is not None]))

    async with trio.open_nursery() as nursery:
        for w, store in enumerate((one, two)):
            for t in range(16):
                nursery.start_soon(fan_task, store, f"w{w}t{t}")
    given = sorted(p for _, _, ps in spans for p in ps)
    assert given == list(range(41, 41 + len(given)))  # no gap, no repeat
    # real-time order: whatever was answered before a join was sent has lower positions
    by_answer = sorted(spans, key=lambda s: s[1])
    answered_at = [s[1] for s in by_answer]
    highest_before: list[int] = []
    highest = 0
    for _, _, ps in by_answer:
        highest = max(highest, max(ps))
        highest_before.append(highest)
    checked = 0
    for sent, _, ps in spans:
        i = _bisect_left(answered_at, sent)
        if i:
            assert highest_before[i - 1] < min(ps), "a join answered earlier got a later position"
            checked += 1
    assert checked > len(spans) // 2  # the check had earlier joins to compare with

    # 3. both workers tick at once, the line's clock moving 10 ms a step: passes in position order
    total = 40 + len(given)
    clock = [now]

    async def ticker(store: PostgresStore, steps: int) -> None:
        for _ in range(steps):
            clock[0] += 0.005  # each worker's tick moves the shared clock: 10 ms per round of both
            await store.queue_tick(eid, clock[0])

    started = clock[0]
    while True:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, one, 10)
            nursery.start_soon(ticker, two, 10)
        line = await one.queue_line(eid)
        assert line is not None
        if line.admitted_through >= total:
            break
        assert clock[0] - started < 30, "the line stopped moving"
    order = await one.queue_admission_order(eid)
    assert [p for p, _ in order] == list(range(1, total + 1))
    admitted_at = [a for _, a in order]
    assert admitted_at == sorted(admitted_at)  # a later position never got its pass before an earlier one
    # the rate is the line's, not each worker's: two tickers do not admit twice as fast
    elapsed = admitted_at[-1] - started
    assert total <= RATE * elapsed + RATE + 1, (total, elapsed)


def _bisect_left(values: list[float], x: float) -> int:
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


