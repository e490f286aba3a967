"""The burst: one connection per fan, all released at once, each sending ONE request and reading the
whole answer; then the counts, latencies and socket errors of what came back."""

from __future__ import annotations

import math
import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import trio

from .client import ProtocolError, connect, read_response, socket_error_kind


class FanRequests(Protocol):
    """What a burst sends: `clients` fans, each one request (a flash `Scenario`, or plain mode's)."""

    @property
    def clients(self) -> int: ...

    def request_for(self, fan: int, event_id: str, port: int) -> bytes: ...


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Tally:
    """Live counts of one run, updated by the run as things happen and read by the progress reporters
    (a live bar, JSON lines for the server). Counting costs a few additions per fan."""

    phase: str = "setup"  # setup | connecting | burst | deciding | verifying | done
    users: int = 0
    event_id: str | None = None
    connected: int = 0
    sent: int = 0
    answered: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, in the order the answers came
    accepted: int | None = None  # bookings the answers carried (known once the burst is over)
    decided: int = 0  # of those, no longer pending
    pending: int | None = None

    def percentile_ms(self, pct: float) -> float | None:
        return percentile_ms(sorted(self.latencies), pct)


@dataclass(slots=True)
class ClientResult:
    """One fan's outcome. `status` 0 means no answer; `error` then names the socket failure."""

    status: int = 0
    body: bytes = b""
    error: str | None = None
    latency: float | None = None  # seconds from the release to the complete response
    sent_at: float | None = None  # trio clock when the request was fully written
    done_at: float | None = None  # trio clock when the answer (or the failure) came


