"""One server process under `trio.run`: the booking service's tasks and Hypercorn's Trio server
running the Quart-Trio app, in one nursery for the serving lifetime."""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from .adapters.memory_admission import InProcessAdmission
from .adapters.memory_locks import InProcessLocks
from .adapters.memory_queue import InProcessQueue
from .adapters.sqlite_store import SqliteStore
from .config import Settings
from .domain.model import Event, Section
from .domain.waiting_room import WaitingRoom
from .door import IntakeDoor
from .ports import Admission, BookingQueue, SeatLocks, Store
from .service import DEMO_EVENT_ID, QUEUE_DEMO_EVENT_ID, BookingService
from .telemetry import Telemetry
from .web import create_app

log = logging.getLogger("ticketblitz")


def build_service(settings: Settings, clock: Callable[[], float] | None = None) -> BookingService:
    """The booking service on the adapters the settings select: each service URL that is set replaces
    its embedded adapter (PostgreSQL store, Kafka queue, Redis locks and edge admission)."""
    store: Store
    queue: BookingQueue
    locks: SeatLocks
    admission: Admission
    if settings.database_url:
        from .adapters.postgres_store import PostgresStore

        store = PostgresStore(settings.database_url, timeout=settings.store_timeout)
    else:
        store = SqliteStore(settings.db_path, timeout=settings.store_timeout)
    if settings.kafka_bootstrap:
        from .adapters.kafka_queue import KafkaQueue

        queue = KafkaQueue(settings.kafka_bootstrap, topic=settings.kafka_topic,
                           dlq_topic=f"{settings.kafka_topic}-dlq", group=settings.kafka_group,
                           produce_timeout=settings.produce_timeout, consume=settings.consumers > 0)
    else:
        queue = InProcessQueue(store)
    if settings.redis_url:
        from .adapters.redis_admission import RedisAdmission
        from .adapters.redis_locks import RedisLocks

        locks = RedisLocks(settings.redis_url, timeout=settings.lock_timeout)
        # admitted_at on the service's clock: the service compares it with its own (stale admissions)
        admission = RedisAdmission(settings.redis_url, timeout=settings.lock_timeout, clock=clock or time.time)
    else:
        locks = InProcessLocks()
        admission = InProcessAdmission()
    clock = clock or time.time
    relay = None
    if settings.redis_url:
        from .telemetry.relay import RedisRelay

        relay = RedisRelay(settings.redis_url, timeout=settings.lock_timeout)
    telemetry = Telemetry.from_settings(settings, clock, relay)
    return BookingService(settings, store, queue, locks, admission, telemetry, clock)


