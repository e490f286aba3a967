"""`ticketblitz serve --workers N`: one supervisor owns the listening socket and runs N server processes
that inherit it (the kernel spreads connections among them). They share PostgreSQL, Redis and Kafka,
so they are one service: one consumer group, one edge inventory, one truth."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable

import trio

from .config import ENV_PREFIX, Settings
from .server import bind_listener
from .telemetry.metrics import MULTIPROC_ENV, mark_process_dead

log = logging.getLogger("ticketblitz.workers")
RESTART_DELAY = 1.0


def worker_env(settings: Settings, fd: int, metrics_dir: str | None = None) -> dict[str, str]:
    """The environment of a worker: every setting of the supervisor (flags included), one process each;
    with `metrics_dir`, prometheus_client's multiprocess mode in that directory (shared by the workers)."""
    env = dict(os.environ)
    if metrics_dir is not None:
        env[MULTIPROC_ENV] = metrics_dir
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[ENV_PREFIX + f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[ENV_PREFIX + "LISTEN_FD"] = str(fd)
    env[ENV_PREFIX + "DEMO"] = "false"  # seeded once by the supervisor
    return env


async def supervise(settings: Settings, ready: Callable[[str], None] | None = None) -> int:
    """Run the workers until SIGINT/SIGTERM, then pass the signal on and wait; 0 when all exit 0. `ready`
    is called with the public URL once the port listens."""
    sock = bind_listener(settings)
    sock.set_inheritable(True)
    host, port = sock.getsockname()[:2]
    log.info("supervisor: %d workers on http://%s:%d", settings.workers, host, port)
    if ready is not None:
        ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")
    # /metrics of any worker answers for all of them: prometheus_client's multiprocess mode, in a private
    # directory that is fresh for this run and removed after it
    metrics_dir = tempfile.mkdtemp(prefix="ticketblitz-metrics-")
    try:
        return await _supervise(settings, sock, worker_env(settings, sock.fileno(), metrics_dir), metrics_dir)
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _supervise(settings: Settings, sock: socket.socket, env: dict[str, str], metrics_dir: str) -> int:
    fileno = sock.fileno()
    stopping = trio.Event()
    codes: dict[int, int] = {}

    async def run_worker(index: int) -> None:
        while True:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "ticketblitz", "serve"], env=env, pass_fds=(fileno,))
            log.info("worker %d started (pid %d)", index, proc.pid)
            async with trio.open_nursery() as watch:

                async def forward(worker: trio.Process) -> None:
                    await stopping.wait()
                    worker.send_signal(signal.SIGTERM)

                watch.start_soon(forward, proc)
                code = await proc.wait()
                watch.cancel_scope.cancel()
            mark_process_dead(proc.pid, metrics_dir)  # its live gauges no longer count
            if stopping.is_set():
                codes[index] = code
                log.info("worker %d (pid %d) exited %d", index, proc.pid, code)
                return
            log.error("worker %d (pid %d) died with %d; restarting", index, proc.pid, code)
            await trio.sleep(RESTART_DELAY)

    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("supervisor: %s, stopping workers", signal.Signals(signum).name)
                    stopping.set()

        nursery.start_soon(watch_signals)
        async with trio.open_nursery() as workers:
            for i in range(settings.workers):
                workers.start_soon(run_worker, i)
        nursery.cancel_scope.cancel()
    return 0 if all(c == 0 for c in codes.values()) else 1
