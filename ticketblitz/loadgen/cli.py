"""`ticketblitz flash-sale`: the load generator from the terminal (a live bar and a summary table), for
programs (`--json`), and for the server's flash-sale button (`--json-progress`, one JSON line per step)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
import trio

from .burst import Tally
from .client import ALLOWED_HOST, ProtocolError, parse_target
from .report import (
    FD_MARGIN,
    Report,
    RunOptions,
    frame_members,
    judge,
    raise_fd_limit,
    report_json,
    run_flash_sale,
    time_to_all_decided,
)
from .scenario import MAX_CLIENTS, MAX_SEATS, ROUTES, Scenario, SetupError, seat_layout
from .waiting_room import (
    MAX_CONNECTIONS,
    MAX_QUEUE_FANS,
    MODES,
    SaleOptions,
    SaleReport,
    SaleTally,
    WaitingRoomSettings,
    judge_sale,
    run_sale,
)
from .waiting_room import report_json as sale_report_json

PROG = "ticketblitz flash-sale"
# what a run may fail with (the server gone, a deadline, an answer that is not HTTP), besides SetupError
RUN_ERRORS = (SetupError, OSError, RuntimeError, ProtocolError, trio.TooSlowError)
TOKEN_ENV = "TICKETBLITZ_ADMIN_TOKEN"
PROGRESS_EVERY = 0.5  # seconds between --json-progress lines
BAR_EVERY = 0.1  # seconds between redraws of the live bar
POLL_CONCURRENCY = 200

DESCRIPTION = f"""Run a flash sale against a TicketBlitz server on this machine: create a fresh event of
--seats seats, open one TCP connection per fan (--users), release every fan at the same moment (one
booking request each), wait until every accepted booking is decided, then read the event back and verify
API.md's invariants (counts agree with the seat map and the bookings; oversold = 0).

Only http://{ALLOWED_HOST}:PORT (or localhost) is accepted: a load generator that could be aimed at any
host would be a denial-of-service tool, so this one can only load the machine it runs on. It is bounded
too: at most {MAX_CLIENTS:,} fans, and every phase has a deadline."""

EPILOG = """exit status: 0 when the verification passed (and no socket failed, unless --allow-socket-errors),
1 when it did not, 2 when the run could not start (bad flags, no or a wrong admin token, no server).

With --waiting-room the fresh event has a waiting room (docs/API.md, "Waiting room (TicketBlitz 1.2)") and
the fans share a bounded pool of keep-alive connections (--connections) instead of one connection each:
each fan arrives within --arrival-seconds, solves the proof of work when the event asks for one, joins the
line (POST /api/events/{id}/queue), waits for its turn (long polls of GET /api/queue/{ticket}?wait=N, one
shared read of the public line), books one seat with its Queue-Pass when admitted, waits for the decision
and confirms (or, for the --abandon fraction, lets the hold lapse). The report adds the joins, the time
until every ticket is final, the passes issued, the order check (admitted positions are exactly 1..k) and
fairness. --timeout is then the bound on the whole line (from the first arrival).

