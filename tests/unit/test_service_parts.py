"""The service's parts on the embedded adapters, without a port or HTTP (cosmicpython style): intake
batcher, decider, hold sweeper, edge follow-ups, long-poll waiters, seat-map cache.

Faults are injected by wrapping a real adapter (`Flaky`): the wrapper decides when a call fails, and
whether it fails before or after the real call ran (a lost reply)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from ticketblitz.config import Settings
from ticketblitz.domain.errors import IdempotencyConflict, NotFound, RateLimited, Unauthorized, Unavailable
from ticketblitz.domain.model import Booking, BookingRequest, BookingStatus, Event, Section, new_booking_id
from ticketblitz.domain.ownership import holds
from ticketblitz.domain.rules import request_fingerprint
from ticketblitz.server import build_service
from ticketblitz.service import BookingService
from ticketblitz.service.waiters import Waiters

ADMIN = "unit-admin-token"


class Flaky:
    """A real adapter whose named methods fail while `failing` holds them: `before` (nothing happened)
    or `after` (the real call ran, its answer was lost)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failing: dict[str, str] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            mode = self.failing.get(name)
            if mode == "before":
                raise Unavailable(f"injected: {name} refused", component="lock")
            result = await attr(*args, **kwargs)
            if mode == "after":
                raise Unavailable(f"injected: {name} answer lost", component="lock")
            return result

        return call if name not in {"depth", "name", "durable_in_store"} else attr


@dataclass
class Parts:
    service: BookingService
    event: Event
    admission: Flaky
    queue: Flaky
    store: Flaky

    def request(self, user: str, *, quantity: int = 1, seats: tuple[str, ...] = (), key: str | None = None,
                ) -> BookingRequest:
        return BookingRequest(event_id=self.event.id, user_id=user, quantity=len(seats) or quantity, seat_ids=seats,
                              idempotency_key=key, fingerprint=request_fingerprint(user, seats, None if seats
                                                                                    else quantity))


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = dict(port=0, data_dir=str(tmp_path / "data"), admin_token=ADMIN, sweep_interval=0.05,
                                shutdown_grace=1.0, store_timeout=2.0, lock_timeout=0.5)
    base.update(changes)
    return Settings(**base)


async def open_parts(tmp_path: Path, *, run: bool = True, nursery: trio.Nursery | None = None,
                     **changes: Any) -> Parts:
    settings = settings_for(tmp_path, **changes)
    plain = build_service(settings)
    store, queue, admission = Flaky(plain.store), Flaky(plain.queue), Flaky(plain.admission)
    service = BookingService(settings, store, queue, plain.locks, admission, clock=time.time)  # type: ignore[arg-type]
    await service.open()
    event = await service.create_event(Event(id="evt_unit", name="Unit night", sections=(Section("A", 4, 5),),
                                             max_per_user=4, hold_seconds=60, created_at=time.time()))
    if run and nursery is not None:
        await nursery.start(service.run)
    return Parts(service, event, admission, queue, store)


@pytest.fixture
async def parts(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Parts]:
    p = await open_parts(tmp_path, nursery=nursery)
    yield p
    await p.service.close()


async def decided(service: BookingService, booking_id: str) -> Booking:
    booking = await service.booking(booking_id, ADMIN, wait=10)
    assert booking.status is not BookingStatus.PENDING, booking
    return booking


