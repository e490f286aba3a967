"""The TicketBlitz servers of the matrix, each started by the benchmark as a subprocess on a free port:

- `embedded`: one process, SQLite under a temporary data dir, in-process queue and locks;
- `distributed1` / `distributed2`: PostgreSQL (a fresh `tb_bench_<hex>` database), Redis (db 2, flushed),
  Kafka (topic `bench-<hex>`, group `bench-group-<hex>`) with 1 or 2 server processes (`--workers 2`).

`Server` waits for `/readyz`, stops the server with SIGTERM and checks that it exits 0, and keeps its log;
`Scratch` makes and removes the distributed server's database, Redis state and Kafka topics; `StoreReader`
reads the bookings' timestamps straight from the store for the decision rates.
"""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import (
    COMMANDS,
    HOST,
    PYTHON,
    REPO,
    BenchError,
    children,
    cpu_seconds,
    free_port,
    log,
    run,
    stop_process,
    wait_http_ok,
)

REDIS_DB = 2  # the benchmark's own Redis database (the test suites use 1, 3 and 4)
ADMIN_TOKEN = "bench-" + secrets.token_hex(8)
START_TIMEOUT = 90.0  # the distributed server joins a Kafka group and creates topics
STOP_TIMEOUT = 40.0  # shutdown_grace (10 s) to drain, plus Kafka's goodbyes
SERVICE_VARS = ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP")
# what the report quotes from a server's log: errors, warnings, and Kafka rebalances after the start
PROBLEM = re.compile(r"\b(ERROR|CRITICAL|WARNING|Traceback)\b|is rebalancing")


@dataclass(frozen=True)
class ServerSpec:
    name: str  # embedded | distributed1 | distributed2 | distributed1-intake
    title: str
    workers: int
    distributed: bool
    consumers: int | None = None  # TICKETBLITZ_CONSUMERS when set (0: intake only)
    scenarios: tuple[str, ...] | None = None  # the only scenarios this server runs (None: all selected)


SPECS = {
    "embedded": ServerSpec("embedded", "embedded, 1 process (SQLite)", 1, False),
    "distributed1": ServerSpec("distributed1", "distributed, 1 process (PostgreSQL+Redis+Kafka)", 1, True),
    "distributed2": ServerSpec("distributed2", "distributed, 2 processes (--workers 2)", 2, True),
    "distributed1-intake": ServerSpec("distributed1-intake", "distributed, 1 process, intake only "
                                      "(TICKETBLITZ_CONSUMERS=0: bookings stay queued in Kafka)", 1, True,
                                      consumers=0, scenarios=("book-async",)),
}


# ---------------------------------------------------------------------- the backing services


def service_urls() -> dict[str, str]:
    """The URLs of `scripts/services.sh env`, after making sure the services run (`up` when they don't)."""
    status = run("services status", ["bash", "scripts/services.sh", "status"], timeout=60, check=False,
                 record=False)
    if status.returncode != 0:
        log("PostgreSQL/Redis/Kafka are not all up: bash scripts/services.sh up")
        run("services up", ["bash", "scripts/services.sh", "up"], timeout=600)
    env = run("services env", ["bash", "scripts/services.sh", "env"], timeout=60, record=False).stdout
    urls = dict(re.findall(r"^export (\w+)=(\S+)$", env, flags=re.M))
    missing = [v for v in SERVICE_VARS if v not in urls]
    if missing:
        raise BenchError(f"scripts/services.sh env did not give {', '.join(missing)}")
    return urls


