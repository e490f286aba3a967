"""The telemetry hub's pure rules: coalescing seat changes, the per-tick cap, what an audience sees,
encoding a tick as one websocket message, and summing the stats of several processes. No I/O, no clock."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

Frame = dict[str, Any]

# Members only admin subscribers see: who booked (booking ids, user ids, lock owners). Secrets are never
# put in a frame at all; "secret" is stripped for everyone all the same.
PRIVATE_MEMBERS = frozenset({"id", "booking_id", "booking_ids", "user_id", "owner", "owners", "secret"})
SECRET_MEMBERS = frozenset({"secret"})
STATS_FRESH_S = 3.0  # a process whose last stats are older than this no longer counts as reporting


def iso_time(ts: float) -> str:
    """RFC 3339 with milliseconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def coalesce_seats(changes: Mapping[tuple[str, str], str]) -> list[Frame]:
    """One `seat` frame per (event, status) from the last status of each seat changed in a tick; the
    groups in the order in which their first seat appears."""
    groups: dict[tuple[str, str], list[str]] = {}
    for (event_id, seat), status in changes.items():
        groups.setdefault((event_id, status), []).append(seat)
    return [{"type": "seat", "event_id": event_id, "status": status, "seats": seats, "seat": seats[0]}
            for (event_id, status), seats in groups.items()]


def audience_frames(frames: Iterable[Frame], admin: bool, event_filter: str | None) -> list[Frame]:
    """What one audience sees of a tick: frames of its event (frames naming no event go to everyone),
    without the private members unless admin, never a secret."""
    hidden = SECRET_MEMBERS if admin else PRIVATE_MEMBERS
    out: list[Frame] = []
    for frame in frames:
        if event_filter is not None and frame.get("event_id", event_filter) != event_filter:
            continue
        if hidden.isdisjoint(frame):
            out.append(frame)
        else:
            out.append({k: v for k, v in frame.items() if k not in hidden})
    return out


def encode_message(frames: list[Frame], ts: str) -> str:
    """One websocket text message for a tick's frames: the bare frame when alone, else a `batch`."""
    if len(frames) == 1:
        return orjson.dumps(frames[0]).decode()
    return orjson.dumps({"type": "batch", "ts": ts, "frames": frames}).decode()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of sorted seconds, in milliseconds; None when there are none."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index] * 1000, 2)


def rates(now: Mapping[str, int], before: Mapping[str, int], window: float) -> dict[str, float]:
    """Per-second rates of the counters that moved between two readings."""
    return {k: round((v - before.get(k, 0)) / window, 1) for k, v in sorted(now.items()) if v != before.get(k, 0)}


_SUMMED_MAPS = ("requests_per_s", "decisions_per_s", "admissions_per_s", "queue_per_s", "locks_per_s", "store_per_s")
_SUMMED_NUMBERS = ("locks_contended_per_s", "queue_lag", "holds_expired", "holds_expired_per_s", "frames_dropped",
                   "subscribers", "joins_per_s", "admits_per_s")


def _add(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for k, v in other.items():
        into[k] = round(into.get(k, 0) + v, 1) if isinstance(v, float) else into.get(k, 0) + v


def fresh_stats(stats: Mapping[str, tuple[Frame, float]], now: float, fresh_s: float = STATS_FRESH_S) -> list[Frame]:
    """The latest stats of each process heard from within `fresh_s` seconds (process -> (frame, when))."""
    return [frame for frame, seen in stats.values() if now - seen <= fresh_s]


def sum_stats(frames: list[Frame]) -> Frame:
    """The cluster's stats from each reporting process's own: rates, lags, counts and totals summed;
    p99 latency the worst of the processes, p50 weighted by each process's answers in its window.
    The first frame gives `ts` and `window_s`."""
    if not frames:
        raise ValueError("sum_stats: no stats to sum")
    first = frames[0]
    out: Frame = {"type": "stats", "ts": first["ts"], "window_s": first["window_s"], "processes": len(frames)}
    for name in _SUMMED_MAPS:
        summed: dict[str, Any] = {}
        for f in frames:
            _add(summed, f.get(name, {}))
        out[name] = dict(sorted(summed.items()))
    for name in _SUMMED_NUMBERS:
        total = sum(f.get(name, 0) or 0 for f in frames)
        out[name] = round(total, 1) if isinstance(total, float) else total
    p99s = [f["latency_ms"]["p99"] for f in frames if f.get("latency_ms", {}).get("p99") is not None]
    weighted = [(f["latency_ms"]["p50"], sum(f.get("requests_per_s", {}).values()) or 1.0)
                for f in frames if f.get("latency_ms", {}).get("p50") is not None]
    weight = sum(w for _, w in weighted)
    out["latency_ms"] = {"p50": round(sum(p * w for p, w in weighted) / weight, 2) if weighted else None,
                         "p99": max(p99s) if p99s else None}
    totals: dict[str, dict[str, int]] = {}
    for f in frames:
        for family, counts in f.get("totals", {}).items():
            _add(totals.setdefault(family, {}), counts)
    out["totals"] = {family: dict(sorted(counts.items())) for family, counts in totals.items()}
    # every process ticks the same lines: the line's length is the largest report, not their sum
    out["queue_waiting"] = max((f.get("queue_waiting", 0) or 0 for f in frames), default=0)
    return out