examples:
  TICKETBLITZ_ADMIN_TOKEN=dev ticketblitz flash-sale --users 10000 --seats 1000
  ticketblitz flash-sale --users 300 --seats 50 --route book-secure --json
  ticketblitz flash-sale --waiting-room --users 50000 --seats 1000 --admit-per-second 2000"""


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: must be between {low:g} and {high:g}")
        return value

    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `flash-sale` to the `ticketblitz` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "flash-sale", help="run a bounded flash sale against a server on this machine and verify it",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=_bounded(int, 1, MAX_QUEUE_FANS), default=10_000,
                   help=f"fans, each on its own connection with one request (1..{MAX_CLIENTS}, default 10000; "
                        f"with --waiting-room 1..{MAX_QUEUE_FANS} on pooled connections; no environment variable)")
    p.add_argument("--seats", type=_bounded(int, 1, MAX_SEATS), default=1_000,
                   help="seats of the fresh event, one section of rows x seats_per_row (each <= 1000) holding "
                        "exactly this many, so a prime above 1000 is refused (default 1000; no environment variable)")
    p.add_argument("--route", choices=ROUTES, default="bookings",
                   help="bookings = POST /api/events/{id}/bookings, one best-available seat each; book-async / "
                        "book-secure / book-naive = the original's routes, fan i asking for seatNumber i mod "
                        "seats + 1 (default bookings; no environment variable)")
    p.add_argument("--url", default=f"http://{ALLOWED_HOST}:8000",
                   help=f"the server: http://{ALLOWED_HOST}:PORT or http://localhost:PORT only, any other host is "
                        f"refused (default http://{ALLOWED_HOST}:8000; no environment variable)")
    p.add_argument("--admin-token", default=None,
                   help=f"the server's admin token, to create the event and read the bookings (default: env "
                        f"{TOKEN_ENV})")
    p.add_argument("--event-id", default=None,
                   help="use this existing event instead of creating one; it must have exactly --seats seats, "
                        "all available (no environment variable)")
    p.add_argument("--connect-timeout", type=_bounded(float, 0.1, 60), default=10.0,
                   help="seconds for all connections to be up before the release (default 10)")
    p.add_argument("--timeout", type=_bounded(float, 0.1, 600), default=60.0,
                   help="seconds from the release for every answer (default 60)")
    p.add_argument("--decide-timeout", type=_bounded(float, 1, 600), default=60.0,
                   help="seconds after the burst for every accepted booking to be decided (default 60)")
    p.add_argument("--allow-socket-errors", action="store_true",
                   help="exit 0 despite socket errors (refused, reset, timeouts) when the verification passed")
    room = p.add_argument_group("waiting room (TicketBlitz 1.2; these flags need --waiting-room)")
    room.add_argument("--waiting-room", action="store_true",
                      help="the event gets a waiting room; every fan joins the line, waits for a pass, then books")
    room.add_argument("--queue-mode", choices=MODES, default="fifo", help="the line's mode (default fifo)")
    room.add_argument("--admit-per-second", type=_bounded(int, 1, 100_000), default=1000,
                      help="passes per second at most (default 1000)")
    room.add_argument("--pass-seconds", type=_bounded(int, 30, 3600), default=30,
                      help="how long a pass is valid (default 30)")
    room.add_argument("--challenge-bits", type=_bounded(int, 0, 24), default=0,
                      help="proof of work per join, in leading zero bits of SHA-256 (default 0: none; each "
                           "fan solves its own, about 2^bits hashes, in this process)")
    room.add_argument("--sale-starts-in", type=_bounded(float, 0, 600), default=None,
                      help="seconds from the event's creation to sale_starts_at (default: open at once)")
    room.add_argument("--arrival-seconds", type=_bounded(float, 0, 600), default=1.0,
                      help="the fans arrive evenly spread over this many seconds, in random order (default 1)")
    room.add_argument("--connections", type=_bounded(int, 1, MAX_CONNECTIONS), default=1000,
                      help="keep-alive connections the fans share (default 1000)")
    room.add_argument("--abandon", type=_bounded(float, 0, 1), default=0.0,
                      help="fraction of fans with a held booking who never confirm it (default 0)")
    room.add_argument("--hold-seconds", type=_bounded(int, 5, 3600), default=None,
                      help="the event's hold_seconds (default 3600; 10 when --abandon is set, so holds lapse)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON report on stdout instead of the table")
    out.add_argument("--json-progress", action="store_true",
                     help='print JSON lines on stdout: {"state": "started" | "progress" | "finished" | "failed", '
                          "...} with the members of the telemetry `loadgen` frame (what the server relays)")
    return p


# ---------------------------------------------------------------------- JSON lines


def _line(state: str, **members: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"state": state, **members}) + b"\n")
    sys.stdout.flush()


def tally_members(tally: Tally, options: RunOptions) -> dict[str, Any]:
    """The `loadgen` frame's members while a run is under way."""
    return {"event_id": tally.event_id, "users": options.scenario.clients, "seats": options.scenario.seats,
            "route": options.scenario.route, "sent": tally.sent, "answered": tally.answered,
            "by_code": dict(sorted(tally.by_code.items())), "p50_ms": tally.percentile_ms(50),
            "p99_ms": tally.percentile_ms(99), "decided": tally.decided, "pending": tally.pending}


