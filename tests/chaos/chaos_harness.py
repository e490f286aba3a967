"""The chaos suite's machinery: a private PostgreSQL/Redis/Kafka set, `serve --workers 2` processes known
by PID, a burst client that records every answer, the checks of API.md after a fault, and the report.

Everything runs on 127.0.0.1, is bounded in time and count, and is stopped by PID. Nothing here touches
the default services of `make services` (other sessions' tests use them): the private set lives under
`.services/chaos/`, on ports of its own, and is driven through `scripts/services.sh` with
`TB_SERVICES_DIR` and the port variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import orjson
import trio

from ticketblitz.loadgen.client import socket_error_kind

ROOT = Path(__file__).resolve().parents[2]
SERVICES_SH = ROOT / "scripts" / "services.sh"
HOST = "127.0.0.1"
ADMIN_TOKEN = "chaos-admin-token"
ADMIN = f"Bearer {ADMIN_TOKEN}"
FINAL = {"held", "confirmed", "rejected", "expired", "cancelled"}
OWNING = {"held", "confirmed"}
RETRY_STATUSES = {429, 503}
POLL_SLACK = 0.5  # seconds between finality polls: a booking seen final this late may have been final in time
DB_USER = DB_PASSWORD = "ticketblitz"


def log(msg: str) -> None:
    """Progress on stderr (pytest shows it for failing tests; `make chaos` shows it live with -s)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ====================================================================== modes


@dataclass(frozen=True)
class Mode:
    """How big a run is. `short` runs in `make test`; `long` (TB_CHAOS_MODE=long, `make chaos`) sends more
    requests and repeats each fault."""

    name: str
    requests: int  # logical booking requests per scenario (each retried with its own Idempotency-Key)
    rate: float  # offered load, requests/s (open loop: request i is due at i / rate)
    lanes: int  # concurrent requests at most
    rows: int  # the event: one section of rows x 100 seats
    faults: int  # how many times the fault is injected per scenario
    fault_gap: float  # seconds between the end of one injection and the start of the next
    first_fault: float = 1.2  # seconds into the burst of the first injection
    attempt_timeout: float = 10.0  # one HTTP attempt
    max_attempts: int = 60  # per logical request
    max_request_time: float = 45.0  # per logical request, retries included
    final_within: float = 30.0  # API.md invariant 3: decided within 30 s of recovery
    ready_within: float = 60.0  # /readyz back to 200 after the fault ended (else: failure)
    scenario_budget: float = 240.0  # hard bound of one scenario, everything included
    late_grace: float = 30.0  # after a failed 30 s deadline: how long to watch whether they are decided late


SHORT = Mode("short", requests=2400, rate=600.0, lanes=256, rows=30, faults=1, fault_gap=0.0,
             max_request_time=30.0, late_grace=15.0)
LONG = Mode("long", requests=9000, rate=700.0, lanes=400, rows=110, faults=3, fault_gap=2.5,
            first_fault=1.5, scenario_budget=600.0)


def current_mode() -> Mode:
    name = os.environ.get("TB_CHAOS_MODE", "short").strip().lower()
    if name not in ("short", "long"):
        raise ValueError(f"TB_CHAOS_MODE={name!r}: use short or long")
    return LONG if name == "long" else SHORT


