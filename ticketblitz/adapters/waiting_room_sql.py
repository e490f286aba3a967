"""The waiting room's state in SQL, one code path for both stores (SQLite embedded, PostgreSQL
distributed): the line of each event (`queue_lines`, one row) and its tickets (`queue_tickets`).

Every change of a line runs in one transaction that first locks the line's row (`FOR UPDATE` in
PostgreSQL; SQLite has one writer), so that joins and admissions from any number of server processes
are serialized: arrival order is the order of the commits, positions have no gaps or repeats, and
passes go out in position order. The rules themselves are `domain/waiting_room.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..domain.model import Event
from ..domain.waiting_room import (
    Line,
    Tick,
    Ticket,
    TicketStatus,
    WaitingRoom,
    admissions,
    is_sold_out,
    lottery_order,
    new_seed,
    position_at_join,
    refill,
    status_at_join,
)

# Tables, for both stores' migrations (the types SQLite and PostgreSQL both read the same way).
TABLES = """
CREATE TABLE queue_lines (
    event_id text PRIMARY KEY REFERENCES events (id),
    mode text NOT NULL,
    admit_per_second integer NOT NULL,
    pass_seconds integer NOT NULL,
    challenge_bits integer NOT NULL,
    opens_at double precision NOT NULL,
    opened integer NOT NULL DEFAULT 0,
    seed text,
    joined integer NOT NULL DEFAULT 0,
    last_position integer NOT NULL DEFAULT 0,
    admitted_through integer NOT NULL DEFAULT 0,
    credit double precision NOT NULL DEFAULT 0,
    ticked_at double precision NOT NULL DEFAULT 0,
    sold_out integer NOT NULL DEFAULT 0,
    admitted integer NOT NULL DEFAULT 0,
    expired integer NOT NULL DEFAULT 0,
    outstanding integer NOT NULL DEFAULT 0
);
CREATE TABLE queue_tickets (
    id text PRIMARY KEY,
    event_id text NOT NULL REFERENCES events (id),
    user_id text NOT NULL,
    seq integer NOT NULL,
    position integer,
    status text NOT NULL,
    secret_hash text NOT NULL,
    created_at double precision NOT NULL,
    admitted_at double precision,
    pass_expires_at double precision,
    UNIQUE (event_id, user_id),
    UNIQUE (event_id, seq)
);
CREATE INDEX queue_tickets_position ON queue_tickets (event_id, position);
CREATE INDEX queue_tickets_admitted ON queue_tickets (event_id, status, pass_expires_at);
CREATE INDEX bookings_user ON bookings (event_id, user_id, created_at);
"""

_LINE_COLUMNS = ("event_id, mode, admit_per_second, pass_seconds, challenge_bits, opens_at, opened, seed, joined, "
                 "last_position, admitted_through, credit, ticked_at, sold_out, admitted, expired, outstanding")
_TICKET_COLUMNS = "id, event_id, user_id, seq, position, status, secret_hash, created_at, admitted_at, pass_expires_at"
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the two stores: the placeholder and row locking."""

    placeholder: str  # "?" or "%s"
    lock: str  # " FOR UPDATE" or ""

    def q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)


SQLITE = Dialect("?", "")
POSTGRES = Dialect("%s", " FOR UPDATE")


def _line(row: Sequence[Any]) -> Line:
    return Line(event_id=row[0], room=WaitingRoom(row[1], row[2], row[3], row[4]), opens_at=row[5],
                opened=bool(row[6]), seed=row[7], joined=row[8], last_position=row[9], admitted_through=row[10],
                credit=row[11], ticked_at=row[12], sold_out=bool(row[13]), admitted=row[14], expired=row[15],
                outstanding=row[16])


def _ticket(row: Sequence[Any]) -> Ticket:
    return Ticket(id=row[0], event_id=row[1], user_id=row[2], seq=row[3], position=row[4],
                  status=TicketStatus(row[5]), secret_hash=row[6], created_at=row[7], admitted_at=row[8],
                  pass_expires_at=row[9])


def insert_line(db: Any, d: Dialect, event: Event) -> None:
    """The line of a new event with a waiting room (in the transaction creating the event)."""
    room = event.waiting_room
    if room is None:
        return
    opens_at = event.sale_starts_at if event.sale_starts_at is not None else event.created_at
    db.execute(d.q("INSERT INTO queue_lines (event_id, mode, admit_per_second, pass_seconds, challenge_bits, opens_at) "
                   "VALUES (?,?,?,?,?,?)"),
               (event.id, room.mode, room.admit_per_second, room.pass_seconds, room.challenge_bits, opens_at))


