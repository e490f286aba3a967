"""The Store port's newer methods, one test body for both stores: SQLite in tmp_path, PostgreSQL in a
fresh database per test (`tb_test_<hex>`, dropped at the end). Real PostgreSQL only; it fails, never
skips, without TICKETBLITZ_DATABASE_URL.

Migration 3 (an existing v2 database keeps its data), the booking secret's hash on every insert path,
the edge outbox (`cancel`/`expire_lapsed` → `edge_due` → `edge_done`), `reject` (dead letters and
tombstones, and racing `decide` from two processes), `server_key`, `seat_map_json` (byte for byte what
the Python representation builds), `seat_statuses`, `first_available`, and that the new reads are indexed.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import trio
from test_postgres_store import Databases, databases, make_event, pending  # noqa: F401 - the fixture, shared

from ticketblitz.adapters import postgres_store, sqlite_store
from ticketblitz.adapters.postgres_store import PostgresStore, _lock_key
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain import rules
from ticketblitz.domain.errors import InvalidTransition, NotFound
from ticketblitz.domain.model import (
    REJECTION_REASONS,
    Booking,
    BookingStatus,
    Counts,
    Event,
    SeatStatus,
    Section,
)
from ticketblitz.representation import compat_seat_json, seat_json

Store = SqliteStore | PostgresStore
STORES = ["sqlite", "postgres"]


# ---------------------------------------------------------------------- backends
@dataclass
class Backend:
    """One store's backend: opens store instances on it (several = several processes) and runs raw SQL."""

    kind: str
    path: Path | None = None  # sqlite
    url: str | None = None  # postgres
    opened: list[Store] = field(default_factory=list)

    def new_store(self, **kw: Any) -> Store:
        store: Store = SqliteStore(self.path, **kw) if self.path else PostgresStore(self.url or "", **kw)
        self.opened.append(store)
        return store

    async def open_store(self, **kw: Any) -> Store:
        store = self.new_store(**kw)
        await store.open()
        return store

    def list_value(self, values: Sequence[str]) -> Any:
        """A seat list as this backend stores it."""
        return orjson.dumps(list(values)).decode() if self.kind == "sqlite" else list(values)

    async def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement (placeholders `%s`) on a connection of its own, outside any store."""

        def run() -> list[tuple[Any, ...]]:
            if self.kind == "sqlite":
                db = sqlite3.connect(str(self.path), isolation_level=None)
                try:
                    return [tuple(r) for r in db.execute(statement.replace("%s", "?"), params).fetchall()]
                finally:
                    db.close()
            with psycopg.connect(self.url or "", autocommit=True) as conn:
                cur = conn.execute(statement, params)
                return [tuple(r) for r in cur.fetchall()] if cur.description else []

        return await trio.to_thread.run_sync(run)

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()



@pytest.fixture(params=STORES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", path=tmp_path / "store.db")
    else:
        b = Backend("postgres", url=request.getfixturevalue("databases").create())
    try:
        yield b
    finally:
        await b.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open_store()


async def create(store: Store, event: Event | None = None) -> Event:
    return await store.create_event(event or make_event())


async def hold(store: Store, event: Event, user: str, *, seats: Sequence[str] = (), quantity: int = 1,
               now: float | None = None) -> Booking:
    (decided,) = await store.decide([pending(event, user, seats=seats, quantity=quantity)],
                                    time.time() if now is None else now, insert=True)
    assert decided.status is BookingStatus.HELD
    return decided


async def invariants(store: Store, event: Event) -> Counts:
    """API.md invariants 1, 2 and 4 over the store's rows (processing_failed is a reason too)."""
    stored = await store.get_event(event.id)
    assert stored is not None and stored.counts is not None
    seats = {s.id: s.status for s in await store.seats(event.id)}
    owner: dict[str, str] = {}
    for b in await store.bookings_of_event(event.id):
        if b.status in (BookingStatus.HELD, BookingStatus.CONFIRMED):
            for seat in b.seat_ids:
                assert seat not in owner, f"seat {seat} given to {owner[seat]} and {b.id}"
                owner[seat] = b.id
                assert seats[seat] is (SeatStatus.HELD if b.status is BookingStatus.HELD else SeatStatus.SOLD)
        elif b.status is BookingStatus.REJECTED:
            assert b.reason in REJECTION_REASONS and b.seat_ids == ()
    assert all(seat in owner for seat, status in seats.items() if status is not SeatStatus.AVAILABLE)
    tally = Counter(seats.values())
    counts = Counts(tally[SeatStatus.AVAILABLE], tally[SeatStatus.HELD], tally[SeatStatus.SOLD])
    assert stored.counts == counts == await store.seat_counts(event.id)
    return counts


