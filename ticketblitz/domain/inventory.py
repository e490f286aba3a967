"""Edge admission: a fast, in-memory forecast of what the store will decide, so that the crowd that
cannot be served hears `409` at once and the queue carries about as many requests as there are seats.

It is a cache, never the guarantee: the store's conditional writes are. Its state is rebuilt from the
store at start. The Redis adapter implements the same rules in one Lua script.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import BookingError, LimitExceeded, SeatUnavailable, SoldOut

MAX_RELEASED = 100_000  # released bookings remembered against late settles


@dataclass(slots=True)
class Reservation:
    """What admission set aside for one pending booking: `quantity` seats, named ones in `seats`."""

    event_id: str
    user_id: str
    quantity: int
    seats: tuple[str, ...] = ()


@dataclass(slots=True)
class EventStock:
    """Per event: seats not yet promised, seats known taken (by which booking), seats promised per user."""

    remaining: int
    max_per_user: int
    taken: dict[str, str] = field(default_factory=dict)
    per_user: dict[str, int] = field(default_factory=dict)


class EdgeInventory:
    """Admission bookkeeping for every event; each method is one atomic step (no awaits)."""

    def __init__(self) -> None:
        self._events: dict[str, EventStock] = {}
        self._reservations: dict[str, Reservation] = {}
        # bookings whose seats came back (newest last, bounded): a late settle must not count them again
        self._released: OrderedDict[str, None] = OrderedDict()

    def add_event(self, event_id: str, *, available: int, max_per_user: int) -> None:
        self._events[event_id] = EventStock(remaining=available, max_per_user=max_per_user)

    def knows(self, event_id: str) -> bool:
        return event_id in self._events

    def stock(self, event_id: str) -> EventStock:
        return self._events[event_id]

    def check(self, event_id: str, user_id: str, quantity: int, seats: tuple[str, ...]) -> BookingError | None:
        """The refusal admission would give now, or None when the request may be queued."""
        stock = self._events[event_id]
        if stock.per_user.get(user_id, 0) + quantity > stock.max_per_user:
            return LimitExceeded(
                f"user {user_id} would hold more than {stock.max_per_user} seats of event {event_id}"
            )
        if seats:
            taken = [s for s in seats if s in stock.taken]
            if taken:
                return SeatUnavailable(f"seat {taken[0]} of event {event_id} is held or sold")
            if stock.remaining < quantity:
                return SeatUnavailable(f"the seats asked for in event {event_id} are promised to earlier requests")
        elif stock.remaining < quantity:
            return SoldOut(f"event {event_id} has no {quantity} seat(s) left")
        return None

    def admit(
        self, booking_id: str, event_id: str, user_id: str, quantity: int, seats: tuple[str, ...], *, force: bool
    ) -> BookingError | None:
        """Reserve for this booking, or return the refusal. With `force` (the queued compat path) a refused
        request is still let through, reserving nothing, and the store will decide it."""
        refusal = self.check(event_id, user_id, quantity, seats)
        if refusal is not None:
            if force:
                self._reservations[booking_id] = Reservation(event_id, user_id, 0)
                return None
            return refusal
        self._reserve(booking_id, Reservation(event_id, user_id, quantity, seats))
        return None

    def _reserve(self, booking_id: str, reservation: Reservation) -> None:
        stock = self._events[reservation.event_id]
        stock.remaining -= reservation.quantity
        stock.taken.update(dict.fromkeys(reservation.seats, booking_id))
        stock.per_user[reservation.user_id] = stock.per_user.get(reservation.user_id, 0) + reservation.quantity
        self._reservations[booking_id] = reservation

    def withdraw(self, booking_id: str) -> None:
        """Undo an admission whose booking was never accepted (e.g. the queue refused it)."""
        self.settle(booking_id, ())

    def has_reservation(self, booking_id: str) -> bool:
        return booking_id in self._reservations

    def settle(self, booking_id: str, held: Iterable[str], *, event_id: str | None = None,
               user_id: str | None = None) -> bool:
        """The store decided: replace what was reserved for the booking by the seats it now holds. True
        when this changed anything.

        Without a reservation the booking was settled before (a redelivery: its seats are counted as its
        own already, nothing changes), or the edge was rebuilt while the booking was only in the queue:
        then the seats it holds that the edge does not count as its own yet are counted now (given the
        booking's `event_id` and `user_id`), so that a rebuilt edge learns what the store decided. A
        booking released already (a settle that arrives after its cancel) is never counted again."""
        reservation = self._reservations.pop(booking_id, None)
        if reservation is None:
            return self._adopt(booking_id, tuple(held), event_id, user_id)
        held = tuple(held)
        stock = self._events.get(reservation.event_id)
        if stock is None:
            return True
        stock.remaining += reservation.quantity - len(held)
        # a seat this booking named may meanwhile be held by another booking: only free our own
        self._untake(stock, reservation.seats, booking_id)
        stock.taken.update(dict.fromkeys(held, booking_id))
        self._add_user(stock, reservation.user_id, len(held) - reservation.quantity)
        return True

    def _adopt(self, booking_id: str, held: tuple[str, ...], event_id: str | None, user_id: str | None) -> bool:
        stock = self._events.get(event_id) if event_id is not None else None
        if stock is None or user_id is None or booking_id in self._released:
            return False
        new = [seat for seat in held if stock.taken.get(seat) != booking_id]
        if not new:
            return False
        stock.remaining -= len(new)
        stock.taken.update(dict.fromkeys(new, booking_id))
        self._add_user(stock, user_id, len(new))
        return True

    def release(self, booking_id: str, event_id: str, user_id: str, seats: Iterable[str]) -> tuple[str, ...]:
        """Seats of a held booking came back (cancelled or expired); returns the seats this call freed.

        Idempotent: frees only those of `seats` the edge still counts as taken by this booking, and moves
        `remaining` and the user's count by exactly that many, so that a retried or repeated release, or
        one after a rebuild that already counted them free, changes nothing. A reservation still recorded
        for the booking is stale (its settle never landed before the store ended it) and is given back too.
        """
        stock = self._events.get(event_id)
        if stock is None:
            return ()
        self.settle(booking_id, ())
        self._released[booking_id] = None
        while len(self._released) > MAX_RELEASED:
            self._released.popitem(last=False)
        freed = self._untake(stock, seats, booking_id)
        stock.remaining += len(freed)
        self._add_user(stock, user_id, -len(freed))
        return freed

    def restore(self, booking_id: str, event_id: str, user_id: str, seats: Iterable[str]) -> None:
        """At rebuild: seats the booking already holds or bought in the store."""
        stock = self._events[event_id]
        seats = tuple(seats)
        stock.taken.update(dict.fromkeys(seats, booking_id))
        self._add_user(stock, user_id, len(seats))

    @staticmethod
    def _untake(stock: EventStock, seats: Iterable[str], booking_id: str) -> tuple[str, ...]:
        """Free those of `seats` that this booking itself has in `taken`; returns them."""
        freed = []
        for seat in seats:
            if stock.taken.get(seat) == booking_id:
                del stock.taken[seat]
                freed.append(seat)
        return tuple(freed)

    def restore_pending(
        self, booking_id: str, event_id: str, user_id: str, quantity: int, seats: tuple[str, ...]
    ) -> None:
        """At rebuild: a booking still pending in the store keeps its reservation."""
        self._reserve(booking_id, Reservation(event_id, user_id, quantity, seats))

    @staticmethod
    def _add_user(stock: EventStock, user_id: str, delta: int) -> None:
        count = stock.per_user.get(user_id, 0) + delta
        if count > 0:
            stock.per_user[user_id] = count
        else:
            stock.per_user.pop(user_id, None)
