"""Declared schemas of the HTTP API: the one place where input is validated (both HTTP doors call
`parse_body`), and the models the OpenAPI description is generated from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator
from pydantic.config import JsonDict

from .domain.errors import InvalidRequest, MalformedRequest
from .domain.model import Event, Section, new_event_id
from .domain.rules import MAX_SEATS_PER_EVENT, request_fingerprint
from .domain.waiting_room import WaitingRoom

M = TypeVar("M", bound=BaseModel)

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, str_max_length=4096)
_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"

UserId = Annotated[str, Field(min_length=1, max_length=64, pattern=_NO_CONTROL, examples=["u-42"])]
SeatIdStr = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9]{1,16}-[1-9][0-9]{0,3}-[1-9][0-9]{0,3}$", examples=["A-1-1"])
]


class SectionIn(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9]{1,16}$", description="1..16 chars of [A-Za-z0-9], unique in the event")
    rows: int = Field(ge=1, le=1000)
    seats_per_row: int = Field(ge=1, le=1000)
    price_cents: int = Field(default=0, ge=0, le=10**12)


class WaitingRoomIn(BaseModel):
    """An event's waiting room (docs/API.md, "Waiting room")."""

    model_config = _STRICT
    mode: Literal["fifo", "lottery"] = Field(
        default="fifo", description="fifo: arrival order; lottery: the pre-queue shuffled at sale_starts_at")
    admit_per_second: int = Field(default=100, ge=1, le=100_000)
    pass_seconds: int = Field(default=300, ge=30, le=3600)
    challenge_bits: int = Field(default=0, ge=0, le=24, description="proof of work asked of each joiner")

    def to_room(self) -> WaitingRoom:
        return WaitingRoom(self.mode, self.admit_per_second, self.pass_seconds, self.challenge_bits)


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name}: must carry a time zone offset (RFC 3339)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name}: out of the representable range") from None
    if utc.year < 1000:
        raise ValueError(f"{name}: the year must have four digits")
    return utc


class EventIn(BaseModel):
    """Body of POST /api/events."""

    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200, pattern=_NO_CONTROL)
    venue: str | None = Field(default=None, max_length=200, pattern=_NO_CONTROL)
    starts_at: datetime | None = Field(default=None, description="RFC 3339 timestamp")
    sections: list[SectionIn] = Field(min_length=1, max_length=50)
    max_per_user: int = Field(default=4, ge=1, le=20)
    hold_seconds: int = Field(default=600, ge=5, le=3600)
    sale_starts_at: datetime | None = Field(default=None, description="RFC 3339: booking (or the line) opens then")
    waiting_room: WaitingRoomIn | None = None

    @model_validator(mode="after")
    def _whole_event(self) -> EventIn:
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ValueError("sections: section names must be unique in the event")
        total = sum(s.rows * s.seats_per_row for s in self.sections)
        if total > MAX_SEATS_PER_EVENT:
            raise ValueError(f"sections: {total} seats exceed the limit of {MAX_SEATS_PER_EVENT} per event")
        if self.starts_at is not None:
            _utc(self.starts_at, "starts_at")
        if self.sale_starts_at is not None:
            _utc(self.sale_starts_at, "sale_starts_at")
        return self

    def to_event(self, now: float) -> Event:
        starts = None
        if self.starts_at is not None:
            starts = self.starts_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Event(
            id=new_event_id(), name=self.name, venue=self.venue, starts_at=starts,
            sections=tuple(Section(s.name, s.rows, s.seats_per_row, s.price_cents) for s in self.sections),
            max_per_user=self.max_per_user, hold_seconds=self.hold_seconds, created_at=now,
            sale_starts_at=self.sale_starts_at.timestamp() if self.sale_starts_at is not None else None,
            waiting_room=self.waiting_room.to_room() if self.waiting_room is not None else None,
        )


# "exactly one of seat_ids or quantity", as JSON Schema says it (a null member counts as absent)
_ONE_OF_SEATS_OR_QUANTITY: JsonDict = {
    "oneOf": [
        {"required": ["seat_ids"], "properties": {"seat_ids": {"type": "array"}}},
        {"required": ["quantity"], "properties": {"quantity": {"type": "integer"}}},
    ]
}