async def until(condition: Callable[[], Any], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not await condition():  # noqa: ASYNC110 - polling a condition of the real adapters
            await trio.sleep(0.02)


# ---------------------------------------------------------------------- intake batcher
async def test_intake_line_is_bounded_429_at_once(tmp_path: Path) -> None:
    p = await open_parts(tmp_path, run=False, intake_limit=2)  # nobody takes from the line
    try:
        results: list[Any] = []

        async def submit(i: int) -> None:
            try:
                results.append(await p.service.request_booking(p.request(f"u{i}")))
            except RateLimited as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(submit, i)
            with trio.fail_after(5):
                while not results:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert len(results) == 1 and isinstance(results[0], RateLimited) and results[0].retry_after == 1
    finally:
        await p.service.close()


async def test_lost_admit_reply_is_abandoned_and_the_retry_books(parts: Parts) -> None:
    parts.admission.failing["admit"] = "after"  # the reservation was made, the answer lost
    with pytest.raises(Unavailable):
        await parts.service.request_booking(parts.request("u1", seats=("A-1-1",), key="k1"))
    parts.admission.failing.clear()
    assert parts.admission.calls["abandon"] >= 1
    # nothing stayed reserved: the same seat and key book at once, a fresh booking (202)
    accepted = await parts.service.request_booking(parts.request("u1", seats=("A-1-1",), key="k1"))
    assert accepted.created and accepted.secret is not None
    assert (await decided(parts.service, accepted.booking.id)).status is BookingStatus.HELD


async def test_abandon_that_fails_is_retried_until_it_lands(parts: Parts) -> None:
    parts.admission.failing.update({"admit": "after", "abandon": "before"})
    with pytest.raises(Unavailable):
        await parts.service.request_booking(parts.request("u1", seats=("A-2-2",)))
    assert parts.service.followups.pending() == 1
    parts.admission.failing.clear()
    await until(lambda: _true(parts.service.followups.pending() == 0))
    accepted = await parts.service.request_booking(parts.request("u2", seats=("A-2-2",)))
    assert (await decided(parts.service, accepted.booking.id)).status is BookingStatus.HELD


async def _true(value: bool) -> bool:
    return value


async def test_failed_enqueue_trips_the_breaker_and_leaves_nothing(parts: Parts) -> None:
    parts.queue.failing["enqueue"] = "before"
    with pytest.raises(Unavailable):
        await parts.service.request_booking(parts.request("u1", quantity=2))
    calls = parts.queue.calls["enqueue"]
    with trio.fail_after(0.5), pytest.raises(Unavailable):  # at once, without another enqueue
        await parts.service.request_booking(parts.request("u2", quantity=2))
    assert parts.queue.calls["enqueue"] == calls
    parts.queue.failing.clear()
    await trio.sleep(1.1)  # the breaker closes
    accepted = await parts.service.request_booking(parts.request("u3", quantity=4))
    assert accepted.created
    event = await parts.service.event(parts.event.id)
    assert event.counts is not None
    assert (await decided(parts.service, accepted.booking.id)).status is BookingStatus.HELD  # stock was all there


async def test_repeat_gets_the_same_booking_and_secret_or_a_conflict(parts: Parts) -> None:
    first = await parts.service.request_booking(parts.request("u1", quantity=2, key="order-1"))
    again = await parts.service.request_booking(parts.request("u1", quantity=2, key="order-1"))
    assert (again.booking.id, again.created, again.secret) == (first.booking.id, False, first.secret)
    assert first.secret is not None and holds(first.booking.secret_hash, first.secret)
    with pytest.raises(IdempotencyConflict):
        await parts.service.request_booking(parts.request("u1", quantity=1, key="order-1"))


async def test_a_pending_repeat_is_put_back_in_line(tmp_path: Path) -> None:
    """A repeat that finds its booking pending makes sure a consumer will see it (embedded: requeue)."""
    p = await open_parts(tmp_path, run=False, consumers=0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.service.intake.run)
            first = await p.service.request_booking(p.request("u1", key="k"))
            again = await p.service.request_booking(p.request("u1", key="k"))
            assert again.booking.id == first.booking.id and not again.created
            assert p.queue.calls.get("requeue", 0) >= 1
            assert p.service.queue.depth() == 1  # in line once, not twice
            nursery.cancel_scope.cancel()
    finally:
        await p.service.close()


# ---------------------------------------------------------------------- decider
async def test_poison_is_recorded_rejected_and_the_queue_drains(parts: Parts) -> None:
    real_decide = parts.store._inner.decide

    async def decide(bookings: Any, *args: Any, **kwargs: Any) -> Any:
        if any(b.user_id == "victim" for b in bookings):
            raise RuntimeError("this booking breaks the decider")
        return await real_decide(bookings, *args, **kwargs)

    parts.store._inner.decide = decide  # type: ignore[method-assign]
    poison = await parts.service.request_booking(parts.request("victim", quantity=1))
    good = await parts.service.request_booking(parts.request("fan", quantity=1))
    assert (await decided(parts.service, good.booking.id)).status is BookingStatus.HELD  # not held up
    final = await decided(parts.service, poison.booking.id)
    assert (final.status, final.reason, final.seat_ids) == (BookingStatus.REJECTED, "processing_failed", ())
    assert parts.service.telemetry.queue["dead_lettered"] == 1
    await until(lambda: _true(parts.service.queue.depth() == 0))  # a drain does not wait for it
    assert parts.service.decider.tracked_failures() == 0
    # its reservation was given back: the four seats it did not get are all there for others
    again = await parts.service.request_booking(parts.request("other", quantity=4))
    assert (await decided(parts.service, again.booking.id)).status is BookingStatus.HELD


async def test_settle_failure_leaves_the_batch_queued_until_it_lands(parts: Parts) -> None:
    parts.admission.failing["settle"] = "before"
    accepted = await parts.service.request_booking(parts.request("u1", quantity=1))
    await until(lambda: _true(parts.admission.calls.get("settle", 0) >= 2))  # retried
    assert parts.service.queue.depth() == 1  # not acked while the edge was not told
    parts.admission.failing.clear()
    await until(lambda: _true(parts.service.queue.depth() == 0))
    assert (await decided(parts.service, accepted.booking.id)).status is BookingStatus.HELD


# ---------------------------------------------------------------------- sweeper and follow-ups
async def test_cancel_releases_at_the_edge_even_when_the_caller_goes_away(parts: Parts) -> None:
    accepted = await parts.service.request_booking(parts.request("u1", quantity=4))
    booking = await decided(parts.service, accepted.booking.id)
    real_cancel = parts.store._inner.cancel

    async def slow_cancel(*args: Any, **kwargs: Any) -> Any:
        result = await real_cancel(*args, **kwargs)
        await trio.sleep(0.2)  # the client hangs up while the commit's follow-up is due
        return result

    parts.store._inner.cancel = slow_cancel  # type: ignore[method-assign]
    with trio.move_on_after(0.1):
        await parts.service.cancel(booking.id, accepted.secret)
    assert (await parts.service.booking(booking.id, ADMIN)).status is BookingStatus.CANCELLED
    # the edge got the seats back: four more can be booked by someone else at once
    again = await parts.service.request_booking(parts.request("u2", quantity=4))
    assert (await decided(parts.service, again.booking.id)).status is BookingStatus.HELD


async def test_failed_edge_release_is_kept_in_the_outbox_and_lands_later(parts: Parts) -> None:
    accepted = await parts.service.request_booking(parts.request("u1", quantity=4))
    booking = await decided(parts.service, accepted.booking.id)
    parts.admission.failing["release"] = "before"
    await parts.service.cancel(booking.id, accepted.secret)
    assert [b.id for b in await parts.service.store.edge_due(time.time() + 10, 10)] == [booking.id]
    with pytest.raises(Unavailable):  # the edge still counts the seats as taken: sold out at the edge
        parts.admission.failing["admit"] = "before"
        await parts.service.request_booking(parts.request("u2", quantity=4))
    parts.admission.failing.clear()
    await until(lambda: _outbox_empty(parts))
    again = await parts.service.request_booking(parts.request("u2", quantity=4))
    assert (await decided(parts.service, again.booking.id)).status is BookingStatus.HELD


async def _outbox_empty(parts: Parts) -> bool:
    return not await parts.service.store.edge_due(time.time() + 10, 10)


async def test_expired_holds_come_back_at_the_edge(tmp_path: Path, nursery: trio.Nursery) -> None:
    p = await open_parts(tmp_path, nursery=nursery)
    try:
        accepted = await p.service.request_booking(p.request("u1", quantity=4))
        booking = await decided(p.service, accepted.booking.id)
        assert booking.expires_at is not None
        p.service.sweeper.clock = lambda: booking.expires_at + 1  # type: ignore[operator]
        await until(lambda: _expired(p.service, booking.id))
        assert p.service.telemetry.holds_expired == 1
        await until(lambda: _outbox_empty(p))
    finally:
        await p.service.close()


async def _expired(service: BookingService, booking_id: str) -> bool:
    return (await service.booking(booking_id, ADMIN)).status is BookingStatus.EXPIRED


# ---------------------------------------------------------------------- reads
async def test_reads_need_the_secret(parts: Parts) -> None:
    accepted = await parts.service.request_booking(parts.request("u1"))
    with pytest.raises(Unauthorized):
        await parts.service.booking(accepted.booking.id, None)
    with pytest.raises(Unauthorized):
        await parts.service.booking(accepted.booking.id, "")
    with pytest.raises(NotFound):
        await parts.service.booking(accepted.booking.id, "not-the-secret")
    with pytest.raises(NotFound):
        await parts.service.booking(new_booking_id(), ADMIN)
    assert (await parts.service.booking(accepted.booking.id, accepted.secret)).id == accepted.booking.id


async def test_waiters_leave_nothing_behind() -> None:
    waiters = Waiters(limit=2)
    async with waiters.slot(5):
        with waiters.watch("b1") as event, trio.move_on_after(0.01):
            await event.wait()
    assert len(waiters) == 0 and waiters.active == 0
    async with waiters.slot(5), waiters.slot(5):
        with pytest.raises(RateLimited):
            async with waiters.slot(5):
                pass
    with waiters.watch("b2") as event:
        waiters.notify("b2")
        assert event.is_set()
    assert len(waiters) == 0


async def test_a_stopping_server_ends_every_long_poll_at_once() -> None:
    waiters = Waiters(limit=10)
    ended: list[float] = []

    async def poll() -> None:
        async with waiters.slot(30) as waiting:
            with waiting:
                await trio.sleep_forever()
            ended.append(trio.current_time())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(poll)
            await trio.sleep(0.1)
            waiters.close()
        async with waiters.slot(30) as late:  # a long-poll arriving while the server stops: at once
            with late:
                await trio.sleep_forever()
    assert len(ended) == 3 and waiters.active == 0


async def test_seat_maps_share_one_build_and_follow_changes(parts: Parts) -> None:
    service = parts.service
    before = service.seat_maps.builds
    documents: list[bytes] = []

    async def read() -> None:
        documents.append(await service.seat_map(parts.event.id))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(read)
    assert service.seat_maps.builds - before == 1 and len(set(documents)) == 1
    accepted = await service.request_booking(parts.request("u1", seats=("A-1-1",)))
    await decided(service, accepted.booking.id)
    document = await service.seat_map(parts.event.id)
    assert b'"id":"A-1-1","section":"A","row":1,"number":1,"status":"held"' in document
    with pytest.raises(NotFound):
        await service.seat_map("evt_nope")


async def test_a_crowd_meeting_an_event_made_elsewhere_costs_one_store_read(tmp_path: Path) -> None:
    """An event another process created is read once by this one, however many fans ask at once; the
    edge learns it once; an unknown event is a 404 for every one of them."""
    parts = await open_parts(tmp_path, run=False)
    catalog = parts.service.catalog
    catalog._events.clear()  # this process has not seen the event yet (it was made by another one)
    reads, edges = parts.store.calls.get("get_event", 0), parts.admission.calls.get("add_event", 0)
    seen: list[str] = []
    missing: list[str] = []

    async def fan() -> None:
        seen.append((await catalog.known(parts.event.id)).id)

    async def stranger() -> None:
        try:
            await catalog.known("evt_nope")
        except NotFound as exc:
            missing.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(fan)
            nursery.start_soon(stranger)
    assert seen == [parts.event.id] * 50 and len(missing) == 50
    assert parts.store.calls["get_event"] - reads == 2  # one for the event, one for the unknown id
    assert parts.admission.calls["add_event"] - edges == 1
    await parts.service.close()
