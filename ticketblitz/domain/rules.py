"""The booking rules as plain functions: seat maps, fitting a request to an event, picking seats,
deciding a queued booking and the allowed status transitions. Nothing here awaits or touches I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from .errors import InvalidRequest, InvalidTransition
from .model import (
    SEAT_ID_RE,
    Booking,
    BookingRequest,
    BookingStatus,
    Event,
    SeatRef,
)

MAX_SEATS_PER_EVENT = 200_000


def seat_id(section: str, row: int, number: int) -> str:
    return f"{section}-{row}-{number}"


def seat_map(event: Event) -> Iterator[SeatRef]:
    """Every seat of the event in map order: sections as declared, then rows, then numbers."""
    position = 0
    for section in event.sections:
        for row in range(1, section.rows + 1):
            for number in range(1, section.seats_per_row + 1):
                position += 1
                yield SeatRef(seat_id(section.name, row, number), section.name, row, number, position)


def seat_at_position(event: Event, position: int) -> SeatRef | None:
    """The `position`-th seat (1-based) of the seat map, as the original's `seatNumber` counts, or None."""
    if position < 1:
        return None
    before = 0
    for section in event.sections:
        if position <= before + section.capacity:
            offset = position - before - 1
            row, number = divmod(offset, section.seats_per_row)
            return SeatRef(seat_id(section.name, row + 1, number + 1), section.name, row + 1, number + 1, position)
        before += section.capacity
    return None


def locate_seat(event: Event, seat: str) -> SeatRef | None:
    """The seat of this event named `seat`, or None when the id is malformed or outside the map."""
    match = SEAT_ID_RE.fullmatch(seat)
    if match is None:
        return None
    name, row, number = match.group(1), int(match.group(2)), int(match.group(3))
    before = 0
    for section in event.sections:
        if section.name == name:
            if row > section.rows or number > section.seats_per_row:
                return None
            position = before + (row - 1) * section.seats_per_row + number
            return SeatRef(seat, name, row, number, position)
        before += section.capacity
    return None


def fit_request_to_event(event: Event, request: BookingRequest) -> BookingRequest:
    """Check what only the event can tell (seat ids exist, counts within `max_per_user`).

    Raises InvalidRequest naming the field; returns the request with seat ids in map order.
    """
    if request.seat_ids:
        if len(request.seat_ids) > event.max_per_user:
            raise InvalidRequest(
                f"seat_ids: at most {event.max_per_user} seats per booking for this event",
                field="seat_ids",
            )
        refs = []
        for index, seat in enumerate(request.seat_ids):
            ref = locate_seat(event, seat)
            if ref is None:
                raise InvalidRequest(
                    f"seat_ids[{index}]: {seat!r} is not a seat of event {event.id}", field=f"seat_ids[{index}]"
                )
            refs.append(ref)
        ordered = tuple(r.id for r in sorted(refs, key=lambda r: r.position))
        return replace(request, seat_ids=ordered, quantity=len(ordered))
    if request.quantity > event.max_per_user:
        raise InvalidRequest(
            f"quantity: at most {event.max_per_user} seats per booking for this event", field="quantity"
        )
    return request


