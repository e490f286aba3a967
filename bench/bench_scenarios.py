"""The four scenarios run against each server, and what is checked after each:

(a) flash sale: `bench/flash.py flash` (N fans on N open connections, released at once) while the RSS of
    every server process is sampled; (b) hot seat: `bench/flash.py hot`. flash.py verifies its own runs.
(c) sustained intake: wrk with bench/intake.lua on a fresh 200,000-seat event, plus a probe sending one
    booking every 200 ms on its own connection (its latency over time goes to the chart); then the event's
    counts are polled until held + sold covers every 202, and counts, seat map and store are checked.
(d) reads: wrk GET of a 10,000-seat event, its seat map (JSON, gzip, a 304 revalidation, the compact
    form) and one booking (with its secret); the first server's run also measures Fastify 5's hello GET and
    Fastify serving the same seat-map bytes from memory (bench/fastify_hello.js PORT FILE), the read baselines.
(e) book-async: the original's queued route, wrk with bench/book_async.lua (unique user and named seat per
    request) on a fresh 200,000-seat event; then every booking in the store must leave pending. Compared
    with the same wrk against bench/fastify_original.js (Fastify + kafkajs, the original as written).

Decision rates come from the store: the bookings' `updated_at` (one timestamp per decided batch).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from bench_common import (
    COMMANDS,
    HOST,
    PYTHON,
    BenchError,
    WrkResult,
    free_port,
    http_json,
    log,
    open_fds,
    rss_mb,
    run,
    run_wrk,
    shown,
)
from bench_cpu import CpuBreakdown, CpuWindow, service_pids
from bench_servers import Server

INTAKE_SEATS = 200_000  # the API's per-event maximum: 1000 rows x 200
READS_SEATS = 10_000  # the seat map: 10,000 seats (the demo event's size)
READS_ROWS = 100
DECIDE_BOUND = 60.0  # seconds after wrk ends for held + sold to cover every 202
FLASH_DECIDE_TIMEOUT = 30  # API.md invariant 3: every 202 leaves pending within 30 s under a 10,000 burst
STABLE_FOR = 2.0  # then the counts must stay still this long (requests wrk left in flight get decided too)


@dataclass
class Sizes:
    """Durations and sizes of one matrix (the default one, or --quick)."""

    flash_clients: int = 10_000
    flash_seats: int = 1_000
    hot_clients: int = 1_000
    intake_seconds: float = 20.0
    book_async_seconds: float = 20.0
    browse_seconds: float = 10.0
    baseline_seconds: float = 10.0
    pgbench_seconds: float = 10.0
    pgbench_rows: int = 1_000_000
    redis_requests: int = 20_000
    profile_seconds: int = 15
    threads: int = 2
    connections: int = 100


QUICK = Sizes(flash_clients=1_000, flash_seats=100, hot_clients=200, intake_seconds=5.0, book_async_seconds=5.0,
              browse_seconds=3.0,
              baseline_seconds=3.0, pgbench_seconds=3.0, pgbench_rows=100_000, redis_requests=2_000,
              profile_seconds=5)


# ---------------------------------------------------------------------- helpers


def create_event(server: Server, name: str, rows: int, per_row: int) -> dict[str, Any]:
    body = {"name": name, "venue": "bench", "max_per_user": 4, "hold_seconds": 3600,
            "sections": [{"name": "A", "rows": rows, "seats_per_row": per_row, "price_cents": 0}]}
    status, event = http_json(server.port, "POST", "/api/events", body, token=server.token)
    if status != 201:
        raise BenchError(f"{server.spec.name}: POST /api/events answered {status}: {event}")
    return dict(event)


def event_counts(server: Server, event_id: str) -> dict[str, int]:
    status, event = http_json(server.port, "GET", f"/api/events/{event_id}")
    if status != 200:
        raise BenchError(f"GET /api/events/{event_id} answered {status}: {event}")
    return dict(event["counts"])


def seat_tally(server: Server, event_id: str) -> tuple[int, dict[str, int]]:
    """(number of seats, tally by status) of the event's seat map."""
    status, body = http_json(server.port, "GET", f"/api/events/{event_id}/seats", timeout=120)
    if status != 200:
        raise BenchError(f"GET /api/events/{event_id}/seats answered {status}")
    tally = Counter(s["status"] for s in body["seats"])
    return len(body["seats"]), {k: tally.get(k, 0) for k in ("available", "held", "sold")}


