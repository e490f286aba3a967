"""Shared fixtures: a whole TicketBlitz server in the test's nursery, on a real port, per adapter set.

The contract and race suites are written against `Harness` only (HTTP + the service's store for the
invariant checks), so the same tests run against every adapter set and, later, every HTTP door.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from ticketblitz.config import Settings
from ticketblitz.server import Running, build_service, serve
from ticketblitz.service import BookingService

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADAPTER_SETS = ["embedded", "distributed"]
SERVICE_VARS = ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP")
CONTRACT_REDIS_DB = 1  # the contract suite's Redis database, flushed before each test


class FakeClock:
    """The service's wall clock, moved by hand: hold expiry without waiting minutes."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    url: str
    client: httpx.AsyncClient
    service: BookingService
    clock: FakeClock
    running: Running
    secrets: dict[str, str] = field(default_factory=dict)  # booking id -> secret, from the answers seen

    def remember(self, r: httpx.Response) -> httpx.Response:
        """Keep the secret of the booking a booking answer carries (API 1.1)."""
        if r.status_code in (200, 202) and r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
            booking = body.get("booking", body) if isinstance(body, dict) else None
            if isinstance(booking, dict) and "secret" in booking:
                self.secrets[booking["id"]] = booking["secret"]
        return r

    def owner(self, booking_id: str) -> dict[str, str]:
        """The Authorization header of the booking's holder (the admin token for one we saw no secret of)."""
        secret = self.secrets.get(booking_id)
        return {"Authorization": f"Bearer {secret}"} if secret is not None else ADMIN

    async def get_booking(self, booking_id: str, wait: float | None = None) -> httpx.Response:
        params = {"wait": wait} if wait is not None else None
        return await self.client.get(f"/api/bookings/{booking_id}", params=params, headers=self.owner(booking_id))

    async def confirm(self, booking_id: str) -> httpx.Response:
        return await self.client.post(f"/api/bookings/{booking_id}/confirm", headers=self.owner(booking_id))

    async def cancel(self, booking_id: str) -> httpx.Response:
        return await self.client.post(f"/api/bookings/{booking_id}/cancel", headers=self.owner(booking_id))

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        """POST JSON to any route, keeping the secret of a booking in the answer."""
        return self.remember(await self.client.post(path, json=body, headers=headers))

    async def create_event(self, *, sections: list[dict[str, Any]] | None = None, rows: int = 10,
                           seats_per_row: int = 10, max_per_user: int = 4, hold_seconds: int = 600,
                           name: str = "Test night") -> dict[str, Any]:
        body = {"name": name, "sections": sections or [{"name": "A", "rows": rows, "seats_per_row": seats_per_row,
                                                        "price_cents": 5000}],
                "max_per_user": max_per_user, "hold_seconds": hold_seconds}
        r = await self.client.post("/api/events", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        return r.json()

    async def book(self, event_id: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.remember(await self.client.post(f"/api/events/{event_id}/bookings", json=body, headers=headers))

    async def settle(self, booking_id: str, wait: float = 30.0) -> dict[str, Any]:
        """The booking once it left `pending` (fails the test if it does not within `wait` s)."""
        r = await self.get_booking(booking_id, wait)
        assert r.status_code == 200, r.text
        booking = r.json()
        assert booking["status"] != "pending", f"booking {booking_id} still pending after {wait}s"
        return booking

    async def settle_all(self, ids: list[str]) -> list[dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}

        async def one(i: str) -> None:
            results[i] = await self.settle(i, wait=30.0)

        async with trio.open_nursery() as n:
            for i in ids:
                n.start_soon(one, i)
        return [results[i] for i in ids]

    async def event(self, event_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/events/{event_id}")
        assert r.status_code == 200, r.text
        return r.json()


def service_urls() -> dict[str, str]:
    """The real services' URLs from `scripts/services.sh env`: missing ones fail the test, never skip it."""
    missing = [name for name in SERVICE_VARS if not os.environ.get(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} unset: run `make services` and `eval \"$(scripts/services.sh env)\"` "
                    "(make test does both)", pytrace=False)
    return {name: os.environ[name] for name in SERVICE_VARS}


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def scratch_services() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database, a flushed Redis database and unique Kafka topic/group names, dropped
    afterwards: each test starts from nothing, as a fresh deployment would."""
    import psycopg
    import redis

    urls = service_urls()
    suffix = secrets.token_hex(4)
    database = f"tb_contract_{suffix}"
    admin = urls["TICKETBLITZ_DATABASE_URL"]
    for attempt in range(5):  # CREATE DATABASE refuses while another session copies template1 at once
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 4:
                raise
            time.sleep(0.2)
    redis_url = urls["TICKETBLITZ_REDIS_URL"].rsplit("/", 1)[0] + f"/{CONTRACT_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    topic = f"tb-contract-{suffix}"
    try:
        yield {"database_url": with_database(admin, database), "redis_url": redis_url,
               "kafka_bootstrap": urls["TICKETBLITZ_KAFKA_BOOTSTRAP"], "kafka_topic": topic,
               "kafka_group": f"tb-contract-group-{suffix}"}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        delete_topics(urls["TICKETBLITZ_KAFKA_BOOTSTRAP"], [topic, f"{topic}-dlq"])


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tb-tests")
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def make_settings(tmp_path: Any, services: dict[str, str] | None = None, **changes: Any) -> Settings:
    base: dict[str, Any] = dict(port=0, data_dir=str(tmp_path / "data"), admin_token=ADMIN_TOKEN,
                                sweep_interval=0.05, shutdown_grace=2.0)
    base.update(services or {})
    base.update(changes)
    return Settings(**base)


DOORS = ["door", "hypercorn"]
# The (adapter set, door) pairs a harness test runs on: each door on the embedded adapters, and the real
# services (PostgreSQL, Redis, Kafka) behind the production door. The two factors are separate layers:
# the door decides which front parses the request and answers the intake routes (both fronts call
# ticketblitz.intake on the same service, and the door relays every other route to the same Quart app),
# the adapter set decides what the service stores, locks and queues with. So what depends on the front
# is proved on both fronts, what depends on the adapters is proved on both adapter sets, and only the
# fourth pair, the real services behind Hypercorn for the intake routes too, would repeat both (it cost a
# quarter of the contract suite, ~75 s). That pair still runs under tests/schema (test_distributed:
# every documented route, generated requests), and a module that pins one factor (a fixture `door` or
# `adapter_set` of its own) still runs every value of the other.
STACKS = [("embedded", "door"), ("embedded", "hypercorn"), ("distributed", "door")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `adapter_set` and `door` (STACKS when a test uses both), unless its module pins one or
    the test parametrizes it itself."""
    marked = {name.strip() for mark in metafunc.definition.iter_markers("parametrize")
              for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
    names = [n for n in ("adapter_set", "door")
             if n in metafunc.fixturenames and n not in marked and not hasattr(metafunc.module, n)]
    if names == ["adapter_set", "door"]:
        metafunc.parametrize(names, STACKS, indirect=True, ids=[f"{a}-{d}" for a, d in STACKS])
    elif names:
        metafunc.parametrize(names[0], ADAPTER_SETS if names[0] == "adapter_set" else DOORS, indirect=True)


@pytest.fixture
def adapter_set(request: pytest.FixtureRequest) -> str:
    """The adapters behind the service: `embedded` (SQLite, in-process queue and locks) or `distributed`."""
    return str(request.param)


@pytest.fixture
def door(request: pytest.FixtureRequest) -> str:
    """Which HTTP front answers the intake routes: the lean Trio door, or Hypercorn + Quart for all."""
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Any, adapter_set: str, door: str) -> Iterator[Settings]:
    intake_door = door == "door"
    if adapter_set == "embedded":
        yield make_settings(tmp_path, intake_door=intake_door)
        return
    with scratch_services() as services:
        yield make_settings(tmp_path, services, intake_door=intake_door)


async def start_server(settings: Settings, nursery: trio.Nursery) -> tuple[Running, FakeClock]:
    """A whole server in `nursery`, on a real port, its service on a FakeClock (stop: `running.stop.set()`)."""
    clock = FakeClock()
    service = build_service(settings, clock)
    running: Running = await nursery.start(partial(serve, settings, service=service))
    return running, clock


@pytest.fixture
async def harness(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[Harness]:
    running, clock = await start_server(settings, nursery)
    service = running.service
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=running.url, limits=limits, timeout=60.0) as client:
        yield Harness(running.url, client, service, clock, running)
    running.stop.set()


async def auth_reply(ws: Any, seconds: float = 10) -> dict[str, Any]:
    """The /ws answer to an auth message: a tick's `stats` or `batch` message may come before it on a
    busy machine (they are skipped)."""
    import json

    with trio.fail_after(seconds):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "auth":
                return message  # type: ignore[no-any-return]
