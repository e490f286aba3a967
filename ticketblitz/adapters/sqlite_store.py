"""The embedded store: one SQLite file in WAL mode with durable (synchronous=FULL) commits.

One writer connection serves every write in a worker thread, one at a time; a second connection
serves reads, which WAL lets run beside the writer. A deadline is enforced inside SQLite itself
(progress handler), so a call that overruns is rolled back, never left half-done.

What a caller hears is what happened (`_Conn.transaction`):

- The deadline runs from the call, so time spent waiting for the writer counts; a call whose deadline
  passed before its turn does nothing. `trio.fail_after` cannot stop a worker thread that does not
  abandon (the Trio task waits for it and gets its result, and a result returned in time is never
  turned into `TooSlowError`): it only bounds the wait for the writer, before anything ran.
- Until COMMIT, any failure (an interrupt, an error, the deadline found passed) rolls back.
- COMMIT itself runs with no deadline and no checkpoint in it: SQLite reports an automatic WAL
  checkpoint's error as the COMMIT's, although the transaction is durable by then, and a progress
  handler that fires at the end of a COMMIT may interrupt it after it committed. So a COMMIT that
  raises did not commit; it is rolled back if SQLite left the transaction open (it does, e.g. after a
  deferred constraint failure or an interrupt), and when even ROLLBACK fails, the connection is closed
  (which discards the transaction) and opened again. The connection never stays inside a transaction.
- The WAL is checkpointed after commits instead, about every `_CHECKPOINT_PAGES` pages as SQLite would
  (the interval in commits adapts to the pages that each checkpoint found); a failed checkpoint is
  logged and retried later, the commit stands.

Residual: a COMMIT whose fsync fails may, after a crash, still be found in the WAL (as with any
database that trusts fsync's error report); its caller heard `Unavailable`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
import trio

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
log = logging.getLogger(__name__)

_PROGRESS_OPS = 2000  # SQLite VM steps between two looks at the deadline
_CHECKPOINT_PAGES = 1000  # WAL pages between checkpoints, as SQLite's own wal_autocheckpoint
_SERVER_KEY = "booking_secret"
_CHUNK = 500  # ids per IN (...) list

MIGRATIONS: list[str] = [
    # 1: the whole first schema
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        venue TEXT,
        starts_at TEXT,
        sections TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        max_per_user INTEGER NOT NULL,
        hold_seconds INTEGER NOT NULL,
        available INTEGER NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,
        sold INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        CHECK (available >= 0 AND held >= 0 AND sold >= 0 AND available + held + sold = capacity)
    );
    CREATE TABLE seats (
        event_id TEXT NOT NULL REFERENCES events(id),
        position INTEGER NOT NULL,
        id TEXT NOT NULL,
        section TEXT NOT NULL,
        row INTEGER NOT NULL,
        number INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'held', 'sold')),
        booking_id TEXT,
        user_id TEXT,
        PRIMARY KEY (event_id, position),
        UNIQUE (event_id, id),
        CHECK ((status = 'available') = (booking_id IS NULL))
    ) WITHOUT ROWID;
    CREATE INDEX seats_available ON seats(event_id, status, position);
    CREATE INDEX seats_owner ON seats(event_id, user_id) WHERE user_id IS NOT NULL;
    CREATE INDEX seats_booking ON seats(booking_id) WHERE booking_id IS NOT NULL;
    CREATE TABLE bookings (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events(id),
        user_id TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        requested TEXT NOT NULL,
        seat_ids TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        expires_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        idem_key TEXT,
        fingerprint TEXT
    );
    CREATE UNIQUE INDEX bookings_idem ON bookings(event_id, idem_key) WHERE idem_key IS NOT NULL;
    CREATE INDEX bookings_status ON bookings(status, expires_at);
    CREATE INDEX bookings_event ON bookings(event_id);
    """,
    # 2: fencing numbers of the seat locks: a write with an older number than the seat's last one is refused
    """
    ALTER TABLE seats ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the hash of each booking's secret; the outbox of edge releases (cancelled or expired bookings
    # whose seats the edge has not yet been told about); the deployment's keys
    """
    ALTER TABLE bookings ADD COLUMN secret_hash TEXT;
    ALTER TABLE bookings ADD COLUMN edge_due INTEGER NOT NULL DEFAULT 0
        CHECK (edge_due = 0 OR (edge_due = 1 AND status IN ('cancelled', 'expired')));
    CREATE INDEX bookings_edge_due ON bookings(updated_at, id) WHERE edge_due = 1;
    CREATE TABLE server_keys (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """,
    # 4: tombstones: ids of bookings whose enqueue failed with an unknown outcome (the client heard 503).
    # No booking row: a copy that reached the queue is decided as rejected and stored nowhere.
    """
    CREATE TABLE tombstones (id TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID;
    """,
    # 5: the waiting room (API 1.2): an event's sale start and room settings, its line and tickets.
    """
    ALTER TABLE events ADD COLUMN sale_starts_at REAL;
    ALTER TABLE events ADD COLUMN waiting_room TEXT;
    """ + waiting_room_sql.TABLES,
]

# The seat map documents of `seat_map_json`, built by SQLite: one row, one string, no per-seat Python
# (json_object and json_quote escape what JSON needs, as orjson does).
_SEAT_MAP_SQL = {
    "api": """
        SELECT CAST('{"event_id":' || json_quote(e.id) || ',"seats":' || (
            SELECT json_group_array(json_object('id', s.id, 'section', s.section, 'row', s.row,
                                                'number', s.number, 'status', s.status))
            FROM (SELECT id, section, row, number, status FROM seats WHERE event_id = e.id ORDER BY position) s
        ) || '}' AS BLOB)
        FROM events e WHERE e.id = ?
    """,
    "compat": """
        SELECT CAST('{"eventId":' || json_quote(e.id) || ',"seats":' || (
            SELECT json_group_array(json_object(
                'number', s.position, 'id', s.id,
                'status', CASE s.status WHEN 'available' THEN 'AVAILABLE' WHEN 'held' THEN 'LOCKED' ELSE 'BOOKED' END))
            FROM (SELECT position, id, status FROM seats WHERE event_id = e.id ORDER BY position) s
        ) || '}' AS BLOB)
        FROM events e WHERE e.id = ?
    """,
}
_SEAT_COLUMNS = "id, section, row, number, position, status"
# The cheap reads, each on its index. INDEXED BY: without statistics SQLite would walk the event's primary
# key and filter on status, which reads the whole sold front of a 200,000-seat map.
_FIRST_AVAILABLE_SQL = (f"SELECT {_SEAT_COLUMNS} FROM seats INDEXED BY seats_available "
                        "WHERE event_id = ? AND status = 'available' ORDER BY position LIMIT 1")
_EDGE_DUE_SQL = (f"SELECT {BOOKING_COLUMNS} FROM bookings INDEXED BY bookings_edge_due "
                 "WHERE edge_due = 1 AND updated_at <= ? ORDER BY updated_at, id LIMIT ?")


def _booking(row: Sequence[Any]) -> Booking:
    return booking_from_row(row, json.loads)


def _event(row: Sequence[Any]) -> Event:
    return event_from_row(row, json.loads)


def _tombstoned(db: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        found.update(r[0] for r in db.execute(f"SELECT id FROM tombstones WHERE id IN ({','.join('?' * len(part))})",
                                              part))
    return found


def _buried(booking: Booking, now: float) -> Booking:
    """A tombstoned booking as `decide` answers it: rejected, its enqueue having failed."""
    return rejected_booking(booking, "processing_failed", now, keep_key=False)


def _json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def _booking_values(b: Booking) -> tuple[Any, ...]:
    """A booking as the values of BOOKING_COLUMNS."""
    return (b.id, b.event_id, b.user_id, b.quantity, _json_list(b.requested_seats), _json_list(b.seat_ids),
            b.status.value, b.reason, b.expires_at, b.created_at, b.updated_at, b.idempotency_key, b.fingerprint,
            b.secret_hash)


_INSERT_BOOKING = f"INSERT INTO bookings ({BOOKING_COLUMNS}) VALUES ({','.join('?' * BOOKING_COLUMN_COUNT)})"


# Seats looked up by name go through UNIQUE (event_id, id) — SQLite names it sqlite_autoindex_seats_2 (the
# primary key is _1). Without ANALYZE statistics the planner scanned the event's whole primary key for an
# `id IN (...)` list of two seats or more instead: 18 ms for 200 named seats of a 200,000-seat event, half of
# the embedded server's samples under book-async load (bench/results/2026-12-01-issue10-profiles.md).
# INDEXED BY fails loudly should the index ever be missing.
_SEATS_BY_ID = "seats INDEXED BY sqlite_autoindex_seats_2"


def _seat(row: Sequence[Any]) -> Seat:
    return Seat(row[0], row[1], row[2], row[3], row[4], SeatStatus(row[5]))


def _seat_statuses_sql(n: int) -> str:
    return f"SELECT id, status FROM {_SEATS_BY_ID} WHERE event_id = ? AND id IN ({','.join('?' * n)})"


def _chunks(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]


class _Conn:
    """A SQLite connection used from one worker thread at a time, with a per-call deadline."""

    def __init__(self, path: Path, *, readonly: bool, busy_timeout: float) -> None:
        self.path = path
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.deadline = float("inf")
        self.limiter = trio.CapacityLimiter(1)
        self.commits = 0  # since the last checkpoint
        self.checkpoint_every = 1  # commits; adapts to the pages the commits write
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=self.busy_timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        if self.readonly:
            db.execute("PRAGMA query_only=ON")
        else:
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run after commits, never inside one
        db.set_progress_handler(self._overdue, _PROGRESS_OPS)
        return db

    def _overdue(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` in one write transaction; see the module docstring for what a failure leaves behind."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            if time.monotonic() > self.deadline:  # the caller gives up now: commit nothing it will not hear of
                raise Unavailable("the store transaction overran its deadline", component="store")
        except BaseException:
            self._abort()
            raise
        # From here on the outcome is COMMIT's alone: nothing may interrupt it (our handler, put back in
        # case `fn` set another, sees no deadline).
        self.deadline = float("inf")
        db.set_progress_handler(self._overdue, _PROGRESS_OPS)
        try:
            db.execute("COMMIT")
        except BaseException:
            self._abort()
            raise
        self._checkpoint_now_and_then()
        return result

    def _abort(self) -> None:
        """Leave no transaction open, whatever failed: roll back, or failing that start a new connection."""
        self.deadline = float("inf")  # a rollback must not be interrupted
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("sqlite store: ROLLBACK failed (%s); reopening the connection", exc)
            self.reopen()

    def reopen(self) -> None:
        """A fresh connection; closing the old one discards whatever transaction it still had."""
        old, self.db = self.db, None  # type: ignore[assignment]
        try:
            old.close()
        except sqlite3.Error:
            pass
        self.db = self._connect()  # may raise: then `broken`, and the next call tries again

    @property
    def broken(self) -> bool:
        return self.db is None

    def _checkpoint_now_and_then(self) -> None:
        self.commits += 1
        if self.commits < self.checkpoint_every:
            return
        try:
            _busy, pages, _copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the commit stands; the next checkpoint copies what this one did not
            log.warning("sqlite store: WAL checkpoint failed: %s", exc)
        else:
            if pages > 0:  # the WAL restarts after a complete checkpoint: `pages` is about what these commits wrote
                self.checkpoint_every = max(1, min(1000, self.commits * _CHECKPOINT_PAGES // pages))
        self.commits = 0


class SqliteStore:
    """The Store port on SQLite; see the module docstring."""

    name = "sqlite"

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._writer: _Conn | None = None
        self._reader: _Conn | None = None

    # ------------------------------------------------------------------ plumbing
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await trio.to_thread.run_sync(
            lambda: _Conn(self.path, readonly=False, busy_timeout=self.timeout))
        await self._write(self._migrate)
        self._reader = await trio.to_thread.run_sync(
            lambda: _Conn(self.path, readonly=True, busy_timeout=self.timeout))

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                async with conn.limiter:
                    if not conn.broken:
                        conn.db.close()
        self._reader = self._writer = None

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def _run(self, conn: _Conn | None, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if conn is None:
            raise Unavailable("the store is not open", component="store")
        deadline = time.monotonic() + self.timeout  # from the call: waiting for the connection counts

        def call() -> T:
            if time.monotonic() > deadline:  # its turn came too late: do nothing, the caller hears Unavailable
                raise Unavailable("the store did not answer in time", component="store")
            if conn.broken:
                conn.reopen()
            conn.deadline = deadline
            try:
                return conn.transaction(fn) if write else fn(conn.db)
            finally:
                conn.deadline = float("inf")

        try:
            # Only the wait for the connection can end here: once the thread runs, this task waits for
            # it (no abandoning: the connection is the thread's until it ends), and the progress handler
            # bounds the thread instead.
            with trio.fail_after(self.timeout + 1.0):
                return await trio.to_thread.run_sync(call, limiter=conn.limiter)
        except trio.TooSlowError:
            raise Unavailable("the store did not answer in time", component="store") from None
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise Unavailable(f"the store failed: {exc}", component="store") from None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, fn, write=True)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._reader, fn, write=False)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS, start=1):
            if version > current:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    # ------------------------------------------------------------------ events and seats
    async def create_event(self, event: Event) -> Event:
        sections = json.dumps([{"name": s.name, "rows": s.rows, "seats_per_row": s.seats_per_row,
                                "price_cents": s.price_cents} for s in event.sections])

        def tx(db: sqlite3.Connection) -> None:
            seq = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchone()[0]
            db.execute(
                "INSERT INTO events (id, seq, name, venue, starts_at, sections, capacity, max_per_user, "
                "hold_seconds, available, created_at, sale_starts_at, waiting_room) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (event.id, seq, event.name, event.venue, event.starts_at, sections, event.capacity,
                 event.max_per_user, event.hold_seconds, event.capacity, event.created_at, event.sale_starts_at,
                 waiting_room_text(event)),
            )
            db.executemany(
                "INSERT INTO seats (event_id, position, id, section, row, number) VALUES (?,?,?,?,?,?)",
                ((event.id, r.position, r.id, r.section, r.row, r.number) for r in rules.seat_map(event)),
            )
            waiting_room_sql.insert_line(db, waiting_room_sql.SQLITE, event)

        await self._write(tx)
        return event.with_counts(Counts(event.capacity, 0, 0))

    async def get_event(self, event_id: str) -> Event | None:
        row = await self._read(
            lambda db: db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
        )
        return _event(row) if row else None

    async def list_events(self) -> list[Event]:
        rows = await self._read(
            lambda db: db.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall()
        )
        return [_event(r) for r in rows]

    async def seats(self, event_id: str) -> list[Seat]:
        rows = await self._read(
            lambda db: db.execute(
                f"SELECT {_SEAT_COLUMNS} FROM seats WHERE event_id = ? ORDER BY position", (event_id,)
            ).fetchall()
        )
        return [_seat(r) for r in rows]

    async def seat_map_json(self, event_id: str, form: str) -> bytes | None:
        statement = _SEAT_MAP_SQL[form]  # KeyError: a caller's bug, not a request's
        row = await self._read(lambda db: db.execute(statement, (event_id,)).fetchone())
        return bytes(row[0]) if row else None

    async def seat_statuses(self, event_id: str, seat_ids: Sequence[str]) -> dict[str, SeatStatus]:
        wanted = list(dict.fromkeys(seat_ids))

        def read(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = []
            for part in _chunks(wanted):
                rows += db.execute(_seat_statuses_sql(len(part)), (event_id, *part)).fetchall()
            return rows

        return {r[0]: SeatStatus(r[1]) for r in await self._read(read)} if wanted else {}

    async def first_available(self, event_id: str) -> Seat | None:
        row = await self._read(lambda db: db.execute(_FIRST_AVAILABLE_SQL, (event_id,)).fetchone())
        return _seat(row) if row else None

    # ------------------------------------------------------------------ bookings
    async def get_booking(self, booking_id: str) -> Booking | None:
        row = await self._read(
            lambda db: db.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = ?", (booking_id,)).fetchone()
        )
        return _booking(row) if row else None

    async def bookings_of_event(self, event_id: str) -> list[Booking]:
        rows = await self._read(
            lambda db: db.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE event_id = ? ORDER BY created_at", (event_id,)
            ).fetchall()
        )
        return [_booking(r) for r in rows]

    @staticmethod
    def _insert(db: sqlite3.Connection, b: Booking) -> Booking | None:
        """Insert one booking; when its id or its Idempotency-Key is already stored, return that booking."""
        try:
            db.execute(_INSERT_BOOKING, _booking_values(b))
        except sqlite3.IntegrityError:
            # the same booking delivered again, or its Idempotency-Key already taken by another booking
            row = db.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = ?", (b.id,)).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE event_id = ? AND idem_key = ?",
                    (b.event_id, b.idempotency_key),
                ).fetchone()
            if row is None:
                raise
            return _booking(row)
        return None

    async def insert_pending(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        return await self._write(lambda db: self._insert_all(db, bookings))

    def _insert_all(self, db: sqlite3.Connection, bookings: Sequence[Booking]) -> list[Booking | None]:
        """Insert the batch with one executemany; only when a row collides (a repeat, a taken
        Idempotency-Key) is it undone and inserted one by one to learn which (rare)."""
        if len(bookings) > 1:
            db.execute("SAVEPOINT insert_all")
            try:
                db.executemany(_INSERT_BOOKING, [_booking_values(b) for b in bookings])
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK TO insert_all")
                db.execute("RELEASE insert_all")
            else:
                db.execute("RELEASE insert_all")
                return [None] * len(bookings)
        return [self._insert(db, b) for b in bookings]

    async def pending_bookings(self, limit: int) -> list[Booking]:
        rows = await self._read(
            lambda db: db.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'pending' ORDER BY created_at LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_booking(r) for r in rows]

    async def decide(self, bookings: Sequence[Booking], now: float, *, insert: bool = False,
                     fences: Fences | None = None) -> list[Booking]:
        return await self._write(lambda db: self._decide(db, bookings, now, insert, fences or {}))

    async def fence_floor(self) -> int:
        row = await self._read(lambda db: db.execute("SELECT coalesce(max(fence), 0) FROM seats").fetchone())
        return int(row[0])

    def _decide(self, db: sqlite3.Connection, bookings: Sequence[Booking], now: float, insert: bool,
                fences: Fences) -> list[Booking]:
        buried = _tombstoned(db, [b.id for b in bookings]) if insert else set()
        if buried:  # answered as rejected, stored nowhere; the others are decided as usual
            rest = iter(self._decide(db, [b for b in bookings if b.id not in buried], now, insert, fences))
            return [_buried(b, now) if b.id in buried else next(rest) for b in bookings]
        answers: list[str] = []  # per booking, the id of the stored booking that answers it
        # embedded, every booking is stored already (intake stored it): one read instead of an INSERT that
        # fails on the primary key, then a SELECT, per booking
        present = self._bookings_by_id(db, list(dict.fromkeys(b.id for b in bookings))) if insert else {}
        for booking in bookings:
            existing = self._insert(db, booking) if insert and booking.id not in present else None
            # a key's twin answers for a booking whose Idempotency-Key belongs to an earlier one
            answers.append(existing.id if existing is not None else booking.id)
        unread = [i for i in dict.fromkeys(answers) if i not in present]
        stored = present | self._bookings_by_id(db, unread) if unread else present
        missing = [i for i in answers if i not in stored]
        if missing:
            raise NotFound(f"booking {missing[0]} is not in the store")
        events: dict[str, Event] = {}
        pickers: dict[str, rules.SeatPicker] = {}
        owned: dict[tuple[str, str], int] = {}
        avoid = rules.named_seats(bookings)
        claims: list[tuple[str, str, int, str, str]] = []
        taken: dict[str, int] = {}
        decided: dict[str, Booking] = {}
        for booking_id in dict.fromkeys(answers):  # each once, in order; a redelivery keeps its first decision
            current = stored[booking_id]
            if current.status is not BookingStatus.PENDING:
                continue
            event = events.get(current.event_id)
            if event is None:
                erow = db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (current.event_id,)).fetchone()
                event = events[current.event_id] = _event(erow)
                pickers[event.id] = self._picker(db, event.id, bookings)
            fence = max((fences.get((current.event_id, seat), 0) for seat in current.requested_seats), default=0)
            if fence and self._stale(db, current, fence):
                continue  # its lock lapsed and another writer came by: left pending, retried
            key = (current.event_id, current.user_id)
            if key not in owned:
                owned[key] = db.execute(
                    "SELECT count(*) FROM seats WHERE event_id = ? AND user_id = ?", key
                ).fetchone()[0]
            decision = rules.decide(current, event, owned[key], pickers[event.id], avoid)
            decided[booking_id] = rules.apply_decision(current, event, decision, now)
            if decision.held:
                claims.extend((current.id, current.user_id, fence, current.event_id, seat) for seat in decision.seats)
                taken[current.event_id] = taken.get(current.event_id, 0) + len(decision.seats)
                owned[key] += len(decision.seats)
        # the writes of the whole batch, a few statements in all
        changed = db.executemany(
            "UPDATE seats SET status = 'held', booking_id = ?, user_id = ?, fence = max(fence, ?) "
            "WHERE event_id = ? AND id = ? AND status = 'available'",
            claims,
        ).rowcount if claims else 0
        if changed != len(claims):  # the picker disagrees with the rows: refuse the batch
            raise sqlite3.OperationalError("seat rows changed under a batch of bookings")
        for event_id, n in taken.items():
            db.execute("UPDATE events SET available = available - ?, held = held + ? WHERE id = ?", (n, n, event_id))
        db.executemany(
            "UPDATE bookings SET status = ?, reason = ?, seat_ids = ?, expires_at = ?, updated_at = ? "
            "WHERE id = ? AND status = 'pending'",
            [(d.status.value, d.reason, _json_list(d.seat_ids), d.expires_at, now, d.id) for d in decided.values()],
        )
        return [decided.get(i) or stored[i] for i in answers]

    @staticmethod
    def _bookings_by_id(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Booking]:
        found: dict[str, Booking] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            for row in db.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id IN ({','.join('?' * len(part))})", part
            ):
                found[row[0]] = _booking(row)
        return found

    @staticmethod
    def _picker(db: sqlite3.Connection, event_id: str, bookings: Sequence[Booking]) -> rules.SeatPicker:
        """The seats the batch may need: the named ones, and a window of the first available seats that
        grows on demand (a 200,000-seat event is not read whole for every batch)."""
        columns = "SELECT id, section, row, number, position"
        mine = [b for b in bookings if b.event_id == event_id]
        named = sorted({s for b in mine for s in b.requested_seats})
        window = max(64, 32 * max((b.quantity for b in mine if not b.requested_seats), default=0),
                     2 * sum(b.quantity for b in mine))
        refs = []
        for start in range(0, len(named), 500):
            part = named[start:start + 500]
            refs += [SeatRef(*r[:5]) for r in db.execute(
                f"{columns}, status FROM {_SEATS_BY_ID} WHERE event_id = ? AND id IN ({','.join('?' * len(part))})",
                (event_id, *part)) if r[5] == "available"]
        last = [0]

        def more() -> list[SeatRef]:
            rows = db.execute(f"{columns} FROM seats WHERE event_id = ? AND status = 'available' AND position > ? "
                              "ORDER BY position LIMIT ?", (event_id, last[0], window)).fetchall()
            if rows:
                last[0] = rows[-1][4]
            return [SeatRef(*r) for r in rows]

        picker = rules.SeatPicker(refs, more)
        picker.extend()  # the first window
        return picker

    @staticmethod
    def _stale(db: sqlite3.Connection, booking: Booking, fence: int) -> bool:
        marks = ",".join("?" * len(booking.requested_seats))
        row = db.execute(
            f"SELECT count(*) FROM {_SEATS_BY_ID} WHERE event_id = ? AND id IN ({marks}) AND fence >= ?",
            (booking.event_id, *booking.requested_seats, fence),
        ).fetchone()
        return bool(row[0])

    def _load(self, db: sqlite3.Connection, booking_id: str) -> Booking:
        row = db.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = ?", (booking_id,)).fetchone()
        if row is None:
            raise NotFound(f"booking {booking_id} does not exist")
        return _booking(row)

    async def confirm(self, booking_id: str, now: float) -> tuple[Booking, bool]:
        def tx(db: sqlite3.Connection) -> tuple[Booking, bool]:
            booking = self._load(db, booking_id)
            if not rules.check_confirm(booking, now):
                return booking, False
            n = db.execute(
                "UPDATE seats SET status = 'sold' WHERE booking_id = ? AND status = 'held'", (booking_id,)
            ).rowcount
            db.execute("UPDATE events SET held = held - ?, sold = sold + ? WHERE id = ?", (n, n, booking.event_id))
            db.execute(
                "UPDATE bookings SET status = 'confirmed', updated_at = ? WHERE id = ? AND status = 'held'",
                (now, booking_id),
            )
            return replace(booking, status=BookingStatus.CONFIRMED, updated_at=now), True

        return await self._write(tx)

    @staticmethod
    def _release(db: sqlite3.Connection, booking: Booking, status: BookingStatus, now: float) -> Booking:
        n = db.execute(
            "UPDATE seats SET status = 'available', booking_id = NULL, user_id = NULL "
            "WHERE booking_id = ? AND status = 'held'",
            (booking.id,),
        ).rowcount
        db.execute("UPDATE events SET held = held - ?, available = available + ? WHERE id = ?",
                   (n, n, booking.event_id))
        # ... and the edge must hear of it: due until `edge_done`, whatever happens after this commit
        db.execute(
            "UPDATE bookings SET status = ?, updated_at = ?, edge_due = 1 WHERE id = ? AND status = 'held'",
            (status.value, now, booking.id),
        )
        return replace(booking, status=status, updated_at=now)

    async def cancel(self, booking_id: str, now: float) -> Booking:
        def tx(db: sqlite3.Connection) -> Booking:
            booking = self._load(db, booking_id)
            rules.check_cancel(booking)
            return self._release(db, booking, BookingStatus.CANCELLED, now)

        return await self._write(tx)

    async def expire_lapsed(self, now: float, limit: int) -> list[Booking]:
        def tx(db: sqlite3.Connection) -> list[Booking]:
            rows = db.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'held' AND expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [self._release(db, _booking(r), BookingStatus.EXPIRED, now) for r in rows]

        return await self._write(tx)

    async def edge_due(self, older_than: float, limit: int) -> list[Booking]:
        rows = await self._read(lambda db: db.execute(_EDGE_DUE_SQL, (older_than, limit)).fetchall())
        return [_booking(r) for r in rows]

    async def edge_done(self, booking_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(booking_ids))

        def tx(db: sqlite3.Connection) -> None:
            for part in _chunks(ids):
                db.execute(
                    f"UPDATE bookings SET edge_due = 0 WHERE edge_due = 1 AND id IN ({','.join('?' * len(part))})",
                    part,
                )

        if ids:
            await self._write(tx)

    async def reject(self, bookings: Sequence[Booking], reason: str, now: float, *, insert: bool = False,
                     keep_key: bool = True) -> list[tuple[Booking, bool]]:
        def tx(db: sqlite3.Connection) -> list[tuple[Booking, bool]]:
            return [self._reject_one(db, b, reason, now, insert, keep_key) for b in bookings]

        return await self._write(tx) if bookings else []

    def _reject_one(self, db: sqlite3.Connection, booking: Booking, reason: str, now: float, insert: bool,
                    keep_key: bool) -> tuple[Booking, bool]:
        row = db.execute(f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = ?", (booking.id,)).fetchone()
        if row is not None:
            stored = _booking(row)
            if stored.status is not BookingStatus.PENDING:
                return stored, False
            db.execute(
                "UPDATE bookings SET status = 'rejected', reason = ?, seat_ids = '[]', updated_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (reason, now, booking.id),
            )
            return rejected_booking(stored, reason, now), True
        if not insert:
            raise NotFound(f"booking {booking.id} is not in the store")
        if not keep_key:  # a tombstone, not a booking: see Store.reject
            db.execute("INSERT OR IGNORE INTO tombstones (id, created_at) VALUES (?, ?)", (booking.id, now))
            return rejected_booking(booking, reason, now, keep_key=False), True
        if db.execute("SELECT 1 FROM events WHERE id = ?", (booking.event_id,)).fetchone() is None:
            raise NotFound(f"event {booking.event_id} of booking {booking.id} does not exist")  # nowhere to record it
        rejected = rejected_booking(booking, reason, now, keep_key=keep_key)
        twin = self._insert(db, rejected)  # only a key's twin: the id is not stored
        return (twin, False) if twin is not None else (rejected, True)

    async def server_key(self, candidate: bytes) -> bytes:
        def tx(db: sqlite3.Connection) -> bytes:
            db.execute("INSERT OR IGNORE INTO server_keys (name, value) VALUES (?, ?)", (_SERVER_KEY, candidate))
            return bytes(db.execute("SELECT value FROM server_keys WHERE name = ?", (_SERVER_KEY,)).fetchone()[0])

        return await self._write(tx)  # BEGIN IMMEDIATE: one writer at a time, across processes too

    async def edge_snapshot(self) -> EdgeSnapshot:
        def read(db: sqlite3.Connection) -> EdgeSnapshot:
            snap = EdgeSnapshot()
            snap.events = [tuple(r) for r in db.execute("SELECT id, available, max_per_user FROM events")]
            snap.owned = [
                tuple(r)
                for r in db.execute("SELECT event_id, user_id, id, booking_id FROM seats WHERE user_id IS NOT NULL")
            ]
            snap.keys = [
                tuple(r)
                for r in db.execute(
                    "SELECT event_id, idem_key, id, fingerprint FROM bookings WHERE idem_key IS NOT NULL"
                )
            ]
            snap.pending = [
                _booking(r)
                for r in db.execute(
                    f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE status = 'pending' ORDER BY created_at"
                )
            ]
            return snap

        return await self._write(read)  # the writer's transaction gives one consistent view

    # ------------------------------------------------------------------ the waiting room
    async def queue_join(self, event_id: str, joins: Sequence[tuple[str, str, str]],
                         now: float) -> tuple[list[tuple[Ticket, bool]], Line] | None:
        return await self._write(lambda db: waiting_room_sql.join(db, waiting_room_sql.SQLITE, event_id, joins, now))

    async def queue_tick(self, event_id: str, now: float) -> Tick | None:
        return await self._write(lambda db: waiting_room_sql.tick(db, waiting_room_sql.SQLITE, event_id, now))

    async def queue_ticket(self, ticket_id: str) -> tuple[Ticket, Line] | None:
        return await self._read(lambda db: waiting_room_sql.read_ticket(db, waiting_room_sql.SQLITE, ticket_id))

    async def queue_line(self, event_id: str) -> Line | None:
        return await self._read(lambda db: waiting_room_sql.read_line(db, waiting_room_sql.SQLITE, event_id))

    async def queue_admission_order(self, event_id: str) -> list[tuple[int, float]]:
        return await self._read(lambda db: waiting_room_sql.admission_order(db, waiting_room_sql.SQLITE, event_id))

    async def seat_counts(self, event_id: str) -> Counts:
        """Counts recomputed from the seat rows (the invariant checks compare them with the event's)."""
        rows = await self._read(
            lambda db: db.execute(
                "SELECT status, count(*) FROM seats WHERE event_id = ? GROUP BY status", (event_id,)
            ).fetchall()
        )
        by = dict(rows)
        return Counts(by.get("available", 0), by.get("held", 0), by.get("sold", 0))

