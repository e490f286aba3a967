"""bench: TicketBlitz's benchmark matrix, bounded in time, against servers it starts itself.

For each selected server (on a free 127.0.0.1 port, waited for with /readyz, stopped with SIGTERM and
required to exit 0) it runs five scenarios (--scenario selects) and checks the invariants after each:

  (a) flash sale      bench/flash.py flash --clients 10000 --seats 1000 (10,000 connections open at once;
                      RSS of every server process sampled meanwhile)
  (b) hot seat        bench/flash.py hot --clients 1000 (1,000 fans, one seat)
  (c) sustained intake wrk -t2 -c100 -d20s -s bench/intake.lua: POST /api/events/{id}/bookings, quantity 1, a
                      unique user_id per request, on a fresh 200,000-seat event (max_per_user 4); then the
                      event's counts are polled (<= 60 s) until held + sold covers every 202, and counts, seat
                      map and store must agree
  (d) reads           wrk GET of a 10,000-seat event with one decided booking, 10 s each: the event, its seat
                      map (JSON, gzip, a 304 revalidation with If-None-Match, ?form=compact) and the booking
                      (with its secret); the first server's run also measures Fastify 5's hello GET and
                      Fastify serving the same seat-map bytes from memory (bench/fastify_hello.js PORT FILE)
  (e) book-async      wrk -t2 -c100 -d20s -s bench/book_async.lua: the original's POST /api/book-async
                      ({userId, seatNumber, eventId}, a unique user and named seat per request) on a fresh
                      200,000-seat event; then every booking must leave pending (<= 60 s)

Servers:
  embedded      python -m ticketblitz serve --port P --data-dir <tmp>
  distributed1  the same with TICKETBLITZ_DATABASE_URL (fresh tb_bench_<hex> database), _REDIS_URL (db 2,
                flushed), _KAFKA_BOOTSTRAP, _KAFKA_TOPIC=bench-<hex>, _KAFKA_GROUP=bench-group-<hex>;
                database, topics and group are removed afterwards
  distributed2  the same with --workers 2
  distributed1-intake  distributed1 with TICKETBLITZ_CONSUMERS=0 (intake only: bookings stay queued in
                Kafka), (e) only

Baselines, measured in the same run (results are ratios on a noisy machine; --baseline selects): Fastify 5
hello world (bench/fastify_hello.js), the Quart-Trio and bare Trio-door hello worlds (bench/hello.py), all
wrk POST; the original's queued route (bench/fastify_original.js: Fastify 5 + kafkajs, one producer.send
with acks = all to a topic of its own, bench-original-<hex>, then 202), wrk -s bench/book_async.lua, which
(e) is a ratio to; the flash burst (bench/flash.py plain, as many fans as (a)) against the Fastify hello
world, which (a)'s p99 is a ratio to;
redis-benchmark EVALSHA of the edge admission script (batches of 1 and 256); pgbench of a conditional
single-row seat claim on a 1,000,000-row copy of the seat table (bench/pgbench_claim.sql).

During (c) a probe sends one booking every 200 ms on its own connection (latency over time, in the chart).
Decision rates come from the store: the bookings' updated_at (busiest second, and mean over the spread).
The embedded server is also profiled with py-spy during an extra intake run after (d), so that the measured
runs are not slowed down (flame graph <name>-profile.svg; top functions by own time in the report).

Targets (reported PASS/MISS; a MISS does not fail the run). Issue 10's: (e) /api/book-async >= 1.0 x the
  original's route (fastify_original.js) for embedded and distributed1, >= 1.5 x for distributed1-intake;
  (c) POST /api/events/{id}/bookings quantity 1, embedded, >= 0.5 x Fastify hello POST; (d) GET event and
  GET booking >= 0.5 x Fastify hello GET, the 10,000-seat map (JSON and gzip) >= 0.5 x Fastify serving the
  same bytes; (a) p99 <= 1.0 x the Fastify hello's p99 under flash.py plain, all decided <= 1 s after the
  last answer, oversold 0; decisions/s >= 0.5 x pgbench tps; the door's hello world >= 1.0 x Fastify's.
  Earlier issues': distributed 2-proc intake >= 0.6 x Fastify and >= 5,000 req/s; flash 10,000 answered
  without socket errors, p99 <= 250 ms; <= 200 MB RSS per server process at 10,000 connections.

Output: bench/results/<UTC date>-<short commit>.md (machine, versions, targets, results, notes, chart,
profile, server log errors and warnings, the exact commands), <same>.png (throughput, decisions/s and probe
latency over time during (c)), <same>.json (every number), <same>-profile.svg; with --quick the name ends
in -quick. During the wrk window of (c) and (e) the CPU of every component (the server's processes, wrk,
Kafka, PostgreSQL with all its backends, Redis, run.py, the rest of the machine, idle) is read from /proc;
the report's "Scaling 1 -> 2 processes" section (and the JSON's `scaling`) sets distributed1 against
distributed2 with those cores and says whether the machine's cores were the ceiling. The targets, results
and scaling tables are printed too.

Exit status: 0 when every check passed (targets that are missed do not fail the run: they are reported
as MISS), 1 when a check failed (oversold, inconsistent counts, an accepted booking left undecided, a 5xx
or socket error, a server exiting non-zero), 2 when the run could not start.

Needs: the .venv (matplotlib and py-spy: the `bench` extra), wrk, redis-tools, pgbench, node + npm
(missing Debian packages and Fastify are installed when possible), PostgreSQL/Redis/Kafka from
scripts/services.sh (started with `up` when down). The default matrix takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from bench_baselines import (
    ensure_tools,
    fastify,
    fastify_flash,
    hello_door,
    hello_quart,
    original,
    pgbench,
    redis_admission,
)
from bench_common import BENCH, COMMANDS, REPO, BenchError, log, raise_nofile
from bench_profile import Recorder
from bench_report import (
    Baselines,
    ServerResult,
    analysis_notes,
    chart,
    machine,
    markdown,
    scaling,
    targets,
    versions,
)
from bench_scenarios import QUICK, FastifyReads, Sizes, book_async, browse, flash, intake
from bench_servers import SPECS, Server, service_urls

FD_MARGIN = 1_000  # descriptors beyond one per fan: poll connections, logs, Kafka/PG/Redis clients
SCENARIOS = ("flash", "hot", "intake", "browse", "book-async")
BASELINES = ("fastify", "quart", "door", "original", "fastify-flash", "admission", "pgbench")


def git(*args: str) -> str:
    """Read-only git (rev-parse, status): the commit the results belong to."""
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout


def run_baselines(sizes: Sizes, urls: dict[str, str], workdir: Path,
                  selected: tuple[str, ...] = BASELINES) -> Baselines:
    """Fastify, both hello-world doors, the original's queued route, the flash burst against Fastify, the
    Redis admission script and pgbench (those `selected`); a failing one is recorded (and fails the run)
    without stopping the others."""
    base = Baselines()
    wrk = (sizes.baseline_seconds, sizes.threads, sizes.connections)

    def attempt(name: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as exc:
            log(f"baseline {name} failed: {exc!r}")
            base.errors.append(f"{name}: {exc}")
            return None

    if "fastify" in selected:
        base.fastify = attempt("fastify", lambda: fastify(*wrk))
    if "quart" in selected:
        base.quart = attempt("quart-trio", lambda: hello_quart(*wrk))
    if "door" in selected:
        base.door = attempt("trio-door", lambda: hello_door(*wrk))
    if "original" in selected:
        base.original = attempt("fastify-original", lambda: original(urls, sizes.book_async_seconds, sizes.threads,
                                                                      sizes.connections))
    if "fastify-flash" in selected:
        base.fastify_flash = attempt("fastify-flash", lambda: fastify_flash(sizes.flash_clients, workdir))
    if "admission" in selected:
        batches = {1: sizes.redis_requests, 256: max(50, sizes.redis_requests // 50)}
        base.admission = attempt("redis admission", lambda: redis_admission(urls, batches)) or []
    if "pgbench" in selected:
        base.pgbench = attempt("pgbench", lambda: pgbench(urls, sizes.pgbench_rows, sizes.pgbench_seconds))
    return base


def run_server(name: str, sizes: Sizes, urls: dict[str, str] | None, workdir: Path, out: Path,
               stem: str, profile: bool, scenarios: tuple[str, ...] = SCENARIOS,
               fastify_reads: list[FastifyReads] | None = None) -> ServerResult:
    """Start one server, run the selected of (a)-(e) (and the profile run for the embedded one), stop it.
    The first server to run (d) also measures the Fastify read baselines (into `fastify_reads`)."""
    spec = SPECS[name]
    if spec.scenarios is not None:
        scenarios = tuple(s for s in scenarios if s in spec.scenarios)
    result = ServerResult(spec)
    server = Server(spec, urls, workdir)
    try:
        server.start()
        result.command = server.command
        if "flash" in scenarios:
            result.flash = flash(server, "flash", sizes.flash_clients, sizes.flash_seats, workdir)
        if "hot" in scenarios:
            result.hot = flash(server, "hot", sizes.hot_clients, 100, workdir)
        if "intake" in scenarios:
            result.intake = intake(server, sizes.intake_seconds, sizes.threads, sizes.connections)
        if "browse" in scenarios:
            result.browse = browse(server, sizes.browse_seconds, sizes.threads, sizes.connections, workdir,
                                   fastify_reads if fastify_reads is not None else [])
        if "book-async" in scenarios:
            result.book_async = book_async(server, sizes.book_async_seconds, sizes.threads, sizes.connections)
        if profile:
            recorder = Recorder(server.pid, sizes.profile_seconds, out / f"{stem}-profile.svg",
                                workdir / f"{stem}-profile.txt")
            result.profile_intake = intake(server, sizes.profile_seconds + 2, sizes.threads, sizes.connections,
                                           label="profile intake (py-spy attached)",
                                           extra=lambda _seconds: recorder.start())
            result.profile = recorder.finish()
    except Exception as exc:  # reported (and failing the run); the server is stopped below either way
        log(f"{name} FAILED: {exc!r}")
        result.error = str(exc) or repr(exc)
    finally:
        result.exit_code = server.stop()
        result.problems = server.problems()
        result.cleanup_problems = server.cleanup_problems
        log(f"{name}: server exit status {result.exit_code}")
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=list(SPECS), metavar="{" + ",".join(SPECS) + "}",
                   help="run only this server (repeatable); default: all three")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: flash 1,000 clients/100 seats, hot 200, intake 5 s, browse 3 s, baselines 3 s, "
                        "pgbench on 100,000 rows, profile 5 s (about 2 minutes)")
    p.add_argument("--out", type=Path, default=BENCH / "results",
                   help="directory for <UTC date>-<commit>.md/.png/.json/-profile.svg (default bench/results)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="{" + ",".join(SCENARIOS) + "}",
                   help="run only this scenario against each server (repeatable); default: all five")
    p.add_argument("--baseline", action="append", choices=BASELINES, metavar="{" + ",".join(BASELINES) + "}",
                   help="run only this baseline (repeatable); default: all. original = bench/fastify_original.js "
                        "(the ratio of (e)), fastify-flash = flash.py plain against the Fastify hello (the ratio "
                        "of (a)'s p99)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip Fastify, hello worlds, the original's route, redis-benchmark and pgbench "
                        "(ratios become n/a)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run of the embedded server")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary directory with server logs and flash.py JSON reports")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    names = [n for n in SPECS if n in (args.only or list(SPECS))]
    scenarios = tuple(s for s in SCENARIOS if s in (args.scenario or SCENARIOS))
    baselines = () if args.no_baselines else tuple(b for b in BASELINES if b in (args.baseline or BASELINES))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    commit = git("rev-parse", "--short", "HEAD").strip() or "nocommit"
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    stem = f"{time.strftime('%Y-%m-%d', time.gmtime())}-{commit}" + ("-quick" if args.quick else "")
    out: Path = args.out.resolve()
    try:
        hard = raise_nofile()
        if hard < sizes.flash_clients + FD_MARGIN:
            raise BenchError(f"RLIMIT_NOFILE hard limit {hard} < {sizes.flash_clients + FD_MARGIN} (ulimit -Hn)")
        out.mkdir(parents=True, exist_ok=True)
        ensure_tools(need_node=bool({"fastify", "original", "fastify-flash"} & set(baselines)))
        needs_services = bool(baselines) or any(SPECS[n].distributed for n in names)
        urls = service_urls() if needs_services else None
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    profile = "embedded" in names and not args.no_profile and "intake" in scenarios

    workdir = Path(tempfile.mkdtemp(prefix="tb-bench-"))
    log(f"results: {out}/{stem}.*  work dir: {workdir}")
    servers: dict[str, ServerResult] = {}
    base = Baselines()
    try:
        if baselines:
            assert urls is not None
            base = run_baselines(sizes, urls, workdir, baselines)
        reads_baseline: list[FastifyReads] = []
        for name in names:
            servers[name] = run_server(name, sizes, urls, workdir, out, stem, profile and name == "embedded",
                                       scenarios, reads_baseline)
        base.fastify_reads = reads_baseline[0] if reads_baseline else None
    finally:
        if not args.keep_workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    finished = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())

    failures = base.failures() + [f for r in servers.values() for f in r.failures()]
    goals = targets(servers, base, sizes)
    png = out / f"{stem}.png"
    has_chart = chart(png, servers, base)
    notes = [f"{r.spec.name} {label}: {note}" for r in servers.values()
             for label, i in (("(c)", r.intake), ("profile run", r.profile_intake)) if i is not None
             for note in i.notes]
    notes += analysis_notes(servers, base)
    if args.quick:
        notes.insert(0, "--quick: a smoke test; sizes and durations are smaller than the targets assume")
    embedded = servers.get("embedded")
    report = markdown(
        title=f"TicketBlitz benchmark {stem}", started=started, finished=finished, commit=commit, dirty=dirty,
        argv=["bench/run.py", *(argv if argv is not None else sys.argv[1:])], sizes=sizes, machine_info=machine(),
        version_info=versions(urls), servers=servers, base=base, goals=goals, failures=failures,
        chart=png.name if has_chart else None, profile=embedded.profile if embedded else None, notes=notes)
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_bytes(orjson.dumps(
        {"servers": servers, "baselines": base, "targets": goals, "scaling": scaling(servers), "failures": failures,
         "sizes": sizes, "commands": COMMANDS.entries},
        default=_jsonable, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    section = report.split("## Targets", 1)[1].split("## Notes", 1)[0].split("## Chart", 1)[0]
    print("## Targets" + section)
    print(f"written: {out / (stem + '.md')}" + (f", {png}" if has_chart else ""))
    print(f"verification: {'PASS' if not failures else 'FAIL'}")
    for f in failures:
        print(f"  - {f}")
    return 0 if not failures else 1


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return os.fspath(value)
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