def demo_event(now: float, seats: int = 10_000) -> Event:
    """The original's demo event: "The Eras Tour", 10,000 seats by default (section A, 100 rows x 100 seats),
    so that `seatNumber` 1..10000 maps to A-1-1 … A-100-100 in order. `seats` (`demo_seats`): rows of 100,
    or one row when 100 or fewer."""
    rows, per_row = (seats // 100, 100) if seats > 100 else (1, seats)
    return Event(
        id=DEMO_EVENT_ID, name="The Eras Tour", venue="Demo Stadium", starts_at="2027-06-01T19:00:00Z",
        sections=(Section("A", rows, per_row, 12_000),), max_per_user=4, hold_seconds=600, created_at=now,
    )


def queue_demo_event(now: float) -> Event:
    """The waiting-room demo event: 1,000 seats (10 rows of 100), sold through a FIFO line that admits 100
    fans a second, passes valid 60 s, a proof of work of 8 bits (a few milliseconds in a browser)."""
    return Event(
        id=QUEUE_DEMO_EVENT_ID, name="The Eras Tour (waiting room)", venue="Demo Stadium",
        starts_at="2027-06-02T19:00:00Z", sections=(Section("A", 10, 100, 12_000),), max_per_user=2,
        hold_seconds=120, created_at=now,
        waiting_room=WaitingRoom(mode="fifo", admit_per_second=100, pass_seconds=60, challenge_bits=8),
    )


async def seed_demo(service: BookingService) -> tuple[Event, bool]:
    """Create the demo event (of `demo_seats` seats) and the waiting-room demo event unless they exist;
    (the demo event, whether it was created)."""
    if await service.store.get_event(QUEUE_DEMO_EVENT_ID) is None:
        await service.create_event(queue_demo_event(service.clock()))
    existing = await service.store.get_event(DEMO_EVENT_ID)
    if existing is not None:
        return existing, False
    return await service.create_event(demo_event(service.clock(), service.settings.demo_seats)), True


def bind_listener(settings: Settings) -> socket.socket:
    """A TCP listener on host:port with a backlog for a flash sale's burst of connections."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(4096)
    return sock


def public_socket(settings: Settings) -> socket.socket:
    """The public listener: inherited from the `--workers` supervisor, or bound here."""
    sock = socket.socket(fileno=settings.listen_fd) if settings.listen_fd >= 0 else bind_listener(settings)
    sock.setblocking(False)
    return sock


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn's settings, from ours. In front of it, the door enforces every limit and deadline first;
    these are the defence in depth (and the only limits when `intake_door` is off)."""
    config = HypercornConfig()
    config.bind = [f"fd://{settings.listen_fd}" if settings.listen_fd >= 0 else f"{settings.host}:{settings.port}"]
    config.backlog = 4096  # a flash sale opens thousands of connections at once
    config.graceful_timeout = settings.shutdown_grace
    # behind the door, the door closes idle connections first (so Hypercorn never closes one under a request)
    config.keep_alive_timeout = settings.idle_timeout + (5 if settings.intake_door else 0)
    config.h11_max_incomplete_size = settings.max_head_bytes + (4096 if settings.intake_door else 0)
    config.websocket_max_message_size = 64 * 1024
    # a connection that sends nothing this long is closed: longer than a long-poll (a relayed `?wait=`
    # sends nothing while it waits); websocket viewers answer the pings, which counts as sending
    config.read_timeout = math.ceil(settings.max_wait + settings.header_timeout + settings.body_timeout)
    config.websocket_ping_interval = max(1.0, min(15.0, config.read_timeout / 3))
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


@dataclass(slots=True)
class Running:
    """Handed to whoever started the server: where it listens, and how to stop it."""

    urls: list[str]
    service: BookingService
    stop: trio.Event

    @property
    def url(self) -> str:
        return self.urls[0]


async def serve(
    settings: Settings,
    *,
    service: BookingService | None = None,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set: then stop intake, let HTTP finish, drain the queue, exit."""
    service = service or build_service(settings)
    stop = stop if stop is not None else trio.Event()
    await service.open()
    try:
        if settings.demo:
            event, created = await seed_demo(service)
            log.info("demo event %s %r (%s)", event.id, event.name, "created" if created else "present")
        app = create_app(service)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)

            door: IntakeDoor | None = None

            async def shutdown_trigger() -> None:
                await stop.wait()
                service.accepting = False
                if door is not None:
                    door.close()

            config = hypercorn_config(settings)
            with tempfile.TemporaryDirectory(prefix="ticketblitz-") as private:
                async with trio.open_nursery() as http:
                    if settings.intake_door:
                        # Hypercorn listens privately; the door owns the public port and relays to it
                        upstream = os.path.join(private, "app.sock")
                        config.bind = [f"unix:{upstream}"]
                        public = public_socket(settings)
                        host, port = public.getsockname()[:2]
                        urls = [f"http://{host}:{port}"]
                        door = IntakeDoor(service, upstream)
                        app.config["TICKETBLITZ_URL"] = urls[0]  # where the flash-sale button's child connects
                        await http.start(partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger))
                        await http.start(door.serve, public)
                    else:
                        urls = await http.start(
                            partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger))
                        app.config["TICKETBLITZ_URL"] = urls[0]
                    log.info("serving on %s%s", ", ".join(urls), " (intake door)" if door else "")
                    task_status.started(Running(urls, service, stop))
            drained = await service.drain(settings.shutdown_grace if settings.consumers else 0.0)
            log.info("stopped: queue %s", "drained" if drained else f"left {service.queue.depth()} pending (resumes)")
            nursery.cancel_scope.cancel()
    finally:
        await service.close()


# Young objects collected per generation-0 run. A flash sale keeps tens of thousands of live objects per
# thousand connections; at CPython's default (700) the collector's full passes over them halved the door's
# answers/s at 10,000 connections (bench/flash.py flash --clients 10000: 3,553 -> 7,266 req/s with this).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often (the server allocates in bursts) and leave start-up's objects out of it."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def serve_until_signalled(settings: Settings, ready: Callable[[Running], None] | None = None) -> None:
    """`ticketblitz serve`: SIGINT/SIGTERM stop intake and drain; a second signal stops at once. `ready` is
    called once the public port listens."""
    tune_gc()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    log.info("%s: stopping intake, draining", signal.Signals(signum).name)
                    stop.set()

        nursery.start_soon(watch_signals)
        async with trio.open_nursery() as serving:
            running = await serving.start(partial(serve, settings, stop=stop))
            if ready is not None:
                ready(running)
        nursery.cancel_scope.cancel()
