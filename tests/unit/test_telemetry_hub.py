"""The telemetry hub: fan-out, one message per tick, bounded buffers and drop counting, seat coalescing,
the per-tick cap, private members, stats from counters, the cluster's stats, /metrics from the same numbers."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ticketblitz.telemetry import PRIVATE_MEMBERS, Telemetry
from ticketblitz.telemetry.rules import coalesce_seats, sum_stats


def hub(**kw: Any) -> Telemetry:
    return Telemetry(lambda: 1_700_000_000.0, **kw)


def frames_of(message: str) -> list[dict[str, Any]]:
    decoded = json.loads(message)
    return decoded["frames"] if decoded["type"] == "batch" else [decoded]


async def next_frames(sub: Any) -> list[dict[str, Any]]:
    with trio.fail_after(1):
        return frames_of(await sub.next_message())


def booking(i: int, event: str = "e1", status: str = "held") -> Any:
    return SimpleNamespace(id=f"b{i}", event_id=event, status=status, reason=None, user_id=f"u{i}",
                           seat_ids=(f"A-1-{i}",))


async def test_one_tick_is_one_message_per_subscriber_encoded_for_its_audience() -> None:
    t = hub()
    with t.subscribe() as anonymous, t.subscribe() as admin, t.subscribe("e2") as other_event:
        admin.admin = True
        t.booking(booking(1))
        t.lock("acquired", "e1", ["A-1-1"], "u1", fence=7)
        t.seats("e1", ["A-1-1"], "held")
        t.record_request(202, 0.004, "POST /api/events/{id}/bookings")
        assert t.flush() == 4
        assert len(anonymous.messages) == len(admin.messages) == 1
        assert [f["type"] for f in await next_frames(other_event)] == ["http"]  # frames naming no event
        mine = await next_frames(admin)
        public = await next_frames(anonymous)
    assert [f["type"] for f in mine] == ["booking", "lock", "http", "seat"]
    assert mine[0]["id"] == "b1" and mine[0]["user_id"] == "u1" and mine[1]["owner"] == "u1"
    assert mine[1]["fence"] == 7 and mine[1]["seats"] == ["A-1-1"]
    for frame in public:
        assert PRIVATE_MEMBERS.isdisjoint(frame), frame
        assert frame["process"] == t.process and frame["ts"].endswith("Z")
    assert public[2]["answers"] == [{"route": "POST /api/events/{id}/bookings", "code": 202, "count": 1,
                                     "ms_max": 4.0, "ms_sum": 4.0}]
    assert public[3] == {**public[3], "type": "seat", "event_id": "e1", "status": "held", "seats": ["A-1-1"],
                         "seat": "A-1-1"}


async def test_an_event_filter_keeps_frames_of_that_event_and_frames_of_none() -> None:
    t = hub()
    with t.subscribe("e2") as sub:
        t.booking(booking(1, "e1"))
        t.queued("produced", 3, 2, 41)
        t.flush()
        (frame,) = await next_frames(sub)  # alone: sent bare, not as a batch
    assert frame["type"] == "queue" and frame["partition"] == 2 and frame["offset"] == 41 and frame["count"] == 3


async def test_nothing_is_built_while_nobody_listens_but_counters_count() -> None:
    t = hub()
    t.booking(booking(1))
    t.seats("e1", ["A-1-1"], "held")
    t.publish("loadgen", state="started")
    assert t.flush() == 0
    assert t.bookings["held"] == 1


async def test_seat_changes_are_coalesced_per_event_and_status_last_status_wins() -> None:
    t = hub()
    with t.subscribe() as sub:
        t.seats("e1", [f"A-1-{i}" for i in range(1000)], "held")
        t.seats("e2", ["B-1-1"], "held")
        t.seats("e1", ["A-1-0"], "available")  # the same seat changed again in the tick
        t.flush()
        frames = await next_frames(sub)
    by_key = {(f["event_id"], f["status"]): f["seats"] for f in frames}
    assert len(frames) == 3
    assert len(by_key[("e1", "held")]) == 999 and "A-1-0" not in by_key[("e1", "held")]
    assert by_key[("e1", "available")] == ["A-1-0"] and by_key[("e2", "held")] == ["B-1-1"]


def test_coalesce_seats_groups_in_first_appearance_order() -> None:
    frames = coalesce_seats({("e", "s1"): "held", ("e", "s2"): "sold", ("e", "s3"): "held"})
    assert [(f["status"], f["seats"]) for f in frames] == [("held", ["s1", "s3"]), ("sold", ["s2"])]


async def test_non_seat_frames_beyond_the_cap_are_dropped_and_counted() -> None:
    t = hub(max_frames_per_tick=5)
    with t.subscribe() as sub:
        for i in range(12):
            t.booking(booking(i))
        t.seats("e1", ["A-1-1"], "held")  # seats are not capped
        t.publish("loadgen", state="progress", sent=12)  # nor are the rare frames a page acts on
        t.flush()
        frames = await next_frames(sub)
    assert sorted(f["type"] for f in frames) == ["booking"] * 5 + ["loadgen", "seat"]
    assert t.frames_dropped == 7
    assert t.bookings["held"] == 12  # the numbers still count everything


async def test_a_full_buffer_drops_messages_counts_their_frames_and_still_sends_stats() -> None:
    t = hub(subscriber_buffer=2)
    with t.subscribe() as slow, t.subscribe() as fast:
        for tick in range(5):
            t.booking(booking(tick))
            t.booking(booking(tick + 100))
            t.flush()
            if tick < 4:
                await fast.next_message()
        assert len(slow.messages) == 2 and slow.dropped == 6 and fast.dropped == 0
        assert t.frames_dropped == 6
        t.roll_window(1.0, now=0.0)
        with trio.fail_after(1):
            stats = json.loads(await slow.next_message())  # stats first, never dropped
    assert stats["type"] == "stats" and stats["dropped"] == 6 and stats["frames_dropped"] == 6


def test_a_subscriber_that_never_reads_holds_at_most_its_buffer() -> None:
    t = hub(subscriber_buffer=3, max_frames_per_tick=200)
    with t.subscribe() as stuck:
        for tick in range(50):  # the booking path's calls are plain functions: nothing here can wait
            for i in range(200):
                t.booking(booking(tick * 1000 + i))
                t.seats("e1", [f"A-{tick}-{i}"], "held")
            t.flush()
        assert len(stuck.messages) == 3
        assert stuck.dropped == t.frames_dropped == 47 * 201


async def test_stats_are_rates_from_counters_with_latency_percentiles_and_totals() -> None:
    t = hub()
    for i in range(100):
        t.record_request(202 if i < 90 else 409, (i + 1) / 1000, "POST /api/book-async")
    t.admission("admitted", "e1", 1)
    t.admission("sold_out", "e1", 1)
    t.lock("contended", "e1", ["A-1-1"], "c")
    t.stored("commit", "hold", "e1", ["b1", "b2"])
    t.queued("produced", 4)
    t.hold_expired(booking(1))
    stats = t.roll_window(2.0, now=0.0)
    assert stats["processes"] == 1 and stats["window_s"] == 2.0
    assert stats["requests_per_s"] == {"202": 45.0, "409": 5.0}
    assert stats["admissions_per_s"] == {"admitted": 0.5, "sold_out": 0.5}
    assert stats["locks_contended_per_s"] == 0.5 and stats["store_per_s"] == {"commit": 1.0, "conflict": 0.0}
    assert stats["queue_per_s"] == {"produced": 2.0, "consumed": 0.0}
    assert stats["latency_ms"] == {"p50": 51.0, "p99": 100.0}
    assert stats["holds_expired"] == 1 and stats["holds_expired_per_s"] == 0.5
    assert stats["totals"]["requests"] == {"202": 90, "409": 10} and stats["totals"]["store"] == {"commit": 2}
    again = t.roll_window(1.0, now=1.0)  # a new window: rates from what changed since
    assert again["requests_per_s"] == {} and again["latency_ms"] == {"p50": None, "p99": None}
    assert again["totals"]["requests"] == {"202": 90, "409": 10}


def own_stats(process: str, **changes: Any) -> dict[str, Any]:
    base = hub(process=process)
    base.roll_window(1.0, now=0.0)
    frame = {**base.own_stats, **changes}  # what a process publishes: its own stats, named
    return frame


async def test_stats_of_other_processes_are_summed_while_fresh() -> None:
    t = hub(process="a")
    t.record_request(202, 0.010)
    other = own_stats("b", requests_per_s={"202": 30.0}, latency_ms={"p50": 20.0, "p99": 90.0}, queue_lag=5,
                      totals={"requests": {"202": 300}}, subscribers=2)
    t.receive(other, now=10.0)
    t.receive({**other, "process": "a"}, now=10.0)  # its own message, heard back: ignored
    assert t.listening  # another process has subscribers: frames are built for the relay
    stats = t.roll_window(1.0, now=11.0)
    assert stats["processes"] == 2
    assert stats["requests_per_s"] == {"202": 31.0} and stats["queue_lag"] == 5 and stats["subscribers"] == 2
    assert stats["latency_ms"]["p99"] == 90.0 and 10.0 < stats["latency_ms"]["p50"] < 20.0
    assert stats["totals"]["requests"] == {"202": 301}
    later = t.roll_window(1.0, now=13.5)  # b last heard 3.5 s ago: no longer reporting
    assert later["processes"] == 1 and not t.listening


async def test_frames_of_other_processes_reach_subscribers_here() -> None:
    t = hub(process="a")
    with t.subscribe() as sub:
        t.receive({"type": "batch", "process": "b", "ts": "x", "frames": [
            {"type": "booking", "event_id": "e1", "id": "b9", "user_id": "u", "status": "held", "process": "b"}]})
        t.flush()
        (frame,) = await next_frames(sub)
    assert frame["process"] == "b" and "id" not in frame and "user_id" not in frame


def test_sum_stats_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        sum_stats([])


def test_metrics_come_from_the_same_counters() -> None:
    t = hub()
    for _ in range(3):
        t.record_request(202, 0.003, "POST /api/book-async")
    t.booking(booking(1))
    t.admission("sold_out", "e1", 2)
    t.stored("conflict", "hold", "e1", ["b1"])
    t.lock("acquired", "e1", ["A"], "o", 3)
    t.hold_expired(booking(2))
    families = {f.name: f for f in text_string_to_metric_families(t.metrics_text().decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("ticketblitz_http_requests_total", (("code", "202"), ("route", "POST /api/book-async")))] == 3
    assert value[("ticketblitz_http_request_duration_seconds_count", (("route", "POST /api/book-async"),))] == 3
    assert value[("ticketblitz_booking_decisions_total", (("status", "held"),))] == 1
    assert value[("ticketblitz_admissions_total", (("verdict", "sold_out"),))] == 1
    assert value[("ticketblitz_store_writes_total", (("action", "conflict"), ("op", "hold")))] == 1
    assert value[("ticketblitz_lock_events_total", (("action", "acquired"),))] == 1
    assert value[("ticketblitz_holds_expired_total", ())] == 1
    assert families["ticketblitz_http_request_duration_seconds"].type == "histogram"
    t.record_request(202, 0.003, "POST /api/book-async")  # synced again: deltas only, never twice
    again = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(t.metrics_text().decode()) for s in f.samples}
    assert again[("ticketblitz_http_requests_total", (("code", "202"), ("route", "POST /api/book-async")))] == 4


def test_latencies_observed_per_bucket_equal_observing_each_answer() -> None:
    """`Metrics.observe` counts a tick's latencies per bucket and adds them at once: the histogram it
    exposes is the one `Histogram.observe` would give for each answer, edges of buckets included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from ticketblitz.telemetry.metrics import LATENCY_BUCKETS, Metrics

    values = [0.0, 0.0004, LATENCY_BUCKETS[0], LATENCY_BUCKETS[3], 0.0123, LATENCY_BUCKETS[-1], 99.0, 1e-9]
    metrics = Metrics()
    metrics.observe("GET /x", values[:3])
    metrics.observe("GET /x", values[3:])
    registry = CollectorRegistry()
    each = Histogram("ticketblitz_http_request_duration_seconds", "Time to answer HTTP requests, by route template.",
                     ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    for v in values:
        each.labels("GET /x").observe(v)

    def lines(text: bytes) -> list[str]:
        return sorted(line for line in text.decode().splitlines()
                      if line.startswith("ticketblitz_http_request_duration_seconds_") and "_created" not in line)

    assert metrics.registry is not None
    ours = lines(generate_latest(metrics.registry))
    assert ours and ours == lines(generate_latest(registry))
    assert 'ticketblitz_http_request_duration_seconds_count{route="GET /x"} 8.0' in ours
