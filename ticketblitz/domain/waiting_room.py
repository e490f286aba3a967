"""The waiting room's rules (docs/API.md, "Waiting room"): tickets, the lottery's order, the admission
rule, signed passes and the proof of work. Plain functions and data, no I/O.

- Positions: `fifo` numbers joiners in arrival order; `lottery` orders the pre-queue by
  HMAC-SHA256(seed, ticket id) with a seed from the OS's CSPRNG, which is a uniformly random order that
  anyone holding the published seed can recompute.
- Admission: passes go out in position order at `admit_per_second` (a token bucket holding at most one
  second of passes), never while the outstanding passes are as many as the seats available.
- Passes and challenges are signed with a key derived from the deployment's key (HMAC-SHA256), so that
  any server process checks them without a store read.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace

import orjson

MODES = ("fifo", "lottery")
SEED_BYTES = 32
CHALLENGE_SECONDS = 120
PASS_VERSION = "p1"
CHALLENGE_VERSION = "c1"
MAX_PROOF_CHARS = 20


class TicketStatus(enum.StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    SOLD_OUT = "sold_out"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """An event's waiting-room settings (the `waiting_room` object of the event)."""

    mode: str = "fifo"
    admit_per_second: int = 100
    pass_seconds: int = 300
    challenge_bits: int = 0

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode, "admit_per_second": self.admit_per_second,
                "pass_seconds": self.pass_seconds, "challenge_bits": self.challenge_bits}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> WaitingRoom:
        return cls(mode=str(value["mode"]), admit_per_second=int(value["admit_per_second"]),  # type: ignore[call-overload]
                   pass_seconds=int(value["pass_seconds"]), challenge_bits=int(value["challenge_bits"]))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Ticket:
    """A place in an event's line."""

    id: str
    event_id: str
    user_id: str
    seq: int  # arrival order in the event (1-based)
    status: TicketStatus
    position: int | None
    created_at: float
    secret_hash: str
    admitted_at: float | None = None
    pass_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """The line of one event as the store keeps it."""

    event_id: str
    room: WaitingRoom
    opens_at: float
    opened: bool = False
    seed: str | None = None  # hex, once a lottery is drawn
    joined: int = 0  # tickets ever created (the last seq)
    last_position: int = 0  # the highest position given
    admitted_through: int = 0  # every position up to this one has been admitted (or found sold out)
    credit: float = 0.0  # passes the rate allows now (token bucket)
    ticked_at: float = 0.0
    sold_out: bool = False
    admitted: int = 0  # passes issued, ever
    expired: int = 0  # passes that lapsed, ever
    outstanding: int = 0  # passes issued, unexpired and not used yet (as of the last tick)

    @property
    def waiting(self) -> int:
        """Tickets with a position not admitted yet, plus a lottery's pre-queue."""
        if self.sold_out:
            return 0
        if not self.opened and self.room.mode == "lottery":
            return self.joined
        return max(0, self.last_position - self.admitted_through)

    def as_json(self) -> dict[str, object]:
        """The public numbers of `GET /api/events/{id}/queue` and of the `waiting_room` frame."""
        return {"event_id": self.event_id, "mode": self.room.mode, "open": self.opened,
                "sold_out": self.sold_out, "joined": self.joined, "waiting": self.waiting,
                "admitted": self.admitted, "outstanding": self.outstanding, "expired": self.expired,
                "admitted_through": self.admitted_through, "lottery_seed": self.seed}


@dataclass(frozen=True, slots=True)
class Tick:
    """What one admitter tick did to a line."""

    line: Line
    admitted: int = 0
    expired: int = 0
    sold_out: int = 0  # tickets turned sold out now (the broadcast)
    drawn: int = 0  # pre-queue tickets given a position by the lottery now
    changed: bool = False


def new_ticket_id() -> str:
    return "q_" + secrets.token_hex(10)


def new_seed() -> str:
    return secrets.token_bytes(SEED_BYTES).hex()


def lottery_order(seed: str, ticket_ids: Iterable[str]) -> list[str]:
    """The pre-queue's order after the draw: by HMAC-SHA256(seed, ticket id), ties (impossible in
    practice) by id."""
    key = bytes.fromhex(seed)
    return sorted(ticket_ids, key=lambda t: (hmac.new(key, t.encode(), hashlib.sha256).digest(), t))


def position_at_join(line: Line) -> int | None:
    """The position a ticket joining now gets: the next one, except in a lottery's pre-queue."""
    if not line.opened and line.room.mode == "lottery":
        return None
    return line.last_position + 1


def status_at_join(line: Line) -> TicketStatus:
    return TicketStatus.SOLD_OUT if line.sold_out else TicketStatus.WAITING


def refill(line: Line, now: float) -> float:
    """The token bucket after `now - ticked_at`: at most one second's worth of passes (at least one)."""
    rate = line.room.admit_per_second
    elapsed = max(0.0, now - line.ticked_at)
    return min(line.credit + rate * elapsed, float(max(rate, 1)))


