"""The waiting room under a flash crowd, and the same sale without it (docs/API.md, "Waiting room").

    .venv/bin/python bench/bench_waiting_room.py --fans 50000 --seats 1000

Starts its own embedded server (`python -m ticketblitz serve --port P --data-dir <tmp>`, P from --port or a
free one, within TB_BENCH_PORTS=LOW-HIGH when set), then drives it with `ticketblitz.loadgen.waiting_room`
(the code of `ticketblitz flash-sale --waiting-room`: fans are cheap records sharing --connections
keep-alive connections). By default each fan's FIRST request (its join; in the direct sale its booking)
comes from a second OS process (`ticketblitz/loadgen/sender.py`): pre-encoded, written on schedule over
--burst-connections keep-alive connections with HTTP/1.1 pipelining, each request's send time and answer
time recorded; the answers stream back to this process, where each fan goes on (long polls, booking,
confirm) through the pool. One process alone offers only ~2,300 joins/s (the 2026-12-01 result), so
50,000 joins took 22 s to arrive instead of about one; `--pooled` still runs it that way.

1. a fresh event of --seats seats with a waiting room (fifo, --admit-per-second, --pass-seconds,
   --challenge-bits); --fans fans arrive evenly over --arrival-seconds in random order, join the line,
   wait for their turn, book one seat with their pass, confirm it (an --abandon fraction lets the hold
   lapse after --hold-seconds, which admits the next in line);
2. a fresh event of the same seats WITHOUT a waiting room: the same fans, the same arrival schedule,
   booking directly.

It reports for (1) the p99 join answer, the time until every ticket shows a final state, the passes issued
against seats + lapsed holds, oversold (0) and the order check; for both, fairness: of the (earlier,
later) arrival pairs, how often the later fan got a seat and the earlier did not (counted exactly;
arrival = when the fan's first request was sent). Writes bench/results/<UTC date>-waiting-room-burst.md
(-waiting-room.md with --pooled) and .json with the command line. Bounded: each sale has its own deadline
and a watchdog stops the server and exits after --max-seconds (default 290). The server is stopped by its
PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import REPO, BenchError, log, raise_nofile
from bench_profile import Profile, Recorder
from bench_servers import SPECS, Server

from ticketblitz.loadgen.cli import sale_rows
from ticketblitz.loadgen.waiting_room import (
    SaleOptions,
    SaleReport,
    WaitingRoomSettings,
    judge_sale,
    report_json,
    run_sale,
)

EXIT_WATCHDOG = 3
DIRECT_HOLD_SECONDS = 600


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--fans", type=int, default=50_000)
    p.add_argument("--seats", type=int, default=1_000)
    p.add_argument("--admit-per-second", type=int, default=2000)
    p.add_argument("--pass-seconds", type=int, default=30)
    p.add_argument("--challenge-bits", type=int, default=0)
    p.add_argument("--mode", choices=("fifo", "lottery"), default="fifo")
    p.add_argument("--connections", type=int, default=1000, help="keep-alive connections the fans share")
    p.add_argument("--arrival-seconds", type=float, default=1.0)
    p.add_argument("--abandon", type=float, default=0.02,
                   help="fraction of fans with a held booking who never confirm it (default 0.02)")
    p.add_argument("--hold-seconds", type=int, default=30,
                   help="the waiting-room event's hold_seconds (default 30: under 50,000 joins a fan on this "
                        "2-core machine saw its decision up to ~14 s after its 202, so 10 s holds lapsed unbought)")
    p.add_argument("--sale-deadline", type=float, default=110.0,
                   help="seconds per sale from the first arrival until every fan must be done (default 110)")
    p.add_argument("--port", type=int, default=None, help="the server's port (default: a free one, in "
                                                          "TB_BENCH_PORTS when set)")
    p.add_argument("--max-seconds", type=float, default=290.0, help="the watchdog (default 290)")
    p.add_argument("--skip-direct", action="store_true", help="only the waiting-room sale")
    p.add_argument("--burst-connections", type=int, default=2000,
                   help="keep-alive connections of the burst sender, which sends every fan's first request "
                        "(pipelined: about fans / N per connection; default 2000)")
    p.add_argument("--pooled", action="store_true",
                   help="no burst sender: every request from this process through the pool (the old driver)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the server during the waiting-room sale's join burst (--profile-seconds)")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--out", type=Path, default=None,
                   help="markdown path (default bench/results/<UTC date>-waiting-room-burst.md, "
                        "-waiting-room.md with --pooled; .json beside it)")
    return p


def watchdog(server: Server, seconds: float) -> threading.Timer:
    def fire() -> None:
        log(f"watchdog: {seconds:g} s passed; stopping the server (pid {server.pid if server.proc else '-'})")
        try:
            server.stop()
        finally:
            os._exit(EXIT_WATCHDOG)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


class CpuSampler:
    """The server's CPU seconds every `every` s (wall clock), to tell its CPU use over any window after."""

    def __init__(self, server: Server, every: float = 0.25) -> None:
        self.server, self.every = server, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), sum(self.server.cpu().values())))
            except Exception:  # the server stopped meanwhile
                pass
            self._stop.wait(self.every)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def over(self, start: float | None, end: float | None) -> dict[str, Any] | None:
        """CPU seconds and % of one core between the samples nearest `start` and `end`."""
        if start is None or end is None or not self.samples:
            return None
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        if last[0] <= first[0]:
            return None
        cpu = last[1] - first[1]
        return {"cpu_s": round(cpu, 2), "wall_s": round(last[0] - first[0], 2),
                "core_percent": round(100 * cpu / (last[0] - first[0]), 1)}


