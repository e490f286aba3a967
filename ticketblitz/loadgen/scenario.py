"""What a flash sale asks of the server: the bounds, the fresh event, and each fan's one request."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .client import ALLOWED_HOST, KeepAliveConnection, build_request, fetch_json

MAX_CLIENTS = 20_000  # bounded in count: far beyond what one process on this machine needs
MAX_SEATS = 200_000  # the API's per-event limit
MAX_DIMENSION = 1000  # rows and seats_per_row are 1..1000 per section
MAX_PER_USER = 4
HOLD_SECONDS = 3600  # no hold may lapse during a run: a run is bounded far below an hour
ROUTES = ("bookings", "book-async", "book-secure", "book-naive")

__all__ = ["ALLOWED_HOST", "HOLD_SECONDS", "MAX_CLIENTS", "MAX_PER_USER", "MAX_SEATS", "ROUTES", "Scenario",
           "SetupError", "create_event", "event_body", "fresh_event", "seat_layout"]


class SetupError(Exception):
    """The run cannot start (token missing or refused, event unusable): one line for the user."""


def seat_layout(seats: int) -> tuple[int, int]:
    """(rows, seats_per_row) of one section holding exactly `seats` seats, each dimension 1..1000, about
    twice as wide as deep (so that the visualizer's seat map of a sale is a block, not a line): the exact
    row width closest to sqrt(2 x seats); one row when no width comes near (a prime up to 1000)."""
    ideal = math.sqrt(2 * seats)
    widths = [w for w in range(1, MAX_DIMENSION + 1) if seats % w == 0 and seats // w <= MAX_DIMENSION]
    if not widths:
        raise ValueError(f"seats: no rows x seats_per_row (each <= {MAX_DIMENSION}) makes exactly {seats}")
    width = min(widths, key=lambda w: (abs(w - ideal), -w))
    if width < ideal / 2 and seats <= MAX_DIMENSION:
        width = seats
    return seats // width, width


def event_body(name: str, seats: int, venue: str = "bench") -> dict[str, Any]:
    """The POST /api/events body of a fresh event with exactly `seats` seats in section A."""
    rows, per_row = seat_layout(seats)
    return {"name": name, "venue": venue, "max_per_user": MAX_PER_USER, "hold_seconds": HOLD_SECONDS,
            "sections": [{"name": "A", "rows": rows, "seats_per_row": per_row, "price_cents": 0}]}


def _refused(status: int, what: str) -> SetupError | None:
    if status == 401:
        return SetupError(f"{what}: the server wants the admin token (401): pass --admin-token or set "
                          "TICKETBLITZ_ADMIN_TOKEN")
    if status == 403:
        return SetupError(f"{what}: the server refused the admin token (403): use the one it printed at start "
                          "or its TICKETBLITZ_ADMIN_TOKEN")
    return None


async def create_event(conn: KeepAliveConnection, port: int, token: str, name: str, seats: int) -> dict[str, Any]:
    """POST /api/events: a fresh event with exactly `seats` seats in section A."""
    response = await conn.request(build_request("POST", "/api/events", port, event_body(name, seats), token=token))
    refused = _refused(response.status, "creating the event")
    if refused is not None:
        raise refused
    if response.status != 201:
        raise RuntimeError(f"creating the event answered {response.status}: {response.body[:300]!r}")
    event: dict[str, Any] = response.json()
    if event["capacity"] != seats:
        raise RuntimeError(f"event {event['id']} has {event['capacity']} seats, asked for {seats}")
    return event


async def fresh_event(conn: KeepAliveConnection, port: int, token: str, event_id: str, seats: int) -> dict[str, Any]:
    """An existing event (`--event-id`) that this run may use: `seats` seats, none held or sold yet,
    since the verification assumes that every booking of the event is one of this run's. It also
    proves the admin token, which the long polls need, before the burst."""
    # an organizer route checks the token before the body: `{}` answers 401/403, or 422 and changes nothing
    response = await conn.request(build_request("POST", "/api/events", port, {}, token=token))
    refused = _refused(response.status, "checking the admin token")
    if refused is not None:
        raise refused
    try:
        event: dict[str, Any] = await fetch_json(conn, port, f"/api/events/{event_id}")
    except RuntimeError as exc:
        raise SetupError(f"--event-id {event_id}: {exc}") from None
    if event["capacity"] != seats or event["counts"]["available"] != seats:
        raise SetupError(f"--event-id {event_id}: needs a fresh event of {seats} seats; it has capacity "
                         f"{event['capacity']}, counts {event['counts']}")
    return event


def event_name(kind: str, route: str, clients: int, seats: int) -> str:
    return f"flash {kind} {route} {clients}x{seats} {time.strftime('%H:%M:%S')}"


@dataclass(slots=True)
class Scenario:
    """What every fan asks for: `hot` = all the same named seat, `flash` = best available."""

    kind: str  # "flash" or "hot"
    route: str
    clients: int
    seats: int
    quantity: int

    def request_for(self, fan: int, event_id: str, port: int) -> bytes:
        """Fan `fan`'s single request (Connection: close, since it is the connection's only request)."""
        user = f"fan-{fan}"
        if self.route == "bookings":
            body: dict[str, Any] = ({"user_id": user, "seat_ids": ["A-1-1"]} if self.kind == "hot"
                                    else {"user_id": user, "quantity": self.quantity})
            return build_request("POST", f"/api/events/{event_id}/bookings", port, body, keep_alive=False)
        seat_number = 1 if self.kind == "hot" else fan % self.seats + 1
        body = {"userId": user, "seatNumber": seat_number, "eventId": event_id}
        return build_request("POST", f"/api/{self.route}", port, body, keep_alive=False)
