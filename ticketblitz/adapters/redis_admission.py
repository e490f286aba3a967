"""Edge admission on Redis: the rules of `domain/inventory.py` (EdgeInventory) as Lua scripts over
per-event hashes, shared by every process of a deployment, plus the Idempotency-Keys and the pending
records of bookings accepted but not yet in the store. Key layout: `redis_scripts/edge_common.lua`.

It is a cache of the store, never the guarantee. `ensure` rebuilds it from `store.edge_snapshot()` when
the ready marker is missing; every script checks the marker, so a Redis lost while running (restart,
FLUSHDB) is noticed by the next call, which rebuilds from the same store and asks once more; `invalidate`
drops the marker on purpose.

An admit whose answer is not heard (a stalled Redis, a lost connection) raises Unavailable although the
script may have run: the caller `abandon`s the batch, which undoes what did run and leaves a tombstone
that refuses an admit of the batch still on its way. Every script may run twice (a client retry after a
lost connection) with the same effect as once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import orjson
import trio
from redis.commands.core import Script
from redis.exceptions import ResponseError, WatchError

from ..codec import booking_from_json, booking_to_json
from ..domain.errors import BookingError, LimitExceeded, SeatUnavailable, SoldOut, Unavailable
from ..domain.model import Booking, BookingStatus
from ..ports import AdmitItem, AdmitResult, EdgeSnapshot, PendingRecord, Store
from .memory_admission import inventory_from
from .redis_locks import RedisLink

log = logging.getLogger("ticketblitz.admission")

READY_KEY = "tb:edge:ready"
REBUILD_LOCK_KEY = "tb:edge:rebuild"
REBUILD_LOCK_MS = 30_000  # renewed by every chunk written, so only a stalled rebuilder loses it
REBUILD_WAIT_S = 30.0  # how long a process waits for another one's rebuild before answering 503
REBUILD_POLL_S = 0.05
REBUILD_CHUNK = 200  # commands per pipeline round trip while rebuilding
HASH_FIELDS_PER_COMMAND = 1000
EDGE_MISSING = "edge_missing"  # what a script answers when the ready marker is gone
# How long the tombstone of an abandoned booking refuses a late admit of it: far beyond any request's life
# in the network (the client gave up on it after `timeout`), short enough not to pile up during an outage.
ABANDONED_TTL_S = 600
_EVENT_PARTS = ("stock", "taken", "users", "res", "keys")

Command = tuple[str | int, ...]


def edge_key(event_id: str, part: str) -> str:
    """`tb:{EVT}:part`: the hash tag keeps one event's keys together."""
    return f"tb:{{{event_id}}}:{part}"


def pending_key(booking_id: str) -> str:
    return f"tb:pending:{booking_id}"


def abandoned_key(booking_id: str) -> str:
    return f"tb:abandoned:{booking_id}"