class BookingIn(BaseModel):
    """Body of POST /api/events/{event_id}/bookings: exactly one of `seat_ids` or `quantity`."""

    model_config = ConfigDict(**_STRICT, json_schema_extra=_ONE_OF_SEATS_OR_QUANTITY)
    user_id: UserId
    seat_ids: list[SeatIdStr] | None = Field(default=None, min_length=1, max_length=20,
                                             json_schema_extra={"uniqueItems": True},
                                             description="specific seats: 1..max_per_user distinct ids of this event")
    quantity: int | None = Field(default=None, ge=1, le=20, description="best available: 1..max_per_user seats")

    @model_validator(mode="after")
    def _one_of(self) -> BookingIn:
        if (self.seat_ids is None) == (self.quantity is None):
            raise ValueError("seat_ids/quantity: give exactly one of seat_ids or quantity")
        if self.seat_ids is not None and len(set(self.seat_ids)) != len(self.seat_ids):
            raise ValueError("seat_ids: seat ids must be distinct")
        return self

    def fingerprint(self) -> str:
        return request_fingerprint(self.user_id, self.seat_ids or (), self.quantity)


class JoinIn(BaseModel):
    """Body of POST /api/events/{event_id}/queue."""

    model_config = _STRICT
    user_id: UserId
    challenge: str | None = Field(default=None, max_length=1024,
                                  description="from GET /api/events/{id}/queue/challenge, when challenge_bits > 0")
    proof: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]+$",
                              description='decimal; SHA-256 of "{challenge}:{user_id}:{proof}" starts with bits zeros')


class CompatBookingIn(BaseModel):
    """Body of the original TicketBlitz routes (/api/book-async, /api/book-secure, /api/book-naive, /book)."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
    userId: UserId
    seatNumber: int = Field(ge=1, le=MAX_SEATS_PER_EVENT)
    eventId: str | None = Field(default=None, min_length=1, max_length=64)


class WaitQuery(BaseModel):
    wait: Annotated[float, Field(ge=0, le=30)] | Literal[""] | None = Field(
        default=None, description="long-poll up to N seconds (0..30); empty or absent: answer at once")


class SeatMapQuery(BaseModel):
    form: Literal["api", "compact", ""] | None = Field(
        default=None, description="`api` (the default): every seat as an object; `compact` (a project extension): "
                                  "per section one status character per seat (`a`, `h`, `s`), row after row")


class SeatMapHeaders(BaseModel):
    if_none_match: str | None = Field(
        default=None, alias="If-None-Match",
        description="the ETag of a map read before: `304` without a body while the map is unchanged")
    accept_encoding: str | None = Field(default=None, alias="Accept-Encoding",
                                        description="`gzip`: the body is sent gzip-encoded")


class CompactSectionOut(BaseModel):
    name: str
    rows: int
    seats_per_row: int
    status: str = Field(description="rows x seats_per_row characters, row after row: a available, h held, s sold")


class CompactSeatsOut(BaseModel):
    """The seat map with `?form=compact` (a project extension)."""

    event_id: str
    form: Literal["compact"]
    sections: list[CompactSectionOut]


class CompatEventQuery(BaseModel):
    eventId: str | None = Field(default=None, description="defaults to the demo event, else the newest")


class IdempotencyHeaders(BaseModel):
    idempotency_key: str | None = Field(
        default=None, alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$",
        description="1..128 printable ASCII characters; a repeat with the same body answers the same booking",
    )
    queue_pass: str | None = Field(
        default=None, alias="Queue-Pass",
        description="on an event with a waiting room: the pass of the user's admitted ticket (403 without it)",
    )


# ---------------------------------------------------------------- response models (documentation)
class CountsOut(BaseModel):
    available: int
    held: int
    sold: int


class SectionOut(BaseModel):
    name: str
    rows: int
    seats_per_row: int
    price_cents: int


class EventOut(BaseModel):
    id: str
    name: str
    venue: str | None
    starts_at: str | None
    capacity: int
    max_per_user: int
    hold_seconds: int
    sections: list[SectionOut]
    counts: CountsOut
    created_at: str
    sale_starts_at: str | None = Field(default=None, description="only on events that have one")
    waiting_room: WaitingRoomIn | None = Field(default=None, description="only on events that have one")


class TicketOut(BaseModel):
    """A place in an event's waiting room (docs/API.md, "Waiting room")."""

    id: str
    event_id: str
    user_id: str
    status: Literal["waiting", "admitted", "sold_out", "expired"]
    position: int | None
    ahead: int | None
    eta_seconds: float | None
    pass_: str | None = Field(alias="pass", description="send it as the Queue-Pass header of a booking request")
    pass_expires_at: str | None
    created_at: str


