"""The hold sweeper: holds past their `expires_at` become `expired` and their seats available again,
every `sweep_interval` seconds, for the serving lifetime. The store marks each expired booking *edge due*
in the same transaction, so its edge release lands even if this process dies right after the commit."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..config import Settings
from ..domain.errors import Unavailable
from ..domain.model import Booking
from ..ports import Store
from ..telemetry import Telemetry
from .bookingreads import BookingAnswers
from .followups import EdgeFollowUps
from .seatmaps import SeatMaps

log = logging.getLogger("ticketblitz.sweeper")

CHUNK = 500  # holds expired per store transaction


class HoldSweeper:
    def __init__(self, settings: Settings, store: Store, followups: EdgeFollowUps, seat_maps: SeatMaps,
                 telemetry: Telemetry, clock: Callable[[], float],
                 booking_answers: BookingAnswers | None = None) -> None:
        self.settings = settings
        self.store = store
        self.followups = followups
        self.seat_maps = seat_maps
        self.booking_answers = (booking_answers if booking_answers is not None
                                else BookingAnswers(settings.seat_map_max_age))
        self.telemetry = telemetry
        self.clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.settings.sweep_interval)
            try:
                await self.expire_lapsed_holds()
            except Unavailable as exc:
                log.warning("hold sweep failed, will retry: %s", exc.detail)

    async def expire_lapsed_holds(self) -> list[Booking]:
        """Expire every hold past its `expires_at`; their seats become available again."""
        expired: list[Booking] = []
        while True:
            # the commit and its edge release belong together: a cancelled sweep still releases
            with trio.CancelScope(shield=True):
                chunk = await self.store.expire_lapsed(self.clock(), CHUNK)
                self.booking_answers.changed([b.id for b in chunk])
                for event_id in {b.event_id for b in chunk}:
                    self.seat_maps.changed(event_id)
                await self.followups.release(chunk)
            for event_id in {b.event_id for b in chunk}:
                self.telemetry.stored("commit", "expire", event_id, [b.id for b in chunk if b.event_id == event_id])
            for b in chunk:
                self.telemetry.hold_expired(b)
                self.telemetry.booking(b)
                self.telemetry.seats(b.event_id, b.seat_ids, "available")
            expired.extend(chunk)
            if len(chunk) < CHUNK:
                return expired
