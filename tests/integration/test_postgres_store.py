"""PostgresStore against a real PostgreSQL: migrations, decisions, transitions, deadlines and races.

Needs TICKETBLITZ_DATABASE_URL (`eval "$(bash scripts/services.sh env)"`) and fails, never skips,
without it. Each module works in fresh databases `tb_test_<hex>`, dropped at the end.

The fixtures live here rather than in a conftest.py on purpose: pytest imports every conftest.py of a
rootdir without __init__.py files under the one module name `conftest`. The suites that do `from conftest
import Harness` would then get this directory's conftest once it has been collected.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ticketblitz.adapters.postgres_store import _MIGRATION_LOCK, MIGRATIONS, PostgresStore
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain import rules
from ticketblitz.domain.errors import InvalidTransition, NotFound, Unavailable
from ticketblitz.domain.model import (
    REJECTION_REASONS,
    Booking,
    BookingStatus,
    Counts,
    Event,
    SeatStatus,
    Section,
    new_booking_id,
    new_event_id,
)

URL_ENV = "TICKETBLITZ_DATABASE_URL"
TIMEOUT = 5.0


# ---------------------------------------------------------------------- databases
class Databases:
    """Fresh databases made through the admin URL, all dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    def create(self) -> str:
        name = f"tb_test_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return make_conninfo(self.admin_url, dbname=name)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.names:
                for attempt in range(10):
                    # End our own leftover sessions (a thread abandoned at a deadline). Not WITH (FORCE):
                    # that also needs the right to end autovacuum, which plain DROP DATABASE stops itself.
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()",
                        (name,),
                    )
                    try:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt == 9:
                            raise
                        time.sleep(0.5)


@pytest.fixture(scope="module")
def databases() -> Iterator[Databases]:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.fail(f'{URL_ENV} is not set: run `eval "$(bash scripts/services.sh env)"` first', pytrace=False)
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        where = {k: v for k, v in conninfo_to_dict(url).items() if k != "password"}
        pytest.fail(f"PostgreSQL at {where} is unreachable ({exc}); start it with `bash scripts/services.sh up`",
                    pytrace=False)
    dbs = Databases(url)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="module")
def database_url(databases: Databases) -> str:
    return databases.create()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(database_url, timeout=TIMEOUT)
    await s.open()
    yield s
    await s.close()