@dataclass
class Timeline:
    """The decisions of one event, from the store."""

    bookings: int
    pending: int
    decided: int
    first_created: float | None
    last_decided: float | None
    decided_per_second: dict[int, int]  # epoch second -> decisions
    created_per_second: dict[int, int]

    @property
    def peak_decisions(self) -> int:
        return max(self.decided_per_second.values(), default=0)

    @property
    def mean_decisions(self) -> float | None:
        """Decisions per second between the first and the last decision."""
        if not self.decided_per_second or self.decided < 2:
            return None
        first = min(self.decided_per_second)
        span = (self.last_decided or first) - first
        return self.decided / span if span > 0 else None


def timeline(server: Server, event_id: str) -> Timeline:
    rows = server.store().bookings(event_id)
    decided = [r for r in rows if r[0] != "pending"]
    return Timeline(
        bookings=len(rows), pending=len(rows) - len(decided), decided=len(decided),
        first_created=min((r[1] for r in rows), default=None),
        last_decided=max((r[2] for r in decided), default=None),
        decided_per_second=dict(sorted(Counter(int(r[2]) for r in decided).items())),
        created_per_second=dict(sorted(Counter(int(r[1]) for r in rows).items())),
    )


class RssSampler:
    """Samples VmRSS and open descriptors of every server process every `interval` s, in a thread."""

    def __init__(self, server: Server, interval: float = 0.2) -> None:
        self.server = server
        self.interval = interval
        self.peak_rss: dict[int, float] = {}
        self.fds_at_peak: dict[int, int] = {}
        self.peak_fds: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.server.all_pids():
                rss, fds = rss_mb(pid), open_fds(pid)
                if rss is not None and rss > self.peak_rss.get(pid, 0.0):
                    self.peak_rss[pid] = rss
                    self.fds_at_peak[pid] = fds or 0
                if fds is not None and fds > self.peak_fds.get(pid, 0):
                    self.peak_fds[pid] = fds

    def per_process(self) -> list[dict[str, Any]]:
        """Peak RSS per process, labelled supervisor / worker (or server)."""
        out = []
        for pid, rss in sorted(self.peak_rss.items()):
            out.append({"pid": pid, "role": self.server.role(pid), "peak_rss_mb": round(rss, 1),
                        "fds_at_peak": self.fds_at_peak.get(pid), "peak_fds": self.peak_fds.get(pid)})
        return out


class Probe:
    """One booking request every `interval` s on its own keep-alive connection, timed end to end."""

    def __init__(self, port: int, event_id: str, interval: float = 0.2) -> None:
        self.port = port
        self.path = f"/api/events/{event_id}/bookings"
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # (wall time sent, latency ms, status; 0 = failed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def accepted(self) -> int:
        return sum(1 for *_, status in self.samples if status == 202)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            body = orjson.dumps({"user_id": f"probe-{n}", "quantity": 1})
            sent = time.time()
            started = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                if conn is not None:
                    conn.close()
                conn = None
            self.samples.append((sent, (time.perf_counter() - started) * 1000, status))
        if conn is not None:
            conn.close()


def cpu_window(server: Server) -> CpuWindow:
    """Start the CPU accounting of one wrk window: the server's process tree, and PostgreSQL, Redis and Kafka
    when the run uses the services (their pids from scripts/services.sh pids, looked up now), and the
    backends of the distributed server's own database."""
    return CpuWindow(server.pid, service_pids() if server.urls is not None else {},
                     server.scratch.database if server.scratch is not None else None)


# ---------------------------------------------------------------------- (a) and (b): flash.py


@dataclass
class FlashOutcome:
    kind: str
    command: str
    exit_code: int
    report: dict[str, Any]
    rss: list[dict[str, Any]] = field(default_factory=list)
    cpu: list[dict[str, Any]] = field(default_factory=list)  # CPU seconds per server process during the run
    timeline: Timeline | None = None
    summary: str = ""  # flash.py's printed summary

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def decided_after_last_answer(self) -> float | None:
        """Seconds from the burst's last answer to the server's last decision (negative: before it)."""
        d = self.report.get("decisions")
        if d is None:
            return 0.0 if self.report.get("burst", {}).get("answered") else None
        return d.get("server_last_decision")

    @property
    def decided_after_last_request(self) -> float | None:
        """Seconds from the moment the last request was fully sent to the server's last decision."""
        d, b = self.report.get("decisions"), self.report.get("burst", {})
        if not d or d.get("server_last_decision") is None or b.get("send_spread_ms") is None:
            return 0.0 if d is None and b.get("answered") else None
        return round(d["server_last_decision"] + b["burst_seconds"] - b["send_spread_ms"] / 1000, 3)


