"""After the burst: long-poll every booking still pending until it is decided (or the deadline passes)."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from .burst import Tally, parse_json
from .client import KeepAliveConnection, ProtocolError, build_request, socket_error_kind

LONG_POLL_MAX = 30  # the API's limit for ?wait=


@dataclass(slots=True)
class DecideResult:
    undecided: list[str]  # still pending (or never read) at the deadline
    time_to_all_decided: float | None  # seconds from the end of the burst to the last decision seen
    server_last_decision: float | None  # same, from the bookings' updated_at (server clock)
    polls: int
    poll_errors: dict[str, int]


def wall_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def await_decisions(port: int, pending: list[str], burst_end: float, burst_end_wall: float,
                          concurrency: int, decide_timeout: float, token: str, tally: Tally | None = None,
                          ) -> tuple[DecideResult, dict[str, dict[str, Any]]]:
    """Long-poll every pending booking (`?wait=`) from `concurrency` keep-alive connections until each
    is decided or the deadline passes; returns the summary and the last booking object seen per id.
    A booking still pending after one poll goes to the back of the line, so one slow booking never
    starves the others."""
    line = deque(pending)
    final: dict[str, dict[str, Any]] = {}
    seen_at: dict[str, float] = {}
    errors: Counter[str] = Counter()
    polls = 0
    deadline = trio.current_time() + decide_timeout

    async def poller() -> None:
        nonlocal polls
        conn = KeepAliveConnection(port)
        try:
            while line and trio.current_time() < deadline:
                booking_id = line.popleft()
                wait = max(0, min(LONG_POLL_MAX, math.floor(deadline - trio.current_time())))
                # reading a booking needs its secret or the admin token (API 1.1)
                raw = build_request("GET", f"/api/bookings/{booking_id}?wait={wait}", port, token=token)
                polls += 1
                try:
                    with trio.fail_after(wait + 10):
                        response = await conn.request(raw)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, ProtocolError) as exc:
                    errors["timeout" if isinstance(exc, trio.TooSlowError) else socket_error_kind("poll", exc)] += 1
                    line.append(booking_id)
                    await conn.aclose()
                    await trio.sleep(0.1)  # a failing server must not turn this loop into a busy spin
                    continue
                booking = parse_json(response.body) if response.status == 200 else None
                if not isinstance(booking, dict) or "status" not in booking:
                    errors[f"status_{response.status}"] += 1
                    line.append(booking_id)
                    await trio.sleep(0.1)  # same: a 404/503 answer must not become a tight loop
                    continue
                final[booking_id] = booking
                if booking["status"] == "pending":
                    line.append(booking_id)
                else:
                    seen_at[booking_id] = trio.current_time()
                    if tally is not None:
                        tally.decided += 1
                        tally.pending = (tally.pending or 1) - 1
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, len(pending))):
            nursery.start_soon(poller)
    undecided = [b for b in pending if b not in seen_at]
    server_times = [wall_seconds(final[b]["updated_at"]) for b in seen_at]
    return DecideResult(
        undecided=undecided,
        time_to_all_decided=round(max(seen_at.values()) - burst_end, 3) if seen_at and not undecided else None,
        server_last_decision=round(max(server_times) - burst_end_wall, 3) if server_times else None,
        polls=polls,
        poll_errors=dict(errors),
    ), final
