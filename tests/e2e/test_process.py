"""The real `ticketblitz serve` process: kill -9 after 202s loses nothing; SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

TOKEN = "e2e-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m ticketblitz serve` on a data dir, started and stopped by PID."""

    def __init__(self, data_dir: Path, log: Path, consumers: int = 2) -> None:
        self.consumers = consumers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.log = data_dir, log
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "TICKETBLITZ_ADMIN_TOKEN": TOKEN, "TICKETBLITZ_SHUTDOWN_GRACE": "20",
               "TICKETBLITZ_CONSUMERS": str(self.consumers)}
        for name in ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP"):
            env.pop(name, None)  # the embedded default
        with self.log.open("ab") as log:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "ticketblitz", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(base_url=self.url) as client:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    assert self.proc.poll() is None, self.log.read_text()[-2000:]
                    await trio.sleep(0.1)

    async def signal_and_wait(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        with trio.fail_after(30):
            return await self.proc.wait()


def client_of(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=300))


async def new_event(client: httpx.AsyncClient, name: str) -> str:
    """A 100-seat event (5 rows of 20); its id."""
    r = await client.post("/api/events", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"name": name, "sections": [{"name": "A", "rows": 5, "seats_per_row": 20}]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def burst(client: httpx.AsyncClient, event_id: str, kill: ServerProcess | None = None,
                accepted: dict[str, set[Any]] | None = None) -> list[str]:
    """600 concurrent requests: quantity bookings plus fans of one seat via the queued compat route.
    With `kill`, the server gets SIGKILL as soon as 200 requests were accepted, mid-burst. `accepted`
    collects the ids of the quantity bookings accepted ("quantity") and the seat numbers of the compat
    bookings accepted ("seats")."""
    ids: list[str] = []
    accepted = accepted if accepted is not None else {}
    accepted.setdefault("quantity", set())
    accepted.setdefault("seats", set())

    async def one(i: int) -> None:
        try:
            if i % 3 == 0:
                r = await client.post("/api/book-async",
                                      json={"userId": f"hot-{i}", "seatNumber": 1 + i % 7, "eventId": event_id})
                assert r.status_code == 202, r.text
                ids.append(r.json()["booking"]["id"])
                accepted["seats"].add(1 + i % 7)
            else:
                r = await client.post(f"/api/events/{event_id}/bookings", json={"user_id": f"fan-{i}", "quantity": 1})
                assert r.status_code in (202, 409), r.text
                if r.status_code == 202:
                    ids.append(r.json()["id"])
                    accepted["quantity"].add(r.json()["id"])
        except httpx.TransportError:
            assert kill is not None  # only requests cut by the kill may fail: they were not accepted
            return
        if kill is not None and len(ids) == 200:
            assert kill.proc is not None
            kill.proc.kill()

    async with trio.open_nursery() as nursery:
        for i in range(600):
            nursery.start_soon(one, i)
    return ids


async def final_state(client: httpx.AsyncClient, event_id: str, ids: list[str], wait: float) -> Counter[str]:
    """Every booking's status (long-polled up to `wait` s), with the invariants checked over HTTP."""
    bookings: list[dict[str, Any]] = []

    async def one(i: str) -> None:
        r = await client.get(f"/api/bookings/{i}", params={"wait": wait}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        bookings.append(r.json())

    async with trio.open_nursery() as nursery:
        for i in ids:
            nursery.start_soon(one, i)
    event = (await client.get(f"/api/events/{event_id}")).json()
    seats = {s["id"]: s["status"] for s in (await client.get(f"/api/events/{event_id}/seats")).json()["seats"]}
    owners: Counter[str] = Counter(s for b in bookings if b["status"] in ("held", "confirmed") for s in b["seat_ids"])
    assert all(n == 1 for n in owners.values()), "a seat is in two bookings"
    assert {s for s, st in seats.items() if st != "available"} == set(owners)
    tally = Counter(seats.values())
    assert event["counts"] == {"available": tally["available"], "held": tally["held"], "sold": tally["sold"]}
    return Counter(b["status"] for b in bookings)


async def test_kill_9_after_202s_then_restart_decides_every_booking(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start()
    async with client_of(server) as client:
        event_id = await new_event(client, "crash")
        accepted: dict[str, set[Any]] = {}
        ids = await burst(client, event_id, kill=server, accepted=accepted)
    assert server.proc is not None
    assert await server.proc.wait() == -signal.SIGKILL
    assert len(ids) >= 200
    # every seat an accepted booking can take ends held: each quantity booking takes one of the seats, the
    # compat ones their named seat (the first of each). Not always 100: the 200 accepted by the time of the
    # kill may hold fewer quantity bookings than 93 (the edge's 100 seats less the 7 named ones). The test
    # asserted 100 and failed once on a loaded machine with 96 held, as 89 quantity + 7 named would give.
    can_hold = min(100, len(accepted["quantity"]) + len(accepted["seats"]))

    await server.start()  # same data dir: pending work resumes
    async with client_of(server) as client:
        statuses = await final_state(client, event_id, ids, wait=30)
    assert statuses["pending"] == 0, statuses
    assert statuses["held"] == can_hold, (statuses, len(accepted["quantity"]), sorted(accepted["seats"]))
    assert await server.signal_and_wait(signal.SIGTERM) == 0


async def test_kill_9_with_every_accepted_booking_still_queued(tmp_path: Path) -> None:
    """An intake-only process (no consumers) accepts, dies by SIGKILL; the next process decides it all."""
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", consumers=0)
    await server.start()
    async with client_of(server) as client:
        event_id = await new_event(client, "crash")
        ids = await burst(client, event_id)
        pending = await final_state(client, event_id, ids, wait=0)
    assert pending == {"pending": len(ids)}
    assert await server.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL

    server.consumers = 2
    await server.start()
    assert f"resuming {len(ids)} pending bookings" in server.log.read_text()
    async with client_of(server) as client:
        statuses = await final_state(client, event_id, ids, wait=30)
    assert statuses["pending"] == 0, statuses
    assert sum(statuses.values()) == len(ids)
    assert await server.signal_and_wait(signal.SIGTERM) == 0


async def test_sigterm_drains_the_queue_and_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    await server.start()
    async with client_of(server) as client:
        event_id = await new_event(client, "drain")
        ids = await burst(client, event_id)
    assert await server.signal_and_wait(signal.SIGTERM) == 0
    assert "drained" in server.log.read_text()

    await server.start()
    async with client_of(server) as client:
        statuses = await final_state(client, event_id, ids, wait=0)  # decided before the exit
    assert statuses["pending"] == 0, statuses
    assert await server.signal_and_wait(signal.SIGINT) == 0