def admissions(credit: float, *, waiting: int, outstanding: int, available: int) -> int:
    """How many of the next in line get a pass now: what the rate allows, no more than wait, and never
    more than leaves the outstanding passes below the seats available."""
    room = max(0, available - outstanding)
    return max(0, min(math.floor(credit), waiting, room))


def is_sold_out(available: int, held: int) -> bool:
    """No seat available and none held: every taken seat is sold, no hold can lapse any more."""
    return available <= 0 and held <= 0


def ticket_status(ticket: Ticket, now: float) -> Ticket:
    """The ticket as it is at `now`: an admitted ticket whose pass lapsed is expired (the store writes
    that at the next tick)."""
    if ticket.status is TicketStatus.ADMITTED and ticket.pass_expires_at is not None and ticket.pass_expires_at <= now:
        return replace(ticket, status=TicketStatus.EXPIRED)
    return ticket


def ahead(ticket: Ticket, line: Line) -> int | None:
    """Tickets before this one still waiting for a pass."""
    if ticket.position is None:
        return None
    if ticket.status is not TicketStatus.WAITING:
        return 0
    return max(0, ticket.position - line.admitted_through - 1)


def eta_seconds(ticket: Ticket, line: Line) -> float | None:
    """`ahead / admit_per_second`: a lower bound (admission also waits for seats)."""
    before = ahead(ticket, line)
    if before is None:
        return None
    if ticket.status is not TicketStatus.WAITING:
        return 0.0
    return round(before / line.room.admit_per_second, 1)


# ---------------------------------------------------------------------- signed tokens
def room_key(deployment_key: bytes) -> bytes:
    """The key of passes and challenges, derived from the deployment's key."""
    return hmac.new(deployment_key, b"ticketblitz waiting room", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, kind: str, payload: list[object]) -> str:
    body = _b64(orjson.dumps(payload))
    mac = hmac.new(key, f"{kind}.{body}".encode(), hashlib.sha256).digest()
    return f"{kind}.{body}.{_b64(mac)}"


def _open(key: bytes, kind: str, token: str) -> list[object] | None:
    """The payload of a token signed by `_sign` with this key and kind, else None."""
    if not isinstance(token, str) or len(token) > 1024:
        return None
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != kind:
        return None
    try:
        mac = _unb64(parts[2])
        expected = hmac.new(key, f"{kind}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            return None
        payload = orjson.loads(_unb64(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, list) else None


def issue_pass(key: bytes, ticket: Ticket) -> str | None:
    """The pass of an admitted ticket (deterministic: the same for every read)."""
    if ticket.pass_expires_at is None:
        return None
    return _sign(key, PASS_VERSION, [ticket.id, ticket.event_id, ticket.user_id, round(ticket.pass_expires_at, 3)])


class PassVerdict(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"


def check_pass(key: bytes, token: str | None, *, event_id: str, user_id: str, now: float) -> PassVerdict:
    """Whether `token` is a pass of this key for this event and user, unexpired at `now`."""
    if not token:
        return PassVerdict.MISSING
    payload = _open(key, PASS_VERSION, token)
    if payload is None or len(payload) != 4:
        return PassVerdict.INVALID
    _, pass_event, pass_user, expires = payload
    if pass_event != event_id or pass_user != user_id or not isinstance(expires, int | float) or expires <= now:
        return PassVerdict.INVALID
    return PassVerdict.OK


def issue_challenge(key: bytes, event_id: str, now: float) -> tuple[str, float]:
    """A fresh challenge for this event and when it expires."""
    expires = float(math.floor(now) + CHALLENGE_SECONDS)
    return _sign(key, CHALLENGE_VERSION, [event_id, secrets.token_hex(8), expires]), expires


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def proof_digest(challenge: str, user_id: str, proof: str) -> bytes:
    return hashlib.sha256(f"{challenge}:{user_id}:{proof}".encode("utf-8", "surrogatepass")).digest()


def check_proof(key: bytes, challenge: str | None, proof: str | None, *, event_id: str, user_id: str,
                bits: int, now: float) -> str | None:
    """None when the proof of work is good; else what is wrong with it (for the 422's detail)."""
    if bits <= 0:
        return None
    if not challenge or not proof:
        return "missing"
    payload = _open(key, CHALLENGE_VERSION, challenge)
    if payload is None or len(payload) != 3:
        return "challenge: not a challenge of this server"
    challenge_event, _, expires = payload
    if challenge_event != event_id:
        return "challenge: for another event"
    if not isinstance(expires, int | float) or expires <= now:
        return "challenge: expired"
    if len(proof) > MAX_PROOF_CHARS or not proof.isascii() or not proof.isdigit():
        return "proof: a decimal string of at most 20 digits"
    if leading_zero_bits(proof_digest(challenge, user_id, proof)) < bits:
        return f"proof: the hash does not start with {bits} zero bits"
    return None


def solve(challenge: str, user_id: str, bits: int) -> str:
    """A proof for this challenge and user (what a browser does; here for tests and the load generator)."""
    counter = 0
    while leading_zero_bits(proof_digest(challenge, user_id, str(counter))) < bits:
        counter += 1
    return str(counter)
