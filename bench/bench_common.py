"""Plumbing shared by `bench/run.py` and its helpers: paths, free ports, subprocesses whose exact command
lines are recorded for the report, small HTTP calls, wrk runs, and process memory from /proc.

Everything here talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = sys.executable
SECRET_ENV = ("TICKETBLITZ_ADMIN_TOKEN", "PGPASSWORD")


class BenchError(RuntimeError):
    """The matrix cannot go on (a server did not start, a tool is missing, a service is down)."""


# ---------------------------------------------------------------------- small utilities


_handed_out: set[int] = set()


def port_range(text: str | None) -> range | None:
    """`TB_BENCH_PORTS=LOW-HIGH` (inclusive), for a machine shared with others; None when unset."""
    if not text:
        return None
    low, _, high = text.partition("-")
    first, last = int(low), int(high or low)
    if not 1024 <= first <= last <= 65535:
        raise BenchError(f"TB_BENCH_PORTS={text!r}: give LOW-HIGH within 1024-65535")
    return range(first, last + 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now: any (the kernel's choice), or with
    TB_BENCH_PORTS=LOW-HIGH one of that range not handed out before in this run."""
    ports = port_range(os.environ.get("TB_BENCH_PORTS"))
    if ports is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            return int(sock.getsockname()[1])
    for port in ports:
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise BenchError(f"no free port left in TB_BENCH_PORTS={os.environ['TB_BENCH_PORTS']}")


def raise_nofile() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit; children (servers, drivers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def mask_url(url: str) -> str:
    """`scheme://user:***@host/...`: passwords never reach the report."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def shown(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """A command line as it would be typed, with the environment variables it was given; secrets masked."""
    parts = []
    for name, value in (env or {}).items():
        value = "***" if name in SECRET_ENV else mask_url(value)
        parts.append(f"{name}={shlex.quote(value)}")
    return " ".join(parts + [shlex.quote(mask_url(c)) if "://" in c else shlex.quote(c) for c in cmd])


@dataclass
class CommandLog:
    """Every command the run executed, in order, labelled: the report's "exact commands" section."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.entries.append((label, shown(cmd, env)))


COMMANDS = CommandLog()


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(label: str, cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
        check: bool = True, record: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded by `timeout`), capturing its output; recorded under `label`."""
    if record:
        COMMANDS.add(label, cmd, env)
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{label}: {shown(cmd)} did not finish within {timeout:g} s") from exc
    if check and done.returncode != 0:
        raise BenchError(f"{label}: {shown(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-2000:]}")
    return done


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM one process we started (by its pid), wait for it; SIGKILL it if it outlives `timeout`.
    Returns its exit status (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


# ---------------------------------------------------------------------- HTTP


def http_json(port: int, method: str, path: str, body: Any = None, *, token: str | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """One request on a fresh connection to 127.0.0.1:port; (status, decoded JSON body or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return response.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()


def wait_http_ok(port: int, path: str, deadline: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll GET path until it answers 200, the process exits, or the (monotonic) deadline passes."""
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the process exited {proc.returncode} before {path} answered 200")
        try:
            status, body = http_json(port, "GET", path, timeout=2.0)
            if status == 200:
                return
            last = f"{status} {body}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise BenchError(f"GET {path} on port {port} did not answer 200 in time (last: {last})")


def wait_listening(port: int, deadline: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the process exited {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listens on {HOST}:{port}")


# ---------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    """What one wrk run reported (through the BENCH_RESULT line of bench/wrk_common.lua)."""

    command: str
    requests: int
    seconds: float
    statuses: dict[str, int]
    accepted: int  # 202 answers
    socket_errors: dict[str, int]  # connect / read / write / timeout
    latency_ms: dict[str, float]  # mean, p50, p90, p99, max
    answers_per_second: dict[int, int]  # epoch second -> answers
    accepted_per_second: dict[int, int]
    started_at: float  # wall clock when wrk was started
    ended_at: float
    client_cpu_s: float  # CPU seconds wrk itself used (it shares the machine with the server)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def count(self, predicate: Any) -> int:
        return sum(n for status, n in self.statuses.items() if predicate(int(status)))

    @property
    def server_errors(self) -> int:
        return self.count(lambda s: s >= 500)

    @property
    def unexpected(self) -> int:
        """Answers that are neither 2xx nor 409 (any 4xx/5xx other than the expected refusals)."""
        return self.count(lambda s: not (200 <= s < 300 or s == 409))

    @property
    def total_socket_errors(self) -> int:
        return sum(self.socket_errors.values())


def run_wrk(label: str, url: str, script: str, args: list[str], *, threads: int, connections: int,
            duration: float, headers: list[str] | None = None) -> WrkResult:
    """Run wrk with one of our Lua scripts (and request `headers`, "Name: value") and parse its
    BENCH_RESULT line."""
    extra = [arg for h in headers or [] for arg in ("-H", h)]
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", *extra,
           "-s", f"bench/{script}", url, "--", *args]
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run(label, cmd, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ended = time.time()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise BenchError(f"{label}: wrk printed no BENCH_RESULT line:\n{done.stdout}\n{done.stderr}")
    data = orjson.loads(line.removeprefix("BENCH_RESULT "))
    lat = {k: round(v / 1000, 2) for k, v in data["latency_us"].items()}
    return WrkResult(
        command=shown(cmd), requests=int(data["requests"]), seconds=data["duration_us"] / 1e6,
        statuses={k: int(v) for k, v in sorted(data["statuses"].items())}, accepted=int(data["accepted"]),
        socket_errors={k: int(v) for k, v in data["errors"].items() if k != "status"}, latency_ms=lat,
        answers_per_second=dict(sorted((int(k), int(v)) for k, v in data["answers_per_second"].items())),
        accepted_per_second=dict(sorted((int(k), int(v)) for k, v in data["accepted_per_second"].items())),
        started_at=started, ended_at=ended,
        client_cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
    )


# ---------------------------------------------------------------------- /proc


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return sorted(set(found))


CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's and /proc/stat's times


@dataclass(frozen=True)
class ProcTimes:
    """The CPU times of /proc/<pid>/stat, in clock ticks (CLK_TCK per second)."""

    utime: int  # field 14: user time of the process (all its threads)
    stime: int  # field 15: system time
    cutime: int  # field 16: user time of its children that exited and were waited for
    cstime: int  # field 17: their system time

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def reaped(self) -> int:
        return self.cutime + self.cstime


def parse_pid_stat(text: str) -> ProcTimes:
    """The times in a /proc/<pid>/stat line. The command name (field 2, in brackets) may hold spaces and
    brackets itself, so the fields are counted from the last `)`: field 3 (state) is the first after it."""
    fields = text.rsplit(")", 1)[1].split()
    return ProcTimes(int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14]))


def pid_times(pid: int) -> ProcTimes | None:
    """/proc/<pid>/stat's times, None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return parse_pid_stat(stat.read())
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (/proc/<pid>/stat), None when it is gone."""
    times = pid_times(pid)
    return None if times is None else times.own / CLK_TCK


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_machine_stat(text: str) -> dict[str, int]:
    """The machine's CPU time in clock ticks, summed over all CPUs: the `cpu ` line of /proc/stat (user,
    nice, system, idle, iowait, irq, softirq, steal; guest time is already counted in user and nice)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return {name: (values[i] if i < len(values) else 0) for i, name in enumerate(CPU_FIELDS)}
    raise ValueError("no aggregate `cpu ` line in /proc/stat")


def machine_times() -> dict[str, int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return parse_machine_stat(stat.read())


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