class NewTicketOut(TicketOut):
    secret: str = Field(description="the ticket's secret (GET /api/queue/{id} with Authorization: Bearer <secret>)")


class LineOut(BaseModel):
    event_id: str
    mode: Literal["fifo", "lottery"]
    open: bool
    sold_out: bool
    joined: int
    waiting: int
    admitted: int
    outstanding: int
    expired: int
    admitted_through: int
    lottery_seed: str | None


class ChallengeOut(BaseModel):
    event_id: str
    challenge: str
    bits: int
    expires_at: str


class EventsOut(BaseModel):
    events: list[EventOut]


class SeatOut(BaseModel):
    id: str
    section: str
    row: int
    number: int
    status: Literal["available", "held", "sold"]


class SeatsOut(BaseModel):
    event_id: str
    seats: list[SeatOut]


class SeatMapOut(RootModel[SeatsOut | CompactSeatsOut]):
    """The seat map: every seat as an object, or with `?form=compact` one character per seat per section."""


class BookingOut(BaseModel):
    """A booking (API.md, "Bookings")."""

    id: str
    event_id: str
    user_id: str
    seat_ids: list[str]
    quantity: int
    status: Literal["pending", "held", "confirmed", "rejected", "expired", "cancelled"]
    reason: Literal["seat_unavailable", "sold_out", "limit_exceeded", "processing_failed"] | None = Field(
        description="why a booking was rejected (`processing_failed`: it could not be processed after retries)")
    expires_at: str | None
    created_at: str
    updated_at: str


class NewBookingOut(BookingOut):
    """A booking as the request that made it (or an Idempotency-Key repeat) answers it: with its secret."""

    secret: str = Field(
        min_length=22, pattern=r"^[A-Za-z0-9_-]+$",
        description="the booking's secret (at least 128 random bits, URL-safe), shown only here: send it as "
                    "`Authorization: Bearer <secret>` to read, confirm or cancel the booking")


class Problem(BaseModel):
    """application/problem+json (RFC 9457) with the extra member `code` (see API.md, "Errors")."""

    type: str = "about:blank"
    title: str
    status: int
    code: str = Field(description="what went wrong, for programs: `sold_out`, `invalid_request`, ...")
    detail: str
    field: str | None = Field(default=None, description="the member or parameter at fault (400/422)")


class UnavailableProblem(Problem):
    """A problem answer of status 503; `component` names the backing service that failed, when one did."""

    component: str | None = Field(default=None, description="store, queue or lock")


class ReadyProblem(UnavailableProblem):
    """GET /readyz when not ready: the problem, with the state of each backing service."""

    store: str
    queue: str
    lock: str


class CompatQueuedOut(BaseModel):
    status: Literal["Pending"]
    message: str
    booking: NewBookingOut


class CompatBookedOut(BaseModel):
    success: Literal[True]
    bookingId: str
    booking: NewBookingOut


class CompatSeatOut(BaseModel):
    number: int
    id: str
    status: Literal["AVAILABLE", "LOCKED", "BOOKED"]


class CompatSeatsOut(BaseModel):
    eventId: str
    seats: list[CompatSeatOut]


class StatusOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    store: str
    queue: str
    lock: str


