"""One whole run (event, burst, decisions, verification) and its report: the text summary that
bench/flash.py prints, the JSON document, and the members of the telemetry spec's `loadgen` frame."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import trio

from .burst import BurstSummary, Tally, cpu_seconds, run_burst, summarize_burst
from .client import KeepAliveConnection, fetch_json, parse_target
from .decisions import DecideResult, await_decisions
from .scenario import Scenario, create_event, event_name, fresh_event
from .verify import Verification, verify

FD_MARGIN = 64  # descriptors for stdio, the setup connection and trio's own wakeup pipes


@dataclass(slots=True)
class Report:
    scenario: str
    route: str
    url: str
    event_id: str
    seats: int
    quantity: int
    burst: BurstSummary
    decisions: DecideResult | None
    verification: Verification
    driver_cpu_total_seconds: float
    passed: bool = False
    exit_reasons: list[str] = field(default_factory=list)


def raise_fd_limit(needed: int) -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (one descriptor per fan); fail early if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise ValueError(f"{needed} file descriptors needed but the hard limit is {soft} (raise `ulimit -Hn`)")
    return soft


@dataclass(slots=True)
class RunOptions:
    """One run's settings (both command lines map their flags to this)."""

    url: str
    admin_token: str
    scenario: Scenario
    event_id: str | None = None  # use this fresh event instead of creating one
    connect_timeout: float = 10.0
    answer_timeout: float = 60.0
    decide_timeout: float = 60.0
    poll_concurrency: int = 200
    log: Callable[[str], None] | None = None  # one-line notes on the way (stderr), or None


async def run_flash_sale(options: RunOptions, tally: Tally | None = None,
                         on_started: Callable[[dict[str, Any]], None] | None = None) -> Report:
    """Create (or check) the event, burst, wait for decisions, verify. `tally` follows the run live;
    `on_started` is called with the event once it is there, before the burst."""
    scenario = options.scenario
    port = parse_target(options.url).port
    tally = tally if tally is not None else Tally()
    tally.users = scenario.clients
    note = options.log or (lambda _: None)
    setup = KeepAliveConnection(port)
    with trio.fail_after(options.connect_timeout + 30):
        if options.event_id is not None:
            event = await fresh_event(setup, port, options.admin_token, options.event_id, scenario.seats)
        else:
            name = event_name(scenario.kind, scenario.route, scenario.clients, scenario.seats)
            event = await create_event(setup, port, options.admin_token, name, scenario.seats)
    await setup.aclose()  # idle during the burst: the server would time it out anyway
    tally.event_id = event["id"]
    if on_started is not None:
        on_started(event)
    note(f"event {event['id']}: {scenario.seats} seats; opening {scenario.clients} connections ...")

    burst_run = await run_burst(scenario, port, event["id"], options.connect_timeout, options.answer_timeout, tally)
    burst_end_wall = time.time() - (trio.current_time() - burst_run.ended_at)
    burst, answered_bookings = summarize_burst(burst_run)

    pending = [b["id"] for b in answered_bookings if b["status"] == "pending"]
    tally.accepted = len(answered_bookings)
    tally.decided = len(answered_bookings) - len(pending)
    tally.pending = len(pending)
    decisions = None
    bookings = {b["id"]: b for b in answered_bookings}
    if pending:
        tally.phase = "deciding"
        note(f"burst done; waiting for {len(pending)} decisions ...")
        decisions, final = await await_decisions(port, pending, burst_run.ended_at, burst_end_wall,
                                                 options.poll_concurrency, options.decide_timeout,
                                                 options.admin_token, tally)
        bookings.update(final)

    tally.phase = "verifying"
    with trio.fail_after(60):
        final_event = await fetch_json(setup, port, f"/api/events/{event['id']}")
        seats = (await fetch_json(setup, port, f"/api/events/{event['id']}/seats"))["seats"]
    await setup.aclose()
    verification = verify(final_event, seats, bookings, decisions.undecided if decisions else [],
                          scenario.seats, burst)
    tally.phase = "done"
    return Report(
        scenario=scenario.kind, route=scenario.route, url=options.url, event_id=event["id"], seats=scenario.seats,
        quantity=scenario.quantity, burst=burst, decisions=decisions, verification=verification,
        driver_cpu_total_seconds=round(cpu_seconds(), 3),
    )


