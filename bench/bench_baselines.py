"""Baselines measured in the same run as the servers, so that results are ratios on a noisy machine:

- Fastify 5 hello world (`bench/fastify_hello.js`), POST /hello, wrk;
- the original's queued route (`bench/fastify_original.js`): Fastify 5 + kafkajs, POST /api/book-async = one
  `producer.send` (acks = all) to a topic of its own (`bench-original-<hex>`) on the local Kafka, then 202;
  wrk with bench/book_async.lua (unique user and seat per request);
- the 10,000-fan flash burst against the Fastify hello world (`bench/flash.py plain`), so that the burst's
  p99 has a baseline under the same driver on the same cores;
- the same stack's hello world through both doors (`bench/hello.py quart|door`), POST /hello, wrk;
- the Redis admission script (`edge_common.lua` + `edge_admit.lua`, joined as `RedisAdmission` joins them)
  under `redis-benchmark` EVALSHA, with batches of 1 and of 256 booking requests on a seeded event;
- `pgbench` with a conditional single-row seat claim (`bench/pgbench_claim.sql`) on a 1,000,000-row copy of
  the store's seat table in a scratch database: the store's ceiling.

Also the tools themselves: wrk, redis-benchmark, pgbench and Fastify are installed here when missing.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_common import (
    BENCH,
    COMMANDS,
    PYTHON,
    REPO,
    BenchError,
    WrkResult,
    free_port,
    log,
    run,
    run_wrk,
    shown,
    stop_process,
    wait_listening,
)
from bench_servers import REDIS_DB, create_database, delete_kafka, drop_database, flush_redis

NODE_DIR = BENCH / ".node"
FASTIFY = NODE_DIR / "node_modules" / "fastify"
KAFKAJS = NODE_DIR / "node_modules" / "kafkajs"
NPM_PACKAGES = ("fastify@5", "kafkajs")
ORIGINAL_EVENT = "evt_bench_original"  # the original's route does not look at it
ORIGINAL_SEATS = 200_000
HELLO_BODY = '{"user_id":"u-1","quantity":1}'
BENCH_EVENT = "evt_bench_admit"
ADMIT_STOCK = 1_000_000
PGBENCH_EVENT_SEATS = 200_000


# ---------------------------------------------------------------------- tools


def pgbench_path() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return found[-1] if found else shutil.which("pgbench")


def ensure_tools(need_node: bool) -> None:
    """Install what is missing: wrk and redis-tools (Debian packages), Fastify and kafkajs (npm, into
    bench/.node, git-ignored)."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("redis-benchmark", "redis-tools")) if not shutil.which(tool)]
    if pgbench_path() is None:
        missing.append("postgresql-contrib")
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"missing tools; install them: apt-get install -y {' '.join(missing)}")
        log(f"installing {', '.join(missing)}")
        if run("apt-get install", ["apt-get", "install", "-y", *missing], timeout=600, check=False).returncode:
            run("apt-get update", ["apt-get", "update"], timeout=600)
            run("apt-get install", ["apt-get", "install", "-y", *missing], timeout=600)
    if need_node:
        if not shutil.which("node") or not shutil.which("npm"):
            raise BenchError("node and npm are needed for the Fastify baseline (apt-get install -y nodejs npm)")
        if not all((pkg / "package.json").exists() for pkg in (FASTIFY, KAFKAJS)):
            log(f"installing {' '.join(NPM_PACKAGES)} into bench/.node")
            run("npm install", ["npm", "install", "--prefix", "bench/.node", *NPM_PACKAGES], timeout=600)


# ---------------------------------------------------------------------- HTTP hello worlds


@dataclass
class HelloOutcome:
    name: str
    server_command: str
    wrk: WrkResult
    exit_code: int

    @property
    def passed(self) -> bool:
        w = self.wrk
        return self.exit_code == 0 and w.total_socket_errors == 0 and w.count(lambda s: s != 200) == 0