# ---------------------------------------------------------------- parsing
def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "body"


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate a JSON body against `model`: 400 when it is not JSON, 422 naming the field otherwise."""
    if not raw.strip():
        raise MalformedRequest("body: a JSON object is required")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] in {"json_invalid", "json_type"}:
            raise MalformedRequest(f"body: not valid JSON ({first['msg']})") from None
        if first["type"] == "model_type" or (first["loc"] == () and first["type"] != "value_error"):
            raise InvalidRequest("body: expected a JSON object", field="body") from None
        loc = tuple(first["loc"])
        message = str(first["msg"])
        if first["type"] == "value_error":
            # our model validators say "field: what is wrong"
            message = message.removeprefix("Value error, ")
            name = message.split(":", 1)[0] if ":" in message else field_path(loc)
            raise InvalidRequest(message, field=name) from None
        name = field_path(loc)
        raise InvalidRequest(f"{name}: {message}", field=name) from None


def parse_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header: absent, or 1..128 printable ASCII characters (422 otherwise)."""
    if value is None:
        return None
    if not 1 <= len(value) <= 128 or not all(0x20 <= ord(c) <= 0x7E for c in value):
        raise InvalidRequest("Idempotency-Key: must be 1..128 printable ASCII characters", field="Idempotency-Key")
    return value


def parse_wait(value: str | None) -> float:
    """The `?wait=` query parameter: seconds 0..30."""
    if value is None or value == "":
        return 0.0
    try:
        wait = float(value)
    except ValueError:
        raise InvalidRequest("wait: must be a number of seconds (0..30)", field="wait") from None
    if not 0 <= wait <= 30:
        raise InvalidRequest("wait: must be between 0 and 30 seconds", field="wait")
    return wait


# ---------------------------------------------------------------------- the visualizer's flash-sale button

FlashSaleRoute = Literal["bookings", "book-async", "book-secure", "book-naive"]


class FlashSaleIn(BaseModel):
    """Body of POST /api/admin/flash-sale: how many fans, for how many seats, through which route."""

    model_config = _STRICT
    users: int = Field(default=10_000, ge=1, le=20_000, description="fans, one connection and one request each")
    seats: int = Field(default=1_000, ge=1, le=MAX_SEATS_PER_EVENT,
                       description="seats of the sale's fresh event (one section; a prime above 1000 is refused)")
    route: FlashSaleRoute = Field(default="bookings", description="bookings = POST /api/events/{id}/bookings; "
                                  "the others are the original's routes")
    waiting_room: WaitingRoomIn | None = Field(
        default=None, description="sell through a waiting room (API 1.2): the fans join, wait, book with their pass")
    sale_starts_in: float = Field(default=0.0, ge=0, le=30,
                                  description="with a waiting room: seconds from the event's creation to the sale")

    @model_validator(mode="after")
    def _seats_fit_one_section(self) -> FlashSaleIn:
        from .loadgen.scenario import seat_layout

        seat_layout(self.seats)  # ValueError "seats: ..." -> 422 naming the field
        if self.waiting_room is not None and self.route != "bookings":
            raise ValueError("route: a waiting-room sale books through POST /api/events/{id}/bookings")
        if self.waiting_room is None and self.sale_starts_in:
            raise ValueError("sale_starts_in: only with a waiting_room")
        return self


class FlashSaleOut(BaseModel):
    """202 of POST /api/admin/flash-sale: the sale's event is created; `loadgen` frames on /ws follow."""

    event_id: str
    users: int
    seats: int
    route: FlashSaleRoute
    state: Literal["started"]


class FlashSaleStateOut(BaseModel):
    """The last flash sale's state: the members of its last `loadgen` frame, and whether it still runs."""

    state: Literal["idle", "started", "progress", "finished", "failed"]
    running: bool
    event_id: str | None = None
    users: int | None = None
    seats: int | None = None
    route: FlashSaleRoute | None = None
    sent: int | None = None
    answered: int | None = None
    by_code: dict[str, int] | None = Field(default=None, description="answers by HTTP status")
    p50_ms: float | None = None
    p99_ms: float | None = None
    decided: int | None = Field(default=None, description="bookings no longer pending")
    pending: int | None = None
    oversold: int | None = None
    error: str | None = None