def sale(server: Server, args: argparse.Namespace, waiting_room: bool,
         profile: Recorder | None = None) -> tuple[SaleReport, list[dict[str, Any]], dict[str, Any] | None]:
    settings = WaitingRoomSettings(args.mode, args.admit_per_second, args.pass_seconds, args.challenge_bits) \
        if waiting_room else None
    # without a waiting room nobody is admitted after a lapse, so nobody abandons there, and holds are long:
    # a hold of a few seconds may lapse before a fan in a 50,000-fan stampede even sees it
    options = SaleOptions(url=server.url, admin_token=server.token, fans=args.fans, seats=args.seats,
                          settings=settings, connections=args.connections, arrival_seconds=args.arrival_seconds,
                          deadline_seconds=args.sale_deadline, abandon=args.abandon if waiting_room else 0.0,
                          hold_seconds=args.hold_seconds if waiting_room else DIRECT_HOLD_SECONDS, log=log,
                          burst_connections=None if args.pooled else args.burst_connections)
    before = server.cpu()
    sampler = CpuSampler(server)
    sampler.start()
    try:
        report = trio.run(run_sale, options, None, (lambda _event: profile.start()) if profile else None)
    finally:
        sampler.stop()
    judge_sale(report)
    window = report.joins or {}
    phase = sampler.over(window.get("first_sent_wall"), window.get("last_answered_wall"))
    return report, server.cpu_since(before), phase


def _p(report: SaleReport, *keys: str) -> Any:
    value: Any = report
    for key in keys:
        value = getattr(value, key) if not isinstance(value, dict) else value.get(key)
        if value is None:
            return None
    return value


