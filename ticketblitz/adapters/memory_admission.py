"""Embedded edge admission: the domain's EdgeInventory in this process, plus the Idempotency-Keys."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..domain.inventory import EdgeInventory
from ..domain.model import Booking, BookingStatus
from ..ports import AdmitItem, AdmitResult, EdgeSnapshot, Store


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
    name = "in-process"

    def __init__(self) -> None:
        self.inventory = EdgeInventory()
        self._keys: dict[tuple[str, str], tuple[str, str | None]] = {}  # (event, key) -> (booking, fingerprint)
        self._built = False

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def ensure(self, store: Store) -> None:
        if self._built:
            return
        snapshot = await store.edge_snapshot()
        self.inventory = inventory_from(snapshot)
        for event_id, key, booking_id, fingerprint in snapshot.keys:
            self._keys[(event_id, key)] = (booking_id, fingerprint)
        self._built = True

    async def add_event(self, event_id: str, available: int, max_per_user: int) -> None:
        if not self.inventory.knows(event_id):
            self.inventory.add_event(event_id, available=available, max_per_user=max_per_user)

    async def admit(self, items: Sequence[AdmitItem]) -> list[AdmitResult]:
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

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        await trio.lowlevel.checkpoint()
        for b in bookings:
            self.inventory.withdraw(b.id)
            if b.idempotency_key is not None and self._keys.get((b.event_id, b.idempotency_key), ("",))[0] == b.id:
                del self._keys[(b.event_id, b.idempotency_key)]

    async def settle(self, decided: Sequence[Booking]) -> list[bool]:
        await trio.lowlevel.checkpoint()
        settled = []
        for b in decided:
            first = self.inventory.has_reservation(b.id)
            if first:
                self.inventory.settle(b.id, b.seat_ids if b.status is BookingStatus.HELD else ())
            settled.append(first)
        return settled

    async def release(self, bookings: Sequence[Booking]) -> None:
        await trio.lowlevel.checkpoint()
        for b in bookings:
            self.inventory.release(b.id, b.event_id, b.user_id, b.seat_ids)

    async def record_rejected(self, booking: Booking) -> None:
        return None  # embedded: the booking stays pending in the store and is tried again after a restart

    async def pending(self, booking_id: str) -> Booking | None:
        return None  # the embedded queue stores pending bookings before it answers