# ====================================================================== processes by PID


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them (trio spawns from worker
    threads, and /proc/<pid>/task/<tid>/children lists only that thread's children), plus a scan of every
    process's parent PID, which also catches children that a reading raced with."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(x) for x in f.read().split())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
    return sorted(found)


def kill_pid(pid: int, sig: int, needle: str) -> bool:
    """Signal `pid` only if it is alive and its command line contains `needle` (a reused PID is spared)."""
    if not pid_alive(pid) or needle not in cmdline(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Poll until every pid is gone (or a zombie); the ones still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_alive(p)]
        if left:
            time.sleep(0.05)
    return left


def client_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of the TCP connections of process `pid` to 127.0.0.1:remote_port (its socket inodes
    matched in /proc/net/tcp): which PostgreSQL sessions are this worker's."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes and int(parts[2].split(":")[1], 16) == remote_port:
                ports.add(int(parts[1].split(":")[1], 16))
    return ports


CHAOS_DIR = ROOT / ".services" / "chaos"
PIDS_FILE = CHAOS_DIR / "processes.pids"  # every server/proxy PID started, for a session killed without finalizers


def remember_pid(pid: int) -> None:
    CHAOS_DIR.mkdir(parents=True, exist_ok=True)
    with PIDS_FILE.open("a") as f:
        f.write(f"{pid}\n")


def kill_remembered() -> list[int]:
    """SIGKILL the servers/proxies a previous session left running (it died without its finalizers); only
    PIDs it recorded, only if their command line is still ours."""
    try:
        pids = [int(x) for x in PIDS_FILE.read_text().split() if x.isdigit()]
    except OSError:
        return []
    pids += [c for p in pids if "ticketblitz" in cmdline(p) for c in children(p)]  # workers not seen yet
    killed = [p for p in dict.fromkeys(pids)
              if kill_pid(p, signal.SIGKILL, "ticketblitz") or kill_pid(p, signal.SIGKILL, "stall_proxy")]
    wait_gone(killed, 10)
    PIDS_FILE.unlink(missing_ok=True)
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


# ====================================================================== private services


def _valid_kafka_libs(path: Path) -> bool:
    marker = path / ".pom.sha256"
    if not marker.is_file():
        return False
    import hashlib

    want = hashlib.sha256((ROOT / "scripts" / "kafka" / "pom.xml").read_bytes()).hexdigest()
    return marker.read_text().strip() == want


def kafka_libs_to_share() -> Path | None:
    """A complete Kafka jar cache to reuse read-only: $TB_KAFKA_LIBS, this checkout's default set, or the
    main worktree's (git worktrees share one .git). None: the private set fetches its own."""
    candidates = []
    if os.environ.get("TB_KAFKA_LIBS"):
        candidates.append(Path(os.environ["TB_KAFKA_LIBS"]))
    candidates.append(ROOT / ".services" / "kafka" / "libs")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if common:
            candidates.append(Path(common).parent / ".services" / "kafka" / "libs")
    return next((c for c in candidates if _valid_kafka_libs(c)), None)


PG_STAT_CONF = "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.max = 10000"


class PrivateServices:
    """PostgreSQL, Redis and Kafka of the chaos suite only: `.services/chaos`, free ports chosen at start.

    Started once per session (`up`), stopped by PID at the end (`down`, then SIGKILL of any recorded PID
    that is still alive). Faults go through `scripts/services.sh kill|start|restart-pg-immediate`.
    """

    NEEDLES = {"pg": "postgres", "redis": "redis-server", "kafka": "kafka.Kafka"}

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or ROOT / ".services" / "chaos"
        self.ports: dict[str, int] = {}
        self.known_pids: dict[str, set[int]] = {name: set() for name in self.NEEDLES}
        self.libs = kafka_libs_to_share()
        self.timings: dict[str, float] = {}
        self._lock: Any = None

    # ---------------------------------------------------------------- the script
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TB_", "TICKETBLITZ_"))}
        env.update({
            "TB_SERVICES_DIR": str(self.dir),
            "TB_KAFKA_HEAP": "-Xmx384m -Xms128m",
            "TB_KAFKA_WAIT": "90",
            "TB_PG_CONF_EXTRA": PG_STAT_CONF,
        })
        for name, var in (("pg", "TB_PG_PORT"), ("redis", "TB_REDIS_PORT"), ("kafka", "TB_KAFKA_PORT"),
                          ("kafka_controller", "TB_KAFKA_CONTROLLER_PORT")):
            if name in self.ports:
                env[var] = str(self.ports[name])
        if self.libs is not None:
            env["TB_KAFKA_LIBS"] = str(self.libs)
        return env

    def run_sync(self, *args: str, timeout: float = 180.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["bash", str(SERVICES_SH), *args], env=self.env(), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"services.sh {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    async def run(self, *args: str, within: float = 180.0) -> str:
        with trio.fail_after(within + 5):
            result = await trio.run_process(["bash", str(SERVICES_SH), *args], env=self.env(), capture_stdout=True,
                                            capture_stderr=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"services.sh {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout.decode()[-3000:]}\n{result.stderr.decode()[-3000:]}")
        self.record_pids()
        return result.stdout.decode()

    def record_pids(self) -> dict[str, int]:
        out = self.run_sync("pids", timeout=60, check=False).stdout
        pids = {}
        for line in out.splitlines():
            name, _, pid = line.partition(" ")
            if name in self.known_pids and pid.isdigit():
                pids[name] = int(pid)
                self.known_pids[name].add(int(pid))
        return pids

    # ---------------------------------------------------------------- lifetime
    def up(self) -> None:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        import fcntl

        self._lock = open(self.dir / "session.lock", "w")  # noqa: SIM115 - held for the whole session
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another chaos session uses {self.dir} (its lock is held); wait for it") from None
        for pid in kill_remembered():
            log(f"SIGKILL leftover process {pid} of an earlier session")
        if self.ports_file.exists():  # a session that died without its finalizer: stop what it left, by PID
            with contextlib.suppress(ValueError):
                self.ports = orjson.loads(self.ports_file.read_bytes())
            self.record_pids()
            self.run_sync("down", timeout=120, check=False)
            self.kill_leftovers()
        self.ports = {name: free_port() for name in ("pg", "redis", "kafka", "kafka_controller")}
        self.ports_file.write_bytes(orjson.dumps(self.ports))
        # Kafka starts from an empty log every session (topics of old runs would only slow its start).
        subprocess.run(["rm", "-rf", str(self.dir / "kafka" / "data")], check=True)
        self.run_sync("up", timeout=300)
        self.record_pids()
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database="ticketblitz")
        self.drop_old_databases()
        self.timings["up"] = time.monotonic() - t0
        log(f"private services up in {self.timings['up']:.1f}s: ports {self.ports}, pids {self.record_pids()}, "
            f"kafka jars {'shared from ' + str(self.libs) if self.libs else 'own'}")

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    def down(self) -> None:
        """Stop everything this set started, by the PIDs it recorded; SIGKILL what does not stop."""
        if self._lock is None:
            return  # the set belongs to another session (or was never started): leave it alone
        for pid in kill_remembered():  # servers/proxies still alive now leaked from a scenario: by PID
            log(f"SIGKILL leftover process {pid}")
        self.record_pids()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run_sync("down", timeout=120, check=False)
        self.kill_leftovers()
        with contextlib.suppress(OSError):
            self.ports_file.unlink()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def kill_leftovers(self) -> None:
        for name, pids in self.known_pids.items():
            for pid in pids:
                if kill_pid(pid, signal.SIGKILL, self.NEEDLES[name]):
                    log(f"SIGKILL leftover {name} pid {pid}")
        wait_gone([p for pids in self.known_pids.values() for p in pids], 10)

    # ---------------------------------------------------------------- PostgreSQL
    def admin_url(self, database: str = "ticketblitz") -> str:
        return f"postgresql://{DB_USER}:{DB_PASSWORD}@{HOST}:{self.ports['pg']}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self.run_sync("sql", "-d", database, "-tAc", statement, timeout=60).stdout

    def drop_old_databases(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tb_chaos_%'")]
            for name in names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def create_database(self, name: str) -> str:
        import psycopg

        for attempt in range(5):
            try:
                with psycopg.connect(self.admin_url(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        return self.admin_url(name)

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/0"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports['kafka']}"


# ====================================================================== a raw HTTP/1.1 client


class ClientError(Exception):
    """An attempt that got no HTTP answer; `kind` is what the report counts (timeout, connect_refused…)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


class _Parser:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.complete = False
        self._name = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def build_request(method: str, path: str, port: int, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
    payload = orjson.dumps(body) if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Accept: application/json",
             f"Content-Length: {len(payload)}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


_error_kind = socket_error_kind  # one naming of socket failures, the load generator's


class Connection:
    """One keep-alive connection to 127.0.0.1:port, (re)opened on demand; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None

    async def request(self, raw: bytes, within: float) -> Reply:
        phase = "connect"
        try:
            with trio.fail_after(within):
                if self.stream is None:
                    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
                    try:
                        await sock.connect((HOST, self.port))
                    except BaseException:
                        sock.close()
                        raise
                    self.stream = trio.SocketStream(sock)
                phase = "send"
                await self.stream.send_all(raw)
                phase = "receive"
                parser = _Parser()
                while not parser.complete:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        raise ClientError(f"{phase}_closed")
                    try:
                        parser.parser.feed_data(data)
                    except httptools.HttpParserError as exc:
                        raise ClientError("bad_response") from exc
                reply = Reply(parser.parser.get_status_code(), parser.headers, bytes(parser.body),
                              parser.parser.should_keep_alive())
        except trio.TooSlowError:
            await self.close()
            raise ClientError(f"{phase}_timeout") from None
        except ClientError:
            await self.close()
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.close()
            raise ClientError(_error_kind(phase, exc)) from exc
        if not reply.keep_alive:
            await self.close()
        return reply

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with contextlib.suppress(Exception):
                await stream.aclose()


async def http(port: int, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
               within: float = 10.0) -> Reply:
    """One request on a fresh connection."""
    conn = Connection(port)
    try:
        return await conn.request(build_request(method, path, port, body, headers), within)
    finally:
        await conn.close()


# ====================================================================== the servers


WORKER_LINE = re.compile(rb"worker (\d+) started \(pid (\d+)\)")


class Servers:
    """`python -m ticketblitz serve --workers 2` on a fixed port, possibly several generations (after a
    kill -9 of everything). Every supervisor and worker PID ever seen is remembered for the cleanup."""

    def __init__(self, env: dict[str, str], port: int, logdir: Path, workers: int = 2) -> None:
        self.env, self.port, self.logdir, self.workers = env, port, logdir, workers
        self.generation = 0
        self.proc: trio.Process | None = None
        self.logs: list[Path] = []
        self.supervisors: set[int] = set()
        self.seen_workers: set[int] = set()

    @property
    def log(self) -> Path:
        return self.logs[-1]

    async def spawn(self) -> None:
        self.generation += 1
        path = self.logdir / f"server-{self.generation}.log"
        self.logs.append(path)
        with path.open("ab") as out:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "ticketblitz", "serve", "--port", str(self.port),
                 "--workers", str(self.workers)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        self.supervisors.add(self.proc.pid)
        remember_pid(self.proc.pid)
        log(f"servers generation {self.generation}: supervisor pid {self.proc.pid}, log {path}")

    async def start(self, within: float = 90.0) -> None:
        await self.spawn()
        await self.wait_ready(within)

    async def wait_ready(self, within: float, in_a_row: int = 10) -> float:
        """Until `in_a_row` /readyz answers are 200 on fresh connections (spread over the workers) and every
        worker has logged its start; the time it took."""
        t0 = trio.current_time()
        ok = 0
        with trio.fail_after(within):
            while ok < in_a_row or len(self.worker_pids()) < self.workers:
                try:
                    r = await http(self.port, "GET", "/readyz", within=3)
                    ok = ok + 1 if r.status == 200 else 0
                except ClientError:
                    ok = 0
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"the supervisor exited {self.proc.returncode}:\n{self.tail()}")
                await trio.sleep(0.05)
        return trio.current_time() - t0

    def worker_lines(self, log: Path | None = None) -> list[tuple[int, int]]:
        """(index, pid) of every 'worker N started (pid P)' line of the current generation (or of `log`)."""
        try:
            text = (log or self.log).read_bytes()
        except OSError:
            return []
        found = [(int(m[1]), int(m[2])) for m in WORKER_LINE.finditer(text)]
        for _, pid in found:
            if pid not in self.seen_workers:
                self.seen_workers.add(pid)
                remember_pid(pid)
        return found

    def worker_pids(self) -> dict[int, int]:
        """index -> pid of the live workers of the current supervisor (log lines checked against /proc)."""
        if self.proc is None:
            return {}
        live = set(children(self.proc.pid))
        current: dict[int, int] = {}
        for index, pid in self.worker_lines():
            if pid in live:
                current[index] = pid
        return current

    def all_pids(self) -> list[int]:
        for log in self.logs:
            self.worker_lines(log)
        pids = set(self.supervisors) | set(self.seen_workers)
        for sup in self.supervisors:
            pids.update(children(sup))
        return sorted(pids)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    async def kill_all(self) -> list[int]:
        """kill -9 of the supervisor (first, so that it restarts nobody) and of its workers."""
        assert self.proc is not None
        workers = sorted(set(children(self.proc.pid)) | {p for _, p in self.worker_lines() if pid_alive(p)})
        victims = [self.proc.pid, *workers]
        for pid in victims:
            kill_pid(pid, signal.SIGKILL, "ticketblitz")
        with trio.fail_after(10):
            await self.proc.wait()
        left = await trio.to_thread.run_sync(wait_gone, workers, 10.0)
        assert not left, f"workers {left} survived SIGKILL"
        return victims

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the supervisor (it passes it on and waits); SIGKILL every known PID still alive after
        `grace`. The supervisor's exit code, None when it had to be killed."""
        code: int | None = None
        for pid in self.all_pids():  # a worker left stopped (SIGSTOP) would never act on SIGTERM
            kill_pid(pid, signal.SIGCONT, "ticketblitz")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                code = await self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        for pid in self.all_pids():
            if kill_pid(pid, signal.SIGKILL, "ticketblitz"):
                log(f"SIGKILL server pid {pid} (did not stop within {grace:g}s)")
                code = None
        if self.proc is not None and self.proc.poll() is None:
            with trio.move_on_after(10):
                await self.proc.wait()
        await trio.to_thread.run_sync(wait_gone, self.all_pids(), 10.0)
        return code


class StallProxy:
    """tests/chaos/stall_proxy.py as its own process, in front of the private Redis."""

    def __init__(self, upstream_port: int, logdir: Path) -> None:
        self.upstream_port, self.logdir = upstream_port, logdir
        self.proc: trio.Process | None = None
        self.port = self.control_port = 0

    async def start(self) -> None:
        port_file = self.logdir / "proxy.port"
        with (self.logdir / "proxy.log").open("ab") as out:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, str(Path(__file__).with_name("stall_proxy.py")), "--upstream-port",
                 str(self.upstream_port), "--port-file", str(port_file)], stdout=out, stderr=subprocess.STDOUT)
        remember_pid(self.proc.pid)
        with trio.fail_after(20):
            while not port_file.exists():
                assert self.proc.poll() is None, (self.logdir / "proxy.log").read_text()
                await trio.sleep(0.05)
        self.port, self.control_port = (int(x) for x in port_file.read_text().split())

    async def command(self, line: str) -> str:
        from stall_proxy import command

        return await command(self.control_port, line)

    async def stop(self) -> None:
        if self.proc is not None and kill_pid(self.proc.pid, signal.SIGKILL, "stall_proxy"):
            with trio.move_on_after(10):
                await self.proc.wait()


# ====================================================================== the burst


@dataclass(slots=True)
class Attempt:
    t0: float  # seconds since the burst began
    t1: float
    outcome: int | str  # the HTTP status, or a ClientError kind
    code: str | None = None  # the problem's `code`
    booking_id: str | None = None
    status: str | None = None  # the booking's status in the answer
    detail: str | None = None  # the problem's `detail` of a 5xx


@dataclass(slots=True)
class Req:
    i: int
    kind: str  # quantity | seats | async | probe
    key: str
    user: str
    raw: bytes
    seats: tuple[str, ...] = ()
    quantity: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    final: int | str | None = None

    @property
    def booking_ids(self) -> list[str]:
        return list(dict.fromkeys(a.booking_id for a in self.attempts if a.booking_id))

    @property
    def accepted(self) -> bool:
        return any(a.outcome in (200, 202) for a in self.attempts)

    def story(self, limit: int = 8) -> str:
        parts = [f"t={a.t0:.2f}s {a.outcome}{'/' + a.code if a.code else ''}"
                 f"{' ' + a.status if a.status else ''}" for a in self.attempts[:limit]]
        if len(self.attempts) > limit:
            parts.append(f"... {len(self.attempts) - limit} more, last {self.attempts[-1].outcome}")
        return "; ".join(parts)


def seat_id(position: int) -> str:
    """Seat ids of the one-section events used here: A-<row>-<number>, 100 seats per row, position 0-based."""
    return f"A-{position // 100 + 1}-{position % 100 + 1}"


def seat_number(seat: str) -> int:
    """The original's seatNumber (1-based position) of a seat id A-<row>-<number>."""
    _, row, number = seat.split("-")
    return (int(row) - 1) * 100 + int(number)


class Burst:
    """Thousands of booking requests, concurrent, paced open loop, each with its own Idempotency-Key and
    retried with the SAME key on 429/503/connection errors/timeouts (bounded), every answer recorded.

    The mix: best-available quantities (POST …/bookings), named seats (1-2 adjacent seats, a share of them
    in a small hot zone where the two workers' partitions meet), and the original's queued
    `/api/book-async` (no edge refusal)."""

    def __init__(self, port: int, event_id: str, capacity: int, mode: Mode, tag: str, seed: int) -> None:
        self.port, self.event_id, self.capacity, self.mode, self.tag = port, event_id, capacity, mode, tag
        rng = random.Random(seed)
        self.rng = rng
        self.reqs: list[Req] = []
        self.extra: list[Req] = []  # sent by a fault (probes), not by the lanes
        users = max(1, mode.requests * 3 // 4)  # a third of the users ask twice: limit_exceeded happens
        hot = min(200, capacity)
        for i in range(mode.requests):
            user = f"{tag}-u{i % users}"
            key = f"{tag}-{i}"
            roll = rng.random()
            if roll < 0.55:
                q = rng.choice((1, 1, 2, 2, 3))
                body = {"user_id": user, "quantity": q}
                self.reqs.append(Req(i, "quantity", key, user, self._bookings_raw(body, key), quantity=q))
            elif roll < 0.85:
                width = rng.choice((1, 2, 2))
                pos = rng.randrange(hot - 1) if rng.random() < 0.4 else rng.randrange(capacity - 1)
                if pos % 100 == 99:
                    pos -= 1  # keep a pair within its row
                seats = tuple(seat_id(pos + k) for k in range(width))
                body = {"user_id": user, "seat_ids": list(seats)}
                self.reqs.append(Req(i, "seats", key, user, self._bookings_raw(body, key), seats=seats,
                                     quantity=width))
            else:
                number = rng.randrange(1, hot + 1) if rng.random() < 0.3 else rng.randrange(1, capacity + 1)
                self.reqs.append(self.async_req(i, key, user, number))
        self.t0 = 0.0
        self.wall0 = 0.0
        self.next = 0
        self.in_flight = 0  # attempts sent and not answered
        self.open = 0  # logical requests started and not final (retry waits included)
        self.finished = trio.Event()
        self.deadline = math.inf
        self.done_at: float | None = None

    def _bookings_raw(self, body: dict[str, Any], key: str) -> bytes:
        return build_request("POST", f"/api/events/{self.event_id}/bookings", self.port, body,
                             {"Idempotency-Key": key})

    def async_req(self, i: int, key: str, user: str, number: int, kind: str = "async") -> Req:
        body = {"userId": user, "seatNumber": number, "eventId": self.event_id}
        raw = build_request("POST", "/api/book-async", self.port, body, {"Idempotency-Key": key})
        return Req(i, kind, key, user, raw, seats=(seat_id(number - 1),), quantity=1)

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def run(self, hard_deadline: float) -> None:
        """Send everything (at most until `hard_deadline`, trio clock); returns when every request is final."""
        self.t0 = trio.current_time()
        self.wall0 = time.time()
        self.deadline = hard_deadline
        with trio.move_on_at(hard_deadline):
            async with trio.open_nursery() as nursery:
                for _ in range(self.mode.lanes):
                    nursery.start_soon(self._lane)
        for r in self.reqs:
            if r.final is None:
                r.final = "gave_up_deadline" if r.attempts else "not_sent"
        self.done_at = self.now()
        self.finished.set()

    async def _lane(self) -> None:
        conn = Connection(self.port)
        try:
            while self.next < len(self.reqs):
                r = self.reqs[self.next]
                self.next += 1
                await trio.sleep_until(self.t0 + r.i / self.mode.rate)
                await self.send(r, conn)
        finally:
            await conn.close()

    async def send(self, r: Req, conn: Connection) -> None:
        """One logical request, with its retries."""
        self.open += 1
        start = trio.current_time()
        try:
            for n in range(self.mode.max_attempts):
                attempt = Attempt(self.now(), 0.0, "none")
                self.in_flight += 1
                try:
                    reply = await conn.request(r.raw, self.mode.attempt_timeout)
                except ClientError as exc:
                    attempt.outcome = exc.kind
                    reply = None
                finally:
                    self.in_flight -= 1
                attempt.t1 = self.now()
                retry_after = 0.0
                if reply is not None:
                    attempt.outcome = reply.status
                    body = reply.json()
                    if isinstance(body, dict):
                        attempt.code = body.get("code") if reply.status >= 400 else None
                        if reply.status >= 500:
                            attempt.detail = str(body.get("detail"))[:200]
                        booking = body.get("booking", body) if r.kind in ("async", "probe") else body
                        if reply.status in (200, 202) and isinstance(booking, dict):
                            attempt.booking_id = booking.get("id")
                            attempt.status = booking.get("status")
                    with contextlib.suppress(ValueError):
                        retry_after = min(2.0, float(reply.headers.get("retry-after", "0")))
                r.attempts.append(attempt)
                retryable = reply is None or reply.status in RETRY_STATUSES
                elapsed = trio.current_time() - start
                if not retryable or elapsed >= self.mode.max_request_time:
                    r.final = attempt.outcome
                    return
                pause = max(retry_after, min(1.0, 0.05 * 2 ** min(n, 5))) * (0.5 + self.rng.random())
                await trio.sleep(pause)
            r.final = r.attempts[-1].outcome
        finally:
            if r.final is None:  # cancelled by the hard deadline mid-request
                r.final = "gave_up_deadline"
            self.open -= 1

    # ---------------------------------------------------------------- results
    @property
    def all_reqs(self) -> list[Req]:
        return [*self.reqs, *self.extra]

    def accepted_ids(self) -> dict[str, Req]:
        out: dict[str, Req] = {}
        for r in self.all_reqs:
            for a in r.attempts:
                if a.outcome in (200, 202) and a.booking_id:
                    out.setdefault(a.booking_id, r)
        return out

    def final_codes(self) -> Counter[str]:
        return Counter(_label(r.final, r.attempts[-1].code if r.attempts else None) for r in self.all_reqs)

    def attempt_codes(self) -> Counter[str]:
        return Counter(_label(a.outcome, a.code) for r in self.all_reqs for a in r.attempts)


def _label(outcome: int | str | None, code: str | None) -> str:
    if isinstance(outcome, int) and outcome >= 400 and code:
        return f"{outcome} {code}"
    return str(outcome)


# ====================================================================== reading the truth


def _pg_rows(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]


async def pg_rows(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(_pg_rows, url, query, params)


async def booking_statuses(url: str, ids: Sequence[str]) -> dict[str, str]:
    rows = await pg_rows(url, "SELECT id, status FROM bookings WHERE id = ANY(%s::text[])", (list(ids),))
    return {r[0]: r[1] for r in rows}


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)


async def redis_call(url: str, fn: Callable[[Any], Any]) -> Any:
    def run() -> Any:
        client = _redis(url)
        try:
            return fn(client)
        finally:
            client.close()

    return await trio.to_thread.run_sync(run)


def _owners(described: dict[str, Any], topic: str) -> dict[int, str]:
    """partition -> client id of its member, from KafkaAdminClient.describe_groups()[group]."""
    owner: dict[int, str] = {}
    for member in described.get("members", []) or []:
        assignment = member.get("member_assignment") or {}
        for t in assignment.get("assigned_partitions", assignment.get("assignment", [])) or []:
            name = t.get("topic") if isinstance(t, dict) else t[0]
            plist = t.get("partitions") if isinstance(t, dict) else t[1]
            if name == topic:
                for p in plist:
                    owner[p] = str(member.get("client_id"))
    return owner


def _partition_pids(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """partition -> PID of the worker whose consumer has it (client ids are ticketblitz-consumer-<pid>)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tb-chaos-check", request_timeout_ms=5000)
    try:
        described = admin.describe_groups([group]).get(group, {})
    finally:
        admin.close()
    return {p: int(c.rsplit("-", 1)[1]) for p, c in _owners(described, topic).items() if c.rsplit("-", 1)[-1].isdigit()}


async def partition_pids(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    try:
        return await trio.to_thread.run_sync(_partition_pids, bootstrap, topic, group)
    except Exception as exc:
        log(f"consumer group unreadable: {exc!r}")
        return {}


def partition_of(key: str, partitions: int = 6) -> int:
    """The partition kafka-python's default partitioner gives a record key (murmur2, as the Java client)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _kafka_state(bootstrap: str, topic: str, group: str) -> str:
    """Per partition: log end offset, the group's committed offset (lag), and which member (client id, with
    the worker's PID) has it. Tells "never consumed" from "consumed and committed but not decided"."""
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tb-chaos-check", request_timeout_ms=10000)
    try:
        parts = [TopicPartition(topic, p) for p in range(6)]
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in parts})
        committed = admin.list_group_offsets({group: None}).get(group, {})
        described = admin.describe_groups([group]).get(group, {})
    finally:
        admin.close()
    owner = _owners(described, topic)
    lines = []
    for tp in parts:
        end = getattr(ends.get(tp), "offset", None)
        done = getattr(committed.get(tp), "offset", None)
        lag = end - done if isinstance(end, int) and isinstance(done, int) else "?"
        lines.append(f"p{tp.partition}: end {end}, committed {done}, lag {lag}, owner {owner.get(tp.partition, '-')}")
    return f"group {group} state {described.get('group_state', described.get('state', '?'))}: " + "; ".join(lines)


async def kafka_state(bootstrap: str, topic: str, group: str) -> str:
    try:
        return await trio.to_thread.run_sync(_kafka_state, bootstrap, topic, group)
    except Exception as exc:
        return f"kafka state unreadable: {exc!r}"


# ====================================================================== one scenario's run


@dataclass
class FaultRecord:
    n: int
    started: float  # seconds since the burst began
    ended: float
    in_flight: int  # attempts sent and unanswered at the start of the fault
    open: int  # logical requests not final at the start of the fault (retry waits included)
    ready_after: float | None = None  # fault end -> /readyz 200 (several in a row)
    notes: str = ""


@dataclass
class Outcome:
    """What one scenario measured and found; `failures` are the assertions that did not hold, with evidence."""

    scenario: str
    title: str
    mode: str
    requests: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    final_codes: Counter[str] = field(default_factory=Counter)
    attempt_codes: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    oversold: int = 0
    all_final_after: float | None = None  # last fault end -> every accepted booking final
    late: int = 0  # lost bookings decided after the deadline (within mode.late_grace)
    all_final_late: float | None = None  # when lost ones were all decided late: last fault end -> that
    ready_at_end: bool = False
    failures: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    duration: float = 0.0
    burst_time: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)

    def fail(self, what: str, detail: str = "") -> None:
        self.failures.append(f"{what}{': ' + detail if detail else ''}")
        log(f"FAIL [{self.scenario}] {what}{': ' + detail[:500] if detail else ''}")


