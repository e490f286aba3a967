"""Embedded seat locks: in-process leases with a token and a fencing number, like the Redis ones."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

import trio

from ..ports import SeatLease


class InProcessLocks:
    name = "in-process"

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[str, float]] = {}
        self._fence = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._held.clear()

    async def ping(self) -> None:
        return None

    async def acquire(self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int) -> SeatLease | None:
        """All the seats or none; None when another owner holds one of them and its lease is alive."""
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        keys = [(event_id, s) for s in sorted(seats)]
        for key in keys:
            held = self._held.get(key)
            if held is not None and held[1] > now:
                return None
        token = secrets.token_hex(8)
        expires = now + ttl_ms / 1000
        for key in keys:
            self._held[key] = (token, expires)
        self._fence += 1
        return SeatLease(event_id, tuple(sorted(seats)), owner, token, self._fence, expires)

    async def acquire_each(
        self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int
    ) -> dict[str, SeatLease]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        leases = {}
        for seat in seats:
            held = self._held.get((event_id, seat))
            if held is not None and held[1] > now:
                continue
            token = secrets.token_hex(8)
            self._fence += 1
            self._held[(event_id, seat)] = (token, now + ttl_ms / 1000)
            leases[seat] = SeatLease(event_id, (seat,), owner, token, self._fence, now + ttl_ms / 1000)
        return leases

    async def raise_fence(self, floor: int) -> None:
        await trio.lowlevel.checkpoint()
        self._fence = max(self._fence, floor)

    async def release_many(self, leases: Iterable[SeatLease]) -> None:
        for lease in leases:
            await self.release(lease)

    async def release(self, lease: SeatLease) -> None:
        """Compare-and-delete: only the holder of the token frees the seat."""
        await trio.lowlevel.checkpoint()
        for seat in lease.seats:
            key = (lease.event_id, seat)
            held = self._held.get(key)
            if held is not None and held[0] == lease.token:
                del self._held[key]