def judge(report: Report, allow_socket_errors: bool) -> None:
    """Pass only when the invariants hold and (unless allowed) no socket failed."""
    if not report.verification.ok:
        report.exit_reasons.append("verification failed")
    if report.burst.socket_errors and not allow_socket_errors:
        report.exit_reasons.append("socket errors (use --allow-socket-errors to accept them)")
    report.passed = not report.exit_reasons


# ====================================================================== output


def _counter_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def render(report: Report) -> str:
    """The human summary."""
    b, v, d = report.burst, report.verification, report.decisions
    lat = b.latency_ms
    lines = [
        f"TicketBlitz {report.scenario}: route {report.route}, event {report.event_id} ({report.seats} seats), "
        f"{b.clients} clients" + (f", quantity {report.quantity}" if report.route == "bookings" else ""),
        f"connect       {b.connected}/{b.clients} connected in {b.connect_seconds:.2f} s",
        f"burst         {b.burst_seconds:.2f} s, {b.answered} answered, {b.requests_per_second:.0f} req/s"
        + (f"; all sent within {b.send_spread_ms} ms of the release" if b.send_spread_ms is not None else ""),
        f"statuses      {_counter_text(b.statuses)}",
        f"codes         {_counter_text(b.problem_codes)}",
        f"latency ms    p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"socket errors {_counter_text(b.socket_errors)}",
        f"accepted      {v.accepted}, held {v.held} ({v.held_seats} seats), rejected after queueing "
        f"{sum(v.rejected.values())} ({_counter_text(v.rejected)}), still pending {v.still_pending}",
        f"event counts  {_counter_text(v.counts)} (seat map {_counter_text(v.seat_map)})",
        f"oversold      {v.oversold}",
    ]
    if d is not None:
        decided = (f"all in {d.time_to_all_decided:.3f} s after the burst" if d.time_to_all_decided is not None
                   else f"NOT all: {len(d.undecided)} still pending")
        server = f"{d.server_last_decision:+.3f} s" if d.server_last_decision is not None else "none seen"
        lines.append(f"decided       {decided} (server's last decision {server}; "
                     f"{d.polls} polls, poll errors {_counter_text(d.poll_errors)})")
    else:
        lines.append("decided       nothing was pending after the burst")
    lines.append(f"driver CPU    {report.driver_cpu_total_seconds:.2f} s total, {b.driver_cpu_burst_seconds:.2f} s "
                 f"during the burst ({b.driver_cpu_per_request_us} us/request)")
    lines.extend(f"warning       {w}" for w in v.warnings)
    lines.extend(f"FAILED check  {c.name}: {c.detail}" for c in v.checks if not c.ok)
    lines.append(f"verify        {'OK' if v.ok else 'FAILED'}")
    lines.append(f"result        {'PASS' if report.passed else 'FAIL: ' + '; '.join(report.exit_reasons)}")
    return "\n".join(lines)


def write_json(report: Report, path: str) -> None:
    with open(path, "wb") as out:
        out.write(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2) + b"\n")


def decided_count(report: Report) -> tuple[int, int]:
    """(decided, pending) over the bookings the burst's answers carried."""
    pending = report.verification.still_pending
    return report.verification.accepted - pending, pending


def frame_members(report: Report) -> dict[str, Any]:
    """The `loadgen` frame's members for a finished run (see spec/telemetry.md)."""
    b = report.burst
    decided, pending = decided_count(report)
    return {"event_id": report.event_id, "users": b.clients, "seats": report.seats, "route": report.route,
            "sent": b.sent, "answered": b.answered, "by_code": b.statuses, "p50_ms": b.latency_ms["p50"],
            "p99_ms": b.latency_ms["p99"], "decided": decided, "pending": pending,
            "oversold": report.verification.oversold}


def time_to_all_decided(report: Report) -> float | None:
    """Seconds from the release of the fans until every booking was decided (None: not all were)."""
    d = report.decisions
    if d is None:
        return report.burst.burst_seconds
    if d.time_to_all_decided is None:
        return None
    return round(report.burst.burst_seconds + d.time_to_all_decided, 3)


def report_json(report: Report) -> dict[str, Any]:
    """The one JSON document of `ticketblitz flash-sale --json`: the frame's members first, then everything."""
    return {**frame_members(report), "verified": report.verification.ok, "passed": report.passed,
            "time_to_all_decided_s": time_to_all_decided(report), **asdict(report)}