def read_line(db: Any, d: Dialect, event_id: str, *, lock: bool = False) -> Line | None:
    row = db.execute(d.q(f"SELECT {_LINE_COLUMNS} FROM queue_lines WHERE event_id = ?" + (d.lock if lock else "")),
                     (event_id,)).fetchone()
    return _line(row) if row else None


def _write_line(db: Any, d: Dialect, line: Line) -> None:
    db.execute(d.q("UPDATE queue_lines SET opened = ?, seed = ?, joined = ?, last_position = ?, admitted_through = ?, "
                   "credit = ?, ticked_at = ?, sold_out = ?, admitted = ?, expired = ?, outstanding = ? "
                   "WHERE event_id = ?"),
               (int(line.opened), line.seed, line.joined, line.last_position, line.admitted_through, line.credit,
                line.ticked_at, int(line.sold_out), line.admitted, line.expired, line.outstanding, line.event_id))


def read_ticket(db: Any, d: Dialect, ticket_id: str) -> tuple[Ticket, Line] | None:
    row = db.execute(d.q(f"SELECT {_TICKET_COLUMNS} FROM queue_tickets WHERE id = ?"), (ticket_id,)).fetchone()
    if row is None:
        return None
    ticket = _ticket(row)
    line = read_line(db, d, ticket.event_id)
    return (ticket, line) if line is not None else None


def _tickets_of_users(db: Any, d: Dialect, event_id: str, users: Sequence[str]) -> dict[str, Ticket]:
    found: dict[str, Ticket] = {}
    if d is not SQLITE:  # one array parameter, however many users (4 chunked queries took 2.7x as long)
        rows = db.execute(f"SELECT {_TICKET_COLUMNS} FROM queue_tickets WHERE event_id = %s AND user_id = ANY(%s)",
                          (event_id, list(users))).fetchall()
        return {row[2]: _ticket(row) for row in rows}
    for start in range(0, len(users), _CHUNK):  # SQLite: at most 999 host parameters per statement
        chunk = users[start:start + _CHUNK]
        sql = (f"SELECT {_TICKET_COLUMNS} FROM queue_tickets WHERE event_id = ? "
               f"AND user_id IN ({','.join('?' * len(chunk))})")
        for row in db.execute(sql, (event_id, *chunk)).fetchall():
            found[row[2]] = _ticket(row)
    return found


def _insert_tickets(db: Any, d: Dialect, rows: list[tuple[Any, ...]]) -> None:
    """New tickets (id, event_id, user_id, seq, position, status, secret_hash, created_at)."""
    columns = "id, event_id, user_id, seq, position, status, secret_hash, created_at"
    if d is SQLITE:
        db.cursor().executemany(f"INSERT INTO queue_tickets ({columns}) VALUES (?,?,?,?,?,?,?,?)", rows)
        return
    # PostgreSQL: COPY (executemany sends one Bind/Execute per row: measured slower, bench/bench_line_store.py)
    with db.cursor().copy(f"COPY queue_tickets ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def join(db: Any, d: Dialect, event_id: str, joins: Sequence[tuple[str, str, str]],
         now: float) -> tuple[list[tuple[Ticket, bool]], Line] | None:
    """Join (ticket id, user id, secret hash) in this order: each user's ticket and whether it is new
    (one ticket per user per event), and the line after; None when the event has no line."""
    line = read_line(db, d, event_id, lock=True)
    if line is None:
        return None
    known = _tickets_of_users(db, d, event_id, list(dict.fromkeys(user for _, user, _ in joins)))
    results: list[tuple[Ticket, bool]] = []
    rows: list[tuple[Any, ...]] = []
    # the rules' answers for this line hold for the whole batch (a join changes neither opened nor sold_out)
    queued = position_at_join(line) is not None  # else a lottery's pre-queue: no position before the draw
    status = status_at_join(line)
    seq, last_position = line.joined, line.last_position
    for ticket_id, user_id, digest in joins:
        ticket = known.get(user_id)
        if ticket is not None:
            results.append((ticket, False))
            continue
        seq += 1
        position = None
        if queued:
            last_position = position = last_position + 1
        ticket = Ticket(id=ticket_id, event_id=event_id, user_id=user_id, seq=seq, position=position,
                        status=status, created_at=now, secret_hash=digest)
        known[user_id] = ticket
        results.append((ticket, True))
        rows.append((ticket_id, event_id, user_id, seq, position, status.value, digest, now))
    if rows:
        line = replace(line, joined=seq, last_position=last_position)
        _insert_tickets(db, d, rows)
        _write_line(db, d, line)
    return results, line


