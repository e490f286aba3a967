"""Where the machine's CPU went during one wrk window: the server (every process of it), wrk, Kafka,
PostgreSQL (the postmaster and all its backends), Redis, the benchmark itself, the rest of the machine and
idle, in cores (CPU seconds / wall seconds), so that the 1 -> 2 process scaling can be read against the
machine's ceiling.

Everything is read from /proc: utime + stime (+ cutime + cstime, the children that exited and were waited
for) of /proc/<pid>/stat for the processes, the aggregate `cpu` line of /proc/stat for the machine, both in
clock ticks (os.sysconf("SC_CLK_TCK")), once when the window starts and once when it ends.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from bench_common import CLK_TCK, children, log, machine_times, pid_times, run

# The components in the order the report shows them (services only when their pids are known).
COMPONENTS = ("server", "wrk", "kafka", "postgres", "redis", "bench")
SERVICE_NAMES = {"pg": "postgres", "redis": "redis", "kafka": "kafka"}  # scripts/services.sh pids -> component
MAX_DEPTH = 4  # process tree depth followed below a root (server -> workers; postmaster -> backends)
OTHER_TOP = 3  # the busiest processes outside the components that the report names
CEILING_BUSY = 0.9  # busy >= 90 % of the cores: the machine, not the server, is the limit


def tree_ticks(pid: int, seen: set[int] | None = None, depth: int = 0) -> int | None:
    """CPU ticks of a process and all its descendants so far: its own utime + stime, its reaped children's
    (cutime + cstime: a PostgreSQL backend that ended, once the postmaster waited for it) and, recursively,
    every live child's. None when the process is gone. The children are read before the parent, so a child
    that exits in between is counted twice rather than not at all (one short-lived process at most). The
    pids met are added to `seen`."""
    kids = children(pid) if depth < MAX_DEPTH else []
    below = 0
    for kid in kids:
        below += tree_ticks(kid, seen, depth + 1) or 0
    times = pid_times(pid)
    if times is None:
        return None
    if seen is not None:
        seen.add(pid)
    return times.own + times.reaped + below


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def every_process() -> dict[int, int]:
    """Own CPU ticks (utime + stime) of every process on the machine, for naming the rest of it."""
    out = {}
    for pid in all_pids():
        times = pid_times(pid)
        if times is not None:
            out[pid] = times.own
    return out


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def backends_of(postmaster: int, database: str) -> dict[int, int]:
    """Own CPU ticks of the PostgreSQL backends connected to `database`: the postmaster's children whose
    process title (`postgres: user database host(port) state`) names it."""
    out = {}
    for pid in children(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode("utf-8", "replace").split()
        except OSError:
            continue
        if len(title) >= 3 and title[0] == "postgres:" and title[2] == database:
            times = pid_times(pid)
            if times is not None:
                out[pid] = times.own
    return out


def service_pids() -> dict[str, int]:
    """{"postgres": postmaster, "redis": redis-server, "kafka": broker}: the pids `scripts/services.sh pids`
    recorded (it honours TB_SERVICES_DIR, like the `env` the URLs come from); those not running are left out."""
    try:
        done = run("services pids", ["bash", "scripts/services.sh", "pids"], timeout=30, check=False, record=False)
    except Exception as exc:
        log(f"scripts/services.sh pids failed: {exc!r}; no CPU accounting for the services")
        return {}
    found: dict[str, int] = {}
    for line in done.stdout.splitlines():
        name, _, pid = line.partition(" ")
        if name in SERVICE_NAMES and pid.strip().isdigit():
            found[SERVICE_NAMES[name]] = int(pid)
    return found


@dataclass
class CpuBreakdown:
    """CPU seconds per component over one wall-clock window, and the machine's busy / idle time in it."""

    wall_s: float
    ncpu: int
    cpu_s: dict[str, float | None]  # component -> CPU seconds in the window (None: a process went away)
    pids: dict[str, int]  # component -> the root pid sampled (server: the supervisor with --workers)
    machine_busy_s: float  # /proc/stat user + nice + system + irq + softirq, all CPUs
    machine_idle_s: float  # idle + iowait
    machine_steal_s: float  # time the hypervisor ran something else on our vCPUs
    other_s: float  # busy minus every component: other processes, kernel threads, softirq charged to idle
    server_processes: list[dict[str, Any]] = field(default_factory=list)  # per server process, as (c)'s cpu
    postgres_ours_s: float | None = None  # of postgres: the backends connected to this server's database
    other_top: list[dict[str, Any]] = field(default_factory=list)  # the busiest processes within "other"
    # of other: what the processes alive at the end used; the rest of other went to processes that ended within
    # the window (a shared machine's test runs) or to no process (softirq while idle)
    other_live_s: float | None = None

    def cores(self, seconds: float | None) -> float | None:
        return None if seconds is None or self.wall_s <= 0 else seconds / self.wall_s

    @property
    def busy_cores(self) -> float:
        return self.machine_busy_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def idle_cores(self) -> float:
        return self.machine_idle_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def at_ceiling(self) -> bool:
        return self.busy_cores >= CEILING_BUSY * self.ncpu

    def summary(self) -> str:
        """`server 0.92, wrk 0.35, kafka 0.30, postgres 0.25, redis 0.05, bench 0.02, other 0.03, idle 0.08 of
        2 cores`."""
        parts = [f"{name} {_cores(self.cores(self.cpu_s[name]))}" for name in COMPONENTS if name in self.cpu_s]
        if self.postgres_ours_s is not None and "postgres" in self.cpu_s:
            at = parts.index(f"postgres {_cores(self.cores(self.cpu_s['postgres']))}")
            parts[at] += f" (this run's database {_cores(self.cores(self.postgres_ours_s))})"
        parts.append(f"other {_cores(self.cores(self.other_s))}")
        if self.machine_steal_s / max(self.wall_s, 1e-9) >= 0.005:
            parts.append(f"steal {_cores(self.cores(self.machine_steal_s))}")
        parts.append(f"idle {_cores(self.idle_cores)} of {self.ncpu} cores")
        return ", ".join(parts)


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


