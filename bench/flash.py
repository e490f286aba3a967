"""Flash-sale load driver for a TicketBlitz server on this machine (127.0.0.1 only).

It creates a fresh event, opens one TCP connection per simulated fan, waits until every connection is
up, then releases all of them at once: each fan sends ONE booking request and reads the full answer.
Afterwards it long-polls every accepted booking until it is decided and checks the invariants of
API.md (counts, seat map, no seat in two bookings) over the event's final state.

The burst uses raw trio sockets and a minimal HTTP/1.1 client (httptools' parser when installed), so
that the driver spends little CPU per request and the server, not the driver, is what gets measured.
The driver itself lives in the package (`ticketblitz.loadgen`, also `ticketblitz flash-sale`); this
script keeps bench's command line and output. Run `python bench/flash.py --help` (and `... flash --help`,
`... hot --help`, `... plain --help`) for every option.

`plain` is the same burst against any URL on this machine (a baseline such as bench/fastify_hello.js):
each fan sends one request to that URL and reads the answer; no event, no decisions, no verification.
"""


from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import trio

from ticketblitz.loadgen.client import ALLOWED_HOST, ProtocolError, parse_target
from ticketblitz.loadgen.plain import METHODS, judge_plain, parse_plain_url, render_plain, run_plain, write_plain_json
from ticketblitz.loadgen.report import FD_MARGIN, RunOptions, judge, raise_fd_limit, render, run_flash_sale, write_json
from ticketblitz.loadgen.scenario import MAX_CLIENTS, MAX_PER_USER, MAX_SEATS, ROUTES, Scenario, SetupError, seat_layout

# ====================================================================== command line


def _positive(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: must be between {low:g} and {high:g}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser, default_clients: int) -> None:
    p.add_argument("--clients", type=_positive(int, 1, MAX_CLIENTS), default=default_clients,
                   help=f"fans, each on its own TCP connection, one request each (default {default_clients}, "
                        f"at most {MAX_CLIENTS})")
    p.add_argument("--seats", type=_positive(int, 1, MAX_SEATS), default=100,
                   help="seats of the fresh event: one section A of rows x seats_per_row (each <= 1000) holding "
                        "exactly this many, so a prime above 1000 is refused (default 100)")
    p.add_argument("--route", choices=ROUTES, default="bookings",
                   help="bookings = POST /api/events/{id}/bookings (202 + decision later); book-async = the "
                        "original's queued route (always 202); book-secure / book-naive = the original's "
                        "synchronous routes (200 = already held). Compat routes send "
                        "{userId, seatNumber, eventId} with seatNumber = i mod seats + 1 (hot: 1). "
                        "Default bookings")
    p.add_argument("--connect-timeout", type=_positive(float, 0.1, 60), default=10.0,
                   help="seconds for ALL connections to be up before the release; keep it under the server's "
                        "keep-alive timeout (15 s), which closes connections idle that long (default 10)")
    p.add_argument("--timeout", type=_positive(float, 0.1, 600), default=60.0,
                   help="seconds from the release for every answer; later ones count as *_timeout socket "
                        "errors (default 60)")
    p.add_argument("--decide-timeout", type=_positive(float, 1, 600), default=60.0,
                   help="seconds after the burst for every 202 booking to leave pending (default 60; "
                        "API.md promises 30)")
    p.add_argument("--poll-concurrency", type=_positive(int, 1, 1000), default=200,
                   help="keep-alive connections long-polling GET /api/bookings/{id}?wait=30 (default 200)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--allow-socket-errors", action="store_true",
                   help="exit 0 despite socket errors (refused, reset, timeouts) when verification passed")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="flash.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="""what a run does:
  1. POST /api/events (admin token) -> a fresh event with exactly --seats seats, max_per_user 4
  2. opens --clients TCP connections concurrently (RLIMIT_NOFILE soft limit raised to the hard limit)
  3. once all are connected (or failed): every fan sends its ONE request at the same moment
     and reads the full answer; latency = release -> complete answer
  4. long-polls GET /api/bookings/{id}?wait=30 for every 202 until none is pending
  5. GET /api/events/{id} and /seats; checks: counts sum to capacity and match the seat map,
     held+sold <= capacity, held bookings' seats = counts.held = the map's held seats,
     no seat in two held/confirmed bookings (oversold = 0), no 202 left pending
exit status: 0 when verification passed and no socket failed (see --allow-socket-errors), else 1;
2 for bad arguments or when the run could not be set up.