FaultFn = Callable[["Run", int], Awaitable[tuple[float, str]]]


class Run:
    """One scenario: private database/topic/Redis state, servers, event, burst with the fault injected
    mid-burst (mode.faults times), then every check of API.md."""

    def __init__(self, scenario: str, title: str, services: PrivateServices, tmp: Path, mode: Mode,
                 fault: FaultFn, *, server_env: dict[str, str] | None = None, use_proxy: bool = False,
                 rate_factor: float = 1.0, requests_factor: float = 1.0, rows_factor: float = 1.0) -> None:
        if (rate_factor, requests_factor, rows_factor) != (1.0, 1.0, 1.0):  # a fault that needs traffic longer
            mode = dataclasses.replace(mode, rate=mode.rate * rate_factor,
                                       requests=int(mode.requests * requests_factor), rows=int(mode.rows * rows_factor))
        self.scenario, self.title, self.services, self.tmp, self.mode = scenario, title, services, tmp, mode
        self.fault = fault
        self.extra_env = server_env or {}
        self.use_proxy = use_proxy
        self.out = Outcome(scenario, title, mode.name)
        self.suffix = secrets.token_hex(3)
        self.db_url = ""
        self.port = free_port()
        self.servers: Servers | None = None
        self.proxy: StallProxy | None = None
        self.burst: Burst | None = None
        self.event_id = ""
        self.capacity = mode.rows * 100
        self.fault_state: dict[str, Any] = {}
        self.topic = ""
        self.final_seen: dict[str, float] = {}  # booking id -> when first seen final (trio clock)
        self.bg: trio.Nursery | None = None  # for a fault's background work (lives as long as the burst)
        self.late_notes: list[Callable[[], str]] = []  # appended to the fault notes after the checks
        self.after_checks: list[Callable[[], Awaitable[None]]] = []  # a scenario's own evidence

    # ---------------------------------------------------------------- set-up
    def server_env(self, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}
        topic = f"tb-chaos-{self.scenario}-{self.suffix}"
        env.update({
            "TICKETBLITZ_DATABASE_URL": self.db_url,
            "TICKETBLITZ_REDIS_URL": redis_url,
            "TICKETBLITZ_KAFKA_BOOTSTRAP": self.services.kafka_bootstrap,
            "TICKETBLITZ_KAFKA_TOPIC": topic,
            "TICKETBLITZ_KAFKA_GROUP": f"{topic}-group",
            "TICKETBLITZ_ADMIN_TOKEN": ADMIN_TOKEN,
            "TICKETBLITZ_SHUTDOWN_GRACE": "5",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    async def setup(self) -> None:
        db = f"tb_chaos_{self.scenario}_{self.suffix}"
        self.db_url = await trio.to_thread.run_sync(self.services.create_database, db)
        await redis_call(self.services.redis_url, lambda r: r.flushall())
        redis_url = self.services.redis_url
        if self.use_proxy:
            self.proxy = StallProxy(self.services.ports["redis"], self.tmp)
            await self.proxy.start()
            redis_url = f"redis://{HOST}:{self.proxy.port}/0"
        self.servers = Servers(self.server_env(redis_url), self.port, self.tmp)
        t0 = trio.current_time()
        await self.servers.start()
        log(f"[{self.scenario}] servers ready in {trio.current_time() - t0:.1f}s on port {self.port}, "
            f"workers {self.servers.worker_pids()}")
        r = await http(self.port, "POST", "/api/events", {
            "name": f"chaos {self.scenario}", "sections": [{"name": "A", "rows": self.mode.rows,
                                                            "seats_per_row": 100, "price_cents": 1000}],
            "max_per_user": 4, "hold_seconds": 3600}, headers={"Authorization": ADMIN}, within=30)
        assert r.status == 201, (r.status, r.body[:500])
        self.event_id = r.json()["id"]

    async def teardown(self) -> None:
        with trio.CancelScope(shield=True):
            if self.servers is not None:
                code = await self.servers.stop()
                if code not in (0, None):
                    self.out.evidence.append(f"supervisor exited {code} on SIGTERM")
            if self.proxy is not None:
                await self.proxy.stop()

    # ---------------------------------------------------------------- the burst with its faults
    async def execute(self) -> Outcome:
        t_start = trio.current_time()
        try:
            with trio.fail_after(self.mode.scenario_budget):
                await self.setup()
                await self.burst_with_faults()
                await self.check()
                for extra in self.after_checks:
                    await extra()
                for note in self.late_notes:
                    self.out.evidence.append(note())
        except trio.TooSlowError:
            self.out.fail("scenario budget exceeded",
                          f"{self.mode.scenario_budget:g}s; servers' log tail:\n"
                          f"{self.servers.tail(2000) if self.servers else ''}")
        except Exception as exc:  # the harness itself (or a service script) failed: report it with the rest
            import traceback

            self.out.fail(f"the scenario could not run: {exc!r}", "".join(traceback.format_exc(limit=6))[-2000:])
        finally:
            await self.teardown()
            self.out.duration = trio.current_time() - t_start
        return self.out

    async def burst_with_faults(self) -> None:
        assert self.servers is not None
        self.burst = burst = Burst(self.port, self.event_id, self.capacity, self.mode, f"{self.scenario}{self.suffix}",
                                   seed=hash(self.scenario) & 0xFFFF)
        self.out.requests = len(burst.reqs)
        self.topic = self.servers.env["TICKETBLITZ_KAFKA_TOPIC"]
        nominal = len(burst.reqs) / self.mode.rate
        hard = trio.current_time() + nominal + self.mode.max_request_time + 20

        async def faults() -> None:
            await trio.sleep(self.mode.first_fault)
            for n in range(self.mode.faults):
                if n:
                    await trio.sleep(self.mode.fault_gap)
                record = FaultRecord(n + 1, burst.now(), 0.0, burst.in_flight, burst.open)
                log(f"[{self.scenario}] fault {n + 1} at t={record.started:.2f}s: {record.in_flight} in flight, "
                    f"{record.open} open")
                end, notes = await self.fault(self, n)
                record.ended, record.notes = end - burst.t0, notes
                self.out.faults.append(record)
                record.ready_after = await self.wait_ready(end)
                log(f"[{self.scenario}] fault {n + 1} ended t={record.ended:.2f}s, ready after "
                    f"{record.ready_after if record.ready_after is not None else 'never'} s; {notes}")

        async with trio.open_nursery() as nursery:
            self.bg = nursery
            nursery.start_soon(burst.run, hard)
            await faults()
            nursery.start_soon(self.track_final)
        self.bg = None
        self.out.burst_time = burst.done_at or 0.0
        await self.book_after_recovery()

    async def book_after_recovery(self, within: float = 5.0) -> None:
        """Once the burst is over: one fresh booking request must get an answer within `within` s, and
        not a 5xx (the server still books). Tracked like the burst's requests (finality, edge, keys)."""
        burst = self.burst
        assert burst is not None
        key = f"{burst.tag}-after"
        raw = build_request("POST", f"/api/events/{self.event_id}/bookings", self.port,
                            {"user_id": key, "quantity": 1}, {"Idempotency-Key": key})
        r = Req(len(burst.reqs) + 10_000, "after", key, key, raw, quantity=1)
        burst.extra.append(r)
        attempt = Attempt(burst.now(), 0.0, "none")
        conn = Connection(self.port)
        try:
            reply = await conn.request(raw, within)
            attempt.outcome = reply.status
            body = reply.json() if isinstance(reply.json(), dict) else {}
            attempt.code = body.get("code") if reply.status >= 400 else None
            attempt.detail = str(body.get("detail"))[:300] if reply.status >= 500 else None
            if reply.status in (200, 202):
                attempt.booking_id, attempt.status = body.get("id"), body.get("status")
        except ClientError as exc:
            attempt.outcome = exc.kind
        finally:
            await conn.close()
        attempt.t1 = burst.now()
        r.attempts.append(attempt)
        r.final = attempt.outcome
        if not isinstance(attempt.outcome, int) or attempt.outcome >= 500:
            self.out.fail(f"a fresh booking request after recovery got no good answer within {within:g}s",
                          f"{attempt.outcome}{'/' + attempt.code if attempt.code else ''} after "
                          f"{attempt.t1 - attempt.t0:.1f}s (t={attempt.t0:.1f}s, /readyz said ready)"
                          + (f", detail {attempt.detail!r}" if attempt.detail else ""))

    async def wait_ready(self, since: float, in_a_row: int = 5) -> float | None:
        """Seconds from `since` (trio clock) until /readyz answered 200 `in_a_row` times on fresh
        connections (counted from the first of them's answer, which may wait in the listen backlog until a
        worker accepts); None if not within mode.ready_within."""
        ok, first_ok = 0, None
        with trio.move_on_at(since + self.mode.ready_within):
            while ok < in_a_row:
                try:
                    r = await http(self.port, "GET", "/readyz", within=3)
                    good = r.status == 200
                except ClientError:
                    good = False
                t = trio.current_time()
                if good:
                    first_ok = t if ok == 0 else first_ok
                    ok += 1
                else:
                    ok, first_ok = 0, None
                await trio.sleep(0.05)
            assert first_ok is not None
            return max(0.0, first_ok - since)
        return None

    # ---------------------------------------------------------------- the checks
    async def check(self) -> None:
        burst, out = self.burst, self.out
        assert burst is not None and self.servers is not None
        out.final_codes = burst.final_codes()
        out.attempt_codes = burst.attempt_codes()
        accepted = burst.accepted_ids()
        out.accepted = len(accepted)
        last_end = burst.t0 + max((f.ended for f in out.faults), default=0.0)
        last_ready = max((f.ready_after or 0.0 for f in out.faults), default=0.0)
        recovered = last_end + last_ready
        # each booking: final within 30 s of recovery, or of its acceptance when that came later
        due = {i: max(recovered, burst.t0 + min(a.t1 for a in r.attempts if a.booking_id == i
                                                and a.outcome in (200, 202))) + self.mode.final_within
               for i, r in accepted.items()}

        # 1. every booking answered 202/200 is final within 30 s of recovery (read from the store: the truth;
        # polled since the last fault ended, see track_final)
        ids = list(accepted)
        while True:
            await self.poll_final(ids)
            now = trio.current_time()
            if all(i in self.final_seen for i in ids) or now >= max(due.values(), default=now):
                break
            await trio.sleep(0.25)
        lost = [i for i in ids if self.final_seen.get(i, math.inf) > due[i] + POLL_SLACK]
        if all(i in self.final_seen for i in ids):
            out.all_final_after = max(self.final_seen.values(), default=last_end) - last_end
        out.lost = lost
        if lost:
            detail = await self.explain_lost(lost, accepted)
            late = await self.watch_late(lost, last_end)
            out.fail(f"{len(lost)} of {len(ids)} accepted bookings (202/200) not final "
                     f"{self.mode.final_within:g}s after recovery ({late})", detail)

        # 2. store invariants (tests/invariants.py) and oversold seats
        await self.check_store()
        # 3. the edge counters in Redis agree with the store
        await self.check_edge()
        # 4. Idempotency-Keys: one booking per key, in the answers and in the store; refusals created nothing
        await self.check_keys()
        # 5. the HTTP API agrees with the store (admin token)
        await self.check_http(ids)
        # 6. /readyz back to 200 (and each fault's recovery)
        for f in out.faults:
            if f.ready_after is None:
                out.fail(f"/readyz not 200 within {self.mode.ready_within:g}s after fault {f.n} ended")
        out.ready_at_end = await self.wait_ready(trio.current_time(), in_a_row=10) is not None
        if not out.ready_at_end:
            out.fail("/readyz not back to 200 at the end")
        # 7. no 5xx but 503 (a valid request never crashes the server)
        bad = {k: v for k, v in out.attempt_codes.items() if k[:1] == "5" and not k.startswith("503")}
        if bad:
            out.fail("answers 5xx other than 503", str(bad))
        self.unavailable_details()
        self.log_evidence()

    async def poll_final(self, ids: Sequence[str]) -> None:
        """Note when each of these bookings is first seen final in the store."""
        left = [i for i in ids if i not in self.final_seen]
        if not left:
            return
        t = trio.current_time()
        try:
            statuses = await booking_statuses(self.db_url, left)
        except Exception as exc:  # the store may be down or recovering: try again at the next poll
            log(f"[{self.scenario}] store read failed: {exc!r}")
            return
        for i in left:
            if statuses.get(i) in FINAL:
                self.final_seen[i] = t

    async def track_final(self) -> None:
        """While the burst goes on after the last fault: when does each accepted booking become final?"""
        burst = self.burst
        assert burst is not None
        while not burst.finished.is_set():
            await self.poll_final(list(burst.accepted_ids()))
            with trio.move_on_after(POLL_SLACK):
                await burst.finished.wait()

    async def watch_late(self, lost: list[str], last_end: float) -> str:
        """After the deadline: are the lost bookings decided late, or never? (bounded: mode.late_grace)"""
        t0 = trio.current_time()
        left = list(lost)
        with trio.move_on_after(self.mode.late_grace):
            while left:
                await trio.sleep(0.5)
                with contextlib.suppress(Exception):
                    statuses = await booking_statuses(self.db_url, left)
                    left = [i for i in left if statuses.get(i) not in FINAL]
        waited = trio.current_time() - t0
        self.out.late = len(lost) - len(left)
        if not left:
            self.out.all_final_late = trio.current_time() - last_end
            self.out.all_final_after = None
            return f"all decided late, {waited:.1f}s after the deadline"
        return (f"{len(lost) - len(left)} decided within {waited:.0f}s more, {len(left)} still not final "
                f"{self.mode.final_within + waited:.0f}s after recovery")

    def unavailable_details(self) -> None:
        burst = self.burst
        assert burst is not None
        details = Counter(re.sub(r"\b(bkg|evt)_\w+|\d+(\.\d+)?", "#", a.detail or "")
                          for r in burst.all_reqs for a in r.attempts if a.outcome == 503)
        if details:
            self.out.evidence.append("503 details: " + "; ".join(f"{n}x {d!r}" for d, n in details.most_common(4)))

    async def explain_lost(self, lost: list[str], accepted: dict[str, Req], limit: int = 12) -> str:
        lines = []
        def pending_state(r: Any, i: str) -> str:
            key = f"tb:pending:{i}"
            kind = r.type(key)
            if kind == "hash":
                return f"present (queued={r.hget(key, 'queued')})"
            return "present" if kind != "none" else "absent"

        pending_keys = await redis_call(self.services.redis_url, lambda r: [
            pending_state(r, i) for i in lost[:limit]])
        res = await redis_call(self.services.redis_url,
                               lambda r: r.hmget(f"tb:{{{self.event_id}}}:res", lost[:limit]) if lost else [])
        stored = {}
        with contextlib.suppress(Exception):
            stored = {r[0]: r[1] for r in await pg_rows(
                self.db_url, "SELECT id, status FROM bookings WHERE id = ANY(%s::text[])", (lost[:limit],))}
        for n, i in enumerate(lost[:limit]):
            r = accepted[i]
            try:
                got = await http(self.port, "GET", f"/api/bookings/{i}", headers={"Authorization": ADMIN}, within=5)
                http_answer = f"{got.status} {(got.json() or {}).get('status') or (got.json() or {}).get('code')}"
            except ClientError as exc:
                http_answer = exc.kind
            mentions = [line for line in self.servers.log_text().splitlines() if i in line][:3] if self.servers else []
            lines.append(
                f"\n  - {i} ({r.kind}, key {r.key}): store {stored.get(i, 'absent')}, redis tb:pending "
                f"{pending_keys[n]}, reservation {'present' if res[n] else 'absent'}, "
                f"GET now {http_answer}; answers: {r.story()}"
                + (f"; log: {' | '.join(m[-200:] for m in mentions)}" if mentions else ""))
        if len(lost) > limit:
            lines.append(f"\n  - ... and {len(lost) - limit} more")
        state = await kafka_state(self.services.kafka_bootstrap, self.topic, f"{self.topic}-group")
        lines.append(f"\n  - kafka: {state}")
        by_kind = Counter(accepted[i].kind for i in lost)
        by_story = Counter("retried after " + "/".join(sorted({str(a.outcome) for a in accepted[i].attempts[:-1]}))
                           if len(accepted[i].attempts) > 1 else "first answer" for i in lost)
        return f"by kind {dict(by_kind)}, {dict(by_story)}" + "".join(lines)

    async def check_store(self) -> None:
        from invariants import check_store_invariants

        from ticketblitz.adapters.postgres_store import PostgresStore

        out = self.out
        rows = await pg_rows(self.db_url, "SELECT id, status, seat_ids, quantity FROM bookings WHERE event_id = %s",
                             (self.event_id,))
        out.statuses = Counter(r[1] for r in rows)
        owners: dict[str, list[str]] = {}
        for bid, status, seats, _q in rows:
            if status in OWNING:
                for s in seats:
                    owners.setdefault(s, []).append(bid)
        doubled = {s: b for s, b in owners.items() if len(b) > 1}
        out.oversold = len(doubled)
        if doubled:
            out.fail(f"{len(doubled)} seats in two held/confirmed bookings",
                     ", ".join(f"{s}: {b}" for s, b in list(doubled.items())[:10]))
        store = PostgresStore(self.db_url)
        await store.open()
        try:
            await check_store_invariants(store, self.event_id)
        except AssertionError as exc:
            out.fail("store invariants (tests/invariants.py check_store_invariants)", str(exc).split("\n")[0][:800])
        finally:
            await store.close()

    async def check_edge(self) -> None:
        """tb:{EVT}:stock remaining == the store's available count; tb:{EVT}:taken == held+sold seats (and their
        owners); no reservation left (tb:{EVT}:res) once nothing is pending; per-user counts agree."""
        evt = self.event_id
        mismatch: list[str] = []
        for _ in range(20):  # the edge settles just after the store commits: give it a few seconds
            mismatch = []
            available = (await pg_rows(self.db_url, "SELECT available FROM events WHERE id = %s", (evt,)))[0][0]
            seat_rows = await pg_rows(self.db_url, "SELECT id, booking_id, user_id FROM seats WHERE event_id = %s "
                                      "AND status <> 'available'", (evt,))
            store_taken = {r[0]: r[1] for r in seat_rows}
            store_users = Counter(r[2] for r in seat_rows)

            def read(r: Any) -> tuple[Any, ...]:
                return (r.exists("tb:edge:ready"), r.hgetall(f"tb:{{{evt}}}:stock"), r.hgetall(f"tb:{{{evt}}}:taken"),
                        r.hgetall(f"tb:{{{evt}}}:res"), r.hgetall(f"tb:{{{evt}}}:users"))

            ready, stock, taken, res, users = await redis_call(self.services.redis_url, read)
            # Reservations of bookings still undecided (lost ones, already reported) are legitimate: take them
            # out, so that what is compared is the edge's view of the decided bookings only.
            decided = await booking_statuses(self.db_url, list(res)) if res else {}
            undecided = {b: orjson.loads(v) for b, v in res.items() if decided.get(b) not in FINAL}
            held_back = sum(int(v.get("quantity", 0)) for v in undecided.values())
            taken = {seat: b for seat, b in taken.items() if b not in undecided}
            res = {b: v for b, v in res.items() if b not in undecided}
            users = dict(users)
            for v in undecided.values():
                u = str(v.get("user_id"))
                users[u] = str(int(users.get(u, 0)) - int(v.get("quantity", 0)))
                if int(users[u]) == 0:
                    del users[u]
            if stock.get("remaining") is not None:
                stock = {**stock, "remaining": str(int(stock["remaining"]) + held_back)}
            if not ready:
                mismatch.append("tb:edge:ready is absent (edge not rebuilt)")
            remaining = stock.get("remaining")
            if remaining is None or int(remaining) != available:
                mismatch.append(f"tb:{{{evt}}}:stock remaining={remaining} but the store has {available} available")
            if set(taken) != set(store_taken):
                extra = sorted(set(taken) - set(store_taken))
                missing = sorted(set(store_taken) - set(taken))
                mismatch.append(f"tb:{{{evt}}}:taken has {len(taken)} seats, the store {len(store_taken)} "
                                f"held+sold: {len(extra)} only in Redis {extra[:8]}, {len(missing)} only in the "
                                f"store {missing[:8]}")
            wrong_owner = [(s, taken[s], b) for s, b in store_taken.items() if s in taken and taken[s] != b]
            if wrong_owner:
                mismatch.append(f"{len(wrong_owner)} seats with another owner in tb:…:taken than in the store: "
                                f"{wrong_owner[:5]}")
            if res:
                mismatch.append(f"{len(res)} reservations left in tb:{{{evt}}}:res for bookings already decided: "
                                f"{[(b, decided.get(b)) for b in list(res)[:5]]}")
            redis_users = {u: int(n) for u, n in users.items()}
            if redis_users != dict(store_users):
                diff = [(u, redis_users.get(u), store_users.get(u)) for u in set(redis_users) | set(store_users)
                        if redis_users.get(u) != store_users.get(u)]
                mismatch.append(f"{len(diff)} users whose seat count differs (user, redis, store): {diff[:5]}")
            if not mismatch:
                if undecided:
                    self.out.evidence.append(f"edge: {len(undecided)} reservations of undecided bookings "
                                             f"({held_back} seats) left out of the comparison")
                return
            await trio.sleep(0.25)
        for m in mismatch:
            self.out.fail("edge counters disagree with the store", m)

    async def check_keys(self) -> None:
        burst, out = self.burst, self.out
        assert burst is not None
        rows = await pg_rows(self.db_url, "SELECT idem_key, id, status, reason FROM bookings WHERE event_id = %s",
                             (self.event_id,))
        by_key: dict[str | None, list[tuple[str, str, str | None]]] = {}
        for key, bid, status, reason in rows:
            by_key.setdefault(key, []).append((bid, status, reason))
        twice = {k: v for k, v in by_key.items() if k is not None and len(v) > 1}
        if twice:
            out.fail(f"{len(twice)} Idempotency-Keys with two bookings in the store", str(list(twice.items())[:5]))
        if by_key.get(None):
            kinds = Counter(f"{st}/{reason}" if reason else st for _, st, reason in by_key[None])
            out.fail(f"{len(by_key[None])} bookings in the store without an Idempotency-Key, announced by no "
                     f"answer (every request sent a key; API.md: a 503 accepts nothing) by status {dict(kinds)}",
                     str(by_key[None][:5]))
        reqs = {r.key: r for r in burst.all_reqs}
        fresh_repeat = [r for r in reqs.values() if r.attempts and r.attempts[0].outcome == 200]
        if fresh_repeat:
            out.fail(f"{len(fresh_repeat)} requests answered 200 (an Idempotency-Key repeat) on their very first "
                     "attempt, with a key never sent before", "; ".join(f"{r.key} -> {r.booking_ids} ({r.story(3)})"
                                                               for r in fresh_repeat[:5]))
        answered_two = [r for r in reqs.values() if len(r.booking_ids) > 1]
        if answered_two:
            out.fail(f"{len(answered_two)} Idempotency-Keys answered with two booking ids",
                     "; ".join(f"{r.key}: {r.booking_ids} ({r.story()})" for r in answered_two[:5]))
        # a refusal (409/4xx) or a final 503/give-up must not have created a booking (API.md: "nothing was
        # accepted", "None of these creates a booking")
        orphans = []
        for key, stored in by_key.items():
            r = reqs.get(key or "")
            if r is None or r.accepted:
                continue
            orphans.append(f"{key} ({r.kind}) final {r.final}, store {stored[0][0]} {stored[0][1]}"
                           f"{'/' + stored[0][2] if stored[0][2] else ''}; answers: {r.story()}")
        if orphans:
            kinds = Counter(str(reqs[o.split(' ')[0]].final) for o in orphans)
            out.fail(f"{len(orphans)} bookings stored for requests never answered 202/200 (by final answer "
                     f"{dict(kinds)})", "\n  - " + "\n  - ".join(orphans[:8]))
        stored_ids = {bid for v in by_key.values() for bid, _, _ in v}
        unknown = [i for i in burst.accepted_ids() if i not in stored_ids]
        if unknown and not out.lost:
            out.fail(f"{len(unknown)} accepted booking ids not in the store", str(unknown[:5]))

    async def check_http(self, ids: list[str]) -> None:
        """GET /api/bookings/{id} with the admin token agrees with the store for every accepted booking."""
        try:
            stored = await booking_statuses(self.db_url, ids)
        except Exception as exc:
            self.out.fail("store unreadable for the HTTP cross-check", repr(exc))
            return
        wrong: list[str] = []
        queue = list(ids)

        async def worker() -> None:
            conn = Connection(self.port)
            try:
                while queue:
                    i = queue.pop()
                    raw = build_request("GET", f"/api/bookings/{i}", self.port, None, {"Authorization": ADMIN})
                    try:
                        r = await conn.request(raw, 10)
                    except ClientError as exc:
                        wrong.append(f"{i}: {exc.kind}")
                        continue
                    status = (r.json() or {}).get("status") if r.status == 200 else None
                    if r.status != 200 or status != stored.get(i):
                        wrong.append(f"{i}: GET {r.status} {status or (r.json() or {}).get('code')}, "
                                     f"store {stored.get(i, 'absent')}")
            finally:
                await conn.close()

        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(worker)
        if wrong:
            self.out.fail(f"{len(wrong)} bookings whose GET (admin token) disagrees with the store",
                          "; ".join(wrong[:8]))

    def log_evidence(self) -> None:
        assert self.servers is not None
        text = self.servers.log_text()
        lines = [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line
                 or "Traceback" in line or "died with" in line]
        if lines:
            kinds = Counter(re.sub(r"\b(bkg|evt)_\w+|\d+(\.\d+)?", "#", line.split(": ", 1)[-1])[:160]
                            for line in lines)
            self.out.evidence.append(f"server logs: {len(lines)} ERROR/WARNING lines; most frequent:\n"
                                     + "\n".join(f"    {n}x {k}" for k, n in kinds.most_common(6)))
        tracebacks: dict[str, tuple[int, str]] = {}
        all_lines = text.splitlines()
        for n, line in enumerate(all_lines):
            if not line.startswith("Traceback"):
                continue
            before = all_lines[n - 1][-220:] if n else ""
            end = n + 1
            while end < len(all_lines) and (all_lines[end].startswith((" ", "Traceback", "During handling",
                                                                         "The above exception")) or not all_lines[end]):
                end += 1
            last = all_lines[end][:300] if end < len(all_lines) else ""
            frames = [x.strip() for x in all_lines[n:end] if x.strip().startswith("File ")][-2:]
            key = re.sub(r"\b(bkg|evt)_\w+|\d+", "#", last)
            count, _ = tracebacks.get(key, (0, ""))
            tracebacks[key] = (count + 1, f"after `{before}`: {' / '.join(frames)} -> `{last}`")
        for count, sample in list(tracebacks.values())[:4]:
            self.out.evidence.append(f"traceback ({count}x) {sample}")
        self.out.evidence.append("server logs: " + ", ".join(str(p) for p in self.servers.logs))


# ====================================================================== the report


def fmt_codes(codes: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))


def fmt_s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


def table(outcomes: Sequence[Outcome]) -> str:
    head = ("| fault | requests | in flight when hit (sent / open) | final answers by code | accepted | lost | "
            "oversold | recovery: ready after (s) | all final after (s) | result |\n"
            "|---|---:|---|---|---:|---:|---:|---|---:|---|\n")
    rows = []
    for o in outcomes:
        flights = " ; ".join(f"{f.in_flight} / {f.open}" for f in o.faults) or "—"
        ready = " ; ".join(fmt_s(f.ready_after) for f in o.faults) or "—"
        lost = f"{len(o.lost)}" + (f" ({o.late} late)" if o.late else "")
        final = fmt_s(o.all_final_after) if o.all_final_late is None else f"never ({o.all_final_late:.1f} late)"
        rows.append(f"| ({o.scenario}) {o.title} | {o.requests} | {flights} | {fmt_codes(o.final_codes)} | "
                    f"{o.accepted} | {lost} | {o.oversold} | {ready} | {final} | "
                    f"{'PASS' if not o.failures else f'FAIL ({len(o.failures)})'} |")
    return head + "\n".join(rows) + "\n"


def report(outcomes: Sequence[Outcome], started: float, mode: Mode, services: PrivateServices | None) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    parts = [f"# Chaos suite, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}\n",
             f"Mode `{mode.name}` ({mode.requests} requests per scenario at {mode.rate:g}/s offered, "
             f"{mode.lanes} concurrent, fault x{mode.faults}), commit `{commit}`, `serve --workers 2`, "
             f"private PostgreSQL/Redis/Kafka (`.services/chaos`), 127.0.0.1 only. "
             f"Total {time.time() - started:.0f} s"
             + (f" (services up {services.timings.get('up', 0):.0f} s)" if services else "") + ".\n",
             "In flight: attempts sent and unanswered / logical requests not final (retry waits included) when the "
             "fault began. Lost: answered 202/200, not final 30 s after recovery. Recovery: fault end -> "
             "/readyz 200 five times in a row; all final: last fault end -> every accepted booking decided "
             "(read from PostgreSQL); \"late\": decided after the 30 s, within the extra watch.\n", table(outcomes)]
    for o in outcomes:
        parts.append(f"\n## ({o.scenario}) {o.title}: {'PASS' if not o.failures else 'FAIL'}\n")
        parts.append(f"- duration {o.duration:.1f} s (burst {o.burst_time:.1f} s); store statuses "
                     f"{fmt_codes(o.statuses)}")
        parts.append(f"- every attempt by code: {fmt_codes(o.attempt_codes)}")
        for f in o.faults:
            parts.append(f"- fault {f.n}: t={f.started:.2f}s..{f.ended:.2f}s, {f.notes}")
        for failure in o.failures:
            parts.append(f"- **FAILED** {failure}")
        for e in o.evidence:
            parts.append(f"- {e}")
    return "\n".join(parts) + "\n"


def write_report(outcomes: Sequence[Outcome], started: float, mode: Mode, services: PrivateServices | None,
                 subset: str = "") -> Path:
    """bench/results/chaos-<UTC date>.md; a run of only some scenarios writes chaos-<date>-<those>.md instead,
    so that it never replaces the report of a whole run (nor a long run the short one's)."""
    suffix = ("-long" if mode.name == "long" else "") + (f"-{subset}" if subset else "")
    path = ROOT / "bench" / "results" / f"chaos-{time.strftime('%Y-%m-%d', time.gmtime(started))}{suffix}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report(outcomes, started, mode, services))
    return path
