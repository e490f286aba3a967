"""`/metrics` through prometheus_client, from the hub's own counters (the numbers `stats` is computed from).

The hub's counters are plain dictionaries bumped on the booking path; `sync` moves what changed since the
last call into the Prometheus metrics (every tick, and before each exposition). With `--workers N` the
supervisor sets PROMETHEUS_MULTIPROC_DIR for the workers: metrics then live in that directory's files
(prometheus_client's multiprocess mode) and any worker's `/metrics` answers for all of them.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GAUGES = {
    "queue_depth": "Bookings in line or being decided here.",
    "ws_subscribers": "Websocket subscribers connected.",
    "accepting": "1 while the process accepts bookings.",
    "intake_waiting": "Booking requests waiting for an intake batch.",
    "long_polls": "Long-polls waiting.",
    "followups_pending": "Edge follow-ups not yet done.",
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The Prometheus metrics of one hub: a private registry, or the multiprocess files."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # multiprocess: metrics are written to files and collected from them, never registered
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter("ticketblitz_http_requests", "HTTP answers by route template and status code.",
                                     ["route", "code"], registry=reg)
        self.http_duration = Histogram("ticketblitz_http_request_duration_seconds",
                                       "Time to answer HTTP requests, by route template.", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=reg)
        self._durations: dict[str, Any] = {}  # route -> its labelled histogram
        self.booking_decisions = Counter("ticketblitz_booking_decisions", "Booking status changes by new status.",
                                         ["status"], registry=reg)
        self.admissions = Counter("ticketblitz_admissions", "Edge admission verdicts.", ["verdict"], registry=reg)
        self.queue_messages = Counter("ticketblitz_queue_messages", "Booking queue messages by action.", ["action"],
                                      registry=reg)
        self.lock_events = Counter("ticketblitz_lock_events", "Seat lock events by action.", ["action"], registry=reg)
        self.store_writes = Counter("ticketblitz_store_writes", "Store writes by outcome and operation.",
                                    ["action", "op"], registry=reg)
        self.holds_expired = Counter("ticketblitz_holds_expired", "Holds that lapsed.", registry=reg)
        self.frames_dropped = Counter("ticketblitz_ws_frames_dropped",
                                      "Telemetry frames not delivered (per-tick cap, slow subscribers).", registry=reg)
        self.queue_joins = Counter("ticketblitz_queue_joins", "Waiting-room tickets created.", registry=reg)
        self.queue_admits = Counter("ticketblitz_queue_admits", "Waiting-room passes issued.", registry=reg)
        # the same line seen by every process: the highest, not the sum
        self.queue_waiting = Gauge("ticketblitz_queue_waiting", "Waiting-room tickets still waiting, all events.",
                                   registry=reg, multiprocess_mode="max")
        self.gauges = {name: Gauge(f"ticketblitz_{name}", help_, registry=reg, multiprocess_mode="livesum")
                       for name, help_ in GAUGES.items()}
        self._synced: dict[str, dict[Any, int]] = {}

    def _sync(self, name: str, metric: Counter, current: Mapping[Any, int],
              labels: Callable[[Any], tuple[str, ...]]) -> None:
        synced = self._synced.setdefault(name, {})
        for key, value in current.items():
            delta = value - synced.get(key, 0)
            if delta:
                metric.labels(*labels(key)).inc(delta)
                synced[key] = value

    def sync(self, hub: Any) -> None:
        """Move what the hub's counters gained since the last call into the metrics."""
        self._sync("http", self.http_requests, hub.http_totals, lambda k: (k[0], str(k[1])))
        self._sync("bookings", self.booking_decisions, hub.bookings, lambda k: (k,))
        self._sync("admissions", self.admissions, hub.admissions, lambda k: (k,))
        self._sync("queue", self.queue_messages, hub.queue, lambda k: (k,))
        self._sync("locks", self.lock_events, hub.locks, lambda k: (k,))
        self._sync("store", self.store_writes, hub.store, lambda k: k)
        self.queue_waiting.set(hub.queue_waiting)
        for name, metric, value in (("holds", self.holds_expired, hub.holds_expired),
                                    ("dropped", self.frames_dropped, hub.frames_dropped),
                                    ("joins", self.queue_joins, hub.waiting_room["joined"]),
                                    ("admits", self.queue_admits, hub.waiting_room["admitted"])):
            synced = self._synced.setdefault(name, {})
            delta = value - synced.get(None, 0)
            if delta:
                metric.inc(delta)
                synced[None] = value

    def observe(self, route: str, seconds: Sequence[float]) -> None:
        """Answer latencies of one route into its histogram: counted per bucket here, then one `inc` per
        bucket touched (`Histogram.observe` takes a lock and walks the buckets for every answer, which cost
        5 % of the door's hello world). Same numbers as observing each: the buckets are stored per bucket
        (not cumulative) and summed when collected."""
        child = self._durations.get(route)
        if child is None:  # labels() costs a lock and a lookup: once per route, not once per answer
            child = self._durations[route] = self.http_duration.labels(route)
        bounds = child._upper_bounds
        counts: dict[int, int] = {}
        for value in seconds:
            i = bisect.bisect_left(bounds, value)  # the first bucket whose upper bound is >= value
            counts[i] = counts.get(i, 0) + 1
        child._sum.inc(sum(seconds))
        for i, n in counts.items():
            child._buckets[i].inc(n)

    def set_gauges(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            gauge = self.gauges.get(name)
            if gauge is not None:
                gauge.set(value)

    def exposition(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def mark_process_dead(pid: int, path: str) -> None:
    """(supervisor) A worker exited: its live gauges no longer count."""
    _multiprocess.mark_process_dead(pid, path)