examples:
  python bench/flash.py --admin-token t flash --clients 2000 --seats 100
  python bench/flash.py hot --clients 1000
  python bench/flash.py flash --clients 500 --seats 100 --route book-async --json out.json
  python bench/flash.py plain --url http://127.0.0.1:3000/hello --clients 10000""",
    )
    top.add_argument("--url", default="http://127.0.0.1:8000",
                     help=f"the server; only http://{ALLOWED_HOST}:PORT is accepted (default http://127.0.0.1:8000)")
    top.add_argument("--admin-token", default=os.environ.get("TICKETBLITZ_ADMIN_TOKEN"),
                     help="organizer token to create the event (default: env TICKETBLITZ_ADMIN_TOKEN)")
    sub = top.add_subparsers(dest="scenario", required=True, metavar="{flash,hot,plain}")
    flash = sub.add_parser("flash", help="N fans each ask for the best available --quantity seats",
                           description="N fans each ask for --quantity best-available seats of a fresh event.")
    _add_common(flash, 2000)
    flash.add_argument("--quantity", type=_positive(int, 1, MAX_PER_USER), default=1,
                       help=f"seats per request, 1..{MAX_PER_USER} (route bookings only; default 1)")
    hot = sub.add_parser("hot", help="N fans all ask for the same seat A-1-1",
                         description="N fans all ask for the same named seat A-1-1 (seat_ids, or seatNumber 1 "
                                     "on the compat routes) of a fresh event.")
    _add_common(hot, 1000)
    plain = sub.add_parser("plain", help="N fans each send one request to --url (a baseline server)",
                           description="The same burst against any HTTP server on 127.0.0.1: N fans, one "
                                       "connection each, released at once, each sends ONE request to the URL "
                                       "(POST body {\"user_id\": \"fan-<i>\", \"quantity\": 1}) and reads "
                                       "the answer. No event, no decisions, no verification: passes when "
                                       "every answer is 2xx.")
    plain.add_argument("--url", dest="plain_url", required=True,
                       help=f"http://{ALLOWED_HOST}:PORT/path (only this machine)")
    plain.add_argument("--method", choices=METHODS, default="POST", help="default POST")
    plain.add_argument("--clients", type=_positive(int, 1, MAX_CLIENTS), default=10_000,
                       help=f"fans, each on its own TCP connection (default 10000, at most {MAX_CLIENTS})")
    plain.add_argument("--connect-timeout", type=_positive(float, 0.1, 60), default=10.0,
                       help="seconds for ALL connections to be up before the release (default 10)")
    plain.add_argument("--timeout", type=_positive(float, 0.1, 600), default=60.0,
                       help="seconds from the release for every answer (default 60)")
    plain.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    plain.add_argument("--allow-socket-errors", action="store_true",
                       help="exit 0 despite socket errors when every answer was 2xx")
    return top


def main_plain(args: argparse.Namespace) -> int:
    try:
        parse_plain_url(args.plain_url)
        raise_fd_limit(args.clients + FD_MARGIN)
    except ValueError as exc:
        print(f"flash.py: {exc}", file=sys.stderr)
        return 2
    try:
        report = trio.run(run_plain, args.plain_url, args.clients, args.method, args.connect_timeout, args.timeout)
    except (OSError, RuntimeError) as exc:
        print(f"flash.py: could not run against {args.plain_url}: {exc!r}", file=sys.stderr)
        return 2
    judge_plain(report, args.allow_socket_errors)
    print(render_plain(report))
    if args.json:
        write_plain_json(report, args.json)
    return 0 if report.passed else 1


def scenario_of(args: argparse.Namespace) -> Scenario:
    quantity = getattr(args, "quantity", 1)
    if args.route != "bookings" and quantity != 1:
        raise ValueError(f"--quantity {quantity}: the compat route {args.route} books one numbered seat")
    return Scenario(args.scenario, args.route, args.clients, args.seats, quantity)


def options_of(args: argparse.Namespace, scenario: Scenario) -> RunOptions:
    return RunOptions(url=args.url, admin_token=args.admin_token, scenario=scenario,
                      connect_timeout=args.connect_timeout, answer_timeout=args.timeout,
                      decide_timeout=args.decide_timeout, poll_concurrency=args.poll_concurrency,
                      log=lambda text: print(text, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scenario == "plain":
        return main_plain(args)
    try:
        parse_target(args.url)
        scenario = scenario_of(args)
        seat_layout(scenario.seats)
        if not args.admin_token:
            raise ValueError("--admin-token (or env TICKETBLITZ_ADMIN_TOKEN) is needed to create the event")
        raise_fd_limit(scenario.clients + args.poll_concurrency + FD_MARGIN)
    except ValueError as exc:
        print(f"flash.py: {exc}", file=sys.stderr)
        return 2
    try:
        report = trio.run(run_flash_sale, options_of(args, scenario))
    except (OSError, RuntimeError, ProtocolError, SetupError, trio.TooSlowError) as exc:
        print(f"flash.py: could not run against {args.url}: {exc!r}", file=sys.stderr)
        return 2
    judge(report, args.allow_socket_errors)
    print(render(report))
    if args.json:
        write_json(report, args.json)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
