"""Embedded edge admission: the domain's EdgeInventory in this process, plus the Idempotency-Keys."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..domain.inventory import EdgeInventory
from ..domain.model import Booking, BookingStatus
from ..ports import AdmitItem, AdmitResult, EdgeSnapshot, PendingRecord, Store


def inventory_from(snapshot: EdgeSnapshot) -> EdgeInventory:
    """Edge admission as the store's snapshot says it must start (both adapters start from this)."""
    inventory = EdgeInventory()
    for event_id, available, max_per_user in snapshot.events:
        inventory.add_event(event_id, available=available, max_per_user=max_per_user)
    for event_id, user_id, seat, booking_id in snapshot.owned:
        inventory.restore(booking_id, event_id, user_id, (seat,))
    for b in snapshot.pending:
        inventory.restore_pending(b.id, b.event_id, b.user_id, b.quantity, b.requested_seats)
    return inventory


class InProcessAdmission:
    """The Admission port in this process: an EdgeInventory plus the Idempotency-Keys, rebuilt from the
    store by `ensure` and, after `invalidate`, by the next call. Same answers as `RedisAdmission`."""

    name = "in-process"

    def __init__(self) -> None:
        self.inventory = EdgeInventory()
        self._keys: dict[tuple[str, str], tuple[str, str | None]] = {}  # (event, key) -> (booking, fingerprint)
        self._queued: set[str] = set()  # admitted bookings the queue acknowledged (`abandon` leaves them)
        self._store: Store | None = None  # kept from `ensure`: what a rebuild after `invalidate` reads
        self._built = False
        self._rebuilding = trio.Lock()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def ensure(self, store: Store) -> None:
        """Rebuild from `store.edge_snapshot()` unless built already; keep `store` for `invalidate`."""
        self._store = store
        await self._rebuild_if_invalid()

    async def invalidate(self) -> None:
        """Forget the edge state: the next call rebuilds it from the store given to `ensure` (none given:
        there is nothing to rebuild from, and the state stays as it is)."""
        await trio.lowlevel.checkpoint()
        self._built = False

    async def _rebuild_if_invalid(self) -> None:
        """Replace the whole state by the store's snapshot when it is not built (one rebuild at a time;
        the calls arriving meanwhile wait for it and then see the rebuilt state)."""
        if self._built or self._store is None:
            return
        async with self._rebuilding:
            if self._built:
                return
            snapshot = await self._store.edge_snapshot()
            self.inventory = inventory_from(snapshot)
            self._keys = {(event_id, key): (booking_id, fingerprint)
                          for event_id, key, booking_id, fingerprint in snapshot.keys}
            # what the store has pending is in the embedded queue: queued, never to be abandoned
            self._queued = {b.id for b in snapshot.pending}
            self._built = True

    async def add_event(self, event_id: str, available: int, max_per_user: int) -> None:
        await self._rebuild_if_invalid()
        if not self.inventory.knows(event_id):
            self.inventory.add_event(event_id, available=available, max_per_user=max_per_user)

    async def admit(self, items: Sequence[AdmitItem]) -> list[AdmitResult]:
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        results = []
        for item in items:
            b = item.booking
            if b.idempotency_key is not None:
                earlier = self._keys.get((b.event_id, b.idempotency_key))
                if earlier is not None:
                    results.append(AdmitResult(repeat_of=earlier[0], repeat_fingerprint=earlier[1]))
                    continue
            refusal = self.inventory.admit(b.id, b.event_id, b.user_id, b.quantity, b.requested_seats,
                                           force=item.force)
            if refusal is None and b.idempotency_key is not None:
                self._keys[(b.event_id, b.idempotency_key)] = (b.id, b.fingerprint)
            results.append(AdmitResult(error=refusal))
        return results

    async def mark_queued(self, bookings: Sequence[Booking]) -> None:
        """The queue has these bookings: `abandon` leaves them alone. Unknown or settled ones are ignored."""
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        self._queued.update(b.id for b in bookings if self.inventory.has_reservation(b.id))

    async def abandon(self, bookings: Sequence[Booking]) -> None:
        """Withdraw the admitted bookings not marked queued. Idempotent: one never admitted, refused, a
        repeat, withdrawn before or settled since has nothing to undo (a settled one keeps its key)."""
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        for b in bookings:
            if b.id not in self._queued and self.inventory.has_reservation(b.id):
                self._withdraw_one(b)

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        for b in bookings:
            self._withdraw_one(b)

    def _withdraw_one(self, b: Booking) -> None:
        self.inventory.withdraw(b.id)
        self._queued.discard(b.id)
        if b.idempotency_key is not None and self._keys.get((b.event_id, b.idempotency_key), ("",))[0] == b.id:
            del self._keys[(b.event_id, b.idempotency_key)]

    async def settle(self, decided: Sequence[Booking]) -> list[bool]:
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        settled = []
        for b in decided:
            held = b.seat_ids if b.status is BookingStatus.HELD else ()
            first = self.inventory.settle(b.id, held, event_id=b.event_id, user_id=b.user_id)
            self._queued.discard(b.id)
            settled.append(first)
        return settled

    async def release(self, bookings: Sequence[Booking]) -> None:
        """Idempotent: frees only the seats the edge still counts as taken by each booking."""
        await self._rebuild_if_invalid()
        await trio.lowlevel.checkpoint()
        for b in bookings:
            self.inventory.release(b.id, b.event_id, b.user_id, b.seat_ids)
            self._queued.discard(b.id)

    async def stale_admissions(self, older_than: float, limit: int) -> list[Booking]:
        """None here: an intake that dies takes this process's admissions with it."""
        await trio.lowlevel.checkpoint()
        return []

    async def pending(self, booking_id: str) -> PendingRecord | None:
        await trio.lowlevel.checkpoint()
        return None  # the embedded queue stores pending bookings before it answers
