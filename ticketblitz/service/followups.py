"""Follow-ups of commits that must land even when the edge (Redis) or the store stalls: edge releases
after a cancel or an expiry, undoing admissions whose enqueue failed or whose answer was lost, settling
decisions made outside the queue, and resolving enqueues whose outcome is unknown.

Each follow-up is tried at once, shielded from the caller's cancellation and bounded by a deadline; what
does not land is retried by this component's task until it does (never dropped). Edge releases are also
durable: the store marks a cancelled or expired booking *edge due* in the same transaction
(`Store.edge_due`), so that what a crash interrupted is found and released by any process; releases are
idempotent, so doing one twice changes nothing. When releases keep failing, the edge is invalidated
(rebuilt from the store at its next use).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from ..domain.errors import Unavailable
from ..domain.model import Booking, BookingStatus
from ..ports import Admission, Store

log = logging.getLogger("ticketblitz.followups")

RETRY_INTERVAL = 0.5  # seconds between rounds of retries
OUTBOX_GRACE = 2.0  # an edge-due booking younger than this is left to its own immediate release
OUTBOX_CHUNK = 500
INVALIDATE_AFTER = 30.0  # seconds of failing releases before the edge is rebuilt from the store
TOMBSTONE_REASON = "processing_failed"


@dataclass(slots=True)
class Tombstoned:
    """What resolving an enqueue of unknown outcome found: bookings now rejected for good (the client
    was or will be told 503) and bookings that a consumer had decided already (they were accepted)."""

    rejected: list[Booking]
    accepted: list[Booking]


class EdgeFollowUps:
    def __init__(self, store: Store, admission: Admission, clock: Callable[[], float], deadline: float,
                 orphan_after: float) -> None:
        self._store = store
        self._admission = admission
        self._clock = clock
        self._deadline = deadline  # seconds any one follow-up may take
        # an admission never marked queued this long after it was made belongs to an intake that died
        # between admitting and enqueueing (a crash): its booking may or may not be in the queue
        self._orphan_after = orphan_after
        # per kind of edge follow-up, the bookings it still has to land for (kept until it does)
        self._owed: dict[str, dict[str, Booking]] = {kind: {} for kind in self._EDGE_CALLS}
        self._tombstones: dict[str, Booking] = {}
        self._released: set[str] = set()  # released at the edge, to be taken out of the store's outbox
        self._failing_since: float | None = None
        self.counts: Counter[str] = Counter()  # follow-ups by kind and outcome (telemetry)

    # the edge calls that follow a commit or an answer; each is idempotent, so a retry is always safe
    _EDGE_CALLS = ("abandon", "withdraw", "settle", "mark_queued")

    def pending(self) -> int:
        """Follow-ups waiting for a retry."""
        return sum(len(owed) for owed in self._owed.values()) + len(self._tombstones)

    def _edge_call(self, kind: str) -> Callable[[Sequence[Booking]], Awaitable[object]]:
        call: Callable[[Sequence[Booking]], Awaitable[object]] = getattr(self._admission, kind)
        return call

    async def _edge(self, kind: str, bookings: Sequence[Booking]) -> None:
        """Run one edge follow-up now, or keep it for the retry rounds."""
        if bookings and not await self._attempt(kind, partial(self._edge_call(kind), bookings)):
            self._owed[kind].update((b.id, b) for b in bookings)

    async def _attempt(self, what: str, call: Callable[[], Awaitable[object]]) -> bool:
        """Run one follow-up now: shielded (a caller hanging up does not stop it), bounded in time."""
        with trio.CancelScope(shield=True), trio.move_on_after(self._deadline):
            try:
                await call()
            except Unavailable as exc:
                self.counts[f"{what}_failed"] += 1
                log.warning("%s did not land, will retry: %s", what, exc.detail)
                return False
            self.counts[what] += 1
            return True
        self.counts[f"{what}_failed"] += 1
        log.warning("%s did not land within %.1fs, will retry", what, self._deadline)
        return False

    # ------------------------------------------------------------------ the follow-ups
    async def release(self, bookings: Sequence[Booking]) -> None:
        """Seats of cancelled or expired bookings came back: tell the edge (now, or from the outbox)."""
        if not bookings:
            return
        if await self._attempt("edge_release", lambda: self._admission.release(bookings)):
            self._released.update(b.id for b in bookings)
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = self._clock()

    async def abandon(self, bookings: Sequence[Booking]) -> None:
        """Undo admissions whose enqueue failed or whose answer was lost (unless queued meanwhile)."""
        await self._edge("abandon", bookings)

    async def withdraw(self, bookings: Sequence[Booking]) -> None:
        """Undo admissions of bookings that lost their Idempotency-Key to another booking."""
        await self._edge("withdraw", bookings)

    async def settle(self, decided: Sequence[Booking]) -> None:
        """Settle decisions made outside the queue (the compat routes, dead letters)."""
        await self._edge("settle", decided)

    async def mark_queued(self, bookings: Sequence[Booking]) -> None:
        """The queue holds these bookings: no cleanup of doubtful admissions may touch them."""
        await self._edge("mark_queued", bookings)

    async def tombstone(self, bookings: Sequence[Booking]) -> Tombstoned | None:
        """An enqueue failed but may have been written (Kafka): make the outcome certain through the
        store. A booking not stored yet is stored rejected without its Idempotency-Key (a copy that was
        written finds it decided and changes nothing; the client's retry books afresh) and its admission
        is abandoned; one a consumer stored already was accepted. None when the store could not be
        reached now: then this is retried until it lands, and the bookings count as not accepted."""
        result = await self._tombstone_now(bookings)
        if result is None:
            self._tombstones.update((b.id, b) for b in bookings)
        return result

    async def _tombstone_now(self, bookings: Sequence[Booking]) -> Tombstoned | None:
        outcome: list[tuple[Booking, bool]] = []

        async def reject() -> None:
            outcome.extend(await self._store.reject(bookings, TOMBSTONE_REASON, self._clock(), insert=True,
                                                    keep_key=False))

        if not await self._attempt("tombstone", reject):
            return None
        rejected = [b for b, changed in outcome if changed]
        accepted = [b for b, changed in outcome if not changed]
        # the tombstones are stored: their admissions go (the key too, so that a retry books afresh)
        mine = {b.id for b in rejected}
        await self.abandon([b for b in bookings if b.id in mine])
        if accepted:
            await self.settle([b for b in accepted if b.status is not BookingStatus.PENDING])
        return Tombstoned(rejected, accepted)

    # ------------------------------------------------------------------ the task
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Retry what did not land, and release what the store's outbox still holds, for the serving
        lifetime (a crash between a commit and its release is found here, by any process)."""
        task_status.started()
        while True:
            await trio.sleep(RETRY_INTERVAL)
            await self.retry_once()

    async def retry_once(self) -> None:
        """One round: tombstones, the edge calls owed, the edge outbox, orphaned admissions."""
        if self._tombstones:
            batch = list(self._tombstones.values())
            if await self._tombstone_now(batch) is not None:
                for b in batch:
                    self._tombstones.pop(b.id, None)
        for kind, owed in self._owed.items():
            if owed:
                batch = list(owed.values())
                if await self._attempt(kind, partial(self._edge_call(kind), batch)):
                    for b in batch:
                        owed.pop(b.id, None)
        await self._drain_outbox()
        await self._resolve_orphans()

    async def _resolve_orphans(self) -> None:
        """Admissions that no intake will finish (it crashed): settled through the store like an enqueue
        of unknown outcome (stored: settled; not stored: tombstoned and abandoned)."""
        stale: list[Booking] = []

        async def read() -> None:
            stale.extend(await self._admission.stale_admissions(self._clock() - self._orphan_after, OUTBOX_CHUNK))

        if await self._attempt("orphans_read", read) and stale:
            log.warning("resolving %d admissions left behind by an intake that did not finish", len(stale))
            await self.tombstone(stale)

    async def _drain_outbox(self) -> None:
        if self._released:
            done = sorted(self._released)
            if await self._attempt("outbox_done", lambda: self._store.edge_done(done)):
                self._released.difference_update(done)
        due: list[Booking] = []

        async def read() -> None:
            due.extend(await self._store.edge_due(self._clock() - OUTBOX_GRACE, OUTBOX_CHUNK))

        if not await self._attempt("outbox_read", read) or not due:
            return
        await self.release(due)
        failing_for = self._clock() - self._failing_since if self._failing_since is not None else 0.0
        if failing_for > INVALIDATE_AFTER and await self._attempt("invalidate", self._admission.invalidate):
            log.error("edge releases failed for %.0fs: edge state dropped, it is rebuilt from the store", failing_for)
            self._failing_since = None
