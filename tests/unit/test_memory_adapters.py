"""The embedded adapters on their own, without a port or a server: the in-process queue (durable through
a real SQLite store in a temporary directory) and in-process admission. The Redis adapter is held to the
same answers in tests/integration/test_redis_admission.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ticketblitz.adapters.memory_admission import InProcessAdmission
from ticketblitz.adapters.memory_queue import InProcessQueue
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain.model import Booking, Event, Section, new_event_id
from ticketblitz.ports import AdmitItem, AdmitResult


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def event(store: SqliteStore) -> Event:
    created = await store.create_event(Event(id=new_event_id(), name="n", sections=(Section("A", 1, 10),)))
    return created


@pytest.fixture
async def queue(store: SqliteStore) -> AsyncIterator[InProcessQueue]:
    q = InProcessQueue(store)
    await q.open()
    yield q
    await q.close()


def bookings(event: Event, count: int, *, start: int = 0) -> list[Booking]:
    now = time.time()
    return [Booking(id=f"bkg_{n}", event_id=event.id, user_id=f"u{n}", quantity=1, created_at=now + n,
                    updated_at=now + n, idempotency_key=f"k{n}", fingerprint="fp") for n in range(start, start + count)]


async def nothing_to_take(queue: InProcessQueue, wait: float = 0.2) -> bool:
    with trio.move_on_after(wait):
        await queue.take_batch(10)
        return False
    return True


# ---------------------------------------------------------------------- InProcessQueue
async def test_the_embedded_queue_is_durable_in_the_store(queue: InProcessQueue, store: SqliteStore,
                                                          event: Event) -> None:
    assert queue.durable_in_store is True
    sent = bookings(event, 3)
    assert await queue.enqueue(sent) == [None, None, None]
    assert [b.id for b in await store.pending_bookings(10)] == [b.id for b in sent]
    assert queue.depth() == 3
    taken = await queue.take_batch(10)
    assert taken == sent and queue.depth() == 3  # in flight still counts
    await queue.ack(taken)
    assert queue.depth() == 0 and queue.consumed == 3
    assert await nothing_to_take(queue)


async def test_open_puts_the_stored_pending_bookings_back_in_line(store: SqliteStore, event: Event) -> None:
    sent = bookings(event, 2)
    await store.insert_pending(sent)
    queue = InProcessQueue(store)
    await queue.open()
    assert await queue.take_batch(10) == sent


async def test_requeue_puts_a_booking_in_no_line_back(queue: InProcessQueue, event: Event) -> None:
    """A repeat found a booking that is in the store but in no line (e.g. its line was lost): back in line."""
    lost = bookings(event, 1)
    await queue.requeue(lost)
    assert queue.depth() == 1 and queue.requeued == 1
    assert await queue.take_batch(10) == lost


async def test_requeue_leaves_a_booking_in_line_or_being_decided_alone(queue: InProcessQueue, event: Event) -> None:
    first, second = bookings(event, 2)
    await queue.enqueue([first, second])
    (taken,) = await queue.take_batch(1)
    assert taken == first
    await queue.requeue([first, second])  # being decided, and in line: neither is added again
    assert queue.depth() == 2 and queue.requeued == 0
    await queue.ack([first])
    assert await queue.take_batch(10) == [second]
    await queue.ack([second])
    assert queue.depth() == 0
    assert await nothing_to_take(queue)


async def test_retry_serves_bookings_again_first_and_in_order(queue: InProcessQueue, event: Event) -> None:
    sent = bookings(event, 4)
    await queue.enqueue(sent)
    taken = await queue.take_batch(3)
    await queue.retry(taken[1:])
    await queue.ack(taken[:1])
    assert await queue.take_batch(10) == [*taken[1:], sent[3]]


async def test_a_dead_letter_leaves_the_queue(queue: InProcessQueue, event: Event) -> None:
    """The store recorded it rejected already: it is no longer in flight, so the depth returns to 0 and a
    drain (which waits for depth 0) ends at once instead of waiting out its grace period."""
    poison, good = bookings(event, 2)
    await queue.enqueue([poison, good])
    taken = await queue.take_batch(10)
    await queue.ack([good])
    await queue.dead_letter([poison], "RuntimeError: boom")
    assert queue.depth() == 0 and queue.dead_lettered == 1  # what a drain waits for
    assert await nothing_to_take(queue)
    await queue.retry(taken)  # a late retry of a dead letter changes nothing
    assert queue.depth() == 0


async def test_a_dead_letter_waiting_in_line_is_never_delivered(queue: InProcessQueue, event: Event) -> None:
    poison, good = bookings(event, 2)
    await queue.enqueue([poison, good])
    await queue.retry(await queue.take_batch(1))  # back in line, first
    await queue.dead_letter([poison], "RuntimeError: boom")
    assert queue.depth() == 1 and queue.dead_lettered == 1
    assert await queue.take_batch(10) == [good]
    await queue.dead_letter([poison], "again")  # twice, or for a booking never queued: nothing to count
    await queue.dead_letter(bookings(event, 1, start=9), "unknown")
    assert queue.dead_lettered == 1


# ---------------------------------------------------------------------- InProcessAdmission
@pytest.fixture
async def admission(store: SqliteStore, event: Event) -> InProcessAdmission:
    a = InProcessAdmission()
    await a.ensure(store)
    return a


async def test_abandon_withdraws_unless_marked_queued(admission: InProcessAdmission, event: Event) -> None:
    queued, failed = bookings(event, 2)
    assert await admission.admit([AdmitItem(queued), AdmitItem(failed)]) == [AdmitResult(), AdmitResult()]
    await admission.mark_queued([queued])
    await admission.abandon([queued, failed])
    await admission.abandon([queued, failed])  # idempotent
    assert admission.inventory.has_reservation(queued.id) and not admission.inventory.has_reservation(failed.id)
    assert admission.inventory.stock(event.id).remaining == 9
    # the abandoned booking's key is free again, the queued one's is not
    again = await admission.admit([AdmitItem(b) for b in bookings(event, 2, start=10)])
    assert again == [AdmitResult(), AdmitResult()]
    repeat_queued = Booking(id="bkg_r", event_id=event.id, user_id="u0", quantity=1, idempotency_key="k0")
    assert await admission.admit([AdmitItem(repeat_queued)]) == [AdmitResult(repeat_of=queued.id,
                                                                              repeat_fingerprint="fp")]


async def test_withdraw_is_unconditional(admission: InProcessAdmission, event: Event) -> None:
    (b,) = bookings(event, 1)
    await admission.admit([AdmitItem(b)])
    await admission.mark_queued([b])
    await admission.withdraw([b])
    assert not admission.inventory.has_reservation(b.id)
    assert admission.inventory.stock(event.id).remaining == 10


async def test_invalidate_rebuilds_from_the_store_at_the_next_call(admission: InProcessAdmission,
                                                                   store: SqliteStore, event: Event) -> None:
    in_store, edge_only = bookings(event, 2)
    await store.insert_pending([in_store])
    await admission.admit([AdmitItem(in_store), AdmitItem(edge_only)])
    assert admission.inventory.stock(event.id).remaining == 8
    await admission.invalidate()
    assert admission.inventory.stock(event.id).remaining == 8  # nothing happens before the next call
    # the edge-only admission is forgotten with the state: its key is free again
    (result,) = await admission.admit([AdmitItem(Booking(id="bkg_x", event_id=event.id, user_id="x", quantity=1,
                                                         idempotency_key="k1"))])
    assert result == AdmitResult()
    stock = admission.inventory.stock(event.id)
    assert stock.remaining == 10 - 1 - 1 and stock.per_user == {"u0": 1, "x": 1}
    assert admission.inventory.has_reservation(in_store.id) and not admission.inventory.has_reservation(edge_only.id)
    # what the store has pending is in the embedded queue: abandon leaves it alone
    await admission.abandon([in_store])
    assert admission.inventory.has_reservation(in_store.id)


async def test_invalidate_without_a_store_keeps_the_state() -> None:
    admission = InProcessAdmission()
    await admission.add_event("evt_1", 5, 4)
    await admission.invalidate()
    assert await admission.admit([AdmitItem(Booking(id="b1", event_id="evt_1", user_id="u", quantity=1))]) == [
        AdmitResult()]
    assert admission.inventory.stock("evt_1").remaining == 4


async def test_the_embedded_edge_keeps_no_pending_records(admission: InProcessAdmission, event: Event) -> None:
    """Its queue stores bookings before answering, and a crashed intake takes its admissions along."""
    (b,) = bookings(event, 1)
    await admission.admit([AdmitItem(b)])
    assert await admission.pending(b.id) is None
    assert await admission.stale_admissions(time.time() + 3600, 10) == []
