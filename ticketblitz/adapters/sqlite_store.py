"""The embedded store: one SQLite file in WAL mode with durable (synchronous=FULL) commits.

One writer connection serves every write in a worker thread, one at a time; a second connection
serves reads, which WAL lets run beside the writer. A deadline is enforced inside SQLite itself
(progress handler), so a call that overruns is rolled back, never left half-done.
"""

from __future__ import annotations

import json
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
from ..ports import EdgeSnapshot, Fences
from .rows import BOOKING_COLUMNS, EVENT_COLUMNS, booking_from_row, event_from_row

T = TypeVar("T")

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
]


def _booking(row: Sequence[Any]) -> Booking:
    return booking_from_row(row, json.loads)


def _event(row: Sequence[Any]) -> Event:
    return event_from_row(row, json.loads)



def _json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()






class _Conn:
    """A SQLite connection used from one worker thread at a time, with a per-call deadline."""

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if readonly:
            self.db.execute("PRAGMA query_only=ON")
        self.deadline = float("inf")
        self.db.set_progress_handler(self._overdue, 2000)
        self.limiter = trio.CapacityLimiter(1)

    def _overdue(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


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
        self._writer = await trio.to_thread.run_sync(lambda: _Conn(self.path, readonly=False))
        await self._write(self._migrate)
        self._reader = await trio.to_thread.run_sync(lambda: _Conn(self.path, readonly=True))

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                async with conn.limiter:
                    conn.db.close()
        self._reader = self._writer = None

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def _run(self, conn: _Conn | None, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if conn is None:
            raise Unavailable("the store is not open", component="store")

        def call() -> T:
            conn.deadline = time.monotonic() + self.timeout
            try:
                if not write:
                    return fn(conn.db)
                conn.db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn.db)
                except BaseException:
                    conn.db.execute("ROLLBACK")
                    raise
                conn.db.execute("COMMIT")
                return result
            finally:
                conn.deadline = float("inf")

        try:
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
                "hold_seconds, available, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (event.id, seq, event.name, event.venue, event.starts_at, sections, event.capacity,
                 event.max_per_user, event.hold_seconds, event.capacity, event.created_at),
            )
            db.executemany(
                "INSERT INTO seats (event_id, position, id, section, row, number) VALUES (?,?,?,?,?,?)",
                ((event.id, r.position, r.id, r.section, r.row, r.number) for r in rules.seat_map(event)),
            )

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
                "SELECT id, section, row, number, position, status FROM seats WHERE event_id = ? ORDER BY position",
                (event_id,),
            ).fetchall()
        )
        return [Seat(r[0], r[1], r[2], r[3], r[4], SeatStatus(r[5])) for r in rows]

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
            db.execute(
                f"INSERT INTO bookings ({BOOKING_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (b.id, b.event_id, b.user_id, b.quantity, _json_list(b.requested_seats),
                 _json_list(b.seat_ids), b.status.value, b.reason, b.expires_at, b.created_at,
                 b.updated_at, b.idempotency_key, b.fingerprint),
            )
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
        return await self._write(lambda db: [self._insert(db, b) for b in bookings])

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
        answers: list[str] = []  # per booking, the id of the stored booking that answers it
        for booking in bookings:
            existing = self._insert(db, booking) if insert else None
            # a key's twin answers for a booking whose Idempotency-Key belongs to an earlier one
            answers.append(existing.id if existing is not None else booking.id)
        stored = self._bookings_by_id(db, list(dict.fromkeys(answers)))
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
        columns = "SELECT id, section, row, number, position FROM seats"
        mine = [b for b in bookings if b.event_id == event_id]
        named = sorted({s for b in mine for s in b.requested_seats})
        window = max(64, 32 * max((b.quantity for b in mine if not b.requested_seats), default=0),
                     2 * sum(b.quantity for b in mine))
        refs = []
        for start in range(0, len(named), 500):
            part = named[start:start + 500]
            refs += [SeatRef(*r) for r in db.execute(
                f"{columns} WHERE event_id = ? AND status = 'available' AND id IN ({','.join('?' * len(part))})",
                (event_id, *part))]
        last = [0]

        def more() -> list[SeatRef]:
            rows = db.execute(f"{columns} WHERE event_id = ? AND status = 'available' AND position > ? "
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
            f"SELECT count(*) FROM seats WHERE event_id = ? AND id IN ({marks}) AND fence >= ?",
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
        db.execute(
            "UPDATE bookings SET status = ?, updated_at = ? WHERE id = ? AND status = 'held'",
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

    async def seat_counts(self, event_id: str) -> Counts:
        """Counts recomputed from the seat rows (the invariant checks compare them with the event's)."""
        rows = await self._read(
            lambda db: db.execute(
                "SELECT status, count(*) FROM seats WHERE event_id = ? GROUP BY status", (event_id,)
            ).fetchall()
        )
        by = dict(rows)
        return Counts(by.get("available", 0), by.get("held", 0), by.get("sold", 0))

