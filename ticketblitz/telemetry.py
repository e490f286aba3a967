"""Telemetry: counters for /metrics and a fan-out of JSON frames to websocket subscribers.

Publishing never blocks the booking path: each subscriber has a bounded buffer; when it is full the
frame is dropped and counted, and the subscriber still gets the latest `stats` frame.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Frame = dict[str, Any]


# Members of frames that only admin subscribers see: who booked (booking ids, user ids, lock owners).
PRIVATE_MEMBERS = frozenset({"id", "booking_id", "user_id", "owner"})


class Subscriber:
    """One websocket's view of the frames, optionally filtered to one event. Anonymous unless it showed
    the admin token: then it also sees booking ids and user ids."""

    def __init__(self, event_filter: str | None, limit: int) -> None:
        self.admin = False
        self.event_filter = event_filter
        self.limit = limit
        self.frames: deque[Frame] = deque()
        self.latest_stats: Frame | None = None
        self.dropped = 0
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, frame: Frame) -> bool:
        if frame["type"] == "stats":
            self.latest_stats = frame
        else:
            if self.event_filter is not None and frame.get("event_id", self.event_filter) != self.event_filter:
                return True
            if len(self.frames) >= self.limit:
                self.dropped += 1
                return False
            self.frames.append(frame)
        self._lot.unpark_all()
        return True

    async def next_frame(self) -> Frame:
        while True:
            if self.latest_stats is not None:
                frame, self.latest_stats = self.latest_stats, None
                return {**frame, "dropped": self.dropped}
            if self.frames:
                return self.frames.popleft()
            await self._lot.park()


class Telemetry:
    """Counters, latency windows and the frame hub of one server process."""

    def __init__(self, clock: Callable[[], float] = time.time, subscriber_buffer: int = 1000) -> None:
        self.clock = clock
        self.subscriber_buffer = subscriber_buffer
        self.subscribers: set[Subscriber] = set()
        self.requests: Counter[int] = Counter()  # by answer status, since start
        self.bookings: Counter[str] = Counter()  # decisions by status
        self.locks: Counter[str] = Counter()
        self.queue: Counter[str] = Counter()
        self.holds_expired = 0
        self.frames_dropped = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self._window_codes: Counter[int] = Counter()
        self._window_latencies: list[float] = []
        self.queue_depth: Callable[[], int] = lambda: 0
        self.last_stats: Frame = self._stats_frame(1.0)

    # ---------------------------------------------------------------- recording
    def record_request(self, status: int, seconds: float) -> None:
        self.requests[status] += 1
        self._window_codes[status] += 1
        self._window_latencies.append(seconds)
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def publish(self, kind: str, **data: Any) -> None:
        """A frame to every subscriber; anonymous ones get it without its private members."""
        frame: Frame = {"type": kind, "ts": _iso(self.clock()), **data}
        public: Frame | None = None
        for sub in self.subscribers:
            if sub.admin:
                offered = frame
            else:
                if public is None:
                    public = {k: v for k, v in frame.items() if k not in PRIVATE_MEMBERS}
                offered = public
            if not sub.offer(offered):
                self.frames_dropped += 1

    def booking(self, booking: Any) -> None:
        self.bookings[str(booking.status)] += 1
        if self.subscribers:
            self.publish("booking", event_id=booking.event_id, id=booking.id, status=str(booking.status),
                         reason=booking.reason, user_id=booking.user_id, seat_ids=list(booking.seat_ids))

    def seats(self, event_id: str, seats: Any, status: str) -> None:
        if self.subscribers:
            for seat in seats:
                self.publish("seat", event_id=event_id, seat=seat, status=status)

    def lock(self, action: str, event_id: str, seats: Any, owner: str) -> None:
        self.locks[action] += 1
        if self.subscribers:
            self.publish("lock", action=action, event_id=event_id, seats=list(seats), owner=owner)

    def queued(self, action: str, count: int, **data: Any) -> None:
        self.queue[action] += count
        if self.subscribers:
            self.publish("queue", action=action, count=count, lag=self.queue_depth(), **data)

    @contextmanager
    def subscribe(self, event_filter: str | None = None) -> Iterator[Subscriber]:
        sub = Subscriber(event_filter, self.subscriber_buffer)
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    # ---------------------------------------------------------------- once a second
    def _stats_frame(self, window: float) -> Frame:
        latencies = sorted(self._window_latencies)
        return {
            "type": "stats",
            "ts": _iso(self.clock()),
            "window_s": round(window, 3),
            "requests_per_s": {str(k): round(v / window, 1) for k, v in sorted(self._window_codes.items())},
            "queue_lag": self.queue_depth(),
            "latency_ms": {"p50": _pct(latencies, 0.50), "p99": _pct(latencies, 0.99)},
            "holds_expired": self.holds_expired,
            "bookings": dict(self.bookings),
            "frames_dropped": self.frames_dropped,
            "subscribers": len(self.subscribers),
        }

    def roll_window(self, window: float) -> Frame:
        """Close the current one-second window: its stats frame, sent to everyone."""
        frame = self._stats_frame(window)
        self._window_codes.clear()
        self._window_latencies.clear()
        self.last_stats = frame
        for sub in self.subscribers:
            sub.offer(frame)
        return frame

    async def run(self, interval: float = 1.0) -> None:
        """The telemetry hub's task: a `stats` frame every `interval` seconds, for the serving lifetime."""
        last = trio.current_time()
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            self.roll_window(max(now - last, 1e-3))
            last = now

    # ---------------------------------------------------------------- /metrics
    def metrics_text(self, gauges: dict[str, float]) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        metric("ticketblitz_http_requests_total", "counter", "HTTP answers by status code.",
               [(f'{{code="{k}"}}', v) for k, v in sorted(self.requests.items())] or [("", 0)])
        metric("ticketblitz_bookings_decided_total", "counter", "Booking state changes by new status.",
               [(f'{{status="{k}"}}', v) for k, v in sorted(self.bookings.items())] or [("", 0)])
        metric("ticketblitz_lock_events_total", "counter", "Seat lock events by action.",
               [(f'{{action="{k}"}}', v) for k, v in sorted(self.locks.items())] or [("", 0)])
        metric("ticketblitz_queue_messages_total", "counter", "Queue messages by action.",
               [(f'{{action="{k}"}}', v) for k, v in sorted(self.queue.items())] or [("", 0)])
        metric("ticketblitz_holds_expired_total", "counter", "Holds that lapsed.", [("", self.holds_expired)])
        metric("ticketblitz_ws_frames_dropped_total", "counter", "Frames dropped for slow subscribers.",
               [("", self.frames_dropped)])
        cumulative = 0
        samples: list[tuple[str, float]] = []
        for bound, count in zip(LATENCY_BUCKETS, self.latency_buckets, strict=False):
            cumulative += count
            samples.append((f'_bucket{{le="{bound}"}}', cumulative))
        samples.append(('_bucket{le="+Inf"}', self.latency_count))
        samples.append(("_sum", self.latency_sum))
        samples.append(("_count", self.latency_count))
        out.append("# HELP ticketblitz_http_request_seconds Latency of HTTP answers.")
        out.append("# TYPE ticketblitz_http_request_seconds histogram")
        out.extend(f"ticketblitz_http_request_seconds{suffix} {value:g}" for suffix, value in samples)
        for name, value in gauges.items():
            metric(f"ticketblitz_{name}", "gauge", name.replace("_", " ") + ".", [("", value)])
        return "\n".join(out) + "\n"


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index] * 1000, 2)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


iso_time = _iso