def flash(server: Server, kind: str, clients: int, seats: int, workdir: Path) -> FlashOutcome:
    """Run bench/flash.py (kind `flash` or `hot`) against the server; sample RSS meanwhile."""
    out = workdir / f"{server.spec.name}-{kind}.json"
    cmd = [PYTHON, "bench/flash.py", "--url", server.url, kind, "--clients", str(clients),
           "--decide-timeout", str(FLASH_DECIDE_TIMEOUT), "--json", str(out)]
    if kind == "flash":
        cmd += ["--seats", str(seats)]
    log(f"{server.spec.name}: ({'a' if kind == 'flash' else 'b'}) {kind} with {clients} clients")
    cpu_before = server.cpu()
    with RssSampler(server) as sampler:
        done = run(f"{server.spec.name} ({kind})", cmd, timeout=400, check=False,
                   env={"TICKETBLITZ_ADMIN_TOKEN": server.token})
    cpu = server.cpu_since(cpu_before)
    if done.returncode == 2 or not out.exists():
        raise BenchError(f"{server.spec.name}: flash.py {kind} could not run:\n{done.stdout}\n{done.stderr[-3000:]}")
    report = orjson.loads(out.read_bytes())
    outcome = FlashOutcome(kind, shown(cmd), done.returncode, report, sampler.per_process(), cpu=cpu,
                           summary=done.stdout)
    outcome.timeline = timeline(server, report["event_id"])
    print(done.stdout, flush=True)
    return outcome


# ---------------------------------------------------------------------- (c) sustained intake


@dataclass
class IntakeOutcome:
    wrk: WrkResult
    event_id: str
    probe: list[tuple[float, float, int]]
    probe_accepted: int
    counts: dict[str, int]
    seat_map: dict[str, int]
    capacity: int
    seats_in_map: int
    time_to_covered: float | None  # seconds after wrk ended until held + sold covered every 202
    timeline: Timeline
    checks: dict[str, bool]
    notes: list[str]
    cpu: list[dict[str, Any]]  # CPU seconds per server process while wrk ran
    cpu_window: CpuBreakdown | None = None  # every component's CPU and the machine's idle while wrk ran

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    @property
    def expected(self) -> int:
        return self.wrk.accepted + self.probe_accepted