def tick(db: Any, d: Dialect, event_id: str, now: float) -> Tick | None:
    """One admitter step of the line: open it (draw a lottery) when due, expire lapsed passes, give
    passes to the next in line as rate and seats allow, turn the waiting sold out when nothing can free
    a seat any more. None when the event has no line."""
    line = read_line(db, d, event_id, lock=True)
    if line is None:
        return None
    before = line
    drawn = 0
    if not line.opened:
        if now < line.opens_at:
            return Tick(line)
        if line.room.mode == "lottery":
            seed = new_seed()
            ids = [r[0] for r in db.execute(d.q(
                "SELECT id FROM queue_tickets WHERE event_id = ? AND position IS NULL ORDER BY seq"), (event_id,))]
            order = lottery_order(seed, ids)
            db.cursor().executemany(d.q("UPDATE queue_tickets SET position = ? WHERE id = ?"),
                                    [(n, ticket_id) for n, ticket_id in enumerate(order, start=line.last_position + 1)])
            drawn = len(order)
            line = replace(line, seed=seed, last_position=line.last_position + drawn)
        # the rate counts from the opening, not from the tick that noticed it
        line = replace(line, opened=True, ticked_at=line.opens_at, credit=0.0)
    expired = db.execute(d.q("UPDATE queue_tickets SET status = 'expired' WHERE event_id = ? AND status = 'admitted' "
                             "AND pass_expires_at <= ?"), (event_id, now)).rowcount or 0
    # A pass is outstanding until a booking made with it was decided: while that booking is pending its
    # seats still count as available, so the pass must still count too (else one seat admits two fans).
    # One statement, so one snapshot: in PostgreSQL (READ COMMITTED) two statements could see a decision
    # committed between them, its seats still available in the first and its pass used in the second.
    available, held, outstanding = db.execute(d.q(
        "SELECT e.available, e.held, (SELECT count(*) FROM queue_tickets t WHERE t.event_id = e.id "
        "AND t.status = 'admitted' AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.event_id = t.event_id "
        "AND b.user_id = t.user_id AND b.created_at >= t.admitted_at AND b.status <> 'pending')) "
        "FROM events e WHERE e.id = ?"), (event_id,)).fetchone()
    credit = refill(line, now)
    admitted = 0
    sold = 0
    if not line.sold_out:
        admitted = admissions(credit, waiting=line.last_position - line.admitted_through, outstanding=outstanding,
                              available=available)
        if admitted:
            db.execute(d.q("UPDATE queue_tickets SET status = 'admitted', admitted_at = ?, pass_expires_at = ? "
                           "WHERE event_id = ? AND position > ? AND position <= ? AND status = 'waiting'"),
                       (now, now + line.room.pass_seconds, event_id, line.admitted_through,
                        line.admitted_through + admitted))
        if is_sold_out(available, held):
            sold = db.execute(d.q("UPDATE queue_tickets SET status = 'sold_out' "
                                  "WHERE event_id = ? AND status = 'waiting'"), (event_id,)).rowcount or 0
    # ticked_at never goes back (a worker whose clock is behind must not refill the same time twice)
    line = replace(line, credit=credit - admitted, ticked_at=max(line.ticked_at, now),
                   admitted_through=line.admitted_through + admitted,
                   admitted=line.admitted + admitted, expired=line.expired + expired,
                   outstanding=outstanding + admitted,
                   sold_out=line.sold_out or is_sold_out(available, held))
    _write_line(db, d, line)
    changed = (admitted or expired or sold or drawn or line.opened != before.opened or line.sold_out != before.sold_out
               or line.outstanding != before.outstanding)
    return Tick(line, admitted=admitted, expired=expired, sold_out=sold, drawn=drawn, changed=bool(changed))


def admission_order(db: Any, d: Dialect, event_id: str) -> list[tuple[int, float]]:
    """(position, admitted_at) of every ticket ever admitted, by position (for audits and tests)."""
    return [(r[0], r[1]) for r in db.execute(d.q(
        "SELECT position, admitted_at FROM queue_tickets WHERE event_id = ? AND admitted_at IS NOT NULL "
        "ORDER BY position"), (event_id,)).fetchall()]