async def query(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement on a connection of its own (outside the store), in a worker thread."""

    def run() -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    return await trio.to_thread.run_sync(run)


# ---------------------------------------------------------------------- helpers
def make_event(rows: int = 10, seats_per_row: int = 10, *, max_per_user: int = 4, hold_seconds: int = 600,
               sections: tuple[Section, ...] | None = None) -> Event:
    return Event(id=new_event_id(), name="Test night", sections=sections or (Section("A", rows, seats_per_row, 5000),),
                 max_per_user=max_per_user, hold_seconds=hold_seconds, created_at=time.time())


def pending(event: Event, user: str, *, seats: Sequence[str] = (), quantity: int = 1,
            key: str | None = None) -> Booking:
    now = time.time()
    named = tuple(seats)
    return Booking(id=new_booking_id(), event_id=event.id, user_id=user, quantity=len(named) or quantity,
                   requested_seats=named, created_at=now, updated_at=now, idempotency_key=key,
                   fingerprint=rules.request_fingerprint(user, named, None if named else quantity))


async def check_invariants(store: PostgresStore, event: Event) -> Counts:
    """API.md invariants 1, 2, 4 and 5 over the store's rows; returns the counts."""
    stored = await store.get_event(event.id)
    assert stored is not None and stored.counts is not None
    seats = {s.id: s.status for s in await store.seats(event.id)}
    bookings = await store.bookings_of_event(event.id)
    owner: dict[str, str] = {}
    per_user: Counter[str] = Counter()
    for b in bookings:
        if b.status in (BookingStatus.HELD, BookingStatus.CONFIRMED):
            assert len(b.seat_ids) == b.quantity
            per_user[b.user_id] += b.quantity
            for seat in b.seat_ids:
                assert seat not in owner, f"seat {seat} given to {owner[seat]} and {b.id}"
                owner[seat] = b.id
                expected = SeatStatus.HELD if b.status is BookingStatus.HELD else SeatStatus.SOLD
                assert seats[seat] is expected
        elif b.status is BookingStatus.REJECTED:
            assert b.reason in REJECTION_REASONS and b.seat_ids == ()
    assert all(seat in owner for seat, status in seats.items() if status is not SeatStatus.AVAILABLE)
    counts = stored.counts
    assert counts.total == stored.capacity == len(seats)
    tally = Counter(seats.values())
    assert counts == Counts(tally[SeatStatus.AVAILABLE], tally[SeatStatus.HELD], tally[SeatStatus.SOLD])
    assert counts == await store.seat_counts(event.id)
    assert all(n <= stored.max_per_user for n in per_user.values()), per_user.most_common(3)
    keys = Counter(b.idempotency_key for b in bookings if b.idempotency_key is not None)
    assert all(n == 1 for n in keys.values())
    return counts


async def decide_one(store: PostgresStore, booking: Booking, now: float | None = None) -> Booking:
    (decided,) = await store.decide([booking], time.time() if now is None else now, insert=True)
    return decided


# ---------------------------------------------------------------------- schema
async def test_migrations_are_versioned_idempotent_and_safe_to_race(databases: Databases) -> None:
    url = databases.create()
    racers = [PostgresStore(url, pool_size=1) for _ in range(4)]  # four processes starting at once
    async with trio.open_nursery() as nursery:
        for s in racers:
            nursery.start_soon(s.open)
    expected = list(range(1, len(MIGRATIONS) + 1))
    assert sorted(v for s in racers for v in s.applied_migrations) == expected  # each applied exactly once
    recorded = await query(url, "SELECT version, applied_at FROM schema_version ORDER BY version")
    assert [r[0] for r in recorded] == expected

    again = PostgresStore(url, pool_size=1)
    await again.open()
    assert again.applied_migrations == []  # nothing left to do
    assert await query(url, "SELECT version, applied_at FROM schema_version ORDER BY version") == recorded
    for s in [*racers, again]:
        await s.close()


async def test_open_waits_for_another_process_migrating_within_its_deadline(databases: Databases) -> None:
    url = databases.create()
    migrating = await trio.to_thread.run_sync(lambda: psycopg.connect(url))
    try:  # another process holds the migration lock (its migration is still running)
        await trio.to_thread.run_sync(lambda: migrating.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,)))
        late = PostgresStore(url, timeout=1.0, pool_size=1)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await late.open()
        assert time.monotonic() - started < 2.0
        with pytest.raises(Unavailable):
            await late.ping()  # not left half-open
    finally:
        await trio.to_thread.run_sync(migrating.close)
    await late.open()
    assert late.applied_migrations == list(range(1, len(MIGRATIONS) + 1))
    await late.close()


async def test_the_schema_itself_refuses_broken_states(store: PostgresStore, database_url: str) -> None:
    event = await store.create_event(make_event(rows=1, seats_per_row=3))
    held = await decide_one(store, pending(event, "u1", seats=["A-1-1"], key="K"))
    other = await decide_one(store, pending(event, "u2", seats=["A-1-2"]))
    broken = {
        "counts that do not sum to capacity": ("UPDATE events SET held = held + 1 WHERE id = %s", (event.id,)),
        "an available seat that keeps its owner": (
            "UPDATE seats SET status = 'available' WHERE event_id = %s AND id = 'A-1-1'", (event.id,)),
        "a taken seat without its user": (
            "UPDATE seats SET status = 'held', booking_id = %s WHERE event_id = %s AND id = 'A-1-3'",
            (held.id, event.id)),
        "a seat whose user did not make its booking": (
            "UPDATE seats SET user_id = 'u1' WHERE event_id = %s AND id = 'A-1-2'", (event.id,)),
        "one Idempotency-Key on two bookings": ("UPDATE bookings SET idem_key = 'K' WHERE id = %s", (other.id,)),
        "an unknown seat status": (
            "UPDATE seats SET status = 'gone' WHERE event_id = %s AND id = 'A-1-3'", (event.id,)),
    }
    for what, (statement, params) in broken.items():
        with pytest.raises(psycopg.errors.IntegrityError):
            await query(database_url, statement, params)
            pytest.fail(f"the schema accepted {what}")
    assert await check_invariants(store, event) == Counts(1, 2, 0)


