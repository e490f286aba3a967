"""One load per key at a time: concurrent callers for the same key share the first caller's load (its
value, or its failure), so a crowd asking for one uncached thing costs one store read, not one each.

The load is shielded: others wait for it, so its first caller hanging up must not end it (every store
call has a deadline of its own). `forget(key)` makes later callers start a fresh load (the one in flight
may predate a change); the callers already waiting still get its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

V = TypeVar("V")


@dataclass(slots=True)
class _Flight(Generic[V]):
    done: trio.Event = field(default_factory=trio.Event)
    value: V | None = None
    error: Exception | None = None


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[V]] = {}

    async def run(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:  # the loader's failure (e.g. the store is down) is everyone's
                raise flight.error
            return flight.value  # type: ignore[return-value]  # set whenever error is None
        flight = self._flights[key] = _Flight()
        try:
            with trio.CancelScope(shield=True):
                value = flight.value = await load()
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()
        return value

    def forget(self, key: Hashable) -> None:
        self._flights.pop(key, None)