def intake(server: Server, seconds: float, threads: int, connections: int, label: str = "(c) intake",
           extra: Any = None) -> IntakeOutcome:
    """wrk POST bookings on a fresh 200,000-seat event; then every 202 must be decided and counts agree.
    `extra`, when given, is called with the wrk duration just before wrk starts (the profiler hooks in)."""
    event = create_event(server, f"bench intake {time.strftime('%H:%M:%S')}", 1000, INTAKE_SEATS // 1000)
    log(f"{server.spec.name}: {label} for {seconds:g} s on {event['id']} ({INTAKE_SEATS} seats)")
    with Probe(server.port, event["id"]) as probe:
        if extra is not None:
            extra(seconds)
        window = cpu_window(server)
        cpu_before = server.cpu()
        result = run_wrk(f"{server.spec.name} {label}", server.url, "intake.lua", [event["id"]],
                         threads=threads, connections=connections, duration=seconds)
        cpu = server.cpu_since(cpu_before)
        breakdown = window.finish(result.client_cpu_s, cpu)
    expected = result.accepted + probe.accepted
    covered_at, counts = _await_covered(server, event["id"], expected, result.ended_at)
    seats, tally = seat_tally(server, event["id"])
    line = timeline(server, event["id"])
    taken = counts["held"] + counts["sold"]
    in_flight = taken - expected
    checks = {
        "no 5xx": result.server_errors == 0,
        "no socket errors": result.total_socket_errors == 0,
        "only 2xx/409": result.unexpected == 0,
        "counts sum to capacity": sum(counts.values()) == event["capacity"] == seats,
        "counts equal seat map": counts == tally,
        "held + sold covers every 202": covered_at is not None,
        "store: no booking left pending": line.pending == 0,
        # wrk stops with requests in flight: the server may accept up to one per connection unseen by wrk
        "held + sold - 202s within wrk's in-flight requests": 0 <= in_flight <= connections + 1,
    }
    notes = [f"{expected} answered 202 ({result.accepted} wrk + {probe.accepted} probe); held+sold {taken} "
             f"({in_flight:+d}: requests in flight when wrk stopped); store: {line.bookings} bookings, "
             f"{line.pending} pending"]
    return IntakeOutcome(result, event["id"], list(probe.samples), probe.accepted, counts, tally, event["capacity"],
                         seats, covered_at, line, checks, notes, cpu, breakdown)


def _await_covered(server: Server, event_id: str, expected: int, wrk_end: float) -> tuple[float | None,
                                                                                           dict[str, int]]:
    """Poll the counts until held + sold >= expected and they stayed still for STABLE_FOR s (bounded)."""
    deadline = wrk_end + DECIDE_BOUND
    covered_at: float | None = None
    last_taken, last_change = -1, time.time()
    counts = event_counts(server, event_id)
    while time.time() < deadline:
        counts = event_counts(server, event_id)
        taken = counts["held"] + counts["sold"]
        now = time.time()
        if taken != last_taken:
            last_taken, last_change = taken, now
        if taken >= expected and covered_at is None:
            covered_at = max(0.0, now - wrk_end)
        if covered_at is not None and now - last_change >= STABLE_FOR:
            break
        time.sleep(0.25)
    return (round(covered_at, 2) if covered_at is not None else None), counts


# ---------------------------------------------------------------------- (d) reads


@dataclass
class FastifyReads:
    """The read baselines, measured once per run (after the first server's reads) with the same wrk: Fastify
    5's hello world GET, and Fastify serving that server's 10,000-seat map bytes from memory (plain, gzip)."""

    hello_get: WrkResult
    seats: WrkResult
    seats_gzip: WrkResult
    server_command: str
    exit_codes: list[int]

    @property
    def passed(self) -> bool:
        return all(c == 0 for c in self.exit_codes) and all(
            w.total_socket_errors == 0 and w.count(lambda s: s != 200) == 0
            for w in (self.hello_get, self.seats, self.seats_gzip))


@dataclass
class BrowseOutcome:
    """(d) the hot reads of an on-sale on a 10,000-seat event with one decided booking: name -> wrk result
    (event, seats, seats gzip, seats 304, seats compact, booking) and the documents' sizes in bytes."""

    reads: dict[str, WrkResult]
    sizes: dict[str, int]
    expected: dict[str, int]  # name -> the one status every answer must have

    @property
    def passed(self) -> bool:
        return all(w.total_socket_errors == 0 and w.count(lambda s, want=self.expected[name]: s != want) == 0
                   for name, w in self.reads.items())


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def browse(server: Server, seconds: float, threads: int, connections: int, workdir: Path,
           fastify: list[FastifyReads]) -> BrowseOutcome:
    """wrk GET the event, its 10,000-seat map (JSON, gzip, a 304 revalidation, the compact form) and one
    booking (with its secret), `seconds` each. The first call also measures the Fastify read baselines
    (appended to `fastify`) with the seat map's bytes as this server sent them."""
    event = create_event(server, f"bench reads {time.strftime('%H:%M:%S')}", READS_ROWS, READS_SEATS // READS_ROWS)
    eid = event["id"]
    status, booking = http_json(server.port, "POST", f"/api/events/{eid}/bookings",
                                {"user_id": "bench-reader", "quantity": 1})
    if status != 202:
        raise BenchError(f"{server.spec.name}: the reads' booking answered {status}: {booking}")
    deadline = time.time() + 30
    while time.time() < deadline:  # decided, and the seat map's cache older than its max age
        status, seen = http_json(server.port, "GET", f"/api/bookings/{booking['id']}?wait=5",
                                 token=booking["secret"])
        if status == 200 and seen.get("status") != "pending":
            break
    time.sleep(1.0)
    seats_path = f"/api/events/{eid}/seats"
    _, plain_headers, plain = _get(server.port, seats_path)
    _, _, gz = _get(server.port, seats_path, {"Accept-Encoding": "gzip"})
    _, _, compact = _get(server.port, seats_path + "?form=compact")
    etag = plain_headers.get("etag", "")
    sizes = {"seats": len(plain), "seats gzip": len(gz), "seats compact": len(compact)}
    routes: list[tuple[str, str, list[str], int]] = [
        ("event", f"/api/events/{eid}", [], 200),
        ("seats", seats_path, [], 200),
        ("seats gzip", seats_path, ["Accept-Encoding: gzip"], 200),
        ("seats 304", seats_path, [f"If-None-Match: {etag}"], 304),
        ("seats compact", seats_path + "?form=compact", [], 200),
        ("booking", f"/api/bookings/{booking['id']}", [f"Authorization: Bearer {booking['secret']}"], 200),
    ]
    log(f"{server.spec.name}: (d) reads on {eid} ({READS_SEATS:,} seats), {seconds:g} s per route")
    reads = {name: run_wrk(f"{server.spec.name} (d) GET {name}", f"{server.url}{path}", "http.lua", ["GET"],
                           threads=threads, connections=connections, duration=seconds, headers=headers)
             for name, path, headers, _ in routes}
    if not fastify:
        (workdir / "seats.json").write_bytes(plain)
        (workdir / "seats.json.gz").write_bytes(gz)
        fastify.append(fastify_reads(workdir, seconds, threads, connections))
    return BrowseOutcome(reads, sizes, {name: want for name, _, _, want in routes})


def fastify_reads(workdir: Path, seconds: float, threads: int, connections: int) -> FastifyReads:
    """bench/fastify_hello.js PORT FILE with the seat map's bytes: GET /hello, then GET /bytes (plain, gzip)."""
    from bench_baselines import BaselineServer

    results: dict[str, WrkResult] = {}
    codes: list[int] = []
    command = ""
    for kind, file, extra in (("plain", "seats.json", []), ("gzip", "seats.json.gz", ["gzip"])):
        port = free_port()
        cmd = ["node", "bench/fastify_hello.js", str(port), str(workdir / file), *extra]
        COMMANDS.add(f"baseline fastify bytes ({kind})", cmd)
        command = command or COMMANDS.entries[-1][1]
        with BaselineServer(cmd, port, 30, 15) as node:
            url = f"http://127.0.0.1:{port}"
            if kind == "plain":
                results["hello"] = run_wrk("baseline fastify GET /hello", f"{url}/hello", "http.lua", ["GET"],
                                           threads=threads, connections=connections, duration=seconds)
            results[kind] = run_wrk(f"baseline fastify GET /bytes ({kind})", f"{url}/bytes", "http.lua", ["GET"],
                                    threads=threads, connections=connections, duration=seconds)
        assert node.exit_code is not None
        codes.append(node.exit_code)
    return FastifyReads(results["hello"], results["plain"], results["gzip"], command, codes)


# ---------------------------------------------------------------------- (e) book-async


@dataclass
class BookAsyncOutcome:
    wrk: WrkResult
    event_id: str
    timeline: Timeline
    time_to_decided: float | None  # seconds after wrk ended until no booking of the event was pending
    checks: dict[str, bool]
    cpu: list[dict[str, Any]]
    cpu_window: CpuBreakdown | None = None

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


def book_async(server: Server, seconds: float, threads: int, connections: int) -> BookAsyncOutcome:
    """wrk POST /api/book-async (the original's body, unique user and seat per request) on a fresh
    200,000-seat event; then every booking of the event in the store must be decided (bounded)."""
    event = create_event(server, f"bench book-async {time.strftime('%H:%M:%S')}", 1000, INTAKE_SEATS // 1000)
    log(f"{server.spec.name}: (e) book-async for {seconds:g} s on {event['id']}")
    window = cpu_window(server)
    cpu_before = server.cpu()
    result = run_wrk(f"{server.spec.name} (e) book-async", server.url, "book_async.lua",
                     [event["id"], str(INTAKE_SEATS), str(threads)], threads=threads, connections=connections,
                     duration=seconds)
    cpu = server.cpu_since(cpu_before)
    breakdown = window.finish(result.client_cpu_s, cpu)
    # intake only: nothing is decided, so there is nothing to wait for
    deadline = result.ended_at + (DECIDE_BOUND if server.spec.consumers != 0 else 0.0)
    line = timeline(server, event["id"])
    while (line.pending or line.bookings < result.accepted) and time.time() < deadline:
        time.sleep(0.5)
        line = timeline(server, event["id"])
    done_at = None if line.pending or line.bookings < result.accepted else max(0.0, time.time() - result.ended_at)
    checks = {
        "no 5xx": result.server_errors == 0,
        "no socket errors": result.total_socket_errors == 0,
        "only 202": result.count(lambda s: s != 202) == 0,
    }
    if server.spec.consumers != 0:  # intake only: the bookings wait in Kafka for a consumer, by design
        checks["store: every 202 is a booking"] = line.bookings >= result.accepted
        checks["store: no booking left pending"] = line.pending == 0
    return BookAsyncOutcome(result, event["id"], line, None if done_at is None else round(done_at, 2), checks, cpu,
                            breakdown)