async def test_unreachable_or_closed_store_is_unavailable() -> None:
    nowhere = PostgresStore("postgresql://nobody:nothing@127.0.0.1:1/none", timeout=1.0, pool_size=1)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await nowhere.open()
    assert info.value.component == "store"
    assert time.monotonic() - started < 3.0
    with pytest.raises(Unavailable):
        await nowhere.ping()  # never opened


# ---------------------------------------------------------------------- events
async def test_create_event_stores_one_row_per_seat_in_map_order(store: PostgresStore) -> None:
    event = make_event(sections=(Section("A", 2, 3, 100), Section("B", 1, 2, 50)))
    created = await store.create_event(event)
    assert created.counts == Counts(8, 0, 0)
    stored = await store.get_event(event.id)
    assert stored == created
    seats = await store.seats(event.id)
    assert [s.id for s in seats] == ["A-1-1", "A-1-2", "A-1-3", "A-2-1", "A-2-2", "A-2-3", "B-1-1", "B-1-2"]
    assert [s.position for s in seats] == list(range(1, 9))
    assert {s.status for s in seats} == {SeatStatus.AVAILABLE}
    assert await store.seat_counts(event.id) == Counts(8, 0, 0)

    # ids from a URL may hold what PostgreSQL text cannot (NUL): nothing has them, like in SqliteStore
    assert (await store.get_event("evt_\x00"), await store.seats("evt_\x00")) == (None, [])
    assert await store.get_booking("bkg_\x00") is None and await store.bookings_of_event("\x00") == []
    for call in (store.confirm, store.cancel):
        with pytest.raises(NotFound):
            await call("bkg_\x00", time.time())

    later = await store.create_event(make_event(rows=1, seats_per_row=1))
    ids = [e.id for e in await store.list_events()]
    assert ids.index(event.id) < ids.index(later.id)  # creation order
    assert await store.get_event("evt_unknown") is None
    await store.ping()


async def test_create_event_with_200000_seats_is_fast(store: PostgresStore) -> None:
    event = make_event(rows=200, seats_per_row=1000, max_per_user=20)
    started = time.monotonic()
    await store.create_event(event)
    elapsed = time.monotonic() - started
    assert elapsed < 10.0, f"creating 200,000 seats took {elapsed:.1f}s"
    assert await store.seat_counts(event.id) == Counts(200_000, 0, 0)

    # best available still reads a window, not the whole event
    started = time.monotonic()
    held = await decide_one(store, pending(event, "u1", quantity=20))
    assert held.status is BookingStatus.HELD and held.seat_ids[0] == "A-1-1" and held.seat_ids[-1] == "A-1-20"
    assert time.monotonic() - started < 1.0


# ---------------------------------------------------------------------- decisions
async def test_named_claim_then_the_same_seat_is_refused(store: PostgresStore) -> None:
    event = await store.create_event(make_event(hold_seconds=300))
    now = time.time()
    held = await decide_one(store, pending(event, "u1", seats=["A-1-1", "A-1-2"]), now)
    assert held.status is BookingStatus.HELD
    assert held.seat_ids == ("A-1-1", "A-1-2") and held.expires_at == now + 300 and held.reason is None
    refused = await decide_one(store, pending(event, "u2", seats=["A-1-2", "A-1-3"]))
    assert (refused.status, refused.reason, refused.seat_ids) == (BookingStatus.REJECTED, "seat_unavailable", ())

    # two bookings of one batch naming the same seat: the first in line gets it
    first, second = await store.decide(
        [pending(event, "u3", seats=["A-2-1"]), pending(event, "u4", seats=["A-2-1"])], time.time(), insert=True
    )
    assert (first.status, second.reason) == (BookingStatus.HELD, "seat_unavailable")
    assert await check_invariants(store, event) == Counts(97, 3, 0)
    assert (await store.get_booking(refused.id)) == refused