def failure_text(report: Report) -> str:
    failed = [f"{c.name}: {c.detail}" for c in report.verification.checks if not c.ok]
    return "; ".join(report.exit_reasons + failed)


async def _json_progress(tally: Tally, options: RunOptions) -> None:
    last: dict[str, Any] | None = None
    while True:
        await trio.sleep(PROGRESS_EVERY)
        members = tally_members(tally, options)
        if tally.event_id is not None and members != last:
            _line("progress", **members)
            last = members


# ---------------------------------------------------------------------- the terminal


async def _live_bar(tally: Tally, options: RunOptions) -> None:
    """A rich progress display on stderr, redrawn by this task (no refresh thread)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    users = options.scenario.clients
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), auto_refresh=False) as bar:
        connected = bar.add_task("connected", total=users, note="")
        answered = bar.add_task("answered", total=users, note="")
        decided = bar.add_task("decided", total=None, note="")
        try:
            while True:
                p50, p99 = tally.percentile_ms(50), tally.percentile_ms(99)
                bar.update(connected, completed=tally.connected, note=tally.phase)
                bar.update(answered, completed=tally.answered,
                           note=f"p50 {p50} ms, p99 {p99} ms" if p50 is not None else "")
                bar.update(decided, completed=tally.decided, total=tally.accepted,
                           note=f"{tally.pending} pending" if tally.pending is not None else "")
                bar.refresh()
                await trio.sleep(BAR_EVERY)
        finally:
            bar.update(connected, completed=tally.connected, note="")
            bar.update(decided, completed=tally.decided, total=tally.accepted, note="")
            bar.refresh()


def summary_table(report: Report) -> Any:
    """The summary as a rich Table."""
    from rich.table import Table

    b, v = report.burst, report.verification
    lat = b.latency_ms
    decided = time_to_all_decided(report)
    table = Table(title=f"TicketBlitz flash sale: {b.clients:,} fans, {report.seats:,} seats, route {report.route}",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    codes = ", ".join(f"{code}: {n:,}" for code, n in b.statuses.items()) or "none"
    table.add_row("event", report.event_id)
    table.add_row("answers by code", codes)
    if b.problem_codes:
        table.add_row("problem codes", ", ".join(f"{code}: {n:,}" for code, n in b.problem_codes.items()))
    if b.socket_errors:
        table.add_row("socket errors", ", ".join(f"{kind}: {n:,}" for kind, n in b.socket_errors.items()))
    table.add_row("latency", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    table.add_row("burst", f"{b.answered:,} answered in {b.burst_seconds:.2f} s ({b.requests_per_second:,.0f} req/s)")
    table.add_row("time to all decided", f"{decided:.2f} s after the release" if decided is not None
                  else f"NOT all: {v.still_pending} still pending")
    table.add_row("bookings", f"{v.accepted:,} accepted, {v.held:,} held ({v.held_seats:,} seats of {report.seats:,}), "
                  f"{sum(v.rejected.values()):,} rejected after queueing")
    table.add_row("event counts", ", ".join(f"{k} {n:,}" for k, n in v.counts.items()))
    table.add_row("oversold", f"{v.oversold} ({'verified' if v.ok else 'VERIFICATION FAILED'})")
    for check in v.checks:
        if not check.ok:
            table.add_row("FAILED", f"{check.name}: {check.detail}")
    table.add_row("result", "PASS" if report.passed else "FAIL: " + "; ".join(report.exit_reasons))
    return table


# ---------------------------------------------------------------------- running


async def _main(options: RunOptions, mode: str) -> Report:
    tally = Tally(users=options.scenario.clients)

    def started(event: dict[str, Any]) -> None:
        if mode == "json-progress":
            _line("started", **tally_members(tally, options))

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        if mode == "json-progress":
            nursery.start_soon(_json_progress, tally, options)
        elif mode == "bar":
            nursery.start_soon(_live_bar, tally, options)
        try:
            report = await run_flash_sale(options, tally, started)
        except RUN_ERRORS as exc:  # raised after the nursery, so that it is not wrapped in a group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return report


def _fail(message: str, mode: str, options: RunOptions | None = None) -> int:
    if mode == "json-progress":
        scenario = options.scenario if options else None
        _line("failed", event_id=options.event_id if options else None,
              users=scenario.clients if scenario else None, seats=scenario.seats if scenario else None,
              route=scenario.route if scenario else None, error=message)
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """`ticketblitz flash-sale`: 0 verified, 1 not, 2 could not run."""
    mode = "json-progress" if args.json_progress else "json" if args.json else (
        "bar" if sys.stderr.isatty() else "notes")
    token = args.admin_token or os.environ.get(TOKEN_ENV, "")
    if getattr(args, "waiting_room", False):
        return run_waiting_room(args, mode, token)
    if args.users > MAX_CLIENTS:
        return _fail(f"argument --users: {args.users}: must be between 1 and {MAX_CLIENTS} (one connection "
                     "per fan; --waiting-room allows more on pooled connections)", mode)
    scenario = Scenario("flash", args.route, args.users, args.seats, 1)
    options = RunOptions(url=args.url, admin_token=token, scenario=scenario, event_id=args.event_id,
                         connect_timeout=args.connect_timeout, answer_timeout=args.timeout,
                         decide_timeout=args.decide_timeout, poll_concurrency=POLL_CONCURRENCY,
                         log=(lambda text: print(text, file=sys.stderr, flush=True)) if mode == "notes" else None)
    try:
        parse_target(args.url)
        seat_layout(args.seats)
        if not token:
            raise ValueError(f"no admin token: pass --admin-token or set {TOKEN_ENV} (the server prints "
                             "its token at start unless it was given one)")
        raise_fd_limit(args.users + POLL_CONCURRENCY + FD_MARGIN)
    except ValueError as exc:
        return _fail(str(exc), mode, options)
    try:
        report = trio.run(_main, options, mode)
    except SetupError as exc:
        return _fail(str(exc), mode, options)
    except ConnectionRefusedError:
        return _fail(f"nothing answers at {args.url} (start the server with `ticketblitz serve`)", mode, options)
    except RUN_ERRORS as exc:
        return _fail(f"could not run against {args.url}: {exc!r}", mode, options)
    judge(report, args.allow_socket_errors)
    if mode == "json-progress":
        members = frame_members(report)
        if report.passed:
            _line("finished", **members)
        else:
            _line("failed", **members, error=failure_text(report))
    elif mode == "json":
        sys.stdout.buffer.write(orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console().print(summary_table(report))
    return 0 if report.passed else 1


# ---------------------------------------------------------------------- --waiting-room


def sale_summary_table(report: SaleReport) -> Any:
    """The waiting-room run's summary as a rich Table."""
    from rich.table import Table

    table = Table(title=f"TicketBlitz flash sale: {report.fans:,} fans, {report.seats:,} seats, "
                        f"{'waiting room ' + str((report.settings or {}).get('mode')) if report.joins else 'direct'}",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in sale_rows(report):
        table.add_row(name, value)
    return table


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "none"


def sale_rows(report: SaleReport) -> list[tuple[str, str]]:
    """(name, value) lines of the summary: the table's rows, also the bench's markdown."""
    rows = [("event", f"{report.event_id} {report.settings or ''}"),
            ("arrivals", f"{report.arrivals['arrived']:,} fans sent their first request within "
                         f"{report.arrivals['spread_s']} s (scheduled {report.arrival_seconds:g} s; p99 late by "
                         f"{report.arrivals['late_p99_ms']} ms), {report.connections:,} connections")]
    j, t, a, o = report.joins, report.tickets, report.admission, report.order
    if j is not None and t is not None and a is not None and o is not None:
        rows += [
            ("joins", f"{j['answered']:,} answered: {_codes(j['by_code'])}"
                      + (f"; problems {_codes(j['problem_codes'])}" if j["problem_codes"] else "")),
            ("join answer", f"{j['per_second']:,} joins/s; p50 {j['answer_ms']['p50']} ms, p99 "
                            f"{j['answer_ms']['p99']} ms, max "
                            f"{j['answer_ms']['max']} ms (sent -> answered; from the scheduled arrival p99 "
                            f"{j['from_arrival_ms']['p99']} ms)"),
        ]
        if j["pow_tries"]:
            rows.append(("proof of work", f"{j['challenge_fetches']:,} challenges fetched, {j['pow_tries']:,} hashes, "
                                          f"{j['pow_seconds']:.2f} s of this process's CPU"))
        rows += [
            ("final states", f"{_codes(t['final_states'])} of {t['tickets']:,} tickets"),
            ("all final", (f"{t['time_to_all_final_s']} s after the first arrival (as the fans saw it; the public line "
                           f"read sold out at {t['line_empty_s']} s)") if t["all_final"]
             else "NOT every ticket reached a final state"),
            ("passes issued", f"{a['passes_issued']:,} (seats {report.seats:,}, lapsed holds "
                              f"{a.get('lapsed_holds', 0):,}); first {a['first_admission_s']} s after the first "
                              f"arrival; seen p50 {a['seen_after_issue_ms']['p50']} ms / p99 "
                              f"{a['seen_after_issue_ms']['p99']} ms after issue"),
            ("sold_out tickets", f"{a['sold_out_tickets']:,}"),
        ]
        if a.get("passes_beyond_seats") or a["admitted_refused_first"]:
            rows.append(("WARNING", f"{a.get('passes_beyond_seats')} passes beyond seats + lapsed holds; admitted "
                                    f"fans refused at their first booking: {_codes(a['admitted_refused_first'])}, "
                                    f"in the end (after retrying while the pass was valid): "
                                    f"{_codes(a['admitted_refused'])}"))
        rows += [
            ("order check", ("OK: " if o["ok"] else "FAILED: ") + o["detail"]
             + (f"; passes issued out of position order: {o['issue_inversions']} pairs" if o["checked"] else "")
             if o["checked"] else "not checked: " + o["detail"]),
        ]
    b = report.bookings
    rows += [
        ("bookings", f"{b['requests']:,} requests: {_codes(b['by_code'])}"
                     + (f"; problems {_codes(b['problem_codes'])}" if b["problem_codes"] else "")
                     + f"; answer p99 {b['answer_ms']['p99']} ms"),
        ("seats", f"{b['held']:,} held, {b['confirmed']:,} confirmed, {b['abandoned']:,} abandoned; bookings now "
                  f"{_codes(b['final_status'])}"),
        ("event counts", _codes(report.verification.counts)),
        ("fairness", f"a later fan beat an earlier one in {report.fairness['overtakes']:,} of "
                     f"{report.fairness['ordered_pairs']:,} (earlier, later) pairs = {report.fairness['fraction']:.6f}"
                     f" ({report.fairness['fraction_of_mixed']:.4f} of the pairs with one seat)"),
        ("oversold", f"{report.oversold} ({'verified' if report.verification.ok else 'VERIFICATION FAILED'})"),
        ("requests", f"{report.requests['total']:,} on {report.requests['connections_made']:,} connections; "
                     f"retried {_codes(report.requests['retried'])}; "
                     f"long polls cut {report.requests['long_polls_cut']:,}"
                     + (f"; {report.requests['line_reads']:,} reads of the public line, p50 "
                        f"{report.requests['line_read_ms']['p50']} ms / p99 {report.requests['line_read_ms']['p99']} ms"
                        if report.requests["line_reads"] else "")),
        ("driver", f"{report.driver_cpu_seconds:.1f} s CPU, {report.wall_seconds:.1f} s wall"),
    ]
    rows += [("FAILED", f"{c.name}: {c.detail}") for c in report.verification.checks if not c.ok]
    rows += [("probe", f"{'ok' if p.ok else 'FAILED'}: {p.name} ({p.detail})") for p in report.probes]
    if report.fan_errors:
        rows.append(("fan errors", _codes(report.fan_errors)))
    rows.append(("result", "PASS" if report.passed else "FAIL: " + "; ".join(report.exit_reasons)))
    return rows


async def _live_sale_bar(tally: SaleTally) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), auto_refresh=False) as bar:
        joined = bar.add_task("joined", total=tally.fans, note="")
        final = bar.add_task("final", total=tally.fans, note="")
        done = bar.add_task("done", total=tally.fans, note="")
        try:
            while True:
                m = tally.members()
                bar.update(joined, completed=tally.joined, note=f"p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms")
                bar.update(final, completed=tally.final, note=f"{tally.admitted} admitted, {tally.sold_out} sold out")
                bar.update(done, completed=tally.done, note=f"{tally.held} held, {tally.confirmed} confirmed")
                bar.refresh()
                await trio.sleep(BAR_EVERY)
        finally:
            bar.refresh()


