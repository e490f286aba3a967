"""The events this process knows: their immutable parts (counts always come from the store), the
newest one, and the event the original's routes mean."""

from __future__ import annotations

from dataclasses import replace

from ..domain.errors import NotFound
from ..domain.model import Event
from ..ports import Admission, Store
from .flights import SingleFlight

DEMO_EVENT_ID = "evt_demo"
QUEUE_DEMO_EVENT_ID = "evt_queue_demo"  # the waiting-room demo event (serve --demo, seed)


class EventCatalog:
    """Events by id, learned from the store (at start, and on first sight of one another process made)."""

    def __init__(self, store: Store, admission: Admission) -> None:
        self._store = store
        self._admission = admission
        self._events: dict[str, Event] = {}
        self._latest: str | None = None
        self._reads: SingleFlight[Event | None] = SingleFlight()  # a crowd's first sight of an event: one read

    async def load(self) -> None:
        for event in await self._store.list_events():
            self.remember(event)

    def remember(self, event: Event) -> None:
        self._events[event.id] = replace(event, counts=None)
        if self._latest is None or event.created_at >= self._events[self._latest].created_at:
            self._latest = event.id

    async def known(self, event_id: str) -> Event:
        """The event (without counts), or NotFound. One created by another process is read once."""
        event = self._events.get(event_id)
        if event is not None:
            return event
        found = await self._reads.run(event_id, lambda: self._learn(event_id))
        if found is None:
            raise NotFound(f"event {event_id} does not exist")
        return found

    async def _learn(self, event_id: str) -> Event | None:
        """Read an event this process has not seen, remember it and tell the edge about it."""
        found = await self._store.get_event(event_id)
        if found is None:
            return None
        self.remember(found)
        if found.counts is not None:
            await self._admission.add_event(event_id, found.counts.available, found.max_per_user)
        return self._events[event_id]

    async def compat(self, event_id: str | None) -> Event:
        """The event the original's routes mean: the one named, else the demo event, else the newest."""
        if event_id is not None:
            return await self.known(event_id)
        for candidate in (DEMO_EVENT_ID, self._latest):
            if candidate is not None and candidate in self._events:
                return self._events[candidate]
        raise NotFound("no event exists yet; create one with POST /api/events or run `ticketblitz seed`")
