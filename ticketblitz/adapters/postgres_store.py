"""The distributed store: PostgreSQL through psycopg 3, the one truth that every process shares.

psycopg's AsyncConnection does not run under Trio, so each call borrows a connection from a sync
`ConnectionPool` in a worker thread, at most `pool_size` threads at a time. Each call has a deadline,
counted from the call, enforced three ways: `trio.fail_after` around the thread (which is abandoned
then), a timeout on the wait for a pooled connection, and `statement_timeout`/`lock_timeout` inside
PostgreSQL, so that a transaction that overruns is rolled back by the server, never left half-done.

What a caller hears is what happened (`_call`, `_Attempt`):

- Until COMMIT is sent, the caller's giving up wins. Before sending it, the thread checks, under a
  lock it shares with the caller, that the caller still waits and the deadline has not passed, else it
  rolls back; a caller that gives up (its deadline, or a cancellation from outside) marks the attempt
  abandoned under the same lock. So COMMIT is never sent for a caller that heard `Unavailable`.
- Once COMMIT is sent, its outcome wins. A caller whose deadline passes meanwhile, or whose thread
  lost its connection in the middle of COMMIT, waits `_COMMIT_GRACE` more for the answer, then asks
  PostgreSQL on a fresh connection how the transaction ended (`pg_xact_status` of the id read at its
  start), terminating its backend first if the transaction is still open (the COMMIT has not arrived),
  so that the answer is final: the result if it committed, `Unavailable` if it did not. Such a caller
  waits at most about timeout + twice `_COMMIT_GRACE` + `_STATUS_TIMEOUT` + 3 s.
- Residual: when PostgreSQL cannot answer that question either (it is down or unreachable), the caller
  hears `Unavailable` although the COMMIT may have landed. Every write here is safe to repeat: decide
  and reject return a booking already decided as stored, confirm is idempotent, insert_pending returns
  the stored booking; a repeated cancel answers InvalidTransition, and its edge release is in the outbox
  (`edge_due`), written by the same transaction. A caller cancelled from outside after COMMIT was sent
  hears nothing at all (its follow-ups are the outbox's to redo). Single statements outside a
  transaction (`transaction=False`) are reads, and ANALYZE.

Several processes run `decide` at once. What keeps them exact:

- first, transaction-level advisory locks per (event, user) and per (event, Idempotency-Key), taken
  in sorted order: nothing else can change a user's seat count or claim a key while a batch decides;
- named seats are locked `FOR UPDATE` in map order before any decision: whoever holds them decides;
- best-available seats come from a window of rows that nobody else is claiming (`FOR UPDATE SKIP
  LOCKED`, alf.io's pattern, with the locks dropped right after the read). The batch is planned in
  memory with `rules.decide`, then only the seats it picked are locked, skipping rows others hold;
  a seat lost that way means planning again without it. Deciders skip each other instead of queueing;
- every claim is a conditional write (`status = 'available'`) with its row count checked per booking,
  and a seat row has room for exactly one booking;
- the counters on `events` are written last, in id order.

So a transaction only ever waits for locks that every transaction takes in the same order, or for a
transaction that is not waiting on it. The one exception is the brief wait for contested seats at the
end of a sale (`_Candidates.wait_for_contested`), which gives up before PostgreSQL's deadlock check runs.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import psycopg
import trio
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..domain import rules
from ..domain.errors import NotFound, Unavailable
from ..domain.model import Booking, BookingStatus, Counts, Event, Seat, SeatRef, SeatStatus
from ..domain.waiting_room import Line, Tick, Ticket
from ..ports import EdgeSnapshot, Fences
from . import waiting_room_sql
from .rows import (
    BOOKING_COLUMN_COUNT,
    BOOKING_COLUMNS,
    EVENT_COLUMNS,
    booking_from_row,
    event_from_row,
    rejected_booking,
    waiting_room_text,
)

T = TypeVar("T")
Conn = psycopg.Connection[Any]

MIGRATIONS: list[str] = [
    # 1: events with their counters, bookings, one row per seat
    """
    CREATE TABLE events (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        name text NOT NULL,
        venue text,
        starts_at text,
        sections jsonb NOT NULL,
        capacity integer NOT NULL CHECK (capacity > 0),
        max_per_user integer NOT NULL,
        hold_seconds integer NOT NULL,
        available integer NOT NULL,
        held integer NOT NULL DEFAULT 0,
        sold integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        CHECK (available >= 0 AND held >= 0 AND sold >= 0 AND available + held + sold = capacity)
    );
    CREATE TABLE bookings (
        id text PRIMARY KEY,
        event_id text NOT NULL REFERENCES events (id),
        user_id text NOT NULL,
        quantity integer NOT NULL CHECK (quantity > 0),
        requested text[] NOT NULL,
        seat_ids text[] NOT NULL,
        status text NOT NULL
            CHECK (status IN ('pending', 'held', 'confirmed', 'rejected', 'expired', 'cancelled')),
        reason text,
        expires_at double precision,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        idem_key text,
        fingerprint text,
        -- NULLs never collide, so only bookings that carry a key are constrained
        CONSTRAINT bookings_idem UNIQUE (event_id, idem_key),
        -- the target of the seats' owner reference below
        CONSTRAINT bookings_owner UNIQUE (id, event_id, user_id)
    );
    CREATE INDEX bookings_event ON bookings (event_id, created_at);
    CREATE INDEX bookings_pending ON bookings (created_at) WHERE status = 'pending';
    CREATE INDEX bookings_held ON bookings (expires_at) WHERE status = 'held';
    CREATE TABLE seats (
        event_id text NOT NULL REFERENCES events (id),
        position integer NOT NULL,
        id text NOT NULL,
        section text NOT NULL,
        row integer NOT NULL,
        number integer NOT NULL,
        status text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'held', 'sold')),
        booking_id text,
        user_id text,
        PRIMARY KEY (event_id, position),
        UNIQUE (event_id, id),
        -- one owner column: a seat cannot belong to two bookings; taken exactly when it has one
        CHECK ((status = 'available') = (booking_id IS NULL)),
        CHECK ((booking_id IS NULL) = (user_id IS NULL)),
        -- and its owner is a booking of this event by this user
        FOREIGN KEY (booking_id, event_id, user_id) REFERENCES bookings (id, event_id, user_id)
    );
    CREATE INDEX seats_available ON seats (event_id, position) WHERE status = 'available';
    CREATE INDEX seats_owner ON seats (event_id, user_id) WHERE user_id IS NOT NULL;
    CREATE INDEX seats_booking ON seats (booking_id) WHERE booking_id IS NOT NULL;
    """,
    # 2: fencing numbers of the seat locks: a write with an older number than the seat's last one is refused
    """
    ALTER TABLE seats ADD COLUMN fence bigint NOT NULL DEFAULT 0;
    """,
    # 3: the hash of each booking's secret; the outbox of edge releases (cancelled or expired bookings
    # whose seats the edge has not yet been told about); the deployment's keys
    """
    ALTER TABLE bookings ADD COLUMN secret_hash text;
    ALTER TABLE bookings ADD COLUMN edge_due boolean NOT NULL DEFAULT false;
    ALTER TABLE bookings ADD CONSTRAINT bookings_edge_due_released
        CHECK (NOT edge_due OR status IN ('cancelled', 'expired'));
    CREATE INDEX bookings_edge_due ON bookings (updated_at, id) WHERE edge_due;
    CREATE TABLE server_keys (name text PRIMARY KEY, value bytea NOT NULL);
    """,
    # 4: tombstones: ids of bookings whose enqueue failed with an unknown outcome (the client heard 503).
    # No booking row: a copy that reached the queue is decided as rejected and stored nowhere.
    """
    CREATE TABLE tombstones (id text PRIMARY KEY, created_at double precision NOT NULL);
    """,
    # 5: the waiting room (API 1.2): an event's sale start and room settings, its line and tickets.
    """
    ALTER TABLE events ADD COLUMN sale_starts_at double precision;
    ALTER TABLE events ADD COLUMN waiting_room text;
    """ + waiting_room_sql.TABLES,
]


_booking = booking_from_row
_event = event_from_row

# Any constant works, as long as every process uses the same one to serialize migrations.
_MIGRATION_LOCK = 0x7462_0001
_MIN_WINDOW = 64
_WIDEN = 16  # one widening multiplies the window by this
_MAX_READS = 4  # window reads per event per batch: the first, one widening, refreshes after losses
_MAX_ROUNDS = 32  # plan-and-lock rounds per batch; each one learns something (a read, a lost seat)
# Shorter than PostgreSQL's deadlock_timeout (1 s): we give up before a wait could be called a deadlock.
_CONTESTED_WAIT_MS = 250
# What the backend's state makes fail (timeouts, lost connections, pool timeouts, a session the server
# ended, e.g. idle_in_transaction_session_timeout, SQLSTATE 25P03): `Unavailable`. Integrity, data and
# programming errors pass through.
_BACKEND_ERRORS = (psycopg.OperationalError, psycopg.InternalError)
_COMMIT_GRACE = 1.0  # past its deadline, how long a caller waits for its transaction's last round trip
_STATUS_TIMEOUT = 2.0  # for asking how a COMMIT in doubt ended

_SEAT_REF_COLUMNS = "id, section, row, number, position"
_SEAT_COLUMNS = "id, section, row, number, position, status"
# The cheap reads, each on its index (partial indexes seats_available and bookings_edge_due).
_FIRST_AVAILABLE_SQL = (f"SELECT {_SEAT_COLUMNS} FROM seats WHERE event_id = %s AND status = 'available' "
                        "ORDER BY position LIMIT 1")
_EDGE_DUE_SQL = (f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE edge_due AND updated_at <= %s "
                 "ORDER BY updated_at, id LIMIT %s")
_SEAT_STATUSES_SQL = "SELECT id, status FROM seats WHERE event_id = %s AND id = ANY(%s::text[])"
_SERVER_KEY = "booking_secret"

# The seat map documents of `seat_map_json`, built by PostgreSQL as the exact bytes orjson would write
# (json_build_object and jsonb print spaces, jsonb also reorders keys, so the text is concatenated).
# Seat ids are `{section}-{row}-{number}`, written only by create_event from the event's sections: when
# every section name is plain [A-Za-z0-9] (the API validates them so), no seat needs escaping, and
# quoting as is costs a third less than to_json per seat; otherwise to_json escapes each one.
_SEAT_MAP_TEMPLATE = """
    SELECT convert_to('{"KEY":' || to_json(e.id)::text || ',"seats":[' || CASE
        WHEN (SELECT bool_and(x->>'name' ~ '^[A-Za-z0-9]+$') FROM jsonb_array_elements(e.sections) x)
        THEN (SELECT string_agg(PLAIN, ',' ORDER BY s.position) FROM seats s WHERE s.event_id = e.id)
        ELSE (SELECT string_agg(ESCAPED, ',' ORDER BY s.position) FROM seats s WHERE s.event_id = e.id)
    END || ']}', 'UTF8')
    FROM events e WHERE e.id = %s