def markdown(doc: dict[str, Any], wr: SaleReport, direct: SaleReport | None) -> str:
    s = doc["settings"]
    lines = [
        f"# Waiting room under a flash crowd — {doc['date']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Machine: {doc['machine']}; {doc.get('quiet', 'unknown')}. Server: `{doc['server_command']}` (embedded, "
        "SQLite, one process), on the same cores as the driver (`ticketblitz/loadgen/waiting_room.py`: "
        f"{s['fans']:,} fans as cheap records sharing {s['connections']:,} keep-alive connections"
        + (f"; each fan's first request from a second process, `ticketblitz/loadgen/sender.py`, pipelined over "
           f"{s['burst_connections']:,} keep-alive connections, about {s['fans'] / s['burst_connections']:.0f} "
           "per connection)." if s.get("burst_connections") else ", all in one process).")
        + " The server answers one connection's pipelined requests one after the other, in order.",
        "",
        f"Sale: {s['seats']:,} seats, waiting room `{s['mode']}`, admit_per_second {s['admit_per_second']:,}, "
        f"pass_seconds {s['pass_seconds']}, challenge_bits {s['challenge_bits']}, hold_seconds {s['hold_seconds']}; "
        f"the fans arrive evenly over {s['arrival_seconds']:g} s in random order; {s['abandon']:.0%} of the fans "
        "with a held booking never confirm it (the hold lapses and admits the next in line), the others confirm. "
        "The direct sale (no waiting room): everyone who gets a hold confirms it, hold_seconds 600.",
        "",
        "## Headline",
        "",
        "| | with the waiting room | without (direct booking) |",
        "|---|---|---|",
    ]

    def both(name: str, a: Any, b: Any) -> None:
        lines.append(f"| {name} | {a} | {b} |")

    t, adm, o = wr.tickets or {}, wr.admission or {}, wr.order or {}
    both("result", "PASS" if wr.passed else "FAIL: " + "; ".join(wr.exit_reasons),
         ("PASS" if direct.passed else "FAIL: " + "; ".join(direct.exit_reasons)) if direct else "-")
    def offered(r: SaleReport) -> str:
        span = r.arrivals["spread_s"]
        rate = f"; offered {r.arrivals['arrived'] / span:,.0f}/s" if span else ""
        return f"{span} s ({r.arrivals['arrived']:,} sent{rate}; p99 late vs schedule {r.arrivals['late_p99_ms']} ms)"

    both("offered arrival span: first to last first request sent (measured)", offered(wr),
         offered(direct) if direct else "-")
    both("join answer, from each request's own send (p50 / p99 / max)",
         f"{_p(wr, 'joins', 'answer_ms', 'p50')} / {_p(wr, 'joins', 'answer_ms', 'p99')} / "
         f"{_p(wr, 'joins', 'answer_ms', 'max')} ms", "-")
    both("joins/s the server sustained (answered / (last answered - first sent))",
         f"{_p(wr, 'joins', 'per_second')}", "-")
    jc = doc.get("server_cpu_join_phase")
    both("server CPU over the join phase (first sent → last answered)",
         f"{jc['cpu_s']} s in {jc['wall_s']} s = {jc['core_percent']} % of one core" if jc else "-", "-")
    both("p99 booking answer", f"{_p(wr, 'bookings', 'answer_ms', 'p99')} ms",
         f"{_p(direct, 'bookings', 'answer_ms', 'p99')} ms" if direct else "-")
    both("time until every ticket shows a final state",
         f"{t.get('time_to_all_final_s')} s after the first arrival (the public line read sold out at "
         f"{t.get('line_empty_s')} s)" if t.get("all_final") else "NOT all final", "-")
    both("final ticket states", ", ".join(f"{k} {v:,}" for k, v in t.get("final_states", {}).items()), "-")
    both("passes issued vs seats + lapsed holds",
         f"{adm.get('passes_issued'):,} vs {s['seats']:,} + {adm.get('lapsed_holds')} "
         f"(beyond: {adm.get('passes_beyond_seats')})", "-")
    both("admitted fans refused at their first booking / in the end (they retry while the pass is valid)",
         (", ".join(f"{k} {v}" for k, v in adm.get("admitted_refused_first", {}).items()) or "none") + " / "
         + (", ".join(f"{k} {v}" for k, v in adm.get("admitted_refused", {}).items()) or "none"), "-")
    both("seats held / confirmed / abandoned",
         f"{wr.bookings['held']:,} / {wr.bookings['confirmed']:,} / {wr.bookings['abandoned']:,}",
         f"{direct.bookings['held']:,} / {direct.bookings['confirmed']:,} / {direct.bookings['abandoned']:,}"
         if direct else "-")
    both("event counts at the end", ", ".join(f"{k} {v:,}" for k, v in wr.verification.counts.items()),
         ", ".join(f"{k} {v:,}" for k, v in direct.verification.counts.items()) if direct else "-")
    both("oversold", f"{wr.oversold} ({'verified' if wr.verification.ok else 'VERIFICATION FAILED'})",
         f"{direct.oversold} ({'verified' if direct.verification.ok else 'VERIFICATION FAILED'})" if direct else "-")
    both("order check (admitted positions = 1..k)",
         ("OK" if o.get("ok") else "FAILED") + f": {o.get('detail')}; passes issued out of position order: "
         f"{o.get('issue_inversions')} pairs" if o.get("checked") else f"not checked: {o.get('detail')}", "-")
    f_wr, f_d = wr.fairness, direct.fairness if direct else None
    both("fairness: later fan beat an earlier one (of all (earlier, later) pairs)",
         f"{f_wr['fraction']:.6f} ({f_wr['overtakes']:,} of {f_wr['ordered_pairs']:,})",
         f"{f_d['fraction']:.6f} ({f_d['overtakes']:,} of {f_d['ordered_pairs']:,})" if f_d else "-")
    both("… of the pairs where exactly one got a seat (0 = first come first served, 0.5 = coin flip)",
         f"{f_wr['fraction_of_mixed']:.4f}", f"{f_d['fraction_of_mixed']:.4f}" if f_d else "-")
    both("server CPU during the sale", ", ".join(f"{c['cpu_s']} s" for c in doc["server_cpu"]["waiting_room"]),
         ", ".join(f"{c['cpu_s']} s" for c in doc["server_cpu"].get("direct", [])) or "-")
    both("driver: requests through the pool / wall", f"{wr.requests['total']:,} / {wr.wall_seconds} s",
         f"{direct.requests['total']:,} / {direct.wall_seconds} s" if direct else "-")

    def sender(r: SaleReport | None) -> str:
        x = r.sender if r is not None else None
        if not x:
            return "-"
        return (f"{x.get('requests', 0):,} requests on {x.get('connections', 0):,} connections in "
                f"{x.get('send_calls', 0):,} send() calls; connect {x.get('connect_seconds')} s; "
                f"schedule late at most {x.get('schedule_late_max_ms')} ms; answers waiting for the parent "
                f"at most {x.get('stdout_peak_bytes', 0):,} bytes; CPU {x.get('cpu_s')} s; exit {x.get('exit')}")

    both("burst sender (second process)", sender(wr), sender(direct))
    lines += ["", "Fairness counts every pair of fans exactly (sorting by arrival): with 1,000 seats for 50,000 fans "
              "at most 1,000 x 49,000 of the 1.25 billion pairs can be overtakes, so the first row is small by "
              "construction; the second row normalises by those pairs. Arrival is when the fan's first request was "
              "sent by the driver; the line's order is the order the server recorded the joins, so fans whose joins "
              "were in flight together can swap places without any unfairness of the server.", ""]
    for title, r in (("With the waiting room", wr), ("Without the waiting room", direct)):
        if r is None:
            continue
        lines += [f"## {title}: every line of the report", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in sale_rows(r)]
        lines.append("")
    prof = doc.get("profile")
    if prof:
        lines += ["## Where the server's time goes during the join burst (py-spy)", "",
                  f"{prof['samples']:,} samples at 100 Hz over {doc['settings'].get('profile_seconds')} s from the "
                  f"event's creation (flame graph `{prof['svg']}`). Commands: "
                  + "; ".join(f"`{c}`" for c in prof["commands"]), "",
                  "| own time (innermost Python frame) | samples | % |", "|---|---|---|"]
        lines += [f"| `{name}` | {n:,} | {pct} |" for name, n, pct in prof["top_own"]]
        lines += ["", "| TicketBlitz functions, inclusive | samples | % |", "|---|---|---|"]
        lines += [f"| `{name}` | {n:,} | {pct} |" for name, n, pct in prof["top_inclusive"]]
        if prof.get("main_thread"):
            lines += ["", f"The event loop (MainThread) by what it was doing, per join = samples x 10 ms / "
                      f"{prof['joins']:,} joins (everything the loop did in the window, charged to the joins):", "",
                      "| MainThread | samples | % | µs per join |", "|---|---|---|---|"]
            lines += [f"| {what} | {n:,} | {pct} | {us} |" for what, n, pct, us in prof["main_thread"]]
        lines += ["", "| thread | samples | % |", "|---|---|---|"]
        lines += [f"| {name} | {n:,} | {pct} |" for name, n, pct in prof["threads"]]
        if prof["errors"]:
            lines += ["", "py-spy: " + "; ".join(prof["errors"])]
        lines.append("")
    if doc["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def notes_for(wr: SaleReport, direct: SaleReport | None) -> list[str]:
    notes = []
    adm = wr.admission or {}
    if adm.get("passes_beyond_seats") or adm.get("admitted_refused_first"):
        notes.append(f"{adm.get('passes_beyond_seats')} passes were issued beyond seats + lapsed holds and "
                     f"{sum(adm.get('admitted_refused_first', {}).values())} admitted fans were refused when they "
                     f"first booked ({adm.get('admitted_refused_first')}; in the end {adm.get('admitted_refused')}): "
                     "a pass whose booking is queued but not yet decided no longer counts as outstanding while its "
                     "seat still counts as available (server side, ticketblitz/adapters/waiting_room_sql.py "
                     "queue_tick). A refused fan's pass stays outstanding until it expires, holding back that many "
                     "seats from the next in line.")
    cut = wr.requests.get("long_polls_cut")
    if cut:
        notes.append(f"{cut:,} ticket long polls were cut by the driver {0.5} s after the public line had passed "
                     "their fan and re-read with ?wait=0 (the driver's own shortcut: since d2512ee the server "
                     "answers a long poll at once when its ticket is no longer waiting, and wakes a waiting one "
                     "when the line reaches it).")
    late = wr.arrivals.get("late_p99_ms")
    if late and late > 500 and wr.sender is None:
        joins = (wr.joins or {}).get("per_second")
        notes.append(f"The driver could not send every first request on schedule (p99 {late:,.0f} ms late): every "
                     "pooled connection had a request in flight (the server answered "
                     f"{joins:,} joins/s on these 2 cores, shared with the driver), so the arrival spread is longer "
                     "than scheduled; arrival is measured when sent, so fairness is computed on the real order.")
    return notes


def quiet_note() -> str:
    """Whether another pytest was running on this machine as the run ended (the cores are shared)."""
    try:
        found = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    others = [line for line in found.splitlines() if "pgrep" not in line]
    return "quiet (no pytest running at the end)" if not others else f"pytest running at the end: {len(others)}"


# The event loop's (MainThread's) samples by what they were doing: the first rule whose words a sample's stack
# holds takes it. The SQLite work runs in trio's worker thread (its own rows of the thread table).
ATTRIBUTION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("join route: ticket_json, iso_time", ("join_queue", "ticket_json")),
    ("join route: secrets (HMAC, SHA-256, ticket id)", ("join_queue", "secret")),
    ("join route: secrets (HMAC, SHA-256, ticket id)", ("join_queue", "new_ticket_id")),
    ("join route: JSON body (JoinIn)", ("join_queue", "parse_body")),
    ("join route: the rest (service.join, catalog, waiting for its batch)", ("join_queue",)),
    ("join batches: hand-off to the SQLite thread, waking the joiners", ("_join_batch",)),
    ("join batches: hand-off to the SQLite thread, waking the joiners", ("_join_loop",)),
    ("admitter ticks", ("_admit_loop",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("queue_ticket",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("queue_line",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("create_booking",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("booking_long_poll",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("reads.py",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("_relay",)),
    ("other routes (tickets, the line, bookings, relayed requests)", ("hypercorn",)),
    ("door: intake.answer (content type, CORS)", ("answer (ticketblitz/intake.py",)),
    ("door: serialize, orjson.dumps", ("serialize",)),
    ("door: send() of each answer", ("_Connection._send",)),
    ("door: recv() and feeding the parser", ("_Connection._recv",)),
    ("door: recv() and feeding the parser", ("receive_data",)),
    ("door: HTTP parsing (sans-IO core)", ("next_event",)),
    ("door: telemetry.record_request", ("record_request",)),
    ("door: accept", ("_accept",)),
    ("door: routing, _serve/_answer themselves", ("door.py",)),
)


def main_thread_attribution(raw: Path, joins: int) -> list[tuple[str, int, float, float]]:
    """(what, samples, % of the event loop's samples, µs per join at 10 ms a sample) for MainThread."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not n.isdigit() or "MainThread" not in frames[0]:
            continue
        total += int(n)
        text = ";".join(frames[1:])
        label = next((what for what, words in ATTRIBUTION if all(w in text for w in words)), None)
        if label is None:
            label = "trio: waiting in epoll (idle)" if frames[-1].startswith("EpollIOManager.get_events") else \
                "trio: scheduling, thread wake-ups, the rest"
        counts[label] += int(n)
    return [(what, n, round(100 * n / total, 1), round(n * 10_000 / joins, 1))
            for what, n in counts.most_common()] if total and joins else []


def profile_json(profile: Profile, joins: int) -> dict[str, Any]:
    return {"main_thread": main_thread_attribution(profile.raw, joins) if profile.raw.exists() else [],
            "joins": joins,
            "svg": str(profile.svg.relative_to(REPO)) if profile.svg.is_relative_to(REPO) else str(profile.svg),
            "commands": profile.commands, "samples": profile.samples, "top_own": profile.top,
            "top_inclusive": profile.top_inclusive, "threads": profile.threads, "errors": profile.errors}


def main() -> int:
    args = parser().parse_args()
    raise_nofile()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="tb-bench-wr-"))
    server = Server(SPECS["embedded"], None, workdir)
    if args.port is not None:
        server.port = args.port
    timer = watchdog(server, args.max_seconds)
    direct: SaleReport | None = None
    cpu: dict[str, Any] = {}
    join_cpu: dict[str, Any] | None = None
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = args.out or REPO / "bench" / "results" / f"{date}-waiting-room{'' if args.pooled else '-burst'}.md"
    recorder: Recorder | None = None
    profile: Profile | None = None
    try:
        server.start()
        if args.profile:
            recorder = Recorder(server.pid, args.profile_seconds, out.with_name(out.stem + "-profile.svg"),
                                Path(tempfile.mkdtemp(prefix="tb-bench-wr-prof-")) / "stacks.txt")
        log(f"server pid {server.pid} on {server.url}; the waiting-room sale ({args.fans:,} fans, "
            f"{args.seats:,} seats)")
        wr, cpu["waiting_room"], join_cpu = sale(server, args, waiting_room=True, profile=recorder)
        if recorder is not None:
            profile = recorder.finish()
        log(f"waiting room: {'PASS' if wr.passed else 'FAIL ' + str(wr.exit_reasons)}; now the direct sale")
        if not args.skip_direct:
            direct, cpu["direct"], _ = sale(server, args, waiting_room=False)
            log(f"direct: {'PASS' if direct.passed else 'FAIL ' + str(direct.exit_reasons)}")
    except BenchError as exc:
        log(f"could not run: {exc}")
        return 2
    finally:
        code = server.stop()
        timer.cancel()
        log(f"server stopped, exit status {code}")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_waiting_room.py", *sys.argv[1:]])
    if os.environ.get("TB_BENCH_PORTS"):
        command = f"TB_BENCH_PORTS={os.environ['TB_BENCH_PORTS']} {command}"
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"{platform.system()} {platform.release()}",
        "server_command": server.command, "server_exit": code, "server_problems": server.problems(),
        "settings": {"fans": args.fans, "seats": args.seats, "mode": args.mode,
                     "admit_per_second": args.admit_per_second, "pass_seconds": args.pass_seconds,
                     "challenge_bits": args.challenge_bits, "connections": args.connections,
                     "arrival_seconds": args.arrival_seconds, "abandon": args.abandon,
                     "hold_seconds": args.hold_seconds,
                     "burst_connections": None if args.pooled else args.burst_connections,
                     "profile_seconds": args.profile_seconds if args.profile else None},
        "server_cpu": cpu, "server_cpu_join_phase": join_cpu, "seconds": round(time.time() - started, 1),
        "quiet": quiet_note(),
        "profile": profile_json(profile, args.fans) if profile else None,
        "notes": notes_for(wr, direct),
        "waiting_room": report_json(wr, history=True),
        "direct": report_json(direct) if direct else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(doc, wr, direct)
    if doc["server_problems"]:
        text += "\n## Server log problems\n\n```\n" + "\n".join(doc["server_problems"]) + "\n```\n"
    out.write_text(text)
    out.with_suffix(".json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str) + b"\n")
    print(text)
    log(f"wrote {out} and {out.with_suffix('.json')} in {doc['seconds']} s")
    passed = wr.passed and (direct is None or direct.passed) and code == 0
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