class CpuWindow:
    """`CpuWindow(server_pid, services)` samples at once; `finish(wrk_cpu_s)` samples again -> CpuBreakdown.

    wrk is a child of this process that starts and ends inside the window, so its CPU time is the
    RUSAGE_CHILDREN difference around it (WrkResult.client_cpu_s), given to `finish`. "bench" is this process
    (run.py and its probe thread: RUSAGE_SELF)."""

    def __init__(self, server_pid: int, services: dict[str, int], database: str | None = None) -> None:
        self.roots = {"server": server_pid, **services}
        self.database = database if "postgres" in services else None
        self.everyone = every_process()
        self.ours = self._ours()
        self.started = time.monotonic()
        self.machine = machine_times()
        self.self_cpu = _self_cpu()
        self.before = {name: tree_ticks(pid) for name, pid in self.roots.items()}

    def _ours(self) -> dict[int, int]:
        return backends_of(self.roots["postgres"], self.database) if self.database else {}

    def finish(self, wrk_cpu_s: float | None, server_processes: list[dict[str, Any]] | None = None) -> CpuBreakdown:
        seen: set[int] = {os.getpid()}
        after = {name: tree_ticks(pid, seen) for name, pid in self.roots.items()}
        self_cpu = _self_cpu()
        machine = machine_times()
        wall = time.monotonic() - self.started
        ours = self._ours()
        everyone = every_process()
        rest = sorted(((ticks - self.everyone.get(pid, 0), pid) for pid, ticks in everyone.items()
                       if pid not in seen), reverse=True)
        other_top = [{"pid": pid, "name": process_name(pid), "cpu_s": round(ticks / CLK_TCK, 2)}
                     for ticks, pid in rest[:OTHER_TOP] if ticks > 0]
        other_live = sum(ticks for ticks, _ in rest if ticks > 0) / CLK_TCK
        cpu: dict[str, float | None] = {}
        for name in self.roots:
            start, end = self.before[name], after[name]
            cpu[name] = None if start is None or end is None else max(0, end - start) / CLK_TCK
        cpu["wrk"] = wrk_cpu_s
        cpu["bench"] = self_cpu - self.self_cpu
        delta = {k: machine[k] - self.machine[k] for k in machine}
        busy = sum(delta[k] for k in ("user", "nice", "system", "irq", "softirq")) / CLK_TCK
        idle = (delta["idle"] + delta["iowait"]) / CLK_TCK
        known = sum(v for v in cpu.values() if v is not None)
        ordered = {name: cpu[name] for name in COMPONENTS if name in cpu}
        return CpuBreakdown(
            wall_s=round(wall, 3), ncpu=os.cpu_count() or 1, cpu_s={k: _round(v) for k, v in ordered.items()},
            pids=dict(self.roots), machine_busy_s=round(busy, 2), machine_idle_s=round(idle, 2),
            machine_steal_s=round(delta["steal"] / CLK_TCK, 2), other_s=round(busy - known, 2),
            server_processes=server_processes or [],
            postgres_ours_s=None if not self.database else round(
                sum(t - self.ours.get(pid, 0) for pid, t in ours.items()) / CLK_TCK, 2),
            other_top=other_top, other_live_s=round(other_live, 2))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