"""
_API_SEAT = (""" '{"id":' || ID || ',"section":' || SECTION || ',"row":' || s.row || ',"number":' || s.number """
             """|| ',"status":"' || s.status || '"}' """)
_COMPAT_SEAT = (""" '{"number":' || s.position || ',"id":' || ID || ',"status":"' || CASE s.status """
                """WHEN 'available' THEN 'AVAILABLE' WHEN 'held' THEN 'LOCKED' ELSE 'BOOKED' END || '"}' """)


def _seat_map_sql(key: str, seat: str) -> str:
    plain = seat.replace("ID", "'\"' || s.id || '\"'").replace("SECTION", "'\"' || s.section || '\"'")
    escaped = seat.replace("ID", "to_json(s.id)::text").replace("SECTION", "to_json(s.section)::text")
    return _SEAT_MAP_TEMPLATE.replace("KEY", key).replace("PLAIN", plain).replace("ESCAPED", escaped)


_SEAT_MAP_SQL = {"api": _seat_map_sql("event_id", _API_SEAT), "compat": _seat_map_sql("eventId", _COMPAT_SEAT)}

# Best available, alf.io style: rows that another transaction has locked are being claimed; skip them.
_WINDOW_SQL = f"""
    SELECT {_SEAT_REF_COLUMNS} FROM seats
    WHERE event_id = %s AND status = 'available'
    ORDER BY position LIMIT %s
    FOR UPDATE SKIP LOCKED
"""

# The seats a batch picked from its window, locked for the rest of the transaction. Rows that another
# transaction holds are skipped: they count as lost and the batch picks again without them. Seats are
# found by primary key (event, position), whose plan needs no statistics about a freshly created event.
_LOCK_SQL = """
    SELECT id FROM seats
    WHERE event_id = %s AND position = ANY(%s::int[]) AND status = 'available'
    FOR UPDATE SKIP LOCKED
"""

# The conditional write that keeps a seat single: one statement per booking, its row count checked.
_CLAIM_SQL = """
    UPDATE seats SET status = 'held', booking_id = %s, user_id = %s, fence = GREATEST(fence, %s)
    WHERE event_id = %s AND position = ANY(%s::int[]) AND status = 'available'
    RETURNING id
"""






def _booking_row(b: Booking) -> tuple[Any, ...]:
    return (b.id, b.event_id, b.user_id, b.quantity, list(b.requested_seats), list(b.seat_ids), b.status.value,
            b.reason, b.expires_at, b.created_at, b.updated_at, b.idempotency_key, b.fingerprint, b.secret_hash)


_INSERT_BOOKING = (
    f"INSERT INTO bookings ({BOOKING_COLUMNS}) VALUES (%s,%s,%s,%s,%s::text[],%s::text[]"
    + ",%s" * (BOOKING_COLUMN_COUNT - 6) + ") ON CONFLICT DO NOTHING RETURNING id"
)


def _seat(row: Sequence[Any]) -> Seat:
    return Seat(row[0], row[1], row[2], row[3], row[4], SeatStatus(row[5]))


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None, "the query returns one row"
    return row


def _storable(*texts: str) -> bool:
    """PostgreSQL text cannot hold NUL: an id or key with one was never stored, so a lookup finds nothing
    (as in SqliteStore), instead of failing on the driver's DataError."""
    return not any("\x00" in t for t in texts)


