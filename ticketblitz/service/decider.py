"""The decider: consumer tasks that take batches from the booking queue, lock the named seats, decide the
batch in one store transaction, settle the edge, ack the queue, unlock, publish and wake long-polls.

Order matters: the edge is settled before the queue is acked, so a settle that fails (Redis away) leaves
the batch queued and it is redelivered (deciding is idempotent: the store returns what it decided, and
the settle is tried again) instead of leaving the edge counting reserved seats forever. A booking that
fails with an unexpected error `POISON_ATTEMPTS` times (never a backend outage) is recorded rejected
with reason `processing_failed` in the store and set aside; the others are not held up.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import trio

from ..config import Settings
from ..domain.errors import Unavailable
from ..domain.model import Booking, BookingStatus
from ..ports import Admission, BookingQueue, SeatLease, SeatLocks, Store
from ..telemetry import Telemetry
from .bookingreads import BookingAnswers
from .followups import EdgeFollowUps
from .seatmaps import SeatMaps
from .waiters import Waiters

log = logging.getLogger("ticketblitz.decider")

POISON_ATTEMPTS = 3
POISON_REASON = "processing_failed"
MAX_TRACKED_FAILURES = 10_000  # bookings with failed attempts remembered (the oldest are forgotten)
RETRY_PAUSE = 0.2  # seconds a consumer waits after a backend refused a batch


class Decider:
    def __init__(self, settings: Settings, store: Store, queue: BookingQueue, locks: SeatLocks,
                 admission: Admission, followups: EdgeFollowUps, waiters: Waiters, seat_maps: SeatMaps,
                 telemetry: Telemetry, clock: Callable[[], float],
                 booking_answers: BookingAnswers | None = None) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.locks = locks
        self.admission = admission
        self.followups = followups
        self.waiters = waiters
        self.seat_maps = seat_maps
        self.booking_answers = (booking_answers if booking_answers is not None
                                else BookingAnswers(settings.seat_map_max_age))
        self.telemetry = telemetry
        self.clock = clock
        self._failures: OrderedDict[str, int] = OrderedDict()  # booking id -> unexpected failures so far

    def tracked_failures(self) -> int:
        return len(self._failures)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """`settings.consumers` consumer tasks for the serving lifetime."""
        async with trio.open_nursery() as nursery:
            for i in range(self.settings.consumers):
                nursery.start_soon(self._consume, f"consumer-{i}", name=f"consumer-{i}")
            task_status.started()

    async def _consume(self, consumer: str) -> None:
        while True:
            batch = await self.queue.take_batch(self.settings.consumer_batch)
            partition, offset = self.queue.consumed_at
            self.telemetry.queued("consumed", len(batch), partition, offset, consumer=consumer)
            try:
                await self.decide_batch(batch, consumer)
            except Unavailable as exc:  # a backend outage is never the bookings' fault
                log.warning("%s: a batch of %d waits for the backends: %s", consumer, len(batch), exc.detail)
                await self.queue.retry(batch)
                await trio.sleep(RETRY_PAUSE)
            except Exception:
                log.exception("%s failed on a batch of %d; deciding them one by one", consumer, len(batch))
                await self._find_poison(batch, consumer)

    # ------------------------------------------------------------------ one batch
    async def decide_batch(self, batch: Sequence[Booking], consumer: str = "consumer") -> None:
        """Lock named seats, decide the batch in one store transaction, settle, ack, unlock, publish."""
        leases: dict[tuple[str, str], SeatLease] = {}
        later: list[Booking] = []
        try:
            try:
                await self._lock_batch(batch, consumer, leases)
            except Unavailable as exc:
                log.warning("seat locks unavailable, retrying a batch of %d: %s", len(batch), exc.detail)
                await self.queue.retry(batch)
                await trio.sleep(RETRY_PAUSE)
                return
            ready = [b for b in batch if all((b.event_id, s) in leases for s in b.requested_seats)]
            later = [b for b in batch if not all((b.event_id, s) in leases for s in b.requested_seats)]
            if ready:
                await self._decide(ready, leases, later)
        finally:
            if leases:
                await self._unlock(list(leases.values()))
        if later:
            await self.queue.retry(later)

    async def _decide(self, ready: list[Booking], leases: dict[tuple[str, str], SeatLease],
                      later: list[Booking]) -> None:
        fences = {key: lease.fence for key, lease in leases.items()}
        try:
            # insert: a booking from Kafka is not in the store yet (embedded: it is, and stays as it is)
            decided = await self.store.decide(ready, self.clock(), insert=True, fences=fences)
        except Unavailable as exc:
            log.warning("store refused a batch of %d, retrying: %s", len(ready), exc.detail)
            await self.queue.retry(ready)
            await trio.sleep(RETRY_PAUSE)
            return
        for event_id in {d.event_id for d in decided if d.status is BookingStatus.HELD}:
            self.seat_maps.changed(event_id)  # at once: a reader may learn of the decision from the store
        stale = {d.id for d in decided if d.status is BookingStatus.PENDING}
        # left pending: our leases were older than a seat's last write (fencing: count above it), or the
        # seats a best-available booking could get were still being claimed elsewhere; retry them
        if stale:
            fenced = [b for b in ready if b.id in stale]
            later.extend(fenced)
            for b in fenced:
                if b.requested_seats:  # (best available: seats another transaction held past the wait)
                    fence = max(fences.get((b.event_id, s), 0) for s in b.requested_seats)
                    self.telemetry.lock("fenced", b.event_id, b.requested_seats, "store", fence)
                self.telemetry.stored("conflict", "hold", b.event_id, [b.id])
            pairs = [(a, d) for a, d in zip(ready, decided, strict=True) if d.id not in stale]
            ready, decided = [a for a, _ in pairs], [d for _, d in pairs]
            if any(b.requested_seats for b in fenced):
                try:
                    await self.locks.raise_fence(await self.store.fence_floor())
                except Unavailable as exc:
                    log.warning("could not raise the fencing counter (retried with the batch): %s", exc.detail)
        if not ready:
            return
        # The commit happened: its follow-ups (edge settle, then queue ack) run together, shielded and
        # bounded; a settle that fails leaves the batch queued (redelivered and settled again).
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.lock_timeout + 2.0) as scope:
            settled = await self._settle(ready, decided)
            if settled:
                await self.queue.ack(ready)
        if scope.cancelled_caught or not settled:
            await self.queue.retry(ready)

    async def _settle(self, asked: Sequence[Booking], decided: Sequence[Booking]) -> bool:
        """Settle the edge for what the store decided; publish and wake long-polls. False when the edge
        could not be told (the batch is then redelivered)."""
        lost_key = [a for a, d in zip(asked, decided, strict=True) if a.id != d.id]
        mine = [d for a, d in zip(asked, decided, strict=True) if a.id == d.id]
        self.booking_answers.changed([*(a.id for a in asked), *(d.id for d in decided)])
        try:
            if lost_key:  # their Idempotency-Key belonged to an earlier booking: nothing of theirs was stored
                await self.admission.withdraw(lost_key)
            firsts = await self.admission.settle(mine)
        except Unavailable as exc:
            log.warning("edge settle failed for %d decided bookings (redelivered): %s", len(mine), exc.detail)
            return False
        outcomes: dict[tuple[str, str, str], list[str]] = {}
        for b, first in zip(mine, firsts, strict=True):
            self._failures.pop(b.id, None)
            self.waiters.notify(b.id)
            if not first:
                continue  # decided and settled before (a redelivery)
            outcomes.setdefault((*store_outcome(b), b.event_id), []).append(b.id)
            self.telemetry.booking(b)
            if b.status is BookingStatus.HELD:
                self.telemetry.seats(b.event_id, b.seat_ids, "held")
        for (action, op, event_id), ids in outcomes.items():
            self.telemetry.stored(action, op, event_id, ids)
        return True

    # ------------------------------------------------------------------ poison
    async def _find_poison(self, batch: Sequence[Booking], consumer: str) -> None:
        """After an unexpected failure: decide the batch one by one. A booking that fails unexpectedly
        `POISON_ATTEMPTS` times is dead-lettered; the others are decided or stay queued."""
        for booking in batch:
            try:
                await self.decide_batch([booking], consumer)
            except Unavailable as exc:
                log.warning("%s: booking %s waits for the backends: %s", consumer, booking.id, exc.detail)
                await self.queue.retry([booking])
                await trio.sleep(RETRY_PAUSE)
            except Exception as exc:
                attempts = self._failures.pop(booking.id, 0) + 1
                if attempts >= POISON_ATTEMPTS:
                    await self._dead_letter(booking, f"{type(exc).__name__}: {exc}")
                    continue
                self._failures[booking.id] = attempts
                while len(self._failures) > MAX_TRACKED_FAILURES:
                    self._failures.popitem(last=False)
                await self.queue.retry([booking])
                await trio.sleep(0.5 * attempts)

    async def _dead_letter(self, booking: Booking, why: str) -> None:
        """Record the booking rejected (`processing_failed`) in the store, settle the edge, set it aside.
        If the store cannot record it now, it stays queued and is tried again: never dropped."""
        try:
            with trio.CancelScope(shield=True):
                if await self.store.get_event(booking.event_id) is None:
                    # a message for no event at all (a broken producer): nobody was ever answered 202
                    # for it, and the store has nowhere to keep it; only the dead-letter topic does
                    log.error("booking %s names no event; dead-lettered: %s", booking.id, why)
                    await self.followups.settle([booking])
                    await self.queue.dead_letter([booking], why)
                    self.telemetry.queued("dead_lettered", 1, booking_id=booking.id)
                    return
                ((stored, changed),) = await self.store.reject([booking], POISON_REASON, self.clock(), insert=True)
                self.booking_answers.changed(booking.id)
                if changed:
                    self.telemetry.stored("commit", "reject", booking.event_id, [booking.id])
        except Exception as exc:
            log.error("could not record poison booking %s as rejected, keeping it queued: %s", booking.id, exc)
            await self.queue.retry([booking])
            await trio.sleep(RETRY_PAUSE)
            return
        log.error("booking %s dead-lettered after %d failures: %s", booking.id, POISON_ATTEMPTS, why)
        await self.followups.settle([stored])
        await self.queue.dead_letter([booking], why)
        self.telemetry.queued("dead_lettered", 1, booking_id=booking.id)
        if changed:
            self.telemetry.booking(stored)
        self.waiters.notify(booking.id)

    # ------------------------------------------------------------------ seat locks
    async def _lock_batch(self, batch: Sequence[Booking], owner: str,
                          leases: dict[tuple[str, str], SeatLease]) -> None:
        """Lock every seat named in the batch once (bookings of one batch share a seat's lock), retrying
        contended seats for up to lock_timeout; what stays contended is left out of `leases`."""
        wanted: dict[str, set[str]] = {}
        for b in batch:
            if b.requested_seats:
                wanted.setdefault(b.event_id, set()).update(b.requested_seats)
        if not wanted:
            return
        deadline = trio.current_time() + self.settings.lock_timeout
        while True:
            contended = 0
            for event_id, seats in wanted.items():
                missing = sorted(s for s in seats if (event_id, s) not in leases)
                if not missing:
                    continue
                self.telemetry.lock("attempt", event_id, missing, owner)
                try:
                    with trio.fail_after(self.settings.lock_timeout):
                        got = await self.locks.acquire_each(event_id, missing, owner, self.settings.lock_ttl_ms)
                except trio.TooSlowError:
                    raise Unavailable("the lock service did not answer in time", component="lock") from None
                for seat, lease in got.items():
                    leases[(event_id, seat)] = lease
                if got:
                    self.telemetry.lock("acquired", event_id, sorted(got), owner, next(iter(got.values())).fence)
                if len(got) < len(missing):
                    contended += len(missing) - len(got)
                    self.telemetry.lock("contended", event_id, [s for s in missing if s not in got], owner)
            if not contended or trio.current_time() >= deadline:
                return
            await trio.sleep(0.01)

    async def _unlock(self, leases: list[SeatLease]) -> None:
        await unlock(self.locks, leases, self.settings.lock_timeout, self.telemetry)


async def unlock(locks: SeatLocks, leases: list[SeatLease], deadline: float, telemetry: Telemetry) -> None:
    """Release leases in one round trip. Shielded so that a shutdown still unlocks; the deadline inside
    bounds a stuck lock service (the leases then lapse by their TTL)."""
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(deadline) as scope:
            await locks.release_many(leases)
        failed = scope.cancelled_caught
    except Unavailable:
        failed = True
    action = "expired" if failed else "released"  # (a lease not released lapses by its TTL)
    by_event: dict[str, tuple[list[str], int]] = {}
    for lease in leases:
        seats, fence = by_event.get(lease.event_id, ([], lease.fence))
        seats.extend(lease.seats)
        by_event[lease.event_id] = (seats, max(fence, lease.fence))
    for event_id, (seats, fence) in by_event.items():
        telemetry.lock(action, event_id, seats, leases[0].owner, fence)


def store_outcome(decided: Booking) -> tuple[str, str]:
    """(action, op) of the store write that decided a booking: a hold committed, a rejection committed,
    or a conflict (a named seat was taken: the store refused the hold)."""
    if decided.status is BookingStatus.HELD:
        return "commit", "hold"
    if decided.reason == "seat_unavailable":
        return "conflict", "hold"
    return "commit", "reject"
