"""Seat maps served without blocking the loop: the store builds the JSON document off the Trio thread,
and one copy per (event, form) is kept until a seat of that event changes here or it is `max_age`
seconds old (changes made by other processes). Concurrent requests for a stale map share one build, so
a refreshing crowd costs one store read per change, not one per request."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..ports import Store

MAX_ENTRIES = 16  # documents kept (a 200,000-seat map is ~15 MB of JSON)


@dataclass(slots=True)
class _Entry:
    body: bytes | None
    version: int
    built_at: float


@dataclass(slots=True)
class _Build:
    done: trio.Event = field(default_factory=trio.Event)
    body: bytes | None = None
    error: Exception | None = None


class SeatMaps:
    def __init__(self, store: Store, max_age: float, clock: Callable[[], float] = trio.current_time) -> None:
        self._store = store
        self._max_age = max_age
        self._clock = clock
        self._versions: dict[str, int] = {}
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._building: dict[tuple[str, str], _Build] = {}
        self.builds = 0  # store reads made (tests and /metrics)

    def changed(self, event_id: str) -> None:
        """A seat of the event changed in this process: its cached maps are stale."""
        self._versions[event_id] = self._versions.get(event_id, 0) + 1

    async def document(self, event_id: str, form: str) -> bytes | None:
        """The seat map as JSON bytes (None: no such event), at most one build old."""
        key = (event_id, form)
        entry = self._cache.get(key)
        version = self._versions.get(event_id, 0)
        if entry is not None and entry.version == version and self._clock() - entry.built_at < self._max_age:
            self._cache.move_to_end(key)
            return entry.body
        build = self._building.get(key)
        if build is None:
            build = self._building[key] = _Build()
            try:
                # shielded: others wait for this build, so its first requester hanging up must not end it
                # (the store call has a deadline of its own)
                with trio.CancelScope(shield=True):
                    build.body = await self._store.seat_map_json(event_id, form)
                self.builds += 1
                self._keep(key, _Entry(build.body, version, self._clock()))
            except Exception as exc:
                build.error = exc
                raise
            finally:
                del self._building[key]
                build.done.set()
            return build.body
        await build.done.wait()
        if build.error is not None:  # the builder's failure (e.g. the store is down) is everyone's
            raise build.error
        return build.body

    def _keep(self, key: tuple[str, str], entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