class Barrier:
    """Every fan checks in once connected (or failed); the release is one trio.Event set for all."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_arrived = trio.Event()
        self.release = trio.Event()
        self.released_at = math.inf
        self.deadline = math.inf  # per-request deadline, fixed at release

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()

    def open(self, answer_timeout: float) -> None:
        self.released_at = trio.current_time()
        self.deadline = self.released_at + answer_timeout
        self.release.set()


async def run_fan(port: int, raw: bytes, barrier: Barrier, connect_deadline: float, result: ClientResult,
                  tally: Tally) -> None:
    """Connect, wait for the release, send one request, read the full answer, close."""
    stream = None
    with trio.move_on_at(connect_deadline) as connecting:
        try:
            stream = await connect(port)
            tally.connected += 1
        except OSError as exc:
            result.error = socket_error_kind("connect", exc)
    if connecting.cancelled_caught:
        result.error = "connect_timeout"
    barrier.arrive()
    if stream is None:
        result.done_at = trio.current_time()
        return
    async with stream:
        await barrier.release.wait()
        phase = "send"
        with trio.move_on_at(barrier.deadline) as answering:
            try:
                await stream.send_all(raw)
                result.sent_at = trio.current_time()
                tally.sent += 1
                phase = "receive"
                response = await read_response(stream)
            except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                result.error = socket_error_kind(phase, exc)
            else:
                result.status, result.body = response.status, response.body
                result.latency = trio.current_time() - barrier.released_at
                tally.answered += 1
                tally.by_code[str(response.status)] += 1
                tally.latencies.append(result.latency)
        if answering.cancelled_caught:
            result.error = f"{phase}_timeout"
        result.done_at = trio.current_time()


@dataclass(slots=True)
class BurstRun:
    results: list[ClientResult]
    connect_seconds: float
    released_at: float  # trio clock
    ended_at: float  # trio clock: the last answer or failure
    cpu_seconds: float  # driver CPU spent from the release to the end of the burst


async def run_burst(scenario: FanRequests, port: int, event_id: str, connect_timeout: float,
                    answer_timeout: float, tally: Tally | None = None) -> BurstRun:
    """Open every connection concurrently, release all fans at once, wait for every answer."""
    raws = [scenario.request_for(i, event_id, port) for i in range(scenario.clients)]
    results = [ClientResult() for _ in raws]
    tally = tally if tally is not None else Tally(users=scenario.clients)
    tally.phase = "connecting"
    barrier = Barrier(scenario.clients)
    started = trio.current_time()
    connect_deadline = started + connect_timeout
    async with trio.open_nursery() as nursery:
        for raw, result in zip(raws, results, strict=True):
            nursery.start_soon(run_fan, port, raw, barrier, connect_deadline, result, tally)
        await barrier.all_arrived.wait()  # bounded: every connect gives up at connect_deadline
        connect_seconds = trio.current_time() - started
        cpu_before = cpu_seconds()
        tally.phase = "burst"
        barrier.open(answer_timeout)
    cpu_after = cpu_seconds()
    ended = max((r.done_at for r in results if r.done_at is not None), default=barrier.released_at)
    return BurstRun(results, connect_seconds, barrier.released_at, max(ended, barrier.released_at),
                    cpu_after - cpu_before)


def booking_of(body: Any) -> dict[str, Any] | None:
    """The booking in a 2xx body: the body itself (/api/...), or its `booking` member (compat routes)."""
    if isinstance(body, dict):
        inner = body.get("booking", body)
        if isinstance(inner, dict) and "id" in inner:
            return inner
    return None


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is empty or not JSON (counted, never fatal, in a burst)."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def percentile_ms(sorted_seconds: list[float], pct: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_seconds:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))
    return round(sorted_seconds[rank - 1] * 1000, 1)


@dataclass(slots=True)
class BurstSummary:
    clients: int
    connected: int
    connect_seconds: float
    burst_seconds: float
    sent: int  # requests fully written
    answered: int
    requests_per_second: float
    send_spread_ms: float | None  # how long after the release the last request was fully written
    statuses: dict[str, int]
    problem_codes: dict[str, int]
    latency_ms: dict[str, float | None]
    socket_errors: dict[str, int]
    success_without_booking: int  # 2xx answers whose body carried no booking object
    driver_cpu_burst_seconds: float
    driver_cpu_per_request_us: float | None


def summarize_burst(run: BurstRun) -> tuple[BurstSummary, list[dict[str, Any]]]:
    """Counts, latencies and errors of the burst, plus the bookings its 2xx answers carried."""
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    bookings: list[dict[str, Any]] = []
    without_booking = 0
    for result in run.results:
        if result.error is not None:
            errors[result.error] += 1
            continue
        statuses[str(result.status)] += 1
        body = parse_json(result.body)
        if result.status >= 400:
            codes[body.get("code", "?") if isinstance(body, dict) else "?"] += 1
        elif (booking := booking_of(body)) is not None:
            bookings.append(booking)
        else:
            without_booking += 1  # a 2xx we cannot follow up: verification must not pass silently
    latencies = sorted(r.latency for r in run.results if r.latency is not None)
    sent = [r.sent_at for r in run.results if r.sent_at is not None]
    answered = len(latencies)
    burst_seconds = run.ended_at - run.released_at
    summary = BurstSummary(
        clients=len(run.results),
        connected=sum(1 for r in run.results if not (r.error or "").startswith("connect_")),
        connect_seconds=round(run.connect_seconds, 3),
        burst_seconds=round(burst_seconds, 3),
        sent=len(sent),
        answered=answered,
        requests_per_second=round(answered / burst_seconds, 1) if burst_seconds > 0 else 0.0,
        send_spread_ms=round((max(sent) - run.released_at) * 1000, 1) if sent else None,
        statuses=dict(sorted(statuses.items())),
        problem_codes=dict(codes.most_common()),
        latency_ms={f"p{p}": percentile_ms(latencies, p) for p in (50, 90, 99)}
        | {"max": round(latencies[-1] * 1000, 1) if latencies else None},
        socket_errors=dict(errors.most_common()),
        success_without_booking=without_booking,
        driver_cpu_burst_seconds=round(run.cpu_seconds, 3),
        driver_cpu_per_request_us=round(run.cpu_seconds / len(run.results) * 1e6, 1) if run.results else None,
    )
    return summary, bookings