class BaselineServer:
    """A baseline server (`cmd`, listening on `port`) for the length of a `with` block: started in its own
    session, awaited until it listens, stopped with SIGTERM after the block; `exit_code` is its exit code."""

    def __init__(self, cmd: list[str], port: int, listen_timeout: float, stop_timeout: float) -> None:
        self.cmd, self.port = cmd, port
        self.listen_timeout, self.stop_timeout = listen_timeout, stop_timeout
        self.exit_code: int | None = None

    def __enter__(self) -> BaselineServer:
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        try:
            wait_listening(self.port, time.monotonic() + self.listen_timeout, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.exit_code = stop_process(self.proc, self.stop_timeout)


def hello(name: str, cmd_for_port: Any, seconds: float, threads: int, connections: int) -> HelloOutcome:
    """Start a hello-world server on a free port, wrk POST /hello against it, stop it (SIGTERM, exit 0)."""
    port = free_port()
    cmd: list[str] = cmd_for_port(port)
    COMMANDS.add(f"baseline {name} server", cmd)
    log(f"baseline {name}: wrk POST /hello for {seconds:g} s")
    with BaselineServer(cmd, port, 30, 15) as server:
        result = run_wrk(f"baseline {name}", f"http://127.0.0.1:{port}/hello", "http.lua", ["POST", HELLO_BODY],
                         threads=threads, connections=connections, duration=seconds)
    assert server.exit_code is not None
    return HelloOutcome(name, shown(cmd), result, server.exit_code)


def fastify(seconds: float, threads: int, connections: int) -> HelloOutcome:
    return hello("fastify", lambda port: ["node", "bench/fastify_hello.js", str(port)], seconds, threads, connections)


def hello_quart(seconds: float, threads: int, connections: int) -> HelloOutcome:
    return hello("quart-trio", lambda port: [PYTHON, "bench/hello.py", "quart", "--port", str(port)], seconds,
                 threads, connections)


def hello_door(seconds: float, threads: int, connections: int) -> HelloOutcome:
    return hello("trio-door", lambda port: [PYTHON, "bench/hello.py", "door", "--port", str(port)], seconds,
                 threads, connections)


# ---------------------------------------------------------------------- the original's queued route


@dataclass
class OriginalOutcome:
    server_command: str
    topic: str
    wrk: WrkResult
    exit_code: int  # 0: the server stopped and deleted its topic

    @property
    def passed(self) -> bool:
        w = self.wrk
        return self.exit_code == 0 and w.total_socket_errors == 0 and w.count(lambda s: s != 202) == 0


def original(urls: dict[str, str], seconds: float, threads: int, connections: int) -> OriginalOutcome:
    """bench/fastify_original.js on a free port with its own topic; wrk POST /api/book-async (unique user
    and seat per request); SIGTERM (the server deletes its topic, exit 0)."""
    port = free_port()
    topic = f"bench-original-{secrets.token_hex(4)}"
    cmd = ["node", "bench/fastify_original.js", str(port), urls["TICKETBLITZ_KAFKA_BOOTSTRAP"], topic]
    COMMANDS.add("baseline fastify-original server", cmd)
    log(f"baseline fastify-original: wrk POST /api/book-async for {seconds:g} s (topic {topic})")
    server = BaselineServer(cmd, port, 60, 30)
    try:
        with server:
            result = run_wrk("baseline fastify-original", f"http://127.0.0.1:{port}", "book_async.lua",
                             [ORIGINAL_EVENT, str(ORIGINAL_SEATS), str(threads)], threads=threads,
                             connections=connections, duration=seconds)
    finally:
        code = server.exit_code
        if code != 0:  # it did not delete its topic (or never started): do it here
            try:
                delete_kafka(urls["TICKETBLITZ_KAFKA_BOOTSTRAP"], [topic], f"{topic}-none")
            except Exception as exc:
                log(f"baseline fastify-original: deleting topic {topic}: {exc!r}")
    assert code is not None
    return OriginalOutcome(shown(cmd), topic, result, code)


# ---------------------------------------------------------------------- the flash driver against Fastify hello


@dataclass
class PlainFlashOutcome:
    command: str
    exit_code: int
    report: dict[str, Any]  # bench/flash.py plain --json
    server_exit_code: int

    @property
    def p99_ms(self) -> float | None:
        value = self.report["burst"]["latency_ms"]["p99"]
        return float(value) if value is not None else None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.server_exit_code == 0


def fastify_flash(clients: int, workdir: Path) -> PlainFlashOutcome:
    """The flash driver's burst (bench/flash.py plain, `clients` fans) against the Fastify hello world."""
    port = free_port()
    server = ["node", "bench/fastify_hello.js", str(port)]
    out = workdir / "fastify-hello-flash.json"
    cmd = [PYTHON, "bench/flash.py", "plain", "--url", f"http://127.0.0.1:{port}/hello", "--clients", str(clients),
           "--json", str(out)]
    COMMANDS.add("baseline fastify-flash server", server)
    log(f"baseline fastify-flash: bench/flash.py plain, {clients} fans against the Fastify hello world")
    with BaselineServer(server, port, 30, 15) as hello_server:
        done = run("baseline fastify-flash (flash.py plain)", cmd, timeout=300, check=False)
    code = hello_server.exit_code
    assert code is not None
    if done.returncode == 2 or not out.exists():
        raise BenchError(f"flash.py plain could not run:\n{done.stdout}\n{done.stderr[-3000:]}")
    print(done.stdout, flush=True)
    return PlainFlashOutcome(shown(cmd), done.returncode, orjson.loads(out.read_bytes()), code)


# ---------------------------------------------------------------------- Redis admission script


@dataclass
class AdmitOutcome:
    batch: int
    command: str
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    admitted: int  # what the script really admitted (the stock it took)
    expected: int

    @property
    def admits_per_second(self) -> float:
        return self.calls_per_second * self.batch

    @property
    def passed(self) -> bool:
        return self.admitted == self.expected


def _admit_request(n: int) -> dict[str, Any]:
    """One booking request as RedisAdmission sends it (field names: redis_scripts/edge_admit.lua), with
    redis-benchmark's __rand_int__ placeholders so that every call admits new bookings for new users."""
    from ticketblitz.codec import booking_to_json
    from ticketblitz.domain.model import Booking

    now = time.time()
    booking = Booking(id=f"bkg_{n}___rand_int__", event_id=BENCH_EVENT, user_id=f"u-{n}-__rand_int__", quantity=1,
                      created_at=now, updated_at=now)
    return {"booking_id": booking.id, "event_id": BENCH_EVENT, "user_id": booking.user_id, "quantity": 1,
            "seats": [], "force": False, "record": booking_to_json(booking).decode()}


def redis_admission(urls: dict[str, str], requests_by_batch: dict[int, int], clients: int = 50) -> list[AdmitOutcome]:
    """redis-benchmark EVALSHA of the admit script, one run per batch size, in Redis db 2 (flushed)."""
    import redis

    from ticketblitz.adapters.redis_locks import load_lua

    port = str(int(urls["TICKETBLITZ_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]))
    client = redis.Redis.from_url(urls["TICKETBLITZ_REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}",
                                  socket_timeout=30, decode_responses=True)
    outcomes = []
    try:
        sha = client.script_load(load_lua("edge_common", "edge_admit"))
        for batch, requests in requests_by_batch.items():
            client.flushdb()
            client.set("tb:edge:ready", repr(time.time()))
            stock = f"tb:{{{BENCH_EVENT}}}:stock"
            client.hset(stock, mapping={"remaining": ADMIT_STOCK, "max_per_user": 4})
            payload = orjson.dumps([_admit_request(i) for i in range(batch)]).decode()
            cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", port, "--dbnum", str(REDIS_DB), "-n", str(requests),
                   "-c", str(clients), "-r", "1000000000", "--csv", "EVALSHA", sha, "0", payload, "86400",
                   repr(time.time())]  # ARGV: requests, pending-record TTL, time of admission
            log(f"baseline redis admission: {requests} EVALSHA calls of {batch} request(s)")
            label = f"baseline redis-benchmark batch {batch}"
            # a 256-request payload is ~100 KB: the report shows the first request and the count
            first = orjson.dumps([_admit_request(0)]).decode()
            COMMANDS.add(label, cmd if batch == 1 else [*cmd[:-3], f"{first[:-1]}, ... ({batch} such requests)]",
                                                         *cmd[-2:]])
            done = run(label, cmd, timeout=300, record=False)
            row = _csv_row(done.stdout)
            admitted = ADMIT_STOCK - int(client.hget(stock, "remaining") or 0)
            outcomes.append(AdmitOutcome(batch, COMMANDS.entries[-1][1], float(row["rps"]),
                                         float(row.get("p50_latency_ms", "nan")),
                                         float(row.get("p99_latency_ms", "nan")), admitted, requests * batch))
    finally:
        try:
            flush_redis(urls)
        finally:
            client.close()
    return outcomes


def _csv_row(text: str) -> dict[str, str]:
    """The numbers of redis-benchmark's last CSV row. Its first column repeats the command, JSON quotes
    unescaped, so the row is split from the right."""
    lines = [ln for ln in text.strip().splitlines() if ln.startswith('"')]
    if len(lines) < 2:
        raise BenchError(f"redis-benchmark printed no CSV row:\n{text}")
    header = [h.strip('"') for h in lines[0].split(",")]
    values = [v.strip('"') for v in lines[-1].rsplit(",", len(header) - 1)]
    return dict(zip(header, values, strict=True))


# ---------------------------------------------------------------------- pgbench


@dataclass
class PgbenchOutcome:
    command: str
    rows: int
    tps: float
    latency_ms: float | None
    claimed: int  # rows the run changed (conditional updates that found the seat available)
    transactions: int


SEATS_DDL = """
CREATE TABLE bench_seats (
    event_id text NOT NULL,
    position integer NOT NULL,
    id text NOT NULL,
    section text NOT NULL,
    row integer NOT NULL,
    number integer NOT NULL,
    status text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'held', 'sold')),
    booking_id text,
    user_id text,
    fence bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, position),
    UNIQUE (event_id, id),
    CHECK ((status = 'available') = (booking_id IS NULL)),
    CHECK ((booking_id IS NULL) = (user_id IS NULL))
)
"""
SEATS_FILL = """
INSERT INTO bench_seats (event_id, position, id, section, row, number)
SELECT 'evt_' || e, p, 'A-' || ((p - 1) / 200 + 1) || '-' || ((p - 1) %% 200 + 1), 'A', (p - 1) / 200 + 1,
       (p - 1) %% 200 + 1
FROM generate_series(1, %(events)s) AS e, generate_series(1, %(per_event)s) AS p
"""
SEATS_INDEXES = (
    "CREATE INDEX bench_seats_available ON bench_seats (event_id, position) WHERE status = 'available'",
    "CREATE INDEX bench_seats_owner ON bench_seats (event_id, user_id) WHERE user_id IS NOT NULL",
    "CREATE INDEX bench_seats_booking ON bench_seats (booking_id) WHERE booking_id IS NOT NULL",
)


def pgbench(urls: dict[str, str], rows: int, seconds: float, clients: int = 8, jobs: int = 2) -> PgbenchOutcome:
    """Create a scratch database with `bench_seats` (rows seats, events of up to 200,000), run pgbench
    -c 8 -j 2 -T seconds with bench/pgbench_claim.sql, drop the database."""
    import psycopg

    binary = pgbench_path()
    if binary is None:
        raise BenchError("pgbench not found")
    admin = urls["TICKETBLITZ_DATABASE_URL"]
    name = f"tb_bench_{secrets.token_hex(4)}"
    url = create_database(admin, name)
    try:
        per_event = min(rows, PGBENCH_EVENT_SEATS)
        events = max(1, rows // per_event)
        log(f"baseline pgbench: filling bench_seats with {events * per_event} rows in {name}")
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(SEATS_DDL)
            conn.execute(SEATS_FILL, {"events": events, "per_event": per_event})
            for ddl in SEATS_INDEXES:
                conn.execute(ddl)
            conn.execute("VACUUM ANALYZE bench_seats")
        parts = re.match(r"postgresql://([^:]+):([^@]*)@([^:/]+):(\d+)/", admin)
        if parts is None:
            raise BenchError("cannot read user, host and port from TICKETBLITZ_DATABASE_URL")
        user, password, host, port = parts.groups()
        cmd = [binary, "-h", host, "-p", port, "-U", user, "-n", "-c", str(clients), "-j", str(jobs),
               "-T", str(int(seconds)), "-f", "bench/pgbench_claim.sql", "-D", f"events={events}",
               "-D", f"per_event={per_event}", name]
        log(f"baseline pgbench: -c {clients} -j {jobs} -T {int(seconds)}")
        done = run("baseline pgbench", cmd, timeout=seconds + 120, env={"PGPASSWORD": password})
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
        processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
        if tps is None:
            raise BenchError(f"pgbench printed no tps:\n{done.stdout}\n{done.stderr}")
        with psycopg.connect(url, connect_timeout=10) as conn:
            claimed = conn.execute("SELECT count(*) FROM bench_seats WHERE status = 'held'").fetchone()
        return PgbenchOutcome(COMMANDS.entries[-1][1], events * per_event, float(tps.group(1)),
                              float(latency.group(1)) if latency else None, int(claimed[0]) if claimed else 0,
                              int(processed.group(1)) if processed else 0)
    finally:
        drop_database(admin, name)


def kafka_version() -> str:
    services = Path(os.environ.get("TB_SERVICES_DIR") or REPO / ".services")  # as scripts/services.sh reads it
    libs = (services if services.is_absolute() else REPO / services) / "kafka" / "libs"
    jars = sorted(libs.glob("kafka_*.jar"))
    match = re.match(r"kafka_([\d.]+)-(.+)\.jar", jars[0].name) if jars else None
    return f"{match.group(2)} (Scala {match.group(1)}, {jars[0].name})" if match else "unknown"
