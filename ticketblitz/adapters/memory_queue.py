"""The embedded booking queue: in-process, durable through the store.

A `pending` booking row is the queue entry: `enqueue` commits the rows before it returns, so a crash
after the `202` loses nothing, and `open` puts every booking still pending back in line. A failed
enqueue wrote nothing (`durable_in_store`). A dead letter was recorded `rejected` by the store first, so
setting it aside only drops it from the line.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

import trio

from ..domain.model import Booking
from ..ports import Store

log = logging.getLogger("ticketblitz.queue")


class InProcessQueue:
    """The BookingQueue port in this process: a line of bookings (`_ready`) and those being decided."""

    name = "in-process"
    durable_in_store = True  # enqueue is the store's own insert: a failed enqueue wrote nothing

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ready: deque[Booking] = deque()
        self._ready_ids: set[str] = set()
        self._in_flight: dict[str, Booking] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self.produced = 0
        self.consumed = 0
        self.requeued = 0
        self.dead_lettered = 0
        self._taken = 0
        self.produced_at: tuple[int | None, int | None] = (None, None)
        self.consumed_at: tuple[int | None, int | None] = (None, None)

    async def open(self) -> None:
        recovered = await self._store.pending_bookings(limit=10_000_000)
        if recovered:
            log.info("resuming %d pending bookings from the store", len(recovered))
        for booking in recovered:
            self._line_up(booking)
        self._lot.unpark_all()

    async def close(self) -> None:
        self._ready.clear()
        self._ready_ids.clear()
        self._in_flight.clear()

    async def ping(self) -> None:
        return None

    def depth(self) -> int:
        """Bookings in line or being decided."""
        return len(self._ready_ids) + len(self._in_flight)

    async def enqueue(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        results = await self._store.insert_pending(bookings)
        for booking, existing in zip(bookings, results, strict=True):
            if existing is None:
                self._line_up(booking)
                self.produced += 1
        if self.produced:
            self.produced_at = (None, self.produced - 1)
        self._lot.unpark_all()
        return results

    async def requeue(self, bookings: Sequence[Booking]) -> None:
        """Put accepted, undecided bookings back in line, unless already in line or being decided."""
        await trio.lowlevel.checkpoint()
        for booking in bookings:
            if booking.id not in self._ready_ids and booking.id not in self._in_flight:
                self._line_up(booking)
                self.requeued += 1
        self._lot.unpark_all()

    def _line_up(self, booking: Booking) -> None:
        if booking.id not in self._ready_ids:
            self._ready.append(booking)
            self._ready_ids.add(booking.id)

    async def take_batch(self, max_items: int) -> list[Booking]:
        """Up to `max_items` bookings from the head of the line (waits for one)."""
        while True:
            while not self._ready:
                await self._lot.park()
            batch: list[Booking] = []
            while self._ready and len(batch) < max_items:
                booking = self._ready.popleft()
                if booking.id not in self._ready_ids:  # set aside while in line, or an older entry of it
                    continue
                self._ready_ids.discard(booking.id)
                self._in_flight[booking.id] = booking
                batch.append(booking)
            if batch:
                self._taken += len(batch)
                self.consumed_at = (None, self._taken - 1)
                return batch

    async def ack(self, bookings: Sequence[Booking]) -> None:
        await trio.lowlevel.checkpoint()
        for booking in bookings:
            if self._in_flight.pop(booking.id, None) is not None:
                self.consumed += 1

    async def dead_letter(self, bookings: Sequence[Booking], reason: str) -> None:
        """Set aside bookings that failed every attempt: the store recorded them rejected already, so they
        leave the line (in flight or waiting) and are never delivered again."""
        await trio.lowlevel.checkpoint()
        for booking in bookings:
            taken = self._in_flight.pop(booking.id, None) is not None
            waiting = booking.id in self._ready_ids
            self._ready_ids.discard(booking.id)  # its entry in `_ready` is skipped by take_batch
            if taken or waiting:
                self.dead_lettered += 1
                log.error("booking %s dead-lettered: %s", booking.id, reason)

    async def retry(self, bookings: Sequence[Booking]) -> None:
        """Serve these bookings being decided again, first in line."""
        await trio.lowlevel.checkpoint()
        for booking in reversed(bookings):
            if self._in_flight.pop(booking.id, None) is not None:
                self._ready.appendleft(booking)
                self._ready_ids.add(booking.id)
        self._lot.unpark_all()
