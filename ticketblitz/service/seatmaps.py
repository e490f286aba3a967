"""Seat maps served without blocking the loop: the store builds the JSON document off the Trio thread,
and one copy per (event, form) is kept until a seat of that event changes here or it is `max_age`
seconds old (changes made by other processes). Concurrent requests for a stale map share one build, so
a refreshing crowd costs one store read per change, not one per request.

Each kept copy carries what a conditional, compressed GET needs, computed once per build (off the Trio
thread), never per request: a strong `ETag` from the bytes (the same bytes give the same tag, in every
process, across rebuilds) and the gzip encoding of the bytes.

Forms: `api` and `compat` are built by the store; `compact` (one status character per seat per section,
a project extension) is derived here from the `api` document; `event` is the event's own document (its
counts change exactly when its seats do, so it is kept and invalidated the same way)."""

from __future__ import annotations

import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from ..ports import Store
from ..representation import event_json
from .flights import SingleFlight

MAX_ENTRIES = 16  # documents kept (a 200,000-seat map is ~15 MB of JSON)
FORMS = frozenset({"api", "compat", "compact", "event"})
STATUS_CHARS = {"available": "a", "held": "h", "sold": "s"}
GZIP_LEVEL = 6  # ~7 ms for the 727 KB map of 10,000 seats (to 54 KB), once per build, in a thread


@dataclass(frozen=True, slots=True)
class SeatMap:
    """One build of a seat-map document: its bytes, their gzip encoding and their strong entity tag."""

    body: bytes
    gzip: bytes
    etag: str  # quoted, strong: '"<form>-<hash>"' (the gzip encoding's tag adds '-gz')

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '-gz"'


def prepare(form: str, body: bytes) -> SeatMap:
    """The tag and the gzip encoding of a document (pure; run in a worker thread)."""
    digest = hashlib.blake2b(body, digest_size=12).hexdigest()
    return SeatMap(body, gzip.compress(body, GZIP_LEVEL, mtime=0), f'"{form}-{digest}"')


def compact_document(api: bytes) -> bytes:
    """The compact form from the `api` document: per section (in seat order) its name, rows, seats per
    row and one character per seat, row after row (`a` available, `h` held, `s` sold)."""
    document: dict[str, Any] = orjson.loads(api)
    sections: list[dict[str, Any]] = []
    grids: dict[str, tuple[dict[str, Any], list[tuple[int, int, str]]]] = {}
    for seat in document["seats"]:
        name = seat["section"]
        grid = grids.get(name)
        if grid is None:
            section = {"name": name, "rows": 0, "seats_per_row": 0, "status": ""}
            grid = grids[name] = (section, [])
            sections.append(section)
        section, cells = grid
        row, number = seat["row"], seat["number"]
        section["rows"] = max(section["rows"], row)
        section["seats_per_row"] = max(section["seats_per_row"], number)
        cells.append((row, number, STATUS_CHARS.get(seat["status"], "s")))
    for section, cells in grids.values():
        width = section["seats_per_row"]
        chars = ["s"] * (section["rows"] * width)  # (a grid without holes: every seat is listed)
        for row, number, char in cells:
            chars[(row - 1) * width + number - 1] = char
        section["status"] = "".join(chars)
    return orjson.dumps({"event_id": document["event_id"], "form": "compact", "sections": sections})


@dataclass(slots=True)
class _Entry:
    seat_map: SeatMap | None
    version: int
    built_at: float


class SeatMaps:
    def __init__(self, store: Store, max_age: float, clock: Callable[[], float] = trio.current_time) -> None:
        self._store = store
        self._max_age = max_age
        self._clock = clock
        self._versions: dict[str, int] = {}
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._building: SingleFlight[SeatMap | None] = SingleFlight()
        self.builds = 0  # store reads made (tests and /metrics)

    def changed(self, event_id: str) -> None:
        """A seat of the event changed in this process: its cached maps are stale."""
        self._versions[event_id] = self._versions.get(event_id, 0) + 1

    async def document(self, event_id: str, form: str) -> bytes | None:
        """The seat map as JSON bytes (None: no such event), at most one build old."""
        seat_map = await self.get(event_id, form)
        return seat_map.body if seat_map is not None else None

    async def get(self, event_id: str, form: str) -> SeatMap | None:
        """The seat map with its tag and gzip encoding (None: no such event), at most one build old."""
        key = (event_id, form)
        entry = self._cache.get(key)
        version = self._versions.get(event_id, 0)
        if entry is not None and entry.version == version and self._clock() - entry.built_at < self._max_age:
            self._cache.move_to_end(key)
            return entry.seat_map

        async def build_and_keep() -> SeatMap | None:
            seat_map = await self._build(event_id, form)
            self.builds += 1
            self._keep(key, _Entry(seat_map, version, self._clock()))
            return seat_map

        return await self._building.run(key, build_and_keep)

    async def _build(self, event_id: str, form: str) -> SeatMap | None:
        if form not in FORMS:
            raise KeyError(form)  # a caller's bug, not a request's
        if form == "event":
            event = await self._store.get_event(event_id)
            body = orjson.dumps(event_json(event)) if event is not None else None
        else:
            body = await self._store.seat_map_json(event_id, "api" if form == "compact" else form)
        if body is None:
            return None

        def finish(body: bytes) -> SeatMap:
            return prepare(form, compact_document(body) if form == "compact" else body)

        return await trio.to_thread.run_sync(finish, body)

    def _keep(self, key: tuple[str, str], entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