async def _sale_progress(tally: SaleTally) -> None:
    last: dict[str, Any] | None = None
    while True:
        await trio.sleep(PROGRESS_EVERY)
        members = tally.members()
        if tally.event_id is not None and members != last:
            _line("progress", **members)
            last = members


async def _sale_main(options: SaleOptions, mode: str) -> SaleReport:
    tally = SaleTally(fans=options.fans)

    def started(event: dict[str, Any]) -> None:
        if mode == "json-progress":
            _line("started", **tally.members())

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        if mode == "json-progress":
            nursery.start_soon(_sale_progress, tally)
        elif mode == "bar":
            nursery.start_soon(_live_sale_bar, tally)
        try:
            report = await run_sale(options, tally, started)
        except RUN_ERRORS as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return report


def sale_options(args: argparse.Namespace, token: str) -> SaleOptions:
    settings = WaitingRoomSettings(mode=args.queue_mode, admit_per_second=args.admit_per_second,
                                   pass_seconds=args.pass_seconds, challenge_bits=args.challenge_bits,
                                   sale_starts_in=args.sale_starts_in)
    hold = args.hold_seconds if args.hold_seconds is not None else (10 if args.abandon else 3600)
    return SaleOptions(url=args.url, admin_token=token, fans=args.users, seats=args.seats, settings=settings,
                       event_id=args.event_id, connections=args.connections, arrival_seconds=args.arrival_seconds,
                       deadline_seconds=args.timeout, abandon=args.abandon, hold_seconds=hold,
                       log=(lambda text: print(text, file=sys.stderr, flush=True)) if mode_is_notes(args) else None)