async def test_quantity_picks_adjacent_seats(store: PostgresStore) -> None:
    event = await store.create_event(make_event(rows=2, seats_per_row=4))
    await decide_one(store, pending(event, "a", seats=["A-1-2"]))
    held = await decide_one(store, pending(event, "b", quantity=3))
    assert held.seat_ids == ("A-2-1", "A-2-2", "A-2-3")  # row 1 has three seats, but not together

    # best-available leaves a seat named later in the same batch to the booking that names it
    event = await store.create_event(make_event(rows=1, seats_per_row=4))
    quantity, named = await store.decide(
        [pending(event, "c", quantity=1), pending(event, "d", seats=["A-1-1"])], time.time(), insert=True
    )
    assert (quantity.seat_ids, named.seat_ids) == (("A-1-2",), ("A-1-1",))
    await check_invariants(store, event)


async def test_quantity_widens_the_window_to_find_adjacent_seats(store: PostgresStore) -> None:
    # rows 1-20 keep only every other seat: the first window (64 seats) has no two seats side by side
    event = await store.create_event(make_event(rows=40, seats_per_row=10))
    taken = [pending(event, f"u{row}-{n}", seats=[f"A-{row}-{n}"]) for row in range(1, 21) for n in (2, 4, 6, 8, 10)]
    assert {b.status for b in await store.decide(taken, time.time(), insert=True)} == {BookingStatus.HELD}
    pair = await decide_one(store, pending(event, "pair", quantity=2))
    assert pair.seat_ids == ("A-21-1", "A-21-2")
    await check_invariants(store, event)


async def test_per_user_limit(store: PostgresStore) -> None:
    event = await store.create_event(make_event(max_per_user=4))
    assert (await decide_one(store, pending(event, "u1", quantity=3))).status is BookingStatus.HELD
    over = await decide_one(store, pending(event, "u1", quantity=2))
    assert (over.status, over.reason) == (BookingStatus.REJECTED, "limit_exceeded")
    named = await decide_one(store, pending(event, "u1", seats=["A-9-1", "A-9-2"]))
    assert named.reason == "limit_exceeded"
    assert (await decide_one(store, pending(event, "u1", quantity=1))).status is BookingStatus.HELD

    # within one batch the limit counts what the batch already gave
    batch = [pending(event, "u2", quantity=2), pending(event, "u2", quantity=2), pending(event, "u2", quantity=1)]
    assert [b.reason for b in await store.decide(batch, time.time(), insert=True)] == [None, None, "limit_exceeded"]

    # seats given back count no more
    first = (await store.bookings_of_event(event.id))[0]
    await store.cancel(first.id, time.time())
    assert (await decide_one(store, pending(event, "u1", quantity=3))).status is BookingStatus.HELD
    assert await check_invariants(store, event) == Counts(100 - 8, 8, 0)


async def test_sold_out(store: PostgresStore) -> None:
    event = await store.create_event(make_event(rows=1, seats_per_row=5))
    assert (await decide_one(store, pending(event, "u1", quantity=4))).status is BookingStatus.HELD
    short = await decide_one(store, pending(event, "u2", quantity=2))
    assert (short.status, short.reason) == (BookingStatus.REJECTED, "sold_out")
    last = await decide_one(store, pending(event, "u2", quantity=1))
    assert last.seat_ids == ("A-1-5",)
    assert (await decide_one(store, pending(event, "u3", quantity=1))).reason == "sold_out"
    assert (await decide_one(store, pending(event, "u3", seats=["A-1-1"]))).reason == "seat_unavailable"
    assert await check_invariants(store, event) == Counts(0, 5, 0)


async def test_redelivery_returns_the_first_decision(store: PostgresStore) -> None:
    event = await store.create_event(make_event())
    booking = pending(event, "u1", quantity=2)
    await store.insert_pending([booking])
    (first,) = await store.decide([booking], time.time())
    counts = await check_invariants(store, event)
    (again,) = await store.decide([booking], time.time() + 5)
    assert again == first  # as stored: same seats, same expiry, nothing claimed twice
    assert await check_invariants(store, event) == counts

    # the same booking twice in one batch is decided once
    twice = pending(event, "u2", quantity=1)
    one, two = await store.decide([twice, twice], time.time(), insert=True)
    assert one == two and one.status is BookingStatus.HELD
    assert await check_invariants(store, event) == Counts(97, 3, 0)

    with pytest.raises(NotFound):
        await store.decide([pending(event, "u3")], time.time())  # never stored, and no insert


