"""Long-polls waiting for bookings to be decided: a bounded number at a time, and nothing left behind.

A waiter entry exists only while someone waits on it (it goes with its last watcher or when its booking
is decided), so bookings decided by another process leave nothing here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

from ..domain.errors import RateLimited


class Waiters:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # long-polls in progress
        self.closed = False
        self._scopes: set[trio.CancelScope] = set()
        self._events: dict[str, trio.Event] = {}
        self._watchers: dict[str, int] = {}

    def __len__(self) -> int:
        """Booking ids someone is waiting for."""
        return len(self._events)

    @asynccontextmanager
    async def slot(self, seconds: float) -> AsyncIterator[trio.CancelScope]:
        """One long-poll's place, as a scope that ends the wait after `seconds` or when the server stops
        (`close`), whichever comes first: the caller answers with what it has then. RateLimited (429) when
        `limit` are in progress already."""
        if self.active >= self.limit:
            raise RateLimited(f"{self.limit} long-polls are waiting already; poll again later", retry_after=1)
        scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        if self.closed:
            scope.cancel()
        self.active += 1
        self._scopes.add(scope)
        try:
            yield scope
        finally:
            self.active -= 1
            self._scopes.discard(scope)

    def close(self) -> None:
        """The server stops: every long-poll answers now, and later ones at once."""
        self.closed = True
        for scope in self._scopes:
            scope.cancel()

    @contextmanager
    def watch(self, booking_id: str) -> Iterator[trio.Event]:
        """The event set when `booking_id` is decided in this process."""
        event = self._events.get(booking_id)
        if event is None:
            event = self._events[booking_id] = trio.Event()
        self._watchers[booking_id] = self._watchers.get(booking_id, 0) + 1
        try:
            yield event
        finally:
            left = self._watchers.get(booking_id, 1) - 1
            if left > 0:
                self._watchers[booking_id] = left
            else:
                self._watchers.pop(booking_id, None)
                if self._events.get(booking_id) is event:
                    del self._events[booking_id]

    def notify(self, booking_id: str) -> None:
        """`booking_id` was decided: wake whoever waits (a later watcher gets a fresh event)."""
        event = self._events.pop(booking_id, None)
        if event is not None:
            event.set()