class RedisAdmission:
    """The Admission port on Redis; same semantics as `InProcessAdmission` (one Lua call per batch)."""

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 2.0, max_threads: int = 8, pending_ttl_s: int = 86400,
                 abandoned_ttl_s: int = ABANDONED_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.pending_ttl_s = pending_ttl_s
        self.abandoned_ttl_s = abandoned_ttl_s
        self._clock = clock  # the wall clock of `admitted_at` (the service's, which asks for stale admissions)
        self._link = RedisLink(url, timeout=timeout, max_threads=max_threads)
        self._store: Store | None = None  # kept from `ensure`: what a rebuild after a loss reads
        self._rebuilding = trio.Lock()  # one rebuild attempt per process at a time
        self._forget_first = False  # an `invalidate` that could not reach Redis: the next call drops the marker
        link = self._link
        self._admit = link.script("edge_common", "edge_admit")
        self._settle = link.script("edge_common", "edge_settle")
        self._withdraw = link.script("edge_common", "edge_withdraw")
        self._abandon = link.script("edge_common", "edge_abandon")
        self._mark_queued = link.script("edge_common", "edge_mark_queued")
        self._stale = link.script("edge_common", "edge_stale")
        self._release = link.script("edge_common", "edge_release")
        self._claim_rebuild = link.script("edge_claim_rebuild")
        self._finish_rebuild = link.script("edge_finish_rebuild")
        self._compare_and_delete = link.script("compare_and_delete")

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        await self._link.ping()

    async def close(self) -> None:
        await self._link.close()

    async def ping(self) -> None:
        await self._link.ping()

    async def ensure(self, store: Store) -> None:
        """Rebuild from `store.edge_snapshot()` when the state is missing; keep `store` for later losses."""
        self._store = store
        await self._rebuild_if_missing()

    async def add_event(self, event_id: str, available: int, max_per_user: int) -> None:
        """Start counting an event, unless some process did already (its counters must not be reset)."""
        stock = edge_key(event_id, "stock")

        def create() -> None:
            with self._link.client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(stock, "remaining", available)
                pipe.hsetnx(stock, "max_per_user", max_per_user)
                pipe.execute()

        await self._link.run(create, "add_event")

    # ------------------------------------------------------------------ the port
    async def admit(self, items: Sequence[AdmitItem]) -> list[AdmitResult]:
        """Admit in order, each item one atomic step, the whole batch in one Lua call. Unavailable when the
        answer was not heard: the script may have run, and the caller must `abandon` the batch."""
        if not items:
            return []
        requests = [_admit_request(item) for item in items]
        admitted_at = repr(self._clock())
        replies = await self._edit(self._admit, [orjson.dumps(requests), self.pending_ttl_s, admitted_at], "admit")
        unknown = [i for i, reply in enumerate(replies) if reply == "unknown_event"]
        if unknown and self._store is not None:
            # an event the store has but this Redis lost (evicted, or a partial loss): rebuild everything
            # from the store once, then admit just those requests again
            await self._link.run(lambda: self._link.client.delete(READY_KEY), "forget edge")
            await self._rebuild_if_missing()
            again = [requests[i] for i in unknown]
            retried = await self._edit(self._admit, [orjson.dumps(again), self.pending_ttl_s, admitted_at], "admit")
            for i, reply in zip(unknown, retried, strict=True):
                replies[i] = reply
        return [_admit_result(reply, item.booking) for reply, item in zip(replies, items, strict=True)]

    async def mark_queued(self, bookings: Sequence[Booking]) -> None:
        """The queue acknowledged these bookings: their pending records say `queued` (one round trip)."""
        if bookings:
            ids = orjson.dumps([b.id for b in bookings])
            await self._link.run(lambda: self._mark_queued(args=[ids]), "mark queued")

    async def abandon(self, bookings: Sequence[Booking]) -> None:
        """Undo the admissions of bookings not marked queued (script: redis_scripts/edge_abandon.lua).
        Idempotent; when the admit never ran, a tombstone refuses it should it still arrive."""
        if bookings:
            abandoned = [_withdraw_request(b) for b in bookings]
            await self._edit(self._abandon, [orjson.dumps(abandoned), self.abandoned_ttl_s], "abandon")

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        """Undo the admission of bookings, queued or not (they lost their key to another, or were dead-lettered)."""
        if bookings:
            withdrawn = [_withdraw_request(b) for b in bookings]
            await self._edit(self._withdraw, [orjson.dumps(withdrawn)], "withdraw")

    async def settle(self, decided: Sequence[Booking]) -> list[bool]:
        """The store decided: held seats replace the reservation. True where this call settled it."""
        if not decided:
            return []
        settled = [
            {"booking_id": b.id, "event_id": b.event_id, "user_id": b.user_id,
             "held": list(b.seat_ids) if b.status is BookingStatus.HELD else []}
            for b in decided
        ]
        firsts = await self._edit(self._settle, [orjson.dumps(settled)], "settle")
        return [bool(first) for first in firsts]

    async def release(self, bookings: Sequence[Booking]) -> None:
        """Seats of held bookings came back (cancelled or expired). Idempotent: counts only the seats the
        edge still has taken by each booking."""
        if bookings:
            released = [
                {"booking_id": b.id, "event_id": b.event_id, "user_id": b.user_id, "seats": list(b.seat_ids)}
                for b in bookings
            ]
            await self._edit(self._release, [orjson.dumps(released)], "release")

    async def invalidate(self) -> None:
        """Drop the ready marker: the next call (of any process) rebuilds from the store. Never raises: when
        Redis cannot be reached now, this process's next call drops the marker before anything else."""
        self._forget_first = True
        try:
            await self._forget_edge()
        except Unavailable as exc:
            log.warning("could not invalidate the edge now, the next call will: %s", exc.detail)

    async def stale_admissions(self, older_than: float, limit: int) -> list[Booking]:
        """Bookings admitted at or before `older_than` (the clock given at construction) and never marked
        queued, oldest first (script: redis_scripts/edge_stale.lua); at most `limit`, one round trip."""
        raws = await self._link.run(lambda: self._stale(args=[repr(older_than), limit]), "stale admissions")
        stale = []
        for raw in raws:
            try:
                stale.append(booking_from_json(raw))
            except ValueError:
                log.error("a pending record that is not a booking: %.200r", raw)
        return stale

    async def pending(self, booking_id: str) -> PendingRecord | None:
        """A booking accepted at the edge but not yet settled, as its pending record says, else None."""
        key = pending_key(booking_id)

        def read() -> dict[str, str] | str | None:
            try:
                return self._link.client.hgetall(key)  # type: ignore[return-value]
            except ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                return self._link.client.get(key)  # type: ignore[return-value]

        raw = await self._link.run(read, "pending")
        return _pending_record(raw)

    # ------------------------------------------------------------------ scripts and rebuilds
    async def _forget_edge(self) -> None:
        await self._link.run(lambda: self._link.client.delete(READY_KEY), "invalidate")
        self._forget_first = False

    async def _edit(self, script: Script, args: list[Any], what: str) -> Any:
        """Run an edge script; when it finds the state gone, rebuild it from the store and run it again."""
        if self._forget_first:
            await self._forget_edge()
        reply = await self._link.run(lambda: script(args=args), what)
        if reply == EDGE_MISSING:
            await self._rebuild_if_missing()
            reply = await self._link.run(lambda: script(args=args), what)
            if reply == EDGE_MISSING:
                raise Unavailable("edge state missing", component="lock")
        return reply

    async def _rebuild_if_missing(self) -> None:
        """Make sure the edge state is there: rebuild it here, or wait (bounded) while another process does."""
        if self._store is None:
            raise Unavailable("edge state missing and no store to rebuild it from", component="lock")
        store = self._store
        token = secrets.token_hex(16)
        deadline = trio.current_time() + REBUILD_WAIT_S
        async with self._rebuilding:
            while True:
                claim = await self._link.run(
                    lambda: self._claim_rebuild([READY_KEY, REBUILD_LOCK_KEY], [token, REBUILD_LOCK_MS]),
                    "rebuild claim",
                )
                if claim == "ready":
                    return
                if claim == "mine":
                    await self._rebuild(store, token)
                    return
                if trio.current_time() >= deadline:
                    raise Unavailable("edge state is being rebuilt by another process; retry", component="lock")
                await trio.sleep(REBUILD_POLL_S)

    async def _rebuild(self, store: Store, token: str) -> None:
        """Holding the rebuild lock: replace the state of the store's events by the store's snapshot."""
        try:
            snapshot = await store.edge_snapshot()
            commands = list(_snapshot_commands(snapshot))
            for start in range(0, len(commands), REBUILD_CHUNK):
                chunk = commands[start : start + REBUILD_CHUNK]
                await self._link.run(partial(self._write_chunk, chunk, token), "rebuild")
            done = await self._link.run(
                lambda: self._finish_rebuild([READY_KEY, REBUILD_LOCK_KEY], [token, repr(time.time())]),
                "rebuild",
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._drop_rebuild_lock(token)
            raise
        if not done:
            raise Unavailable("lost the edge rebuild lock to another process; retry", component="lock")

    def _write_chunk(self, commands: list[Command], token: str) -> None:
        """One MULTI/EXEC of rebuild commands, applied only while this process still owns the rebuild lock:
        WATCH aborts it when the lock lapsed or another process took it meanwhile."""
        with self._link.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(REBUILD_LOCK_KEY)
                if pipe.get(REBUILD_LOCK_KEY) != token:
                    raise WatchError
                pipe.multi()
                pipe.pexpire(REBUILD_LOCK_KEY, REBUILD_LOCK_MS)  # a rebuild in progress keeps its lock
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
            except WatchError:
                # another process rebuilds now; it writes (and marks ready) the whole state itself
                raise Unavailable("lost the edge rebuild lock to another process; retry", component="lock") from None

    async def _drop_rebuild_lock(self, token: str) -> None:
        try:
            await self._link.run(lambda: self._compare_and_delete([REBUILD_LOCK_KEY], [token]), "rebuild unlock")
        except Unavailable:
            pass  # it lapses by itself after REBUILD_LOCK_MS


# ---------------------------------------------------------------------- requests and answers
def _admit_request(item: AdmitItem) -> dict[str, Any]:
    """One request of the admit script (field names: redis_scripts/edge_admit.lua)."""
    b = item.booking
    request: dict[str, Any] = {
        "booking_id": b.id, "event_id": b.event_id, "user_id": b.user_id, "quantity": b.quantity,
        "seats": list(b.requested_seats), "force": item.force, "record": booking_to_json(b).decode(),
    }
    if b.idempotency_key is not None:  # absent, not null: cjson turns null into a truthy sentinel
        request["key"] = b.idempotency_key
        if b.fingerprint is not None:
            request["fingerprint"] = b.fingerprint
    return request


def _withdraw_request(b: Booking) -> dict[str, Any]:
    request: dict[str, Any] = {"booking_id": b.id, "event_id": b.event_id}
    if b.idempotency_key is not None:
        request["key"] = b.idempotency_key
    return request


def _pending_record(raw: dict[str, str] | str | None) -> PendingRecord | None:
    """The pending record as the port's value; None when absent or not ours to read."""
    if not raw:
        return None
    # a string is the format before `queued` existed: the booking alone, kept only for queued bookings
    fields = {"booking": raw, "queued": "1", "admitted_at": "0"} if isinstance(raw, str) else raw
    try:
        booking = booking_from_json(fields["booking"])
        return PendingRecord(booking, queued=fields.get("queued") == "1",
                             admitted_at=float(fields.get("admitted_at") or 0.0))
    except (KeyError, ValueError):
        return None  # not ours to repair: the store or the queue has the real booking


def _admit_result(reply: str, b: Booking) -> AdmitResult:
    """The script's answer for one booking as the port's result, worded as `EdgeInventory.check`."""
    code, _, detail = reply.partition(":")
    if code == "ok":
        return AdmitResult()
    if code == "repeat":
        booking_id, _, fingerprint = detail.partition(":")
        return AdmitResult(repeat_of=booking_id, repeat_fingerprint=fingerprint or None)
    return AdmitResult(error=_refusal(code, detail, b))


def _refusal(code: str, detail: str, b: Booking) -> BookingError:
    event = b.event_id
    if code == "limit_exceeded":
        return LimitExceeded(f"user {b.user_id} would hold more than {detail} seats of event {event}")
    if code == "seat_unavailable" and detail:
        return SeatUnavailable(f"seat {detail} of event {event} is held or sold")
    if code == "seat_unavailable":
        return SeatUnavailable(f"the seats asked for in event {event} are promised to earlier requests")
    if code == "sold_out":
        return SoldOut(f"event {event} has no {b.quantity} seat(s) left")
    if code == "abandoned":
        return Unavailable(f"booking {b.id} was abandoned before its admission arrived", component="lock")
    if code == "unknown_event":
        # the service adds every event it admits for; a missing one means the edge lost it
        return Unavailable(f"edge state missing for event {event}", component="lock")
    return Unavailable(f"unexpected admission answer {code!r} for event {event}", component="lock")


# ---------------------------------------------------------------------- rebuilding from the store
def _snapshot_commands(snapshot: EdgeSnapshot) -> Iterator[Command]:
    """The Redis commands that replace the edge state of the snapshot's events by the snapshot.

    The counters come from the domain's own EdgeInventory, restored exactly as the in-process adapter
    restores it, so both adapters start from the same numbers.
    """
    inventory = inventory_from(snapshot)

    reservations: dict[str, dict[str, str]] = defaultdict(dict)  # event -> booking id -> reservation
    for b in snapshot.pending:
        reservation = {"user_id": b.user_id, "quantity": b.quantity, "seats": list(b.requested_seats)}
        reservations[b.event_id][b.id] = orjson.dumps(reservation).decode()
    keys: dict[str, dict[str, str]] = defaultdict(dict)  # event -> Idempotency-Key -> "booking fingerprint"
    for event_id, key, booking_id, fingerprint in snapshot.keys:
        keys[event_id][key] = f"{booking_id} {fingerprint or ''}"

    for event_id, _, _ in snapshot.events:
        stock = inventory.stock(event_id)
        yield ("UNLINK", *(edge_key(event_id, part) for part in _EVENT_PARTS))
        yield ("HSET", edge_key(event_id, "stock"), "remaining", stock.remaining, "max_per_user", stock.max_per_user)
        yield from _hset_many(edge_key(event_id, "taken"), stock.taken)
        yield from _hset_many(edge_key(event_id, "users"), stock.per_user)
        yield from _hset_many(edge_key(event_id, "res"), reservations[event_id])
        yield from _hset_many(edge_key(event_id, "keys"), keys[event_id])


def _hset_many(key: str, fields: dict[str, Any]) -> Iterator[Command]:
    """HSET of a whole dict, split so that no command carries more than HASH_FIELDS_PER_COMMAND fields."""
    items = list(fields.items())
    for start in range(0, len(items), HASH_FIELDS_PER_COMMAND):
        flat: list[str | int] = []
        for name, value in items[start : start + HASH_FIELDS_PER_COMMAND]:
            flat += (name, value)
        yield ("HSET", key, *flat)