async def test_insert_with_an_id_already_stored(store: PostgresStore) -> None:
    event = await store.create_event(make_event())
    booking = pending(event, "u1", quantity=1)
    assert await store.insert_pending([booking]) == [None]
    assert await store.insert_pending([booking]) == [booking]  # the stored one: not an error
    assert await store.pending_bookings(100) == [booking]
    held = await decide_one(store, booking)
    assert held.status is BookingStatus.HELD
    assert await decide_one(store, booking) == held  # inserted before, decided before: as stored
    assert [b.id for b in await store.bookings_of_event(event.id)] == [booking.id]


async def test_an_idempotency_key_yields_one_booking(store: PostgresStore) -> None:
    event = await store.create_event(make_event())
    first = pending(event, "u1", quantity=1, key="K")
    copy = pending(event, "u1", quantity=1, key="K")  # another id, the same key
    a, b = await store.decide([first, copy], time.time(), insert=True)
    assert a.id == b.id == first.id and a.status is BookingStatus.HELD
    assert [x.id for x in await store.bookings_of_event(event.id)] == [first.id]
    assert (event.id, "K", a.id, a.fingerprint) in (await store.edge_snapshot()).keys
    assert await store.insert_pending([pending(event, "u1", key="K")]) == [a]

    # the same key on another event is another booking
    other = await store.create_event(make_event())
    assert await store.insert_pending([pending(other, "u1", key="K")]) == [None]

    # a key held by a stored pending booking outside the batch answers with that booking as it is
    waiting = pending(event, "u2", key="W")
    await store.insert_pending([waiting])
    (answer,) = await store.decide([pending(event, "u2", key="W")], time.time(), insert=True)
    assert answer == waiting
    await check_invariants(store, event)


# ---------------------------------------------------------------------- transitions
async def test_confirm_cancel_and_expire(store: PostgresStore) -> None:
    event = await store.create_event(make_event(hold_seconds=60))
    now = time.time()
    sold, cancelled, lapsed = [await decide_one(store, pending(event, u, quantity=2), now) for u in ("a", "b", "c")]
    assert await check_invariants(store, event) == Counts(94, 6, 0)

    confirmed, changed = await store.confirm(sold.id, now + 1)
    assert (confirmed.status, changed) == (BookingStatus.CONFIRMED, True)
    assert await store.confirm(sold.id, now + 2) == (confirmed, False)  # idempotent
    with pytest.raises(InvalidTransition):
        await store.cancel(sold.id, now + 2)

    released = await store.cancel(cancelled.id, now + 3)
    assert released.status is BookingStatus.CANCELLED
    for call in (store.cancel, store.confirm):
        with pytest.raises(InvalidTransition):
            await call(cancelled.id, now + 4)
    assert await check_invariants(store, event) == Counts(96, 2, 2)

    with pytest.raises(InvalidTransition):
        await store.confirm(lapsed.id, now + 61)  # past expires_at, even before the sweeper ran
    assert await store.expire_lapsed(now + 30, 10) == []
    (expired,) = await store.expire_lapsed(now + 61, 10)
    assert (expired.id, expired.status) == (lapsed.id, BookingStatus.EXPIRED)
    assert await store.get_booking(lapsed.id) == expired
    assert await check_invariants(store, event) == Counts(98, 0, 2)

    for call in (store.cancel, store.confirm):
        with pytest.raises(NotFound):
            await call("bkg_unknown", now)


async def test_expire_lapsed_honours_the_limit(store: PostgresStore) -> None:
    event = await store.create_event(make_event(hold_seconds=5))
    now = time.time()
    await store.decide([pending(event, f"u{i}") for i in range(3)], now, insert=True)
    assert len(await store.expire_lapsed(now + 5, 2)) == 2
    assert len(await store.expire_lapsed(now + 5, 2)) == 1
    assert await check_invariants(store, event) == Counts(100, 0, 0)