def redis_url(urls: dict[str, str], db: int = REDIS_DB) -> str:
    return urls["TICKETBLITZ_REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"


def flush_redis(urls: dict[str, str]) -> None:
    import redis

    with redis.Redis.from_url(redis_url(urls), socket_timeout=10, socket_connect_timeout=10) as client:
        client.flushdb()


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE name (through the services' URL, whose role may create databases); its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str, attempts: int = 20) -> None:
    """DROP DATABASE name after ending our own sessions in it. Not WITH (FORCE): that also needs the right
    to end autovacuum workers, which a plain DROP DATABASE stops by itself."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        for attempt in range(attempts):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()", (name,))
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                return
            except psycopg.errors.ObjectInUse:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)


class Scratch:
    """One distributed server's private state: database, Redis db 2 (flushed), Kafka topic and group."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.hex = secrets.token_hex(4)
        self.database = f"tb_bench_{self.hex}"
        self.topic = f"bench-{self.hex}"
        self.group = f"bench-group-{self.hex}"
        self.database_url = ""

    def create(self) -> dict[str, str]:
        """Make the database, flush Redis db 2; the server's environment."""
        self.database_url = create_database(self.urls["TICKETBLITZ_DATABASE_URL"], self.database)
        flush_redis(self.urls)
        return {
            "TICKETBLITZ_DATABASE_URL": self.database_url,
            "TICKETBLITZ_REDIS_URL": redis_url(self.urls),
            "TICKETBLITZ_KAFKA_BOOTSTRAP": self.urls["TICKETBLITZ_KAFKA_BOOTSTRAP"],
            "TICKETBLITZ_KAFKA_TOPIC": self.topic,
            "TICKETBLITZ_KAFKA_GROUP": self.group,
        }

    def remove(self) -> list[str]:
        """Drop the database, the topics (and the group), flush Redis db 2; problems met, as text."""
        problems = []
        try:
            if self.database_url:
                drop_database(self.urls["TICKETBLITZ_DATABASE_URL"], self.database)
        except Exception as exc:
            problems.append(f"dropping database {self.database}: {exc!r}")
        try:
            delete_kafka(self.urls["TICKETBLITZ_KAFKA_BOOTSTRAP"], [self.topic, f"{self.topic}-dlq"], self.group)
        except Exception as exc:
            problems.append(f"deleting Kafka topic {self.topic}: {exc!r}")
        try:
            flush_redis(self.urls)
        except Exception as exc:
            problems.append(f"flushing Redis db {REDIS_DB}: {exc!r}")
        return problems


def delete_kafka(bootstrap: str, topics: list[str], group: str) -> None:
    """Delete the topics that exist (kafka-python's KafkaAdminClient), and the consumer group."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tb-bench", bootstrap_timeout_ms=10_000,
                             request_timeout_ms=10_000)
    try:
        doomed = [t for t in topics if t in set(admin.list_topics())]
        if doomed:
            admin.delete_topics(doomed)
        try:
            admin.delete_groups([group])
        except Exception:
            pass  # an empty group may already be gone; the topics are what takes space
    finally:
        admin.close()


# ---------------------------------------------------------------------- reading the store


class StoreReader:
    """The bookings of one event as the store has them: (status, created_at, updated_at) rows."""

    def __init__(self, *, sqlite_path: Path | None = None, database_url: str | None = None) -> None:
        self.sqlite_path = sqlite_path
        self.database_url = database_url

    def bookings(self, event_id: str) -> list[tuple[str, float, float]]:
        query = "SELECT status, created_at, updated_at FROM bookings WHERE event_id = {}"
        if self.sqlite_path is not None:
            with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30) as db:
                return [tuple(r) for r in db.execute(query.format("?"), (event_id,))]  # type: ignore[misc]
        import psycopg

        assert self.database_url
        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            return [tuple(r) for r in conn.execute(query.format("%s"), (event_id,))]  # type: ignore[misc]


# ---------------------------------------------------------------------- one server under test


class Server:
    """A TicketBlitz server started by the benchmark: `start()`, the `pids`, `stop()`, its log."""

    def __init__(self, spec: ServerSpec, urls: dict[str, str] | None, workdir: Path) -> None:
        self.spec = spec
        self.urls = urls
        self.workdir = workdir
        self.port = free_port()
        self.token = ADMIN_TOKEN
        self.proc: subprocess.Popen[bytes] | None = None
        self.scratch: Scratch | None = None
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"tb-bench-{spec.name}-", dir=workdir))
        self.log_path = workdir / f"{spec.name}.log"
        self.exit_code: int | None = None
        self.cleanup_problems: list[str] = []
        self.command = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        env = {"TICKETBLITZ_ADMIN_TOKEN": self.token}
        if self.spec.consumers is not None:
            env["TICKETBLITZ_CONSUMERS"] = str(self.spec.consumers)
        cmd = [PYTHON, "-m", "ticketblitz", "serve", "--port", str(self.port)]
        if self.spec.distributed:
            if self.urls is None:
                raise BenchError("distributed servers need the service URLs")
            self.scratch = Scratch(self.urls)
            env |= self.scratch.create()
            if self.spec.workers > 1:
                cmd += ["--workers", str(self.spec.workers)]
        else:
            cmd += ["--data-dir", str(self.data_dir)]
        COMMANDS.add(f"server {self.spec.name}", cmd, env)
        self.command = COMMANDS.entries[-1][1]
        log(f"starting {self.spec.name} on {self.url}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env={**_base_env(), **env}, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            wait_http_ok(self.port, "/readyz", deadline, self.proc)
            if self.spec.workers > 1:
                self._wait_workers(deadline)
        except BenchError as exc:
            raise BenchError(f"{self.spec.name} did not get ready: {exc}\n{self.log_tail()}") from exc

    def _wait_workers(self, deadline: float) -> None:
        """With --workers N, /readyz may come from the first worker: wait until all N serve and are ready."""
        while time.monotonic() < deadline:
            serving = self.log_path.read_text(errors="replace").count("serving on http://")
            if serving >= self.spec.workers and len(children(self.pid)) >= self.spec.workers:
                for _ in range(3 * self.spec.workers):  # the kernel spreads these among the workers
                    wait_http_ok(self.port, "/readyz", deadline, self.proc)
                return
            time.sleep(0.2)
        raise BenchError(f"not all {self.spec.workers} workers are serving")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The processes that hold connections: the workers under `--workers N`, else the server itself."""
        return children(self.pid) if self.spec.workers > 1 else [self.pid]

    def all_pids(self) -> list[int]:
        return [self.pid, *children(self.pid)] if self.spec.workers > 1 else [self.pid]

    def role(self, pid: int) -> str:
        if self.spec.workers == 1:
            return "server"
        return "supervisor" if pid == self.pid else "worker"

    def cpu(self) -> dict[int, float]:
        """CPU seconds used so far by each server process."""
        return {pid: used for pid in self.all_pids() if (used := cpu_seconds(pid)) is not None}

    def cpu_since(self, before: dict[int, float]) -> list[dict[str, Any]]:
        """CPU seconds each process used since `before` (a `cpu()` snapshot)."""
        return [{"pid": pid, "role": self.role(pid), "cpu_s": round(now - before.get(pid, 0.0), 2)}
                for pid, now in sorted(self.cpu().items())]

    def store(self) -> StoreReader:
        if self.scratch is not None:
            return StoreReader(database_url=self.scratch.database_url)
        return StoreReader(sqlite_path=self.data_dir / "ticketblitz.db")

    def stop(self) -> int | None:
        """SIGTERM, wait for the drain; the exit status (0 expected). Then remove the scratch state."""
        if self.proc is not None and self.exit_code is None:
            log(f"stopping {self.spec.name} (SIGTERM to pid {self.pid})")
            self.exit_code = stop_process(self.proc, STOP_TIMEOUT)
        if self.scratch is not None:
            self.cleanup_problems += self.scratch.remove()
            self.scratch = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.exit_code

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self, limit: int = 40) -> list[str]:
        """ERROR / CRITICAL / WARNING / Traceback lines (with the traceback's lines) and Kafka rebalances."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        found: list[str] = []
        in_traceback = False
        for line in text:
            if PROBLEM.search(line):
                found.append(line)
                in_traceback = "Traceback" in line
            elif in_traceback and (line.startswith((" ", "\t")) or re.match(r"^\w+(\.\w+)*(Error|Exception)", line)):
                found.append(line)
            else:
                in_traceback = False
            if len(found) >= limit:
                found.append("... (more in the log)")
                break
        return found


def _base_env() -> dict[str, str]:
    """This process's environment without any TICKETBLITZ_* setting: each server gets exactly ours."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}


def spec_names() -> list[str]:
    return list(SPECS)


def describe(spec: ServerSpec) -> dict[str, Any]:
    return {"name": spec.name, "title": spec.title, "workers": spec.workers}
