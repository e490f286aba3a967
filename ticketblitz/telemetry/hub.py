"""The telemetry hub of one server process: counters for `stats` and `/metrics`, and the fan-out of JSON
frames to websocket subscribers (wire format: /work/spec/telemetry.md, docs/API.md's /ws section).

The booking path only records: a counter bump, an append to the current tick's list (no JSON, no await,
nothing at all when nobody listens). The hub's task flushes every `tick`: seat changes coalesced per
(event, status), the non-seat frames capped per tick, encoded once per audience (anonymous / admin x
event filter) and handed to each subscriber as one message. A subscriber's buffer is bounded: when it is
full the message is dropped and its frames counted; the subscriber still gets the latest `stats`.
With a relay (Redis, distributed mode) every tick and every second's stats also go to the other
processes, and theirs come back here: subscribers see the whole cluster.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
import trio

from .metrics import Metrics
from .rules import (
    STATS_FRESH_S,
    Frame,
    audience_frames,
    coalesce_seats,
    encode_message,
    fresh_stats,
    iso_time,
    percentile,
    rates,
    sum_stats,
)

if TYPE_CHECKING:
    from .relay import RedisRelay

log = logging.getLogger("ticketblitz.telemetry")

DEFAULT_TICK = 0.1
DEFAULT_MAX_FRAMES = 50
# rare frames that a page acts on (a new event, the flash sale's progress): never dropped by the cap
ESSENTIAL_KINDS = frozenset({"event", "loadgen"})
DEFAULT_BUFFER = 64  # messages (ticks) per subscriber
STATS_INTERVAL = 1.0
MAX_PENDING_ANSWERS = 100_000  # answers recorded between flushes before they are absorbed at once
_instances = itertools.count(1)


def process_name() -> str:
    """"<host>:<pid>", and "#n" for a further hub in the same process (tests run several services)."""
    n = next(_instances)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if n == 1 else f"{base}#{n}"


def verdict_of(error: Any) -> str:
    """An edge admission verdict from the error the edge answered (None: admitted)."""
    if error is None:
        return "admitted"
    code = getattr(error, "code", "error")
    return {"limit_exceeded": "limit"}.get(code, code)


class Subscriber:
    """One websocket's view: messages (one per tick) optionally filtered to one event. Anonymous unless it
    showed the admin token: then it also sees booking ids, user ids and lock owners."""

    def __init__(self, event_filter: str | None, limit: int) -> None:
        self.admin = False
        self.event_filter = event_filter
        self.limit = limit
        self.messages: deque[str] = deque()
        self.latest_stats: Frame | None = None
        self.dropped = 0  # frames dropped for this subscriber
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, message: str, frames: int) -> bool:
        """Queue one message carrying `frames` frames; False (and counted) when the buffer is full."""
        if len(self.messages) >= self.limit:
            self.dropped += frames
            return False
        self.messages.append(message)
        self._lot.unpark_all()
        return True

    def offer_stats(self, frame: Frame) -> None:
        """The latest stats replace older ones not yet sent: never dropped."""
        self.latest_stats = frame
        self._lot.unpark_all()

    async def next_message(self) -> str:
        """The next websocket text message: the latest stats first, then the ticks in order."""
        while True:
            if self.latest_stats is not None:
                frame, self.latest_stats = self.latest_stats, None
                return orjson.dumps({**frame, "dropped": self.dropped}).decode()
            if self.messages:
                return self.messages.popleft()
            await self._lot.park()

    async def next_frame(self) -> Frame:
        """The next message, decoded (a `batch` stays a batch)."""
        frame: Frame = orjson.loads(await self.next_message())
        return frame


class Telemetry:
    """Counters, latency windows and the frame hub of one server process."""

    def __init__(self, clock: Callable[[], float] = time.time, subscriber_buffer: int = DEFAULT_BUFFER, *,
                 tick: float = DEFAULT_TICK, max_frames_per_tick: int = DEFAULT_MAX_FRAMES,
                 relay: RedisRelay | None = None, process: str | None = None) -> None:
        self.clock = clock
        self.subscriber_buffer = subscriber_buffer
        self.tick = tick
        self.max_frames_per_tick = max_frames_per_tick
        self.relay = relay
        self.process = process or process_name()
        self.subscribers: set[Subscriber] = set()
        self.listening = False
        self.metrics = Metrics()
        # ---- counters since start (what stats and /metrics are computed from)
        self.requests: Counter[int] = Counter()  # answers by status code
        self.http_totals: Counter[tuple[str, int]] = Counter()  # answers by (route, code)
        self.bookings: Counter[str] = Counter()  # booking status changes by new status
        self.admissions: Counter[str] = Counter()  # edge verdicts (seats' bookings)
        self.queue: Counter[str] = Counter()  # messages by action
        self.locks: Counter[str] = Counter()  # lock events by action
        self.store: Counter[tuple[str, str]] = Counter()  # writes by (action, op)
        self.holds_expired = 0
        self.waiting_room: Counter[str] = Counter()  # waiting-room tickets: joined, admitted, expired, sold_out
        self.queue_waiting = 0  # tickets waiting in every line this process ticks (the last tick's)
        self.frames_dropped = 0
        self.gauges: dict[str, Callable[[], float]] = {}
        self.queue_depth: Callable[[], int] = lambda: 0
        # ---- the current tick
        self._tick: list[Frame] = []
        self._seat_changes: dict[tuple[str, str], str] = {}
        self._answers: list[tuple[str, int, float]] = []
        self._http_tick: dict[tuple[str, int], list[float]] = {}  # (route, code) -> [count, ms_max, ms_sum]
        self._remote: list[Frame] = []  # frames relayed from other processes, for the next flush
        # ---- the current stats window
        self._window_latencies: list[float] = []
        self._window_start_totals = self._totals()
        self._window_holds = 0
        self._remote_stats: dict[str, tuple[Frame, float]] = {}  # process -> (its own stats, when heard)
        self.own_stats: Frame = self._stats_frame(STATS_INTERVAL)
        self.last_stats: Frame = {**self.own_stats, "processes": 1}

    @classmethod
    def from_settings(cls, settings: Any, clock: Callable[[], float] = time.time,
                      relay: RedisRelay | None = None) -> Telemetry:
        return cls(clock, settings.ws_subscriber_buffer, tick=settings.telemetry_tick,
                   max_frames_per_tick=settings.max_frames_per_tick, relay=relay)

    # ================================================================== recording (the booking path)
    def _listen_check(self) -> None:
        """`listening`: someone may see frames, a subscriber here or (relayed) at another process that
        reported subscribers within the last 3 s. Kept as an attribute: the booking path reads it often."""
        self.listening = bool(self.subscribers) or any(f.get("subscribers") for f, _ in self._remote_stats.values())

    def _room(self) -> bool:
        """A frame would be sent: someone listens and the tick is not full (else it is only counted, and
        the caller builds nothing)."""
        if not self.listening:
            return False
        if len(self._tick) >= self.max_frames_per_tick:
            self.frames_dropped += 1
            return False
        return True

    def record_request(self, status: int, seconds: float, route: str = "other") -> None:
        """An HTTP answer: its route template (e.g. `POST /api/events/{id}/bookings`), code and latency."""
        self._answers.append((route, status, seconds))
        if len(self._answers) >= MAX_PENDING_ANSWERS:
            self.absorb()

    def publish(self, kind: str, **data: Any) -> None:
        """A frame of type `kind` for the subscribers (anonymous ones get it without its private members).
        Appended to the tick's list; beyond `max_frames_per_tick` it is only counted as dropped (but
        `ESSENTIAL_KINDS`)."""
        if self.listening if kind in ESSENTIAL_KINDS else self._room():
            self._append(kind, **data)

    def _append(self, kind: str, **data: Any) -> None:
        """A frame into the tick's list; the caller checked `_room()` (the booking path's helpers below)."""
        data["type"] = kind
        data["ts"] = self.clock()
        self._tick.append(data)

    def booking(self, booking: Any) -> None:
        """A booking's status changed (or it was created pending)."""
        status = str(booking.status)
        self.bookings[status] += 1
        if self._room():
            self._append("booking", event_id=booking.event_id, id=booking.id, status=status,
                         reason=booking.reason, user_id=booking.user_id, seat_ids=list(booking.seat_ids))

    def seats(self, event_id: str, seats: Iterable[str], status: str) -> None:
        """Seats changed status; coalesced per tick (the last status of a seat wins)."""
        if not self.listening:
            return
        changes = self._seat_changes
        for seat in seats:
            key = (event_id, seat)
            changes.pop(key, None)  # re-inserted last: its group follows the order of the latest change
            changes[key] = status

    def admission(self, verdict: str, event_id: str, count: int, booking_id: str | None = None) -> None:
        """The edge's verdict on one booking request of `count` seats."""
        self.admissions[verdict] += 1
        if self._room():
            self._append("admission", event_id=event_id, verdict=verdict, count=count, booking_id=booking_id)

    def lock(self, action: str, event_id: str, seats: Iterable[str], owner: str, fence: int | None = None) -> None:
        self.locks[action] += 1
        if self._room():
            self._append("lock", action=action, event_id=event_id, seats=list(seats), fence=fence, owner=owner)

    def queued(self, action: str, count: int, partition: int | None = None, offset: int | None = None,
               **data: Any) -> None:
        if count <= 0:
            return
        self.queue[action] += count
        if self._room():
            self._append("queue", action=action, count=count, partition=partition, offset=offset,
                         lag=self.queue_depth(), **data)

    def stored(self, action: str, op: str, event_id: str, booking_ids: list[str]) -> None:
        """A store write of `op` committed (`commit`) or refused because a seat was taken (`conflict`)."""
        if not booking_ids:
            return
        self.store[(action, op)] += len(booking_ids)
        if self._room():
            extra: dict[str, Any] = {"booking_id": booking_ids[0]} if len(booking_ids) == 1 else {
                "booking_ids": booking_ids}
            self._append("store", action=action, op=op, event_id=event_id, count=len(booking_ids), **extra)

    def hold_expired(self, booking: Any) -> None:
        self.holds_expired += 1
        if self._room():
            self._append("hold", action="expired", event_id=booking.event_id, seats=list(booking.seat_ids),
                         booking_id=booking.id)

    def joined(self, event_id: str, count: int) -> None:
        """Tickets created in a waiting room (the `waiting_room` frame of the admitter's tick shows them)."""
        self.waiting_room["joined"] += count

    def line(self, line: dict[str, Any], *, admits: int, joins: int, expired: int, sold_out: int) -> None:
        """One admitter tick of a line that changed: its public numbers, and the sold-out broadcast."""
        self.waiting_room["admitted"] += admits
        self.waiting_room["expired"] += expired
        self.waiting_room["sold_out"] += sold_out
        if self.listening:
            self._append("waiting_room", **line, admits=admits, joins=joins)
            if sold_out:
                self._append("waiting_room", action="sold_out", event_id=line["event_id"], count=sold_out)

    @contextmanager
    def subscribe(self, event_filter: str | None = None) -> Iterator[Subscriber]:
        sub = Subscriber(event_filter, self.subscriber_buffer)
        self.subscribers.add(sub)
        self._listen_check()
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)
            self._listen_check()

    # ================================================================== from other processes
    def receive(self, message: Frame, now: float | None = None) -> None:
        """A message of another process (from the relay): its tick's frames, or its stats."""
        process = message.get("process")
        if not isinstance(process, str) or process == self.process:
            return
        kind = message.get("type")
        if kind == "batch":
            frames = message.get("frames")
            if isinstance(frames, list):
                self._remote.extend(f for f in frames if isinstance(f, dict))
        elif kind == "stats":
            self._remote_stats[process] = (message, trio.current_time() if now is None else now)
            self._listen_check()

    # ================================================================== each tick
    def absorb(self) -> None:
        """Count the answers recorded since the last call (counters, latency window, histogram) and bring
        the Prometheus metrics up to date."""
        answers, self._answers = self._answers, []
        http, metrics = self._http_tick, self.metrics
        by_route: dict[str, list[float]] = {}
        for route, code, seconds in answers:
            self.requests[code] += 1
            self.http_totals[(route, code)] += 1
            self._window_latencies.append(seconds)
            durations = by_route.get(route)
            if durations is None:
                by_route[route] = [seconds]
            else:
                durations.append(seconds)
            ms = seconds * 1000
            agg = http.get((route, code))
            if agg is None:
                http[(route, code)] = [1, ms, ms]
            else:
                agg[0] += 1
                agg[1] = max(agg[1], ms)
                agg[2] += ms
        for route, durations in by_route.items():
            metrics.observe(route, durations)
        metrics.sync(self)

    def flush(self) -> int:
        """Send the tick's frames: to each audience here (one message each), and to the relay. The number
        of frames this tick carried."""
        self.absorb()
        now = self.clock()
        ts = iso_time(now)
        local = self._tick
        self._tick = []
        for frame in local:
            frame["ts"] = iso_time(frame["ts"])
            frame["process"] = self.process
        if self._http_tick:
            answers = [{"route": route, "code": code, "count": int(count), "ms_max": round(ms_max, 3),
                        "ms_sum": round(ms_sum, 3)}
                       for (route, code), (count, ms_max, ms_sum) in sorted(self._http_tick.items())]
            self._http_tick = {}
            if self.listening:
                local.append({"type": "http", "ts": ts, "process": self.process, "answers": answers})
        if self._seat_changes:
            for frame in coalesce_seats(self._seat_changes):
                frame["ts"] = ts
                frame["process"] = self.process
                local.append(frame)
            self._seat_changes = {}
        if local and self.relay is not None:
            self.relay.send_tick(self.process, ts, local)
        frames = local
        if self._remote:
            frames = local + self._remote
            self._remote = []
        if frames and self.subscribers:
            self._fan_out(frames, ts)
        return len(frames)

    def _fan_out(self, frames: list[Frame], ts: str) -> None:
        encoded: dict[tuple[bool, str | None], tuple[str, int] | None] = {}
        for sub in self.subscribers:
            key = (sub.admin, sub.event_filter)
            if key not in encoded:
                seen = audience_frames(frames, sub.admin, sub.event_filter)
                encoded[key] = (encode_message(seen, ts), len(seen)) if seen else None
            message = encoded[key]
            if message is not None and not sub.offer(*message):
                self.frames_dropped += message[1]

    # ================================================================== each second
    def _totals(self) -> dict[str, dict[str, int]]:
        store: Counter[str] = Counter()
        for (action, _), n in self.store.items():
            store[action] += n
        return {"requests": {str(k): v for k, v in sorted(self.requests.items())},
                "bookings": dict(sorted(self.bookings.items())),
                "admissions": dict(sorted(self.admissions.items())),
                "queue": dict(sorted(self.queue.items())),
                "locks": dict(sorted(self.locks.items())),
                "store": dict(sorted(store.items())),
                "waiting_room": dict(sorted(self.waiting_room.items()))}

    def _stats_frame(self, window: float) -> Frame:
        """This process's own stats over the window just closed."""
        totals, before = self._totals(), self._window_start_totals
        latencies = sorted(self._window_latencies)
        locks_per_s = rates(totals["locks"], before["locks"], window)
        queue_per_s = rates(totals["queue"], before["queue"], window)
        store_per_s = rates(totals["store"], before["store"], window)
        return {
            "type": "stats",
            "ts": iso_time(self.clock()),
            "process": self.process,
            "window_s": round(window, 3),
            "requests_per_s": rates(totals["requests"], before["requests"], window),
            # a decision takes a booking out of `pending` (its creation as `pending` is not one)
            "decisions_per_s": {k: v for k, v in rates(totals["bookings"], before["bookings"], window).items()
                                if k != "pending"},
            "admissions_per_s": rates(totals["admissions"], before["admissions"], window),
            "queue_per_s": {"produced": queue_per_s.get("produced", 0.0), "consumed": queue_per_s.get("consumed", 0.0)},
            "locks_per_s": locks_per_s,
            "locks_contended_per_s": locks_per_s.get("contended", 0.0),
            "store_per_s": {"commit": store_per_s.get("commit", 0.0), "conflict": store_per_s.get("conflict", 0.0)},
            "queue_lag": self.queue_depth(),
            "latency_ms": {"p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99)},
            "joins_per_s": rates(totals["waiting_room"], before.get("waiting_room", {}), window).get("joined", 0.0),
            "admits_per_s": rates(totals["waiting_room"], before.get("waiting_room", {}), window).get("admitted", 0.0),
            "queue_waiting": self.queue_waiting,
            "holds_expired": self.holds_expired,
            "holds_expired_per_s": round((self.holds_expired - self._window_holds) / window, 1),
            "frames_dropped": self.frames_dropped,
            "subscribers": len(self.subscribers),
            "totals": totals,
        }

    def roll_window(self, window: float, now: float | None = None) -> Frame:
        """Close the current stats window: this process's stats go to the relay, the cluster's (this one
        plus every process heard from within 3 s) to every subscriber here. Returns the cluster's."""
        self.absorb()
        now = trio.current_time() if now is None else now
        own = self._stats_frame(window)
        self._window_latencies = []
        self._window_start_totals = own["totals"]
        self._window_holds = self.holds_expired
        self.own_stats = own
        self._remote_stats = {p: v for p, v in self._remote_stats.items() if now - v[1] <= STATS_FRESH_S}
        self._listen_check()
        cluster = sum_stats([own, *fresh_stats(self._remote_stats, now)])
        cluster["process"] = self.process  # the one that summed them
        self.last_stats = cluster
        if self.relay is not None:
            self.relay.send_stats(own)
        self.metrics.set_gauges({name: read() for name, read in self.gauges.items()})
        for sub in self.subscribers:
            sub.offer_stats(cluster)
        return cluster

    # ================================================================== the hub's task
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every tick and roll the stats every second, for the serving lifetime (with the relay's
        tasks, when there is one, in the same nursery)."""
        async with trio.open_nursery() as nursery:
            if self.relay is not None:
                await nursery.start(self.relay.run, self)
            task_status.started()
            now = trio.current_time()
            next_tick, next_stats, last_stats = now + self.tick, now + STATS_INTERVAL, now
            while True:
                await trio.sleep_until(min(next_tick, next_stats))
                now = trio.current_time()
                if now >= next_tick:
                    self.flush()
                    next_tick = max(next_tick + self.tick, now)
                if now >= next_stats:
                    self.roll_window(max(now - last_stats, 1e-3), now)
                    last_stats = now
                    next_stats = max(next_stats + STATS_INTERVAL, now)

    # ================================================================== /metrics
    def metrics_text(self, gauges: dict[str, float] | None = None) -> bytes:
        """The Prometheus exposition (this process's, or with `--workers` every worker's)."""
        self.absorb()
        values = {name: read() for name, read in self.gauges.items()}
        values.update(gauges or {})
        self.metrics.set_gauges(values)
        return self.metrics.exposition()