async def test_edge_snapshot(store: PostgresStore) -> None:
    event = await store.create_event(make_event(max_per_user=3))
    held = await decide_one(store, pending(event, "u1", seats=["A-1-1"], key="k1"))
    waiting = pending(event, "u2", key="k2")
    await store.insert_pending([waiting])
    snap = await store.edge_snapshot()
    assert (event.id, 99, 3) in snap.events
    assert [o for o in snap.owned if o[0] == event.id] == [(event.id, "u1", "A-1-1", held.id)]
    assert {k for k in snap.keys if k[0] == event.id} == {
        (event.id, "k1", held.id, held.fingerprint), (event.id, "k2", waiting.id, waiting.fingerprint)}
    assert waiting in snap.pending


# ---------------------------------------------------------------------- deadlines
async def test_a_call_blocked_by_a_locked_row_ends_unavailable_and_changes_nothing(database_url: str) -> None:
    timeout = 1.0
    store = PostgresStore(database_url, timeout=timeout, pool_size=2)
    await store.open()
    event = await store.create_event(make_event())
    held = await decide_one(store, pending(event, "u0", seats=["A-1-1"]))
    counts = await check_invariants(store, event)

    blocker = await trio.to_thread.run_sync(lambda: psycopg.connect(database_url))
    try:
        # another process's open transaction holds every seat row of the event
        await trio.to_thread.run_sync(
            lambda: blocker.execute("SELECT 1 FROM seats WHERE event_id = %s FOR UPDATE", (event.id,))
        )
        named = pending(event, "u1", seats=["A-5-5"])
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await store.decide([named], time.time(), insert=True)
        assert info.value.component == "store"
        assert time.monotonic() - started < timeout + 1.0
        assert await store.get_booking(named.id) is None  # the insert was rolled back with the rest

        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.confirm(held.id, time.time())
        assert time.monotonic() - started < timeout + 1.0
        assert (await store.get_booking(held.id)) == held
        assert await check_invariants(store, event) == counts
    finally:
        await trio.to_thread.run_sync(blocker.close)

    # once the other transaction ends, the same calls go through
    assert (await decide_one(store, named)).status is BookingStatus.HELD
    assert (await store.confirm(held.id, time.time()))[1] is True
    await store.close()


# ---------------------------------------------------------------------- races
async def run_consumers(stores: Sequence[PostgresStore], bookings: Sequence[Booking], *, tasks_per_store: int,
                        max_batch: int, seed: int) -> Counter[str]:
    """Decide `bookings` from many tasks over several stores (processes), in small random batches, as
    queue consumers would; an Unavailable batch is retried (at-least-once), and so is a booking the store
    left pending (the last seats still locked by another transaction: the Decider retries those too).
    Returns outcome counts."""
    todo = list(bookings)
    rng = random.Random(seed)
    outcome: Counter[str] = Counter()

    async def consumer(store: PostgresStore) -> None:
        while todo:
            batch = [todo.pop() for _ in range(min(len(todo), rng.randint(1, max_batch)))]
            try:
                decided = await store.decide(batch, time.time(), insert=True)
            except Unavailable:
                outcome["retried"] += 1
                todo.extend(batch)
                continue
            again = [b for b, d in zip(batch, decided, strict=True) if d.status is BookingStatus.PENDING]
            outcome["left pending"] += len(again)
            todo.extend(again)

    async with trio.open_nursery() as nursery:
        for store in stores:
            for _ in range(tasks_per_store):
                nursery.start_soon(consumer, store)
    return outcome