def request_fingerprint(user_id: str, seat_ids: Iterable[str], quantity: int | None) -> str:
    """What makes two bodies 'the same request' for an Idempotency-Key: user, seats as a set, quantity."""
    seats = ",".join(sorted(seat_ids))
    raw = f"{user_id}\x1f{seats}\x1f{quantity if not seats else ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class SeatPicker:
    """The available seats of one event, grouped by row in map order, from which seats are taken.

    Best available means: the first run of adjacent seats in one row; else the first row that has
    enough seats; else the first seats in map order.

    A store may hand over only a window of the first available seats and a `more` callback that
    returns the next ones in map order (an empty list when there are none): the picker asks for more
    only when the window holds no adjacent run for a request.
    """

    def __init__(self, available: Iterable[SeatRef], more: Callable[[], list[SeatRef]] | None = None) -> None:
        self._rows: dict[tuple[str, int], dict[int, SeatRef]] = {}
        self._where: dict[str, tuple[tuple[str, int], int]] = {}
        self._more = more
        self._add(available)

    def _add(self, refs: Iterable[SeatRef]) -> None:
        for ref in sorted(refs, key=lambda r: r.position):
            if ref.id in self._where:
                continue
            key = (ref.section, ref.row)
            self._rows.setdefault(key, {})[ref.number] = ref
            self._where[ref.id] = (key, ref.number)

    def extend(self) -> bool:
        """Load the next seats of the window; False when there are no more."""
        chunk = self._more() if self._more is not None else []
        if not chunk:
            self._more = None
            return False
        self._add(chunk)
        # rows stay in map order even when seats named far ahead were loaded before this chunk
        self._rows = dict(sorted(self._rows.items(), key=lambda item: min(r.position for r in item[1].values())))
        return True

    def _adjacent(self, seats: Sequence[str]) -> bool:
        places = [self._where[s] for s in seats]
        numbers = sorted(number for _, number in places)
        return len({key for key, _ in places}) == 1 and numbers[-1] - numbers[0] == len(numbers) - 1

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, seat: object) -> bool:
        return seat in self._where

    def take(self, seats: Sequence[str]) -> bool:
        """Take these named seats if every one is available; all or nothing."""
        if not all(s in self._where for s in seats):
            return False
        for s in seats:
            key, number = self._where.pop(s)
            row = self._rows[key]
            del row[number]
            if not row:
                del self._rows[key]
        return True

    def pick(self, quantity: int, avoid: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
        """Choose `quantity` best-available seats (without taking them), or None when too few are left.

        Seats in `avoid` (named by other bookings waiting in line) are used only when nothing else fits.
        """
        while True:
            chosen = self._pick(quantity, avoid) if quantity <= len(self._where) else None
            if chosen is not None and self._adjacent(chosen):
                return chosen
            if not self.extend():  # the window holds no adjacent run: look further, a chunk at a time
                break
        if chosen is None and avoid and quantity <= len(self._where):
            chosen = self._pick(quantity, frozenset())
        return chosen

    def _pick(self, quantity: int, avoid: frozenset[str]) -> tuple[str, ...] | None:
        first_full_row: list[SeatRef] | None = None
        first_any: list[SeatRef] = []
        for row in self._rows.values():
            numbers = sorted(n for n, ref in row.items() if ref.id not in avoid) if avoid else sorted(row)
            run_start = 0
            for i in range(1, len(numbers) + 1):
                if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
                    if i - run_start >= quantity:
                        return tuple(row[n].id for n in numbers[run_start : run_start + quantity])
                    run_start = i
            if first_full_row is None and len(numbers) >= quantity:
                first_full_row = [row[n] for n in numbers[:quantity]]
            if len(first_any) < quantity:
                first_any.extend(row[n] for n in numbers[: quantity - len(first_any)])
        chosen = first_full_row or first_any
        return tuple(ref.id for ref in chosen) if len(chosen) == quantity else None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one queued booking: the seats it gets, or the reason it gets none."""

    seats: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def held(self) -> bool:
        return self.reason is None


def named_seats(bookings: Iterable[Booking]) -> frozenset[str]:
    """Seats asked for by name in these pending bookings."""
    return frozenset(seat for b in bookings if b.status is BookingStatus.PENDING for seat in b.requested_seats)


def decide(
    booking: Booking, event: Event, user_owned: int, picker: SeatPicker, avoid: frozenset[str] = frozenset()
) -> Decision:
    """Decide a pending booking against the store's current state; takes the seats from `picker`.

    `user_owned` counts the seats the user already holds or bought in this event; `avoid` are seats
    that other pending bookings ask for by name (best-available leaves them to them when it can).
    """
    if user_owned + booking.quantity > event.max_per_user:
        return Decision(reason="limit_exceeded")
    if booking.requested_seats:
        if picker.take(booking.requested_seats):
            return Decision(seats=booking.requested_seats)
        return Decision(reason="seat_unavailable")
    seats = picker.pick(booking.quantity, avoid)
    if seats is None:
        return Decision(reason="sold_out")
    picker.take(seats)
    return Decision(seats=seats)


def apply_decision(booking: Booking, event: Event, decision: Decision, now: float) -> Booking:
    """The booking after its decision: held until now + hold_seconds, or rejected with the reason."""
    if decision.held:
        return replace(
            booking,
            status=BookingStatus.HELD,
            seat_ids=decision.seats,
            reason=None,
            expires_at=now + event.hold_seconds,
            updated_at=now,
        )
    return replace(booking, status=BookingStatus.REJECTED, reason=decision.reason, seat_ids=(), updated_at=now)


def check_confirm(booking: Booking, now: float) -> bool:
    """Whether confirming changes anything: False on a confirmed booking (idempotent), True on a live hold.

    Raises InvalidTransition otherwise.
    """
    if booking.status is BookingStatus.CONFIRMED:
        return False
    if booking.status is not BookingStatus.HELD:
        raise InvalidTransition(f"booking {booking.id} is {booking.status}; only a held booking can be confirmed")
    if booking.expires_at is not None and now >= booking.expires_at:
        raise InvalidTransition(f"booking {booking.id} hold expired; it can no longer be confirmed")
    return True


def check_cancel(booking: Booking) -> None:
    """Raises InvalidTransition unless the booking is held."""
    if booking.status is not BookingStatus.HELD:
        raise InvalidTransition(f"booking {booking.id} is {booking.status}; only a held booking can be cancelled")


def hold_lapsed(booking: Booking, now: float) -> bool:
    return booking.status is BookingStatus.HELD and booking.expires_at is not None and now >= booking.expires_at