def mode_is_notes(args: argparse.Namespace) -> bool:
    return not (args.json or args.json_progress) and not sys.stderr.isatty()


def run_waiting_room(args: argparse.Namespace, mode: str, token: str) -> int:
    """`ticketblitz flash-sale --waiting-room`: 0 verified, 1 not, 2 could not run."""
    options = sale_options(args, token)
    try:
        parse_target(args.url)
        seat_layout(args.seats)
        if args.route != "bookings":
            raise ValueError(f"--route {args.route}: the waiting room books through POST /api/events/{{id}}/bookings")
        if not token:
            raise ValueError(f"no admin token: pass --admin-token or set {TOKEN_ENV} (the server prints "
                             "its token at start unless it was given one)")
        raise_fd_limit(args.connections + FD_MARGIN)
    except ValueError as exc:
        return _fail(str(exc), mode)
    try:
        report = trio.run(_sale_main, options, mode)
    except SetupError as exc:
        return _fail(str(exc), mode)
    except ConnectionRefusedError:
        return _fail(f"nothing answers at {args.url} (start the server with `ticketblitz serve`)", mode)
    except RUN_ERRORS as exc:
        return _fail(f"could not run against {args.url}: {exc!r}", mode)
    judge_sale(report, args.allow_socket_errors)
    if mode == "json-progress":
        members = {"event_id": report.event_id, "users": report.fans, "seats": report.seats,
                   "oversold": report.oversold, "passed": report.passed}
        if report.passed:
            _line("finished", **members)
        else:
            _line("failed", **members, error="; ".join(report.exit_reasons))
    elif mode == "json":
        sys.stdout.buffer.write(orjson.dumps(sale_report_json(report), option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console().print(sale_summary_table(report))
    return 0 if report.passed else 1