@pytest.mark.parametrize("seed", [1, 2])
async def test_two_processes_decide_400_bookings_for_100_seats(database_url: str, seed: int) -> None:
    stores = [PostgresStore(database_url, timeout=TIMEOUT, pool_size=8) for _ in range(2)]
    for s in stores:
        await s.open()
    event = await stores[0].create_event(make_event(rows=10, seats_per_row=10, max_per_user=4))
    rng = random.Random(seed)

    def any_seat() -> str:
        return f"A-{rng.randint(1, 10)}-{rng.randint(1, 10)}"

    bookings = [pending(event, f"greedy{g}", seats=[any_seat()]) if i % 2 else pending(event, f"greedy{g}")
                for g in range(2) for i in range(20)]  # 40 racing the limit of 4
    bookings += [pending(event, f"u{u}", seats=[any_seat()]) if rng.random() < 0.5 else pending(event, f"u{u}")
                 for u in range(180) for _ in range(2)]
    rng.shuffle(bookings)
    assert len(bookings) == 400

    outcome = await run_consumers(stores, bookings, tasks_per_store=16, max_batch=8, seed=seed)
    assert outcome["retried"] == 0

    decided = await stores[1].bookings_of_event(event.id)
    assert len(decided) == 400
    statuses = Counter(b.status for b in decided)
    assert statuses[BookingStatus.PENDING] == 0
    assert statuses[BookingStatus.HELD] == 100  # every seat given, once
    assert await check_invariants(stores[0], event) == Counts(0, 100, 0)
    held_by_user = Counter(b.user_id for b in decided if b.status is BookingStatus.HELD)
    assert max(held_by_user.values()) <= 4
    for s in stores:
        await s.close()


async def test_one_user_racing_the_limit_from_two_processes(database_url: str) -> None:
    stores = [PostgresStore(database_url, timeout=TIMEOUT, pool_size=8) for _ in range(2)]
    for s in stores:
        await s.open()
    event = await stores[0].create_event(make_event(rows=10, seats_per_row=10, max_per_user=4))
    # quantity bookings take row 1 first; named ones ask for distinct seats of rows 5-10
    named = [f"A-{row}-{n}" for row in range(5, 11) for n in range(1, 11)]
    bookings = [pending(event, "greedy", seats=[named[i]]) if i % 2 else pending(event, "greedy") for i in range(40)]

    async def one(store: PostgresStore, booking: Booking) -> None:
        await store.decide([booking], time.time(), insert=True)

    async with trio.open_nursery() as nursery:
        for i, booking in enumerate(bookings):
            nursery.start_soon(one, stores[i % 2], booking)

    decided = await stores[0].bookings_of_event(event.id)
    assert Counter(b.reason for b in decided) == {None: 4, "limit_exceeded": 36}
    assert await check_invariants(stores[1], event) == Counts(96, 4, 0)
    for s in stores:
        await s.close()


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("seed", [3, 4])
async def test_same_answers_as_the_embedded_store(databases: Databases, tmp_path: Any, seed: int) -> None:
    """One random sequence of batches and transitions, played against SqliteStore and PostgresStore:
    every answer and the final seat map must be the same."""
    embedded = SqliteStore(tmp_path / "parity.db")
    store = PostgresStore(databases.create())  # its own database: expire_lapsed spans every event
    for s in (embedded, store):
        await s.open()
    rng = random.Random(seed)
    event = make_event(sections=(Section("A", 6, 8, 100), Section("B", 4, 5, 50)), max_per_user=6, hold_seconds=60)
    for s in (embedded, store):
        await s.create_event(event)
    now = 1_800_000_000.0  # a fixed clock: the run depends on the seed only
    seats = [ref.id for ref in rules.seat_map(event)]
    users = [f"u{i}" for i in range(12)]
    earlier: list[Booking] = []
    for _ in range(40):
        batch = []
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.15 and earlier:
                batch.append(rng.choice(earlier))  # a redelivery
            elif roll < 0.5:
                start = rng.randrange(len(seats) - 3)
                batch.append(pending(event, rng.choice(users), seats=seats[start:start + rng.randint(1, 3)],
                                     key=rng.choice([None, None, "k1", "k2"])))
            else:
                batch.append(pending(event, rng.choice(users), quantity=rng.randint(1, 4)))
        now += 1
        answers = [await s.decide(batch, now, insert=True) for s in (embedded, store)]
        assert answers[0] == answers[1]
        earlier.extend(batch)
        held = [b for b in answers[0] if b.status is BookingStatus.HELD]
        if held and rng.random() < 0.5:
            chosen = rng.choice(held)
            transition = rng.choice(["confirm", "cancel"])
            results: list[object] = []
            for s in (embedded, store):
                try:
                    results.append(await (s.confirm(chosen.id, now) if transition == "confirm"
                                          else s.cancel(chosen.id, now)))
                except InvalidTransition as exc:
                    results.append(type(exc))
            assert results[0] == results[1]
        if rng.random() < 0.2:
            now += 30
            expired = [await s.expire_lapsed(now, 100) for s in (embedded, store)]
            # bookings of one batch share expires_at: the order among them is not specified
            assert sorted(expired[0], key=lambda b: b.id) == sorted(expired[1], key=lambda b: b.id)
    assert await embedded.seats(event.id) == await store.seats(event.id)
    assert await embedded.get_event(event.id) == await store.get_event(event.id)
    assert await embedded.bookings_of_event(event.id) == await store.bookings_of_event(event.id)
    await check_invariants(store, event)
    for s in (embedded, store):
        await s.close()