def _ms_left(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


class _Attempt:
    """One transaction as its caller and its worker thread share it. Under `lock`, whichever comes first
    decides: the thread about to send COMMIT (`committing`), or the caller giving up before that
    (`abandoned`: COMMIT will never be sent, the thread rolls back)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.lock = threading.Lock()
        self.abandoned = False
        self.committing = False
        self.xid: str | None = None  # pg_current_xact_id() of the transaction, known once committing
        self.pid: int | None = None  # its backend
        self.result: Any = None  # what the caller gets if the COMMIT went through
        self.error: BaseException | None = None  # how the thread ended, once `ended` is set
        self.ended = threading.Event()

    def give_up(self) -> bool:
        """The caller stops waiting: True when COMMIT will never be sent, False when it may be on its way."""
        with self.lock:
            if not self.committing:
                self.abandoned = True
            return self.abandoned

    def in_doubt(self, error: BaseException | None) -> bool:
        """Whether the COMMIT may have gone through although the caller has no answer: it was sent, and
        the thread has not ended or lost its connection (an error PostgreSQL itself sent is final)."""
        if not self.committing or self.xid is None:
            return False  # not sent, or a read-only snapshot: nothing to find out
        if not self.ended.is_set():
            return True
        return isinstance(error, psycopg.OperationalError) and error.sqlstate is None


def _commit_status(url: str, xid: str, pid: int) -> str | None:
    """How transaction `xid` ended ('committed' or 'aborted'), asked on a connection of its own. While it is
    still open (its COMMIT not arrived, or not done), its backend is terminated first: then the answer is
    final. None when PostgreSQL gave no answer."""
    with psycopg.connect(url, autocommit=True, connect_timeout=2,
                         options=f"-c statement_timeout={int(_STATUS_TIMEOUT * 1000)}") as conn:
        for _ in range(20):
            status = _one(conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)))[0]
            if status != "in progress":
                return str(status) if status else None
            # only the backend still running this very transaction (a pooled connection moves on)
            conn.execute("SELECT pg_terminate_backend(pid, 500) FROM pg_stat_activity "
                         "WHERE pid = %s AND backend_xid::text = %s", (pid, str(int(xid) % 2**32)))
            time.sleep(0.05)
    return None


def _lock_key(*parts: str) -> int:
    """A stable 64-bit advisory lock key; a collision only serializes two unrelated batches."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _migrate(conn: Conn) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied."""
    # A transaction-level lock: released by the commit or by a crash, never left behind.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    current = _one(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version"))[0]
    applied = []
    for version, script in enumerate(MIGRATIONS, start=1):
        if version > current:
            conn.execute(script.encode())  # several statements, no parameters: one simple query
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def _serialize_owners(conn: Conn, bookings: Sequence[Booking]) -> None:
    """Take the advisory locks of these bookings' (event, user) and (event, Idempotency-Key), sorted.

    Whatever could race the per-user limit, a redelivered booking id or a key waits here, before it
    has read anything; sorting the keys means two batches never wait for each other in a circle.
    """
    keys = {_lock_key("user", b.event_id, b.user_id) for b in bookings}
    keys |= {_lock_key("key", b.event_id, b.idempotency_key) for b in bookings if b.idempotency_key is not None}
    # unnest yields the array in order, so the locks are taken in sorted order
    conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (sorted(keys),))


def _insert_bookings(conn: Conn, bookings: Sequence[Booking]) -> list[bool]:
    """Insert the bookings not stored yet; per booking, whether it was inserted. An id or a key that is
    already stored (or inserted earlier in the same call) skips the row instead of failing the batch."""
    cur = conn.cursor()
    cur.executemany(_INSERT_BOOKING, [_booking_row(b) for b in bookings], returning=True)
    inserted = []
    while True:  # one result per row, in order
        inserted.append(cur.fetchone() is not None)
        if not cur.nextset():
            return inserted


def _bookings_by_id(conn: Conn, ids: Iterable[str]) -> dict[str, Booking]:
    rows = conn.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = ANY(%s::text[])", (list(ids),))
    return {r[0]: _booking(r) for r in rows}


def _booking_by_key(conn: Conn, event_id: str, key: str | None) -> Booking | None:
    if key is None:
        return None
    row = conn.execute(
        f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE event_id = %s AND idem_key = %s", (event_id, key)
    ).fetchone()
    return _booking(row) if row else None


def _stored_twin(conn: Conn, booking: Booking) -> Booking:
    """The stored booking that kept `booking` from being inserted: its own id first, else its key's."""
    found = _bookings_by_id(conn, [booking.id]).get(booking.id) or _booking_by_key(
        conn, booking.event_id, booking.idempotency_key
    )
    if found is None:  # ON CONFLICT skipped it, so one of the two exists: a broken assumption, retry
        raise Unavailable(f"booking {booking.id} was neither inserted nor found", component="store")
    return found


