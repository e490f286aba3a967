"""The embedded booking queue: in-process, durable through the store.

A `pending` booking row is the queue entry: `enqueue` commits the rows before it returns, so a crash
after the `202` loses nothing, and `open` puts every booking still pending back in line.
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
    name = "in-process"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ready: deque[Booking] = deque()
        self._in_flight: dict[str, Booking] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self.produced = 0
        self.consumed = 0

    async def open(self) -> None:
        recovered = await self._store.pending_bookings(limit=10_000_000)
        if recovered:
            log.info("resuming %d pending bookings from the store", len(recovered))
        self._ready.extend(recovered)
        self._lot.unpark_all()

    async def close(self) -> None:
        self._ready.clear()
        self._in_flight.clear()

    async def ping(self) -> None:
        return None

    def depth(self) -> int:
        return len(self._ready) + len(self._in_flight)

    async def enqueue(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        results = await self._store.insert_pending(bookings)
        for booking, existing in zip(bookings, results, strict=True):
            if existing is None:
                self._ready.append(booking)
                self.produced += 1
        self._lot.unpark_all()
        return results

    async def take_batch(self, max_items: int) -> list[Booking]:
        while not self._ready:
            await self._lot.park()
        batch: list[Booking] = []
        while self._ready and len(batch) < max_items:
            booking = self._ready.popleft()
            self._in_flight[booking.id] = booking
            batch.append(booking)
        return batch

    async def ack(self, bookings: Sequence[Booking]) -> None:
        for booking in bookings:
            if self._in_flight.pop(booking.id, None) is not None:
                self.consumed += 1

    async def dead_letter(self, bookings: Sequence[Booking], reason: str) -> None:
        """Park them: they stay pending in the store (so in `depth`) and are tried again after a restart."""
        for booking in bookings:
            log.error("booking %s set aside after repeated failures: %s", booking.id, reason)

    async def retry(self, bookings: Sequence[Booking]) -> None:
        for booking in reversed(bookings):
            if self._in_flight.pop(booking.id, None) is not None:
                self._ready.appendleft(booking)
        self._lot.unpark_all()