# ---------------------------------------------------------------------- fencing
@pytest.fixture(params=["postgres", "sqlite"])
async def fenced_store(request: pytest.FixtureRequest, database_url: str, tmp_path: Any
                       ) -> AsyncIterator[PostgresStore | SqliteStore]:
    """Both stores check fencing numbers the same way."""
    store: PostgresStore | SqliteStore = (
        PostgresStore(database_url) if request.param == "postgres" else SqliteStore(tmp_path / "fence.db"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_fencing_rejects_a_stale_token(fenced_store: PostgresStore | SqliteStore) -> None:
    """A writer whose lock lapsed (an older fencing number than the seat's last write) cannot write."""
    store = fenced_store
    event = make_event()
    await store.create_event(event)
    now = time.time()
    first = pending(event, "u1", seats=["A-1-1"])
    (held,) = await store.decide([first], now, insert=True, fences={(event.id, "A-1-1"): 5})
    assert held.status is BookingStatus.HELD
    assert await store.fence_floor() >= 5
    await store.cancel(first.id, now)  # the seat is available again ...
    stale = pending(event, "u2", seats=["A-1-1"])
    (answer,) = await store.decide([stale], now, insert=True, fences={(event.id, "A-1-1"): 3})
    assert answer.status is BookingStatus.PENDING  # ... but a paused holder of lease 3 must not take it
    assert {s.id: s.status for s in await store.seats(event.id)}["A-1-1"] is SeatStatus.AVAILABLE
    fresh = pending(event, "u3", seats=["A-1-1"])
    (ok,) = await store.decide([fresh], now, insert=True, fences={(event.id, "A-1-1"): 6})
    assert ok.status is BookingStatus.HELD
    (later,) = await store.decide([stale], now, fences={(event.id, "A-1-1"): 7})  # retried under a new lock
    assert later.status is BookingStatus.REJECTED and later.reason == "seat_unavailable"
    assert await store.fence_floor() == 6


async def test_not_sold_out_while_another_transaction_still_holds_the_last_seats(database_url: str) -> None:
    """Best available at the end of a sale: the only available seats are locked by another transaction
    (another process deciding, which may give some back) for longer than the store waits. The booking
    stays pending (its consumer decides it again) instead of "sold out" with seats left; once the other
    transaction ends without taking them, it gets one."""
    store = PostgresStore(database_url, timeout=TIMEOUT)
    await store.open()
    event = await store.create_event(make_event(rows=1, seats_per_row=3))
    first = await decide_one(store, pending(event, "u1", quantity=2))
    assert first.status is BookingStatus.HELD
    blocker = await trio.to_thread.run_sync(lambda: psycopg.connect(database_url))
    try:  # another process's open transaction has locked the last available seat
        await trio.to_thread.run_sync(lambda: blocker.execute(
            "SELECT 1 FROM seats WHERE event_id = %s AND status = 'available' FOR UPDATE", (event.id,)))
        late = pending(event, "u2", quantity=1)
        undecided = await decide_one(store, late)
        assert undecided.status is BookingStatus.PENDING and undecided.reason is None
        assert (await store.get_booking(late.id)).status is BookingStatus.PENDING  # type: ignore[union-attr]
    finally:
        await trio.to_thread.run_sync(blocker.close)  # it ends without taking the seat
    decided = await decide_one(store, late)
    assert decided.status is BookingStatus.HELD and decided.seat_ids == ("A-1-3",)
    assert (await decide_one(store, pending(event, "u3", quantity=1))).reason == "sold_out"  # truly sold out
    assert await check_invariants(store, event) == Counts(0, 3, 0)
    await store.close()
