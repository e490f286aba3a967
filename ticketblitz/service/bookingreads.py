"""Booking reads from memory: one kept answer per booking (its JSON bytes as `GET /api/bookings/{id}`
answers them, and its secret's hash for the credential check), bounded (least recently used first out).

- filled on read (from the store), dropped on every status change made in this process (confirm, cancel,
  expiry, a decision) so that the next read here re-reads the store;
- at most `max_age` seconds old (`seat_map_max_age`, one tick) for changes made by other processes: an
  older entry is read again;
- a `pending` booking is never kept (a decision by another process's consumer shows at the next read);
- a read that was in flight while a change happened here does not keep what it read (it may predate the
  change): the change counter must be the same before and after the store read;
- concurrent reads of one booking that is not kept share one store read (a crowd refreshing one booking
  costs one read per tick, not one per request, and not a burst of worker threads when an entry ages
  out); a local change of the booking starts a fresh one for the reads after it.

The credential check stays the caller's (the facade's), exactly as for a store read."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson
import trio

from ..domain.model import Booking, BookingStatus
from ..representation import booking_json
from .flights import SingleFlight

MAX_ENTRIES = 100_000  # ~0.5 KB each


@dataclass(frozen=True, slots=True)
class KeptBooking:
    body: bytes  # the answer's bytes: orjson.dumps(booking_json(booking))
    secret_hash: str | None
    kept_at: float


def answer_of(booking: Booking, kept_at: float) -> KeptBooking:
    return KeptBooking(orjson.dumps(booking_json(booking)), booking.secret_hash, kept_at)


class BookingAnswers:
    def __init__(self, max_age: float, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._clock = clock
        self._kept: OrderedDict[str, KeptBooking] = OrderedDict()
        self._reading: SingleFlight[KeptBooking | None] = SingleFlight()
        self.changes = 0  # local changes seen (a read started before one does not keep what it read)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, booking_id: str) -> KeptBooking | None:
        """The kept answer when younger than max_age (an older one is dropped), else None."""
        kept = self._kept.get(booking_id)
        if kept is None:
            self.misses += 1
            return None
        if self._clock() - kept.kept_at >= self._max_age:
            del self._kept[booking_id]
            self.misses += 1
            return None
        self._kept.move_to_end(booking_id)
        self.hits += 1
        return kept

    async def read(self, booking_id: str, load: Callable[[str], Awaitable[Booking | None]]) -> KeptBooking | None:
        """The kept answer, else `load`'s (the store's; None: no such booking), one load shared by the
        concurrent reads of one booking."""
        kept = self.get(booking_id)
        if kept is not None:
            return kept
        changes = self.changes

        async def load_and_keep() -> KeptBooking | None:
            booking = await load(booking_id)
            return self.keep(booking, changes) if booking is not None else None

        return await self._reading.run(booking_id, load_and_keep)

    def keep(self, booking: Booking, changes: int | None = None) -> KeptBooking:
        """The answer of a booking just read from the store, kept unless it is pending or a local change
        happened since `changes` (the counter's value before the read)."""
        kept = answer_of(booking, self._clock())
        if booking.status is BookingStatus.PENDING or (changes is not None and changes != self.changes):
            return kept
        self._kept[booking.id] = kept
        self._kept.move_to_end(booking.id)
        while len(self._kept) > self._max_entries:
            self._kept.popitem(last=False)
        return kept

    def changed(self, booking_ids: str | Iterable[str]) -> None:
        """Bookings changed in this process (an id or an iterable of ids): their kept answers are dropped."""
        self.changes += 1
        for booking_id in (booking_ids,) if isinstance(booking_ids, str) else booking_ids:
            self._kept.pop(booking_id, None)
            self._reading.forget(booking_id)  # a read in flight may predate the change: not shared on
