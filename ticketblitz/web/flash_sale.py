"""The visualizer's flash-sale button: `POST /api/admin/flash-sale` runs the built-in load generator
(`python -m ticketblitz flash-sale --json-progress`) as a child process against this server and relays
its progress lines as `loadgen` telemetry frames.

One run at a time per process; the run is a task of the app's serving nursery, bounded in time
(`CHILD_TIMEOUT`), and stopped (the child terminated) when the server shuts down. The admin token
reaches the child through its environment, never its argv (which `ps` shows to everyone).

With a `waiting_room` (API 1.2: the event object's member, e.g. `{"mode": "fifo", "admit_per_second":
200}`) the sale's event is created with that waiting room, its sale opening `sale_starts_in` seconds
after its creation (0: at once), and the child runs the load generator's waiting-room mode
(`ticketblitz flash-sale --waiting-room`: each fan joins the line, waits for its pass, then books with it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio

from ..domain.model import Event
from ..loadgen.scenario import event_body
from ..schemas import EventIn
from ..service import BookingService
from ..telemetry import iso_time

log = logging.getLogger("ticketblitz.flash_sale")

CHILD_TIMEOUT = 120.0  # seconds; then the child is killed and the run reported failed
# the child's own deadlines, so that it reports a result well within CHILD_TIMEOUT
CHILD_DEADLINES = ("--connect-timeout", "10", "--timeout", "30", "--decide-timeout", "45")
MAX_LINE = 64 * 1024  # a progress line is a few hundred bytes; a longer one is not ours
# the members of a `loadgen` frame (spec/telemetry.md); anything else in a line is not relayed
FRAME_MEMBERS = ("state", "event_id", "users", "seats", "route", "sent", "answered", "by_code", "p50_ms",
                 "p99_ms", "decided", "pending", "oversold", "error",
                 # the waiting-room mode's (`--waiting-room`): its fans' progress through the line
                 "waiting_room", "phase", "arrived", "joined", "final", "admitted", "sold_out", "booked", "held",
                 "confirmed", "done", "passed")
MAX_SALE_STARTS_IN = 30.0  # seconds from the event's creation to its sale's opening, at most (waiting room)
STATES = frozenset({"started", "progress", "finished", "failed"})
# the addresses a listener may have for the child to reach it on 127.0.0.1
LOOPBACK_OR_ANY = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::", ""})


class FlashSaleRunning(Exception):
    """A flash sale is running in this process already."""


class FlashSaleRunner:
    """Starts at most one flash sale at a time and keeps the state of the last one."""

    def __init__(self, service: BookingService) -> None:
        self.service = service
        self.running = False
        self.state: dict[str, Any] | None = None  # the last frame's members
        self._scope: trio.CancelScope | None = None
        self._waiting_room: dict[str, Any] | None = None  # the running sale's event's, for its frames
        self._opens_in = 0.0  # seconds from its creation to its sale's opening

    def snapshot(self) -> dict[str, Any]:
        """GET /api/admin/flash-sale: the last run's state (`idle` before the first)."""
        return {**(self.state or {"state": "idle"}), "running": self.running}

    def target_url(self, listening: str | None) -> str:
        """http://127.0.0.1:<port> of this server's public listener (RuntimeError when it has none there)."""
        if listening is None:
            raise RuntimeError("the server is not listening yet")
        parts = urlsplit(listening)
        if (parts.hostname or "") not in LOOPBACK_OR_ANY or parts.port is None:
            raise RuntimeError(f"the load generator drives 127.0.0.1 only; this server listens on {listening}")
        return f"http://127.0.0.1:{parts.port}"

    async def start(self, nursery: trio.Nursery, url: str, users: int, seats: int, route: str,
                    waiting_room: Mapping[str, Any] | None = None,
                    sale_starts_in: float = 0.0) -> dict[str, Any]:
        """Create the sale's event, then start the child in `nursery`; the 202 body.

        `waiting_room`: the event's waiting room (API 1.2, a mapping or a pydantic model of its members),
        the sale opening `sale_starts_in` seconds (0..MAX_SALE_STARTS_IN) after the event's creation; the
        child then runs the load generator's waiting-room mode. An invalid waiting room raises the event
        schema's ValidationError (naming the field) before anything is created."""
        if self.running:
            raise FlashSaleRunning()
        self.running = True  # before any await: a second request meanwhile gets 409
        try:
            room = _plain(waiting_room)
            now = self.service.clock()
            body = event_body(f"Flash sale: {users:,} fans, {seats:,} seats"
                              f"{', waiting room' if room is not None else ''}", seats, venue="flash sale")
            if room is not None:
                if not 0 <= sale_starts_in <= MAX_SALE_STARTS_IN:
                    raise ValueError(f"sale_starts_in: must be between 0 and {MAX_SALE_STARTS_IN:g} seconds")
                body["waiting_room"] = room
                if sale_starts_in > 0:
                    body["sale_starts_at"] = iso_time(now + sale_starts_in)
            # as POST /api/events reads a body: JSON mode (timestamps as RFC 3339 strings), strict
            spec = EventIn.model_validate_json(orjson.dumps(body))
            event: Event = await self.service.create_event(spec.to_event(now))
        except BaseException:
            self.running = False
            raise
        members: dict[str, Any] = {"event_id": event.id, "users": users, "seats": seats, "route": route}
        self._waiting_room = None
        self._opens_in = sale_starts_in if room is not None else 0.0
        if room is not None:
            members["waiting_room"] = self._waiting_room = room
            if "sale_starts_at" in body:
                members["sale_starts_at"] = body["sale_starts_at"]
        self.state = {"state": "started", **members}
        nursery.start_soon(self._run, url, members, name="flash-sale")
        return dict(self.state)

    def stop(self) -> None:
        """Stop a running sale (server shutdown): its child is terminated."""
        if self._scope is not None:
            self._scope.cancel()

    def command(self, url: str, members: dict[str, Any]) -> list[str]:
        command = [sys.executable, "-m", "ticketblitz", "flash-sale", "--url", url, "--json-progress",
                   "--users", str(members["users"]), "--seats", str(members["seats"]), "--route", members["route"],
                   "--event-id", members["event_id"], "--allow-socket-errors", *CHILD_DEADLINES]
        if "waiting_room" in members:
            # the event's waiting room: each fan joins, waits for its pass, books with it and confirms;
            # --timeout then bounds the whole line, which waits for the sale's opening first
            command.append("--waiting-room")
            command[command.index("--timeout") + 1] = f"{float(CHILD_DEADLINES[3]) + self._opens_in:g}"
        return command

    async def _run(self, url: str, members: dict[str, Any]) -> None:
        env = {**os.environ, "TICKETBLITZ_ADMIN_TOKEN": self.service.settings.admin_token}
        stderr_tail: deque[bytes] = deque(maxlen=20)
        process: trio.Process | None = None
        try:
            with trio.CancelScope() as scope, trio.move_on_after(CHILD_TIMEOUT + self._opens_in) as bounded:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    process = await nursery.start(_run_child, self.command(url, members), env)
                    assert process is not None and process.stdout is not None and process.stderr is not None
                    nursery.start_soon(_keep_lines, process.stderr, stderr_tail.append)
                    await _keep_lines(process.stdout, self._relay)
            if scope.cancelled_caught:
                self._finish(members, "stopped: the server is shutting down")
            elif bounded.cancelled_caught:
                self._finish(members, f"stopped after {CHILD_TIMEOUT + self._opens_in:g} s")
            elif (self.state or {}).get("state") not in ("finished", "failed"):
                tail = b" | ".join(stderr_tail).decode(errors="replace")[-500:]
                code = process.returncode if process is not None else None
                self._finish(members, f"the load generator exited ({code}) without a result: {tail}")
        except OSError as exc:  # could not start the child at all
            self._finish(members, f"could not start the load generator: {exc}")
        finally:
            if (self.state or {}).get("state") not in ("finished", "failed"):
                # cancelled from outside (the serving nursery ends): the child is terminated all the same
                self._finish(members, "stopped: the server is shutting down")
            self._scope = None
            self._waiting_room = None
            self._opens_in = 0.0
            self.running = False

    def _relay(self, raw: bytes) -> None:
        """One progress line of the child: keep it as the state and publish it as a `loadgen` frame."""
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("flash sale: not a JSON line: %r", raw[:200])
            return
        if not isinstance(line, dict) or line.get("state") not in STATES:
            return
        frame = {k: line[k] for k in FRAME_MEMBERS if k in line}
        if self._waiting_room is not None:
            frame.setdefault("waiting_room", self._waiting_room)  # the sale's event's (this server made it)
        self.state = frame
        self.service.telemetry.publish("loadgen", **frame)
        if frame["state"] == "failed":
            log.warning("flash sale on %s failed: %s", frame.get("event_id"), frame.get("error"))

    def _finish(self, members: dict[str, Any], error: str) -> None:
        """Report a run that ended without its own result line."""
        log.warning("flash sale on %s: %s", members["event_id"], error)
        frame = {**(self.state or {}), **members, "state": "failed", "error": error}
        self.state = frame
        self.service.telemetry.publish("loadgen", **frame)


def _plain(waiting_room: Any) -> dict[str, Any] | None:
    """The waiting room's members as a plain dict (from a mapping or a pydantic model), None for none."""
    if waiting_room is None:
        return None
    if hasattr(waiting_room, "model_dump"):
        return dict(waiting_room.model_dump(mode="json", exclude_none=True))
    return dict(waiting_room)


async def _run_child(command: list[str], env: dict[str, str],
                     *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED) -> None:
    """The child, its output piped; cancelling this terminates it (SIGTERM, SIGKILL 5 s later)."""
    await trio.run_process(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env, check=False, task_status=task_status)


async def _keep_lines(stream: trio.abc.ReceiveStream, keep: Any) -> None:
    """Hand each line of `stream` to `keep` until it ends; an overlong line is cut off and dropped."""
    buffer = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            break
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                keep(line)
        if len(buffer) > MAX_LINE:
            buffer.clear()
    if buffer.strip():
        keep(bytes(buffer))