def _tombstoned(conn: Conn, ids: Sequence[str]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM tombstones WHERE id = ANY(%s::text[])", (list(ids),))}


def _reject(conn: Conn, *, bookings: Sequence[Booking], reason: str, now: float, insert: bool,
            keep_key: bool) -> list[tuple[Booking, bool]]:
    """`Store.reject` in one transaction. Under the same owner locks as `decide`, so that a booking being
    decided and rejected at once gets exactly one of the two; none of the seat logic."""
    _serialize_owners(conn, bookings)
    firsts: dict[str, Booking] = {}  # the first copy of each id, in order (who is first gets a shared key)
    for b in bookings:
        firsts.setdefault(b.id, b)
    stored = _bookings_by_id(conn, list(firsts))
    missing = [b for i, b in firsts.items() if i not in stored]
    if missing and not insert:
        raise NotFound(f"booking {missing[0].id} is not in the store")
    buried: dict[str, Booking] = {}
    if missing and not keep_key:  # tombstones, not bookings: see Store.reject
        conn.cursor().executemany("INSERT INTO tombstones (id, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                  [(b.id, now) for b in missing])
        buried = {b.id: rejected_booking(b, reason, now, keep_key=False) for b in missing}
        missing = []
    if missing:
        events = {r[0] for r in conn.execute(
            "SELECT id FROM events WHERE id = ANY(%s::text[])", (list({b.event_id for b in missing}),))}
        unknown = [b for b in missing if b.event_id not in events]
        if unknown:  # nowhere to record it (bookings reference their event)
            raise NotFound(f"event {unknown[0].event_id} of booking {unknown[0].id} does not exist")
    rejected = {i for i, b in stored.items() if b.status is BookingStatus.PENDING}
    if rejected:
        n = conn.execute(
            "UPDATE bookings SET status = 'rejected', reason = %s, seat_ids = '{}', updated_at = %s "
            "WHERE id = ANY(%s::text[]) AND status = 'pending'",
            (reason, now, list(rejected)),
        ).rowcount
        if n != len(rejected):  # the owner locks make this impossible; never write half a batch
            raise Unavailable("a booking to reject was decided elsewhere", component="store")
        stored.update((i, rejected_booking(stored[i], reason, now)) for i in rejected)
    twins: dict[str, Booking] = {}
    if missing:
        fresh = [rejected_booking(b, reason, now, keep_key=keep_key) for b in missing]
        for b, inserted in zip(fresh, _insert_bookings(conn, fresh), strict=True):
            if inserted:
                stored[b.id] = b
                rejected.add(b.id)
            else:  # its Idempotency-Key belongs to another booking: that one answers, as in `decide`
                twins[b.id] = _stored_twin(conn, b)
    answers = []
    for b in bookings:
        if b.id in buried:
            answers.append((buried[b.id], True))
        elif b.id in twins:
            answers.append((twins[b.id], False))
        else:
            answers.append((stored[b.id], b.id in rejected))
            rejected.discard(b.id)  # a second copy in the same call changes nothing
    return answers


def _load_booking(conn: Conn, booking_id: str) -> Booking:
    """The booking, locked against concurrent transitions; NotFound when unknown."""
    row = conn.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = %s FOR UPDATE", (booking_id,)).fetchone()
    if row is None:
        raise NotFound(f"booking {booking_id} does not exist")
    return _booking(row)


def _add_to_counters(conn: Conn, deltas: dict[str, tuple[int, int, int]]) -> None:
    """Add (available, held, sold) deltas to the events' counters, in id order (no deadlock between batches)."""
    rows = [(*deltas[e], e) for e in sorted(deltas) if any(deltas[e])]
    if rows:
        conn.cursor().executemany(
            "UPDATE events SET available = available + %s, held = held + %s, sold = sold + %s WHERE id = %s", rows
        )


def _claim(conn: Conn, claims: Sequence[tuple[Booking, list[int]]], fences: Fences) -> None:
    """Hold each booking's seats with a conditional write, all pipelined in one round trip. The seats
    are locked and were checked, so a short row count means a bug: the whole batch is rolled back."""
    if not claims:
        return
    cur = conn.cursor()
    cur.executemany(_CLAIM_SQL, [(b.id, b.user_id, _fence_of(b, fences), b.event_id, positions)
                                 for b, positions in claims], returning=True)
    for b, positions in claims:  # one result per booking, in order
        if len(cur.fetchall()) != len(positions):
            raise Unavailable(f"seat rows changed under booking {b.id}", component="store")
        cur.nextset()


def _fence_of(booking: Booking, fences: Fences) -> int:
    """The fencing number a named booking's seat locks carry (0: not locked, e.g. best available)."""
    return max((fences.get((booking.event_id, s), 0) for s in booking.requested_seats), default=0)


def _stale(conn: Conn, pending: Sequence[Booking], fences: Fences) -> set[str]:
    """Named bookings whose lock is older than a seat's last write (its lease lapsed and another writer
    came by): they must not write. The seat rows are locked already, so the answer holds until commit."""
    fenced = [b for b in pending if b.is_named and _fence_of(b, fences)]
    if not fenced:
        return set()
    seen = {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT event_id, id, fence FROM seats WHERE (event_id, id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([b.event_id for b in fenced for _ in b.requested_seats], [s for b in fenced for s in b.requested_seats]),
    )}
    return {b.id for b in fenced
            if any(seen.get((b.event_id, s), 0) >= fences.get((b.event_id, s), 0) for s in b.requested_seats)}


def _adjacent(refs: dict[str, SeatRef], seats: Sequence[str]) -> bool:
    first = refs[seats[0]]
    return all(
        refs[s].section == first.section and refs[s].row == first.row and refs[s].number == first.number + i
        for i, s in enumerate(seats)
    )


@dataclass
class _Candidates:
    """The seats of one event that a batch may give out: the named seats it locked, plus a window of
    best-available seats that no other transaction was claiming when it was read."""

    event: Event
    size: int  # rows the next window read asks for
    refs: dict[str, SeatRef] = field(default_factory=dict)
    mine: set[str] = field(default_factory=set)  # locked by this transaction
    gone: set[str] = field(default_factory=set)  # locked or claimed by another transaction since we read them
    reads: int = 0
    complete: bool = False  # the last read saw every available seat that nobody else had locked
    widened: bool = False
    waited: bool = False
    contested: bool = False  # the wait ended with available seats still locked by another transaction

    def picker(self) -> rules.SeatPicker:
        """A fresh picker over the seats worth trying (planning takes seats from it)."""
        return rules.SeatPicker(ref for sid, ref in self.refs.items() if sid not in self.gone)

    def add_locked(self, rows: Iterable[Sequence[Any]]) -> None:
        for r in rows:
            self.refs[r[0]] = SeatRef(*r[:5])
            self.mine.add(r[0])

    def read_window(self, conn: Conn, *, widen: bool) -> None:
        if widen:
            self.size *= _WIDEN
            self.widened = True
        # The row locks only serve to skip the seats that others are claiming. Rolling back the
        # savepoint drops them at once, so our window never hides seats from others.
        with conn.transaction(force_rollback=True):
            rows = conn.execute(_WINDOW_SQL, (self.event.id, self.size)).fetchall()
        self.reads += 1
        self.complete = len(rows) < self.size
        # A fresh read replaces what we knew (a seat lost earlier may be free again), except what we hold.
        self.refs = {sid: self.refs[sid] for sid in self.mine}
        self.refs.update((r[0], SeatRef(*r)) for r in rows)
        self.gone.clear()

    def may_find_more(self, decision: rules.Decision) -> bool:
        """Whether a quantity booking's decision could improve with another look at the seats: its pick
        is not adjacent and the window was never widened, or there are too few seats but others may exist."""
        if decision.held:
            return not self.complete and not self.widened and not _adjacent(self.refs, decision.seats)
        if decision.reason != "sold_out":
            return False
        return self.reads < _MAX_READS if not self.complete else not self.waited

    def find_more(self, conn: Conn, quantity: int) -> None:
        if not self.complete:
            self.read_window(conn, widen=not self.widened)
        else:
            self.wait_for_contested(conn, quantity)

    def lock(self, conn: Conn, seats: Sequence[str]) -> bool:
        """Lock these picked seats; False when another transaction got some first (now `gone`)."""
        wanted = [s for s in seats if s not in self.mine]
        if not wanted:
            return True
        got = {r[0] for r in conn.execute(_LOCK_SQL, (self.event.id, [self.refs[s].position for s in wanted]))}
        self.mine |= got
        self.gone.update(s for s in wanted if s not in got)
        return len(got) == len(wanted)

    def wait_for_contested(self, conn: Conn, quantity: int) -> None:
        """At the end of a sale, wait briefly for the available seats that other transactions have locked.

        They are usually being claimed, but another batch may lock more than it finally takes. Without
        this wait, we would answer sold out while a seat is about to come back.
        """
        self.waited = True
        previous = _one(conn.execute("SELECT current_setting('lock_timeout')"))[0]
        try:
            with conn.transaction():  # a savepoint: giving up the wait must not abort the batch
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (str(_CONTESTED_WAIT_MS),))
                rows = conn.execute(
                    f"SELECT {_SEAT_REF_COLUMNS} FROM seats WHERE event_id = %s AND status = 'available' "
                    "AND NOT (id = ANY(%s::text[])) ORDER BY position LIMIT %s FOR UPDATE",
                    (self.event.id, [s for s in self.refs if s not in self.gone], quantity),
                ).fetchall()
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
        except psycopg.errors.LockNotAvailable:
            self.contested = True  # seats remain, someone else is claiming them: not sold out yet
            return
        self.add_locked(rows)
        self.gone.difference_update(r[0] for r in rows)


def _owned_seats(conn: Conn, bookings: Sequence[Booking]) -> Counter[tuple[str, str]]:
    """Seats held or sold per (event, user) of these bookings (read under their owner locks)."""
    pairs = sorted({(b.event_id, b.user_id) for b in bookings})
    rows = conn.execute(
        "SELECT s.event_id, s.user_id, count(*) FROM seats s "
        "JOIN unnest(%s::text[], %s::text[]) AS k(event_id, user_id) "
        "ON s.event_id = k.event_id AND s.user_id = k.user_id GROUP BY 1, 2",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    )
    return Counter({(r[0], r[1]): r[2] for r in rows})


def _lock_named_seats(
    conn: Conn, pending: Sequence[Booking], cands: dict[str, _Candidates], owned: Counter[tuple[str, str]]
) -> None:
    """Lock the seats that bookings name, before anything is decided, in (event, position) order, the order
    every batch follows; the available ones become candidates. Bookings that the limit refuses anyway
    are left out: locking their seats would only hide them from others."""
    named: dict[str, set[int]] = defaultdict(set)
    for b in pending:
        event = cands[b.event_id].event
        if b.is_named and owned[(b.event_id, b.user_id)] + b.quantity <= event.max_per_user:
            refs = (rules.locate_seat(event, seat) for seat in b.requested_seats)
            named[b.event_id].update(ref.position for ref in refs if ref is not None)
    for event_id in sorted(named):
        rows = conn.execute(
            f"SELECT {_SEAT_REF_COLUMNS}, status FROM seats WHERE event_id = %s AND position = ANY(%s::int[]) "
            "ORDER BY position FOR UPDATE",
            (event_id, sorted(named[event_id])),
        ).fetchall()
        cands[event_id].add_locked(r for r in rows if r[5] == SeatStatus.AVAILABLE.value)


def _window_size(quantities: Sequence[int]) -> int:
    """Room for adjacent runs of the largest request and for the whole batch, twice over."""
    return max(_MIN_WINDOW, 32 * max(quantities, default=0), 2 * sum(quantities))


def _plan(
    pending: Sequence[Booking], cands: dict[str, _Candidates], owned: Counter[tuple[str, str]], avoid: frozenset[str]
) -> tuple[list[rules.Decision], Booking | None]:
    """Decide the batch in order with `rules.decide` against the candidates, writing nothing. Stops at
    the first quantity booking whose decision could improve with another look at the seats and returns it."""
    pickers = {e: c.picker() for e, c in cands.items()}
    counts = Counter(owned)
    decisions: list[rules.Decision] = []
    for b in pending:
        c = cands[b.event_id]
        decision = rules.decide(b, c.event, counts[(b.event_id, b.user_id)], pickers[b.event_id], avoid)
        if not b.is_named and c.may_find_more(decision):
            return decisions, b
        if decision.held:
            counts[(b.event_id, b.user_id)] += len(decision.seats)
        decisions.append(decision)
    return decisions, None


def _plan_and_lock(
    conn: Conn, pending: Sequence[Booking], cands: dict[str, _Candidates], owned: Counter[tuple[str, str]],
    avoid: frozenset[str],
) -> list[rules.Decision]:
    """Plan the batch, then lock the best-available seats it picked, one statement per event. When
    another transaction got some of them first, plan again without them: a collision costs a round
    trip per batch, not per booking. Named seats were locked before planning."""
    for _ in range(_MAX_ROUNDS):
        decisions, short = _plan(pending, cands, owned, avoid)
        if short is not None:
            cands[short.event_id].find_more(conn, short.quantity)
            continue
        picked: dict[str, list[str]] = defaultdict(list)
        for b, d in zip(pending, decisions, strict=True):
            if d.held and not b.is_named:
                picked[b.event_id].extend(d.seats)
        if all([cands[e].lock(conn, seats) for e, seats in picked.items()]):  # a list: lock every event
            return decisions
    raise Unavailable("the seats changed under the batch too often; retry it", component="store")


class PostgresStore:
    """The Store port on PostgreSQL; see the module docstring."""

    name = "postgres"

    def __init__(self, url: str, *, timeout: float = 5.0, pool_size: int = 8) -> None:
        self.url = url
        self.timeout = timeout
        self.pool_size = pool_size
        self.applied_migrations: list[int] = []  # what the last open() migrated (tests, logs)
        self._limiter = trio.CapacityLimiter(pool_size)
        self._pool: ConnectionPool | None = None

    # ------------------------------------------------------------------ plumbing
    async def open(self) -> None:
        ms = int(self.timeout * 1000)
        pool = ConnectionPool(
            self.url,
            min_size=self.pool_size,
            max_size=self.pool_size,
            open=False,
            timeout=self.timeout,
            name="ticketblitz-store",
            kwargs={
                "autocommit": True,  # transactions are explicit (`conn.transaction()`)
                "connect_timeout": max(2, math.ceil(self.timeout)),
                "application_name": "ticketblitz",
                # Session defaults, so that a single statement outside a transaction has a deadline too.
                # A client that stalls mid-transaction must not keep its row locks for long.
                "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={2 * ms}",
            },
        )
        try:
            with trio.fail_after(self.timeout + 1.0):
                await trio.to_thread.run_sync(
                    partial(pool.open, wait=True, timeout=self.timeout), abandon_on_cancel=True
                )
        except (trio.TooSlowError, psycopg.OperationalError) as exc:
            await trio.to_thread.run_sync(pool.close)
            raise Unavailable(f"the store is unreachable: {exc}", component="store") from exc
        self._pool = pool
        try:
            self.applied_migrations = await self._call(_migrate)
        except BaseException:
            with trio.CancelScope(shield=True):  # a half-open store helps nobody: the next open() starts afresh
                await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(pool.close)

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone(), transaction=False)

    async def _call(self, fn: Callable[[Conn], T], *, transaction: bool = True, snapshot: bool = False) -> T:
        """Run `fn` on a pooled connection in a worker thread, by default in one transaction, under the
        deadline; backend failures become `Unavailable`, domain errors pass through (after rollback).
        What the caller hears is what happened: see the module docstring."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is not open", component="store")
        timeout = self.timeout
        attempt = _Attempt(time.monotonic() + timeout)  # from the call: waiting for a thread counts

        def work() -> T:
            with pool.connection(timeout=max(0.001, attempt.deadline - time.monotonic())) as conn:
                if attempt.abandoned:
                    raise Unavailable("the store did not answer in time", component="store")
                if not transaction:
                    return fn(conn)  # one statement (reads, ANALYZE), bounded by the session's statement_timeout
                with conn.transaction():
                    if snapshot:
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    budget = str(_ms_left(attempt.deadline))
                    row = _one(conn.execute(
                        "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"
                        + ("" if snapshot else ", pg_current_xact_id()::text"),  # to settle a COMMIT in doubt
                        (budget, budget),
                    ))
                    result = fn(conn)
                    with attempt.lock:
                        if attempt.abandoned or time.monotonic() > attempt.deadline:
                            # The caller gave up or is about to: commit nothing that it will not hear about.
                            raise Unavailable("the store transaction overran its deadline", component="store")
                        attempt.committing, attempt.result = True, result
                        attempt.xid, attempt.pid = (None if snapshot else row[2]), conn.info.backend_pid
                # COMMIT was sent as the block ended, and it succeeded
                return result

        def run() -> T:
            try:
                return work()
            except BaseException as exc:
                attempt.error = exc
                raise
            finally:
                attempt.ended.set()

        try:
            with trio.fail_after(timeout + _COMMIT_GRACE):
                # Abandoning the thread on cancel keeps the caller's deadline even if the network stalls.
                # The thread still ends by itself (server-side timeouts) and keeps its limiter token
                # until then; `attempt` makes sure that it commits only what its caller hears about.
                return await trio.to_thread.run_sync(run, limiter=self._limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            if attempt.give_up():
                raise Unavailable("the store did not answer in time", component="store") from None
            return await self._settle(attempt)  # COMMIT is on its way
        except _BACKEND_ERRORS as exc:
            if attempt.in_doubt(exc):
                return await self._settle(attempt)  # the connection was lost during COMMIT
            raise Unavailable(f"the store failed: {exc}", component="store") from exc
        except BaseException:
            attempt.give_up()  # the caller itself was cancelled: what it will not hear about must not commit
            raise

    async def _settle(self, attempt: _Attempt) -> Any:
        """COMMIT was sent, and no answer came in time: learn how it ended instead of guessing. Wait a
        little more for the answer, else ask PostgreSQL on a fresh connection (ending the transaction
        first if it is still open). Unavailable only when the transaction did not commit or PostgreSQL
        cannot tell."""
        if not attempt.ended.is_set():
            await trio.to_thread.run_sync(attempt.ended.wait, _COMMIT_GRACE, abandon_on_cancel=True)
        if not attempt.in_doubt(attempt.error):  # the answer came after all
            if attempt.error is None:
                return attempt.result
            if isinstance(attempt.error, _BACKEND_ERRORS):
                raise Unavailable(f"the store failed: {attempt.error}", component="store") from attempt.error
            raise attempt.error
        assert attempt.xid is not None and attempt.pid is not None
        status: str | None = None
        with trio.move_on_after(_STATUS_TIMEOUT + 3.0):  # connect, terminate, a few looks
            try:
                status = await trio.to_thread.run_sync(
                    partial(_commit_status, self.url, attempt.xid, attempt.pid), abandon_on_cancel=True
                )
            except psycopg.Error:
                status = None
        if status == "committed":
            return attempt.result
        if status == "aborted":
            raise Unavailable("the store did not answer in time; nothing was written", component="store")
        raise Unavailable("the store did not answer in time, and whether the transaction committed is unknown",
                          component="store")

    # ------------------------------------------------------------------ events and seats
    async def create_event(self, event: Event) -> Event:
        sections = Jsonb([{"name": s.name, "rows": s.rows, "seats_per_row": s.seats_per_row,
                           "price_cents": s.price_cents} for s in event.sections])

        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO events (id, name, venue, starts_at, sections, capacity, max_per_user, hold_seconds, "
                "available, created_at, sale_starts_at, waiting_room) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (event.id, event.name, event.venue, event.starts_at, sections, event.capacity, event.max_per_user,
                 event.hold_seconds, event.capacity, event.created_at, event.sale_starts_at, waiting_room_text(event)),
            )
            # COPY: 200,000 seat rows in about a second, in the same transaction as the event
            with conn.cursor().copy(
                "COPY seats (event_id, position, id, section, row, number) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "int4", "text", "text", "int4", "int4"])
                for r in rules.seat_map(event):
                    copy.write_row((event.id, r.position, r.id, r.section, r.row, r.number))
            waiting_room_sql.insert_line(conn, waiting_room_sql.POSTGRES, event)

        await self._call(tx)
        try:
            # Fresh statistics, or the planner would scan and sort the whole event on each window read
            # until autovacuum gets to it. Run after the commit: its lock would serialize creations.
            await self._call(lambda conn: conn.execute("ANALYZE seats"), transaction=False)
        except Unavailable:
            pass  # the event exists all the same; autovacuum will analyze later
        return event.with_counts(Counts(event.capacity, 0, 0))

    async def get_event(self, event_id: str) -> Event | None:
        if not _storable(event_id):
            return None
        row = await self._call(
            lambda conn: conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = %s", (event_id,)).fetchone(),
            transaction=False,
        )
        return _event(row) if row else None

    async def list_events(self) -> list[Event]:
        rows = await self._call(
            lambda conn: conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall(),
            transaction=False,
        )
        return [_event(r) for r in rows]

    async def seats(self, event_id: str) -> list[Seat]:
        if not _storable(event_id):
            return []
        rows = await self._call(
            lambda conn: conn.execute(
                f"SELECT {_SEAT_COLUMNS} FROM seats WHERE event_id = %s ORDER BY position", (event_id,)
            ).fetchall(),
            transaction=False,
        )
        return [_seat(r) for r in rows]

    async def seat_map_json(self, event_id: str, form: str) -> bytes | None:
        statement = _SEAT_MAP_SQL[form]  # KeyError: a caller's bug, not a request's
        if not _storable(event_id):
            return None
        row = await self._call(
            lambda conn: conn.execute(statement, (event_id,), binary=True).fetchone(), transaction=False
        )
        return bytes(row[0]) if row else None

    async def seat_statuses(self, event_id: str, seat_ids: Sequence[str]) -> dict[str, SeatStatus]:
        wanted = [s for s in dict.fromkeys(seat_ids) if _storable(s)]
        if not wanted or not _storable(event_id):
            return {}
        rows = await self._call(lambda conn: conn.execute(_SEAT_STATUSES_SQL, (event_id, wanted)).fetchall(),
                                transaction=False)
        return {r[0]: SeatStatus(r[1]) for r in rows}

    async def first_available(self, event_id: str) -> Seat | None:
        if not _storable(event_id):
            return None
        row = await self._call(lambda conn: conn.execute(_FIRST_AVAILABLE_SQL, (event_id,)).fetchone(),
                               transaction=False)
        return _seat(row) if row else None

    async def seat_counts(self, event_id: str) -> Counts:
        """Counts recomputed from the seat rows (the invariant checks compare them with the event's)."""
        if not _storable(event_id):
            return Counts(0, 0, 0)
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT status, count(*) FROM seats WHERE event_id = %s GROUP BY status", (event_id,)
            ).fetchall(),
            transaction=False,
        )
        by = dict(rows)
        return Counts(by.get("available", 0), by.get("held", 0), by.get("sold", 0))

    # ------------------------------------------------------------------ bookings
    async def get_booking(self, booking_id: str) -> Booking | None:
        if not _storable(booking_id):
            return None
        found = await self._call(lambda conn: _bookings_by_id(conn, [booking_id]), transaction=False)
        return found.get(booking_id)

    async def bookings_of_event(self, event_id: str) -> list[Booking]:
        if not _storable(event_id):
            return []
        rows = await self._call(
            lambda conn: conn.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE event_id = %s ORDER BY created_at, id", (event_id,)
            ).fetchall(),
            transaction=False,
        )
        return [_booking(r) for r in rows]

    async def insert_pending(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        def tx(conn: Conn) -> list[Booking | None]:
            _serialize_owners(conn, bookings)
            inserted = _insert_bookings(conn, bookings)
            return [None if ok else _stored_twin(conn, b) for b, ok in zip(bookings, inserted, strict=True)]

        return await self._call(tx) if bookings else []

    async def pending_bookings(self, limit: int) -> list[Booking]:
        rows = await self._call(
            lambda conn: conn.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'pending' ORDER BY created_at, id LIMIT %s",
                (limit,),
            ).fetchall(),
            transaction=False,
        )
        return [_booking(r) for r in rows]

    async def decide(self, bookings: Sequence[Booking], now: float, *, insert: bool = False,
                     fences: Fences | None = None) -> list[Booking]:
        if not bookings:
            return []
        return await self._call(partial(self._decide, bookings=bookings, now=now, insert=insert, fences=fences or {}))

    async def fence_floor(self) -> int:
        row = await self._call(lambda conn: conn.execute("SELECT coalesce(max(fence), 0) FROM seats").fetchone(),
                               transaction=False)
        return int(row[0]) if row else 0

    @staticmethod
    def _decide(conn: Conn, *, bookings: Sequence[Booking], now: float, insert: bool, fences: Fences) -> list[Booking]:
        _serialize_owners(conn, bookings)
        buried = _tombstoned(conn, [b.id for b in bookings]) if insert else set()
        if buried:  # answered as rejected, stored nowhere; the others are decided as usual
            kept = [b for b in bookings if b.id not in buried]
            rest = iter(PostgresStore._decide(conn, bookings=kept, now=now, insert=insert, fences=fences)
                        if kept else [])
            return [rejected_booking(b, "processing_failed", now, keep_key=False) if b.id in buried else next(rest)
                    for b in bookings]
        if insert:
            _insert_bookings(conn, bookings)
        stored = _bookings_by_id(conn, [b.id for b in bookings])
        answers: list[str] = []  # per booking, the id of the stored booking that answers it
        for b in bookings:
            if b.id in stored:
                answers.append(b.id)
                continue
            twin = _booking_by_key(conn, b.event_id, b.idempotency_key) if insert else None
            if twin is None:
                raise NotFound(f"booking {b.id} is not in the store")
            # its Idempotency-Key belongs to another booking: that one answers (decided here if in the batch)
            stored.setdefault(twin.id, twin)
            answers.append(twin.id)
        # each booking of the batch decided once, in batch order; a redelivery gets the first decision
        pending = [stored[i] for i in dict.fromkeys(b.id for b in bookings)
                   if i in stored and stored[i].status is BookingStatus.PENDING]
        # Best-available leaves to the bookings that name them the seats named in the batch as passed,
        # like SqliteStore (so a redelivery or a key's twin counts too, though neither is decided here).
        decided = PostgresStore._decide_pending(conn, pending, now, rules.named_seats(bookings), fences)
        return [decided.get(i) or stored[i] for i in answers]

    @staticmethod
    def _decide_pending(
        conn: Conn, pending: Sequence[Booking], now: float, avoid: frozenset[str], fences: Fences
    ) -> dict[str, Booking]:
        if not pending:
            return {}
        events = {r[0]: _event(r) for r in conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY(%s::text[])", (list({b.event_id for b in pending}),)
        )}
        owned = _owned_seats(conn, pending)
        cands = {
            e: _Candidates(event, _window_size([b.quantity for b in pending if b.event_id == e and not b.is_named]))
            for e, event in events.items()
        }
        _lock_named_seats(conn, pending, cands, owned)
        stale = _stale(conn, pending, fences)
        if stale:  # left pending, undecided: the consumer retries them under a fresh lock
            pending = [b for b in pending if b.id not in stale]
        for e in sorted(cands):
            if any(b.event_id == e and not b.is_named for b in pending):
                cands[e].read_window(conn, widen=False)
        decisions = _plan_and_lock(conn, pending, cands, owned, avoid)
        # Sold out while available seats stayed locked by another transaction past the wait: that one may
        # give some back (it read more than it takes, or rolls back), so these stay pending and are
        # decided again (the consumer retries them) instead of being told "sold out" with seats left.
        # Seen with two processes deciding one event's best-available bookings after a Kafka rebalance:
        # 61 of 1,000 admitted fans rejected sold_out while 61 seats stayed available.
        unsure = {b.id for b, d in zip(pending, decisions, strict=True)
                  if not d.held and d.reason == "sold_out" and cands[b.event_id].contested}
        if unsure:
            kept = [(b, d) for b, d in zip(pending, decisions, strict=True) if b.id not in unsure]
            pending, decisions = [b for b, _ in kept], [d for _, d in kept]

        held = [(b, d) for b, d in zip(pending, decisions, strict=True) if d.held]
        _claim(conn, [(b, [cands[b.event_id].refs[s].position for s in d.seats]) for b, d in held], fences)
        decided = [rules.apply_decision(b, events[b.event_id], d, now) for b, d in zip(pending, decisions, strict=True)]
        cur = conn.cursor()
        cur.executemany(
            "UPDATE bookings SET status = %s, reason = %s, seat_ids = %s::text[], expires_at = %s, updated_at = %s "
            "WHERE id = %s AND status = 'pending'",
            [(d.status.value, d.reason, list(d.seat_ids), d.expires_at, now, d.id) for d in decided],
        )
        if cur.rowcount != len(decided):  # the owner locks make this impossible; never write half a batch
            raise Unavailable("a booking of the batch was decided elsewhere", component="store")
        taken: Counter[str] = Counter()
        for b, d in held:
            taken[b.event_id] += len(d.seats)
        _add_to_counters(conn, {e: (-n, n, 0) for e, n in taken.items()})
        return {d.id: d for d in decided}

    async def confirm(self, booking_id: str, now: float) -> tuple[Booking, bool]:
        if not _storable(booking_id):
            raise NotFound(f"booking {booking_id!r} does not exist")
        def tx(conn: Conn) -> tuple[Booking, bool]:
            booking = _load_booking(conn, booking_id)
            if not rules.check_confirm(booking, now):
                return booking, False
            n = conn.execute(
                "UPDATE seats SET status = 'sold' WHERE booking_id = %s AND status = 'held'", (booking_id,)
            ).rowcount
            _add_to_counters(conn, {booking.event_id: (0, -n, n)})
            conn.execute(
                "UPDATE bookings SET status = 'confirmed', updated_at = %s WHERE id = %s AND status = 'held'",
                (now, booking_id),
            )
            return replace(booking, status=BookingStatus.CONFIRMED, updated_at=now), True

        return await self._call(tx)

    @staticmethod
    def _release(conn: Conn, bookings: Sequence[Booking], status: BookingStatus, now: float) -> list[Booking]:
        """Held bookings → `status`, their seats available again."""
        ids = [b.id for b in bookings]
        freed = Counter(r[0] for r in conn.execute(
            "UPDATE seats SET status = 'available', booking_id = NULL, user_id = NULL "
            "WHERE booking_id = ANY(%s::text[]) AND status = 'held' RETURNING event_id",
            (ids,),
        ))
        _add_to_counters(conn, {e: (n, -n, 0) for e, n in freed.items()})
        # ... and the edge must hear of it: due until `edge_done`, whatever happens after this commit
        conn.execute(
            "UPDATE bookings SET status = %s, updated_at = %s, edge_due = true "
            "WHERE id = ANY(%s::text[]) AND status = 'held'",
            (status.value, now, ids),
        )
        return [replace(b, status=status, updated_at=now) for b in bookings]

    async def cancel(self, booking_id: str, now: float) -> Booking:
        if not _storable(booking_id):
            raise NotFound(f"booking {booking_id!r} does not exist")
        def tx(conn: Conn) -> Booking:
            booking = _load_booking(conn, booking_id)
            rules.check_cancel(booking)
            return self._release(conn, [booking], BookingStatus.CANCELLED, now)[0]

        return await self._call(tx)

    async def expire_lapsed(self, now: float, limit: int) -> list[Booking]:
        def tx(conn: Conn) -> list[Booking]:
            # SKIP LOCKED: a booking being confirmed or cancelled right now is not ours to expire, and
            # several sweepers (one per process) share the work instead of queueing.
            rows = conn.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'held' AND expires_at <= %s "
                "ORDER BY expires_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, limit),
            ).fetchall()
            return self._release(conn, [_booking(r) for r in rows], BookingStatus.EXPIRED, now) if rows else []

        return await self._call(tx)

    async def edge_due(self, older_than: float, limit: int) -> list[Booking]:
        rows = await self._call(lambda conn: conn.execute(_EDGE_DUE_SQL, (older_than, limit)).fetchall(),
                                transaction=False)
        return [_booking(r) for r in rows]

    async def edge_done(self, booking_ids: Sequence[str]) -> None:
        ids = sorted({i for i in booking_ids if _storable(i)})
        if ids:
            # rows locked in id order: two processes draining overlapping parts of the outbox never deadlock
            await self._call(lambda conn: conn.execute(
                "UPDATE bookings SET edge_due = false WHERE id IN ("
                "SELECT id FROM bookings WHERE edge_due AND id = ANY(%s::text[]) ORDER BY id FOR UPDATE)",
                (ids,),
            ))

    async def reject(self, bookings: Sequence[Booking], reason: str, now: float, *, insert: bool = False,
                     keep_key: bool = True) -> list[tuple[Booking, bool]]:
        if not bookings:
            return []
        return await self._call(partial(_reject, bookings=bookings, reason=reason, now=now, insert=insert,
                                        keep_key=keep_key))

    # ------------------------------------------------------------------ the waiting room
    async def queue_join(self, event_id: str, joins: Sequence[tuple[str, str, str]],
                         now: float) -> tuple[list[tuple[Ticket, bool]], Line] | None:
        if not _storable(event_id):
            return None
        return await self._call(
            lambda conn: waiting_room_sql.join(conn, waiting_room_sql.POSTGRES, event_id, joins, now))

    async def queue_tick(self, event_id: str, now: float) -> Tick | None:
        return await self._call(lambda conn: waiting_room_sql.tick(conn, waiting_room_sql.POSTGRES, event_id, now))

    async def queue_ticket(self, ticket_id: str) -> tuple[Ticket, Line] | None:
        if not _storable(ticket_id):
            return None
        return await self._call(lambda conn: waiting_room_sql.read_ticket(conn, waiting_room_sql.POSTGRES, ticket_id),
                                snapshot=True)

    async def queue_line(self, event_id: str) -> Line | None:
        if not _storable(event_id):
            return None
        return await self._call(lambda conn: waiting_room_sql.read_line(conn, waiting_room_sql.POSTGRES, event_id),
                                transaction=False)

    async def queue_admission_order(self, event_id: str) -> list[tuple[int, float]]:
        return await self._call(
            lambda conn: waiting_room_sql.admission_order(conn, waiting_room_sql.POSTGRES, event_id), transaction=False)

    async def server_key(self, candidate: bytes) -> bytes:
        def tx(conn: Conn) -> bytes:
            # A concurrent insert makes ours wait for its commit and then do nothing; the SELECT, a statement
            # of its own (READ COMMITTED), then sees the winner's key.
            conn.execute("INSERT INTO server_keys (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                         (_SERVER_KEY, candidate))
            return bytes(_one(conn.execute("SELECT value FROM server_keys WHERE name = %s", (_SERVER_KEY,)))[0])

        return await self._call(tx)

    async def edge_snapshot(self) -> EdgeSnapshot:
        def read(conn: Conn) -> EdgeSnapshot:
            snap = EdgeSnapshot()
            snap.events = [
                (r[0], r[1], r[2]) for r in conn.execute("SELECT id, available, max_per_user FROM events ORDER BY seq")
            ]
            snap.owned = [
                (r[0], r[1], r[2], r[3])
                for r in conn.execute("SELECT event_id, user_id, id, booking_id FROM seats WHERE user_id IS NOT NULL")
            ]
            snap.keys = [
                (r[0], r[1], r[2], r[3])
                for r in conn.execute(
                    "SELECT event_id, idem_key, id, fingerprint FROM bookings WHERE idem_key IS NOT NULL"
                )
            ]
            snap.pending = [
                _booking(r)
                for r in conn.execute(
                    f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'pending' ORDER BY created_at, id"
                )
            ]
            return snap

        return await self._call(read, snapshot=True)  # one REPEATABLE READ snapshot: a consistent view