# ---------------------------------------------------------------------- migration 3
async def v2_event(backend: Backend, event: Event) -> None:
    """The event and its seats, inserted with the columns of schema v2."""
    sections = orjson.dumps([{"name": x.name, "rows": x.rows, "seats_per_row": x.seats_per_row,
                              "price_cents": x.price_cents} for x in event.sections]).decode()
    values = (event.id, event.name, event.venue, event.starts_at, sections, event.capacity, event.max_per_user,
              event.hold_seconds, event.capacity, event.created_at)
    if backend.kind == "sqlite":
        await backend.sql("INSERT INTO events (seq, id, name, venue, starts_at, sections, capacity, max_per_user, "
                          "hold_seconds, available, created_at) VALUES (1, %s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)
    else:
        await backend.sql("INSERT INTO events (id, name, venue, starts_at, sections, capacity, max_per_user, "
                          "hold_seconds, available, created_at) VALUES (%s,%s,%s,%s,%s::jsonb,%s,%s,%s,%s,%s)", values)
    for r in rules.seat_map(event):
        await backend.sql("INSERT INTO seats (event_id, position, id, section, row, number) VALUES (%s,%s,%s,%s,%s,%s)",
                          (event.id, r.position, r.id, r.section, r.row, r.number))


async def test_a_v2_database_migrates_to_v3_with_its_data(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    module = sqlite_store if backend.kind == "sqlite" else postgres_store
    v3 = list(module.MIGRATIONS)
    assert len(v3) >= 3
    monkeypatch.setattr(module, "MIGRATIONS", v3[:2])
    old = await backend.open_store()
    await old.close()
    event = make_event(rows=2, seats_per_row=5)
    await v2_event(backend, event)  # as the v2 code wrote it (its column list had no sale_starts_at, waiting_room)

    # bookings as the v2 code wrote them (its column list had neither secret_hash nor edge_due)
    now = time.time()
    v2_columns = ("id, event_id, user_id, quantity, requested, seat_ids, status, reason, expires_at, "
                  "created_at, updated_at, idem_key, fingerprint")
    rows = {
        "waiting": ("bkg_v2_waiting", event.id, "u1", 1, [], [], "pending", None, None, now, now, "K1", "fp1"),
        "held": ("bkg_v2_held", event.id, "u2", 1, ["A-1-1"], ["A-1-1"], "held", None, now + 600, now, now, None,
                 None),
        "cancelled": ("bkg_v2_cancelled", event.id, "u3", 1, [], [], "cancelled", None, now + 600, now, now, None,
                      None),
    }
    for values in rows.values():
        values = (*values[:4], backend.list_value(values[4]), backend.list_value(values[5]), *values[6:])
        await backend.sql(f"INSERT INTO bookings ({v2_columns}) VALUES ({','.join(['%s'] * 13)})", values)
    await backend.sql("UPDATE seats SET status = 'held', booking_id = 'bkg_v2_held', user_id = 'u2' "
                      "WHERE event_id = %s AND id = 'A-1-1'", (event.id,))
    await backend.sql("UPDATE events SET available = available - 1, held = held + 1 WHERE id = %s", (event.id,))

    monkeypatch.setattr(module, "MIGRATIONS", v3)
    store = await backend.open_store()
    assert [r[0] for r in await backend.sql("SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, len(v3) + 1))
    if isinstance(store, PostgresStore):
        assert store.applied_migrations == list(range(3, len(v3) + 1))

    waiting = await store.get_booking("bkg_v2_waiting")
    assert waiting == Booking(id="bkg_v2_waiting", event_id=event.id, user_id="u1", quantity=1, created_at=now,
                              updated_at=now, idempotency_key="K1", fingerprint="fp1", secret_hash=None)
    held = await store.get_booking("bkg_v2_held")
    assert held is not None and held.seat_ids == ("A-1-1",) and held.status is BookingStatus.HELD
    assert await store.insert_pending([pending(event, "u1", key="K1")]) == [waiting]  # its key still answers
    assert await invariants(store, event) == Counts(9, 1, 0)
    assert await store.edge_due(now + 10, 10) == []  # nothing was due before the outbox existed

    # and the new schema works on the old rows
    cancelled = await store.cancel("bkg_v2_held", now + 1)
    assert [b.id for b in await store.edge_due(now + 10, 10)] == [cancelled.id]
    assert await store.server_key(b"k") == b"k"
    assert (await store.seat_map_json(event.id, "compat") or b"").startswith(b'{"eventId":')
    await store.close()
    again = await backend.open_store()  # nothing left to do, the data as it was
    if isinstance(again, PostgresStore):
        assert again.applied_migrations == []
    assert await again.get_booking("bkg_v2_waiting") == waiting


async def test_the_schema_keeps_the_outbox_to_released_bookings(backend: Backend, store: Store) -> None:
    event = await create(store)
    held = await hold(store, event, "u1")
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        await backend.sql("UPDATE bookings SET edge_due = %s WHERE id = %s",
                          (1 if backend.kind == "sqlite" else True, held.id))


# ---------------------------------------------------------------------- secret hash
async def test_the_secret_hash_is_stored_by_every_insert_path(store: Store) -> None:
    event = await create(store)
    queued = replace(pending(event, "u1"), secret_hash="a" * 64)
    decided = replace(pending(event, "u2", seats=["A-1-1"]), secret_hash="b" * 64)
    dead = replace(pending(event, "u3"), secret_hash="c" * 64)
    assert await store.insert_pending([queued]) == [None]
    (held,) = await store.decide([decided], time.time(), insert=True)
    [(rejected, changed)] = await store.reject([dead], "processing_failed", time.time(), insert=True)
    assert changed and held.secret_hash == "b" * 64 and rejected.secret_hash == "c" * 64
    for b, expected in ((queued, "a"), (decided, "b"), (dead, "c")):
        stored = await store.get_booking(b.id)
        assert stored is not None and stored.secret_hash == expected * 64
    assert {b.id: b.secret_hash for b in await store.bookings_of_event(event.id)} == {
        queued.id: "a" * 64, decided.id: "b" * 64, dead.id: "c" * 64}
    assert [b.secret_hash for b in await store.pending_bookings(10)] == ["a" * 64]
    assert [b.secret_hash for b in (await store.edge_snapshot()).pending] == ["a" * 64]
    (later,) = await store.decide([queued], time.time())  # deciding keeps it
    assert later.secret_hash == "a" * 64 == (await store.get_booking(queued.id) or queued).secret_hash


# ---------------------------------------------------------------------- edge outbox
async def test_cancel_and_expiry_mark_the_edge_due_until_done(store: Store) -> None:
    event = await create(store, make_event(hold_seconds=60))
    t0 = 1_900_000_000.0
    a, b, c, d = [await hold(store, event, u, now=t0) for u in ("a", "b", "c", "d")]
    await store.confirm(d.id, t0 + 1)
    assert await store.edge_due(t0 + 1000, 10) == []  # held and confirmed bookings owe the edge nothing

    with pytest.raises(InvalidTransition):
        await store.cancel(d.id, t0 + 2)  # a refused cancel marks nothing
    cancelled = await store.cancel(a.id, t0 + 5)
    (expired_b, expired_c) = sorted(await store.expire_lapsed(t0 + 60, 10), key=lambda x: x.id == c.id)
    assert {expired_b.id, expired_c.id} == {b.id, c.id}
    await invariants(store, event)

    due = await store.edge_due(t0 + 1000, 10)
    assert [x.id for x in due] == [a.id, *sorted([b.id, c.id])]  # oldest first (updated_at, then id)
    assert due[0] == cancelled and {x.status for x in due[1:]} == {BookingStatus.EXPIRED}
    assert [x.id for x in await store.edge_due(t0 + 5, 10)] == [a.id]  # updated_at <= older_than
    assert await store.edge_due(t0 + 4.9, 10) == []
    assert len(await store.edge_due(t0 + 1000, 2)) == 2  # limit

    await store.edge_done([b.id, "bkg_unknown", "bkg_\x00"])  # unknown ids are ignored
    assert [x.id for x in await store.edge_due(t0 + 1000, 10)] == [a.id, c.id]
    await store.edge_done([b.id])  # again: nothing changes
    await store.edge_done([])
    await store.edge_done([a.id, c.id])
    assert await store.edge_due(t0 + 1000, 10) == []
    assert (await store.get_booking(a.id)) == cancelled  # edge_done changes nothing the booking shows


async def test_a_cancel_whose_transaction_fails_marks_nothing(store: Store) -> None:
    event = await create(store)
    held = await hold(store, event, "u1")
    with pytest.raises(NotFound):
        await store.cancel("bkg_unknown", time.time())
    await store.confirm(held.id, time.time())
    with pytest.raises(InvalidTransition):
        await store.cancel(held.id, time.time())
    assert await store.edge_due(time.time() + 10, 10) == []


# ---------------------------------------------------------------------- reject
async def test_reject_a_stored_pending_booking_and_leave_decided_ones(store: Store) -> None:
    event = await create(store)
    waiting = pending(event, "u1", seats=["A-1-1"], key="K1")
    await store.insert_pending([waiting])
    held = await hold(store, event, "u2", seats=["A-1-2"])
    now = time.time()
    answers = await store.reject([waiting, held, waiting], "processing_failed", now)
    expected = replace(waiting, status=BookingStatus.REJECTED, reason="processing_failed", updated_at=now)
    assert answers == [(expected, True), (held, False), (expected, False)]  # in order; the repeat changes nothing
    assert await store.get_booking(waiting.id) == expected
    assert expected.requested_seats == ("A-1-1",) and expected.seat_ids == ()
    assert await store.reject([waiting], "processing_failed", now + 1) == [(expected, False)]
    assert await store.insert_pending([pending(event, "u1", key="K1")]) == [expected]  # a repeat finds it final
    (redelivered,) = await store.decide([waiting], now + 2, insert=True)
    assert redelivered == expected  # a copy still in a queue changes nothing
    assert await store.pending_bookings(10) == []
    with pytest.raises(NotFound):
        await store.reject([pending(event, "u3")], "processing_failed", now)  # not stored, and no insert
    assert await invariants(store, event) == Counts(99, 1, 0)


async def test_reject_inserts_dead_letters_with_their_key_and_tombstones_without(store: Store) -> None:
    event = await create(store)
    now = time.time()
    dead = pending(event, "u1", key="DL")
    [(stored, changed)] = await store.reject([dead], "processing_failed", now, insert=True)
    assert changed and stored == replace(dead, status=BookingStatus.REJECTED, reason="processing_failed",
                                         updated_at=now)
    assert await store.insert_pending([pending(event, "u1", key="DL")]) == [stored]  # key kept: repeats find it

    tomb = pending(event, "u2", key="TB")
    [(buried, changed)] = await store.reject([tomb], "processing_failed", now, insert=True, keep_key=False)
    assert changed and buried.idempotency_key is None and buried.status is BookingStatus.REJECTED
    assert await store.get_booking(tomb.id) is None  # a tombstone, not a booking: the client heard 503
    (copy,) = await store.decide([tomb], now + 1, insert=True)  # the Kafka copy that did get written
    assert (copy.id, copy.status, copy.reason, copy.seat_ids) == (tomb.id, BookingStatus.REJECTED,
                                                                 "processing_failed", ())
    assert await store.get_booking(tomb.id) is None  # decided as rejected, stored nowhere
    assert await store.reject([tomb], "processing_failed", now, insert=True, keep_key=False) == [(buried, True)]
    retry = pending(event, "u2", key="TB")  # the client's retry books afresh
    assert await store.insert_pending([retry]) == [None]
    assert (await store.decide([retry], now + 2))[0].status is BookingStatus.HELD

    # a key that belongs to another booking: that one answers, as in decide, and nothing is inserted
    twin = pending(event, "u3", key="DL")
    assert await store.reject([twin], "processing_failed", now, insert=True) == [(stored, False)]
    assert await store.get_booking(twin.id) is None
    # the same new booking twice in one call: inserted once
    fresh = pending(event, "u4")
    first, second = await store.reject([fresh, fresh], "processing_failed", now, insert=True)
    assert first[1] is True and second == (first[0], False)
    # two new bookings with one key in one call: the first in line gets it, the second is answered by it
    one, two = pending(event, "u6", key="SHARED"), pending(event, "u6", key="SHARED")
    (got, changed_one), (other, changed_two) = await store.reject([one, two], "processing_failed", now, insert=True)
    assert (got.id, changed_one, other, changed_two) == (one.id, True, got, False)
    assert await store.get_booking(two.id) is None
    # a booking of an event that does not exist cannot be recorded
    ghost = replace(pending(event, "u5"), event_id="evt_that_never_existed")
    with pytest.raises(NotFound):
        await store.reject([ghost], "processing_failed", now, insert=True)
    assert await store.get_booking(ghost.id) is None
    assert await invariants(store, event) == Counts(99, 1, 0)
    assert await store.reject([], "processing_failed", now) == []


async def test_reject_does_not_need_the_seat_logic(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A booking whose decision always fails (a poison) can still be rejected."""
    event = await create(store)
    poison = pending(event, "u1", quantity=2)
    await store.insert_pending([poison])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the seat logic")

    monkeypatch.setattr(rules, "decide", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await store.decide([poison], time.time())
    [(rejected, changed)] = await store.reject([poison], "processing_failed", time.time())
    assert changed and rejected.reason == "processing_failed"
    assert await invariants(store, event) == Counts(100, 0, 0)


async def test_reject_and_decide_racing_from_two_processes(backend: Backend) -> None:
    """Many bookings decided by one store instance and rejected by another at once, stored beforehand
    or not: each booking ends held (or refused by the rules) or processing_failed, and both calls report
    that same stored state; the winner of each race is the only one that says it changed the booking."""
    deciders, rejecters = await backend.open_store(), await backend.open_store()
    event = await create(deciders, make_event(rows=4, seats_per_row=10, max_per_user=20))
    bookings = [pending(event, f"u{i % 7}", seats=[f"A-{1 + i // 10}-{1 + i % 10}"]) if i % 3 == 0
                else pending(event, f"u{i % 7}", quantity=1 + i % 2) for i in range(60)]
    await deciders.insert_pending(bookings[::2])  # half stored pending (embedded), half not yet (Kafka)
    rng = random.Random(7)
    decided: dict[str, list[Booking]] = {}
    rejected: dict[str, list[tuple[Booking, bool]]] = {}

    async def decide(batch: list[Booking]) -> None:
        while batch:  # one left pending (its last seats locked by another transaction) is decided again
            answers = await deciders.decide(batch, time.time(), insert=True)
            for b, d in zip(batch, answers, strict=True):
                if d.status is not BookingStatus.PENDING:
                    decided.setdefault(b.id, []).append(d)
            batch = [b for b, d in zip(batch, answers, strict=True) if d.status is BookingStatus.PENDING]

    async def reject(batch: list[Booking]) -> None:
        for b, r in zip(batch, await rejecters.reject(batch, "processing_failed", time.time(), insert=True),
                        strict=True):
            rejected.setdefault(b.id, []).append(r)

    async with trio.open_nursery() as nursery:
        order = list(bookings)
        rng.shuffle(order)
        for start in range(0, len(order), 4):
            nursery.start_soon(decide, order[start:start + 4])
        rng.shuffle(order)
        for start in range(0, len(order), 3):
            nursery.start_soon(reject, order[start:start + 3])

    winners: Counter[str] = Counter()
    for b in bookings:
        final = await rejecters.get_booking(b.id)
        assert final is not None and final.status is not BookingStatus.PENDING
        ((d,), ((r, changed),)) = decided[b.id], rejected[b.id]
        assert d == final == r, (d, final, r)
        assert changed is (final.reason == "processing_failed")
        winners["reject" if changed else "decide"] += 1
    taken = sum(len(b.seat_ids) for b in await deciders.bookings_of_event(event.id) if b.status is BookingStatus.HELD)
    assert await invariants(deciders, event) == Counts(40 - taken, taken, 0)
    assert sum(winners.values()) == len(bookings)


async def test_reject_and_decide_queued_on_one_lock_one_wins(databases: Databases) -> None:
    """PostgreSQL, deterministic: both calls wait on the booking's owner lock (held by a third session),
    then run one after the other. Whichever queued first wins; the other sees its result."""
    url = databases.create()
    decider, rejecter = PostgresStore(url), PostgresStore(url)
    for s in (decider, rejecter):
        await s.open()
    event = await decider.create_event(make_event())
    outcomes = [await _race_on_one_lock(url, decider, rejecter, pending(event, f"user{round_}"),
                                        stored=bool(round_ % 2), reject_first=round_ >= 3) for round_ in range(6)]
    assert outcomes == [BookingStatus.HELD] * 3 + [BookingStatus.REJECTED] * 3
    assert await invariants(decider, event) == Counts(97, 3, 0)
    for s in (decider, rejecter):
        await s.close()


async def _race_on_one_lock(url: str, decider: PostgresStore, rejecter: PostgresStore, booking: Booking, *,
                            stored: bool, reject_first: bool) -> BookingStatus:
    if stored:
        await decider.insert_pending([booking])
    answers: dict[str, Any] = {}

    async def decide() -> None:
        answers["decide"] = (await decider.decide([booking], time.time(), insert=True))[0]

    async def reject() -> None:
        answers["reject"] = (await rejecter.reject([booking], "processing_failed", time.time(), insert=True))[0]

    blocker = await trio.to_thread.run_sync(lambda: psycopg.connect(url))
    try:
        owner_lock = _lock_key("user", booking.event_id, booking.user_id)
        await trio.to_thread.run_sync(lambda: blocker.execute("SELECT pg_advisory_xact_lock(%s)", (owner_lock,)))
        async with trio.open_nursery() as nursery:
            for waiting, call in enumerate((reject, decide) if reject_first else (decide, reject), start=1):
                nursery.start_soon(call)
                # queued behind the blocker, in this order (another process's state: nothing to wait on)
                while await _advisory_waiters(url) < waiting:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(blocker.rollback)  # let them go
    finally:
        await trio.to_thread.run_sync(blocker.close)
    final = await decider.get_booking(booking.id)
    (rejected, changed) = answers["reject"]
    assert answers["decide"] == rejected == final
    assert changed is reject_first
    assert final is not None and final.status is (BookingStatus.REJECTED if reject_first else BookingStatus.HELD)
    return final.status


async def _advisory_waiters(url: str) -> int:
    def run() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()
            return int(row[0]) if row else 0

    return await trio.to_thread.run_sync(run)


# ---------------------------------------------------------------------- server key
async def test_server_key_is_stored_once_for_every_process(backend: Backend) -> None:
    stores = [await backend.open_store() for _ in range(4)]
    answers: list[bytes] = []

    async def ask(store: Store, candidate: bytes) -> None:
        answers.append(await store.server_key(candidate))

    async with trio.open_nursery() as nursery:  # four processes starting at once, each with its own idea
        for i, s in enumerate(stores):
            for j in range(3):
                nursery.start_soon(ask, s, bytes([i, j]) * 16)
    assert len(answers) == 12 and len(set(answers)) == 1
    key = answers[0]
    assert await stores[0].server_key(b"another") == key
    later = await backend.open_store()  # a restart keeps it
    assert await later.server_key(os.urandom(32)) == key
    assert len(await backend.sql("SELECT name FROM server_keys")) == 1


# ---------------------------------------------------------------------- seat map, statuses, first available
def python_seat_map(event_id: str, seats: Sequence[Any], form: str) -> bytes:
    """What the code before seat_map_json sent: store.seats() → dicts → orjson."""
    if form == "api":
        return orjson.dumps({"event_id": event_id, "seats": [seat_json(s) for s in seats]})
    return orjson.dumps({"eventId": event_id, "seats": [compat_seat_json(s) for s in seats]})


ODD = 'evt_"quoted"\\back\u00e9\u2028\u65e5\t'  # what JSON must escape, and what it need not


@pytest.mark.parametrize(("event_id", "vip"), [("evt_plain", "VIP2"), (ODD, "VIP2"), ("evt_odd_section", ODD)])
async def test_seat_map_json_is_what_python_builds(store: Store, event_id: str, vip: str) -> None:
    """Sections the API would refuse (`vip` = ODD) take the escaping path; the document is the same."""
    event = await create(store, replace(make_event(sections=(Section("A", 3, 4, 100), Section("B", 2, 5, 50),
                                                              Section(vip, 1, 3, 900))), id=event_id))
    now = time.time()
    held = await hold(store, event, "u1", seats=["A-1-2", "B-2-5"], now=now)
    sold = await hold(store, event, "u2", quantity=3, now=now)
    await store.confirm(sold.id, now)
    gone = await hold(store, event, "u3", seats=["B-1-1"], now=now)
    await store.cancel(gone.id, now)
    await hold(store, event, "u4", seats=["B-1-3"], now=now)
    seats = await store.seats(event.id)
    assert {s.status for s in seats} == {SeatStatus.AVAILABLE, SeatStatus.HELD, SeatStatus.SOLD}
    assert [s.position for s in seats] == list(range(1, 26))
    for form in ("api", "compat"):
        document = await store.seat_map_json(event.id, form)
        assert document == python_seat_map(event.id, seats, form)
    parsed = orjson.loads(await store.seat_map_json(event.id, "compat") or b"")
    assert parsed["seats"][1] == {"number": 2, "id": "A-1-2", "status": "LOCKED"}
    assert {s["status"] for s in parsed["seats"]} == {"AVAILABLE", "LOCKED", "BOOKED"}
    assert held.seat_ids == ("A-1-2", "B-2-5")
    assert await store.seat_map_json("evt_unknown", "api") is None
    assert await store.seat_map_json("evt_\x00", "compat") is None


async def test_seat_statuses_reads_only_the_seats_asked_for(store: Store) -> None:
    event = await create(store, make_event(rows=30, seats_per_row=30, max_per_user=20))
    held = await hold(store, event, "u1", seats=["A-1-1", "A-30-30"])
    sold = await hold(store, event, "u2", seats=["A-2-2"])
    await store.confirm(sold.id, time.time())
    asked = ["A-30-30", "A-2-2", "A-1-1", "A-1-1", "A-5-5", "Z-1-1", "A-99-1", "x\x00"]
    assert await store.seat_statuses(event.id, asked) == {
        "A-30-30": SeatStatus.HELD, "A-2-2": SeatStatus.SOLD, "A-1-1": SeatStatus.HELD, "A-5-5": SeatStatus.AVAILABLE}
    assert await store.seat_statuses(event.id, []) == {}
    assert await store.seat_statuses("evt_unknown", ["A-1-1"]) == {}
    many = [f"A-{r}-{n}" for r in range(1, 31) for n in range(1, 31)]  # 900 ids: more than one IN list
    statuses = await store.seat_statuses(event.id, many)
    assert len(statuses) == 900 and Counter(statuses.values())[SeatStatus.AVAILABLE] == 897
    assert held.seat_ids == ("A-1-1", "A-30-30")


async def test_first_available_in_map_order(store: Store) -> None:
    event = await create(store, make_event(sections=(Section("A", 1, 3, 1), Section("B", 1, 2, 1)),
                                           max_per_user=5))
    first = await store.first_available(event.id)
    assert first is not None and (first.id, first.position, first.status) == ("A-1-1", 1, SeatStatus.AVAILABLE)
    a = await hold(store, event, "u1", seats=["A-1-1", "A-1-2", "A-1-3"])
    seat = await store.first_available(event.id)
    assert seat is not None and (seat.id, seat.section, seat.row, seat.number, seat.position) == ("B-1-1", "B", 1, 1, 4)
    await hold(store, event, "u2", quantity=2)
    assert await store.first_available(event.id) is None  # sold out
    await store.cancel(a.id, time.time())
    assert (await store.first_available(event.id) or seat).id == "A-1-1"
    assert await store.first_available("evt_unknown") is None
    assert await store.first_available("evt_\x00") is None


# ---------------------------------------------------------------------- the new reads are indexed
def planned(kind: str) -> dict[str, tuple[str, tuple[Any, ...], str | None]]:
    """The stores' own statements of the cheap reads, with parameters, and the index each must use."""
    if kind == "sqlite":
        return {
            "edge_due": (sqlite_store._EDGE_DUE_SQL, (1.0, 5), "bookings_edge_due"),
            "first_available": (sqlite_store._FIRST_AVAILABLE_SQL, ("e",), "seats_available"),
            "seat_statuses": (sqlite_store._seat_statuses_sql(2), ("e", "A-1-1", "A-1-2"), None),
            "seat_map": (sqlite_store._SEAT_MAP_SQL["api"], ("e",), None),
        }
    return {
        "edge_due": (postgres_store._EDGE_DUE_SQL, (1.0, 5), "bookings_edge_due"),
        "first_available": (postgres_store._FIRST_AVAILABLE_SQL, ("e",), "seats_available"),
        "seat_statuses": (postgres_store._SEAT_STATUSES_SQL, ("e", ["A-1-1", "A-1-2"]), None),
        "seat_map": (postgres_store._SEAT_MAP_SQL["api"], ("e",), None),
    }


@pytest.mark.parametrize("query", ["edge_due", "first_available", "seat_statuses", "seat_map"])
async def test_the_new_reads_use_an_index(backend: Backend, store: Store, query: str) -> None:
    statement, params, index = planned(backend.kind)[query]
    if backend.kind == "sqlite":
        plan = " | ".join(str(r[-1]) for r in await backend.sql("EXPLAIN QUERY PLAN " + statement, params))
        assert not any(f"SCAN {table}" in plan for table in ("seats", "bookings", "events")), plan  # SEARCHes
        assert "TEMP B-TREE" not in plan, plan  # in index order, no sorting
    else:
        def explain() -> str:
            with psycopg.connect(backend.url or "", autocommit=True) as conn:
                conn.execute("SET enable_seqscan = off")  # tiny tables: ask whether an index can serve
                return " | ".join(r[0] for r in conn.execute("EXPLAIN " + statement, params).fetchall())

        plan = await trio.to_thread.run_sync(explain)
        assert "Index" in plan and "Seq Scan" not in plan, plan
    if index is not None:
        assert index in plan, plan


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("seed", [11, 12])
async def test_both_stores_answer_the_same(databases: Databases, tmp_path: Path, seed: int) -> None:
    """One random sequence of the new calls (with decisions and transitions around them), played against
    both stores: every answer, the outbox and the seat map documents must be the same."""
    stores: list[Store] = [SqliteStore(tmp_path / "parity.db"), PostgresStore(databases.create())]
    for s in stores:
        await s.open()
    rng = random.Random(seed)
    event = make_event(sections=(Section("A", 5, 8, 100), Section("B", 3, 5, 50)), max_per_user=6, hold_seconds=30)
    for s in stores:
        await s.create_event(event)
    seat_ids = [ref.id for ref in rules.seat_map(event)]
    now = 1_800_000_000.0
    known: list[Booking] = []

    async def both(call: Callable[[Store], Awaitable[Any]], unordered: bool = False) -> Any:
        answers = []
        for s in stores:
            try:
                answer = await call(s)
            except (InvalidTransition, NotFound) as exc:
                answer = type(exc)
            answers.append(sorted(answer, key=lambda b: b.id) if unordered else answer)
        assert answers[0] == answers[1], answers
        return answers[0]

    def new_booking() -> Booking:
        user = f"u{rng.randrange(8)}"
        if rng.random() < 0.5:
            return pending(event, user, seats=rng.sample(seat_ids, rng.randint(1, 2)),
                           key=rng.choice([None, None, "k1", "k2"]))
        return pending(event, user, quantity=rng.randint(1, 3))

    for _ in range(60):
        now += rng.choice([0.5, 1, 5, 31])
        roll = rng.random()
        if roll < 0.35:
            batch = [rng.choice(known) if known and rng.random() < 0.2 else new_booking()
                     for _ in range(rng.randint(1, 4))]
            known.extend(batch)
            await both(lambda s, batch=batch, t=now: s.decide(batch, t, insert=True))
        elif roll < 0.5:
            batch = [rng.choice(known) if known and rng.random() < 0.5 else new_booking()
                     for _ in range(rng.randint(1, 3))]
            known.extend(batch)
            keep = rng.random() < 0.5
            await both(lambda s, batch=batch, t=now, keep=keep: s.reject(batch, "processing_failed", t, insert=True,
                                                                          keep_key=keep))
        elif roll < 0.6 and known:
            chosen = rng.choice(known)
            await both(lambda s, b=chosen, t=now: s.cancel(b.id, t))
        elif roll < 0.7:
            # bookings of one batch share expires_at: the order among them is not specified
            await both(lambda s, t=now: s.expire_lapsed(t, 100), unordered=True)
        elif roll < 0.8:
            limit = rng.randint(1, 5)
            due = await both(lambda s, t=now, limit=limit: s.edge_due(t, limit))
            done = [b.id for b in due[: rng.randint(0, len(due))]]
            await both(lambda s, done=done: s.edge_done(done))
        else:
            asked = rng.sample(seat_ids, 5)
            await both(lambda s, asked=asked: s.seat_statuses(event.id, asked))
            await both(lambda s: s.first_available(event.id))
    for form in ("api", "compat"):
        await both(lambda s, form=form: s.seat_map_json(event.id, form))
    await both(lambda s: s.edge_due(now + 1000, 1000))
    final = await both(lambda s: s.bookings_of_event(event.id))
    seen = Counter(b.reason if b.status is BookingStatus.REJECTED else b.status.value for b in final)
    assert seen["processing_failed"] and seen["held"] and seen["expired"] + seen["cancelled"], seen  # not vacuous
    for s in stores:
        await invariants(s, event)
        await s.close()
