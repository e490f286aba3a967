"""A real `ticketblitz serve` process on a real port for the schema suite, and the small world of
events and bookings the generated requests find there.

A separate process (not a thread of the test process) so that generating requests and answering them
use both cores, and so that a crash of the server is seen as a crash, never hidden by the test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN = "schema-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SERVICE_VARS = ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP")
METRIC_LINE = re.compile(r'^ticketblitz_http_requests_total\{code="(\d+)",route="[^"]*"\} (\d+(?:\.\d+)?)$',
                         re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    """Ids that exist on the server, so that generated requests also reach the happy paths."""

    event_ids: list[str] = field(default_factory=list)
    booking_ids: list[str] = field(default_factory=list)  # decided bookings (a long-poll returns at once)


class ServerProcess:
    """`python -m ticketblitz serve` started by PID and stopped by PID; its log kept for the failure report."""

    def __init__(self, data_dir: Path, log: Path, services: dict[str, str] | None = None, *,
                 intake_door: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
        env.update({
            "TICKETBLITZ_ADMIN_TOKEN": ADMIN_TOKEN,
            "TICKETBLITZ_PORT": str(self.port),
            "TICKETBLITZ_DATA_DIR": str(data_dir),
            "TICKETBLITZ_INTAKE_DOOR": "true" if intake_door else "false",
            "TICKETBLITZ_MAX_WAIT": "0.5",  # generated `?wait=30` long-polls must not stall the suite
            "TICKETBLITZ_SWEEP_INTERVAL": "0.2",
            "TICKETBLITZ_SHUTDOWN_GRACE": "2",
            "TICKETBLITZ_LOG_LEVEL": "warning",
        })
        env.update({f"TICKETBLITZ_{k.upper()}": v for k, v in (services or {}).items()})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log_tail()}"
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not answer /healthz within 60 s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def answers_by_code(self) -> Counter[int]:
        """The server's own count of its HTTP answers, by status (from /metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        answers: Counter[int] = Counter()
        for code, n in METRIC_LINE.findall(text):  # one line per (route, code)
            answers[int(code)] += int(float(n))
        return answers


def seed_world(url: str) -> World:
    """Two small events and a booking in each final status (held, confirmed, cancelled, rejected),
    made through the public API."""
    world = World()
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, rows, per_row in (("Schema night", 4, 5), ("Tiny matinee", 1, 3)):
            r = client.post("/api/events", headers=ADMIN, json={
                "name": name, "sections": [{"name": "A", "rows": rows, "seats_per_row": per_row, "price_cents": 100}],
                "max_per_user": 4, "hold_seconds": 600})
            assert r.status_code == 201, r.text
            world.event_ids.append(r.json()["id"])
        main = world.event_ids[0]
        made: list[str] = []
        for path, body in ((f"/api/events/{main}/bookings", {"user_id": "seed-held", "quantity": 1}),
                           (f"/api/events/{main}/bookings", {"user_id": "seed-confirmed", "seat_ids": ["A-2-1"]}),
                           (f"/api/events/{main}/bookings", {"user_id": "seed-cancelled", "quantity": 2}),
                           # the queued compat path lets a taken seat through: the store rejects it
                           ("/api/book-async", {"userId": "seed-rejected", "seatNumber": 6, "eventId": main})):
            r = client.post(path, json=body)
            assert r.status_code == 202, r.text
            booking = r.json().get("booking", r.json())
            made.append(booking["id"])
            _settle(client, booking["id"])
        _held, confirmed, cancelled, rejected = made
        assert client.post(f"/api/bookings/{confirmed}/confirm", headers=ADMIN).status_code == 200
        assert client.post(f"/api/bookings/{cancelled}/cancel", headers=ADMIN).status_code == 200
        assert _settle(client, rejected)["status"] == "rejected"
        world.booking_ids = made
    return world


def _settle(client: httpx.Client, booking_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.get(f"/api/bookings/{booking_id}", params={"wait": 1}, headers=ADMIN)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "pending":
            return dict(r.json())
    raise AssertionError(f"booking {booking_id} still pending after 30 s")
