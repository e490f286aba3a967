"""The Quart-Trio app: organizer routes, bookings, the original's compat routes, reads, operations,
the visualizer and /ws. Handlers are thin: parse with the declared schema, call the booking service,
map domain errors to problem+json (in `problem_of`, the one mapping)."""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import Any

import orjson
from quart import Response, g, request, send_from_directory, websocket
from quart_schema import (
    QuartSchema,
    document_headers,
    document_querystring,
    document_request,
    document_response,
    hide,
    tag,
)
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import intake
from ..domain.errors import BookingError, SoldOut
from ..domain.model import SeatStatus
from ..policy import check_json_body
from ..representation import (
    booking_json,
    compat_seat_json,
    event_json,
    http_code,
    problem,
    problem_of,
    seat_json,
)
from ..schemas import (
    BookingIn,
    BookingOut,
    CompatBookedOut,
    CompatBookingIn,
    CompatEventQuery,
    CompatQueuedOut,
    CompatSeatOut,
    CompatSeatsOut,
    EventIn,
    EventOut,
    EventsOut,
    IdempotencyHeaders,
    Problem,
    ReadyOut,
    SeatsOut,
    StatusOut,
    WaitQuery,
    parse_body,
    parse_wait,
)
from ..service import BookingService

log = logging.getLogger("ticketblitz.web")

PROBLEM_TYPE = "application/problem+json"

DESCRIPTION = """TicketBlitz sells a fixed stock of seats to a crowd that arrives all at once, without selling
a seat twice and without losing an accepted request.

* Booking requests are validated, admitted at the edge and queued durably: `202` means the booking
  WILL reach a decision (`held` or `rejected`); poll `GET /api/bookings/{id}?wait=N`.
* Every error is `application/problem+json` with a `code` (see API.md). A `422` names the field in
  `detail` and in the extra member `field`.
* Unknown fields in the bodies of `/api/...` routes are refused (`422`); the original's compat routes
  ignore them. Request bodies are parsed as JSON whatever their Content-Type.
* `405` (method not allowed) answers with code `invalid_request`.
"""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, content_type=content_type)


def problem_response(status: int, code: str, title: str, detail: str, field: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    return json_response(problem(status, code, title, detail, field), status, headers, PROBLEM_TYPE)


def create_app(service: BookingService) -> QuartTrio:
    """The app for one booking service; `service.settings` configures it."""
    settings = service.settings
    static_dir = Path(settings.static_dir).resolve()
    app = QuartTrio("ticketblitz", static_folder=str(static_dir), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout  # 408 for a body that trickles (the door checks first)
    app.config["QUART_SCHEMA_CONVERSION_PREFERENCE"] = "pydantic"
    QuartSchema(
        app,
        info={"title": "TicketBlitz", "version": "1", "description": DESCRIPTION},
        security_schemes={"admin": {"type": "http", "scheme": "bearer"}},
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    telemetry = service.telemetry

    # ------------------------------------------------------------------ cross-cutting
    @app.before_request
    async def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _record(response: Response) -> Response:
        started = getattr(g, "started", None)
        if started is not None:
            telemetry.record_request(response.status_code, time.perf_counter() - started)
        return response

    @app.errorhandler(BookingError)
    async def _domain_error(error: BookingError) -> Response:
        status, body, headers = problem_of(error)
        return json_response(body, status, headers, PROBLEM_TYPE)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = http_code(status)
        detail = error.description or error.name
        if status == 404:
            detail = f"no route {request.method} {request.path}" if request else "not found"
        if status == 413:
            detail = f"body: larger than the limit of {settings.max_body_bytes} bytes"
        return problem_response(status, code, error.name, detail)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(503, "unavailable", "Service unavailable",
                                "the server could not complete the request; nothing was changed")

    def require_admin() -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise _AuthError(401, "unauthorized", "an organizer route needs Authorization: Bearer <admin token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 settings.admin_token.encode()):
            raise _AuthError(403, "forbidden", "the admin token is not valid")

    @app.errorhandler(_AuthError)
    async def _auth_error(error: _AuthError) -> Response:
        return problem_response(error.status, error.code, "Unauthorized" if error.status == 401 else "Forbidden",
                                error.detail)

    async def raw_body() -> bytes:
        raw: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
        return raw

    async def body_of(model: Any) -> Any:
        check_json_body(request.headers.get("Content-Type"))
        return parse_body(model, await raw_body())

    async def intake_response(route: Any, *path_args: str) -> Response:
        """The intake routes answer through `ticketblitz.intake`, like the Trio-native door."""
        call = intake.Call({k.lower(): v for k, v in request.headers.items()}, await raw_body())
        result = await intake.answer(route, service, call, *path_args)
        return json_response(result.body, result.status, result.headers, result.content_type)

    # ------------------------------------------------------------------ events
    @app.post("/api/events")
    @tag(["events"])
    @document_request(EventIn)
    @document_response(EventOut, 201)
    @document_response(Problem, 401)
    @document_response(Problem, 403)
    @document_response(Problem, 422)
    async def create_event() -> Response:
        """Create an event and its seats (organizer; needs the admin token)."""
        require_admin()
        spec = await body_of(EventIn)
        event = await service.create_event(spec.to_event(service.clock()))
        return json_response(event_json(event), 201, {"Location": f"/api/events/{event.id}"})

    @app.get("/api/events")
    @tag(["events"])
    @document_response(EventsOut)
    async def list_events() -> Response:
        """Every event with its counts."""
        return json_response({"events": [event_json(e) for e in await service.events()]})

    @app.get("/api/events/<event_id>")
    @tag(["events"])
    @document_response(EventOut)
    @document_response(Problem, 404)
    async def get_event(event_id: str) -> Response:
        """One event with its counts."""
        return json_response(event_json(await service.event(event_id)))

    @app.get("/api/events/<event_id>/seats")
    @tag(["events"])
    @document_response(SeatsOut)
    @document_response(Problem, 404)
    async def get_seats(event_id: str) -> Response:
        """The event's seat map with each seat's status."""
        seats = await service.seats(event_id)
        return json_response({"event_id": event_id, "seats": [seat_json(s) for s in seats]})

    # ------------------------------------------------------------------ bookings
    @app.post("/api/events/<event_id>/bookings")
    @tag(["bookings"])
    @document_request(BookingIn)
    @document_headers(IdempotencyHeaders)
    @document_response(BookingOut, 202)
    @document_response(BookingOut, 200)
    @document_response(Problem, 404)
    @document_response(Problem, 409)
    @document_response(Problem, 422)
    @document_response(Problem, 429)
    @document_response(Problem, 503)
    async def create_booking(event_id: str) -> Response:
        """Ask for seats: `202` pending (durably queued), `200` on an Idempotency-Key repeat, `409` when
        the edge already knows the answer."""
        return await intake_response(intake.create_booking, event_id)

    @app.get("/api/bookings/<booking_id>")
    @tag(["bookings"])
    @document_querystring(WaitQuery)
    @document_response(BookingOut)
    @document_response(Problem, 404)
    async def get_booking(booking_id: str) -> Response:
        """A booking; `?wait=N` long-polls up to N seconds until it leaves `pending`."""
        wait = parse_wait(request.args.get("wait"))
        return json_response(booking_json(await service.booking(booking_id, wait)))

    @app.post("/api/bookings/<booking_id>/confirm")
    @tag(["bookings"])
    @document_response(BookingOut)
    @document_response(Problem, 409)
    async def confirm_booking(booking_id: str) -> Response:
        """Buy a held booking: its seats become `sold` (idempotent on a confirmed booking)."""
        return json_response(booking_json(await service.confirm(booking_id)))

    @app.post("/api/bookings/<booking_id>/cancel")
    @tag(["bookings"])
    @document_response(BookingOut)
    @document_response(Problem, 409)
    async def cancel_booking(booking_id: str) -> Response:
        """Release a held booking: its seats become `available`."""
        return json_response(booking_json(await service.cancel(booking_id)))

    # ------------------------------------------------------------------ the original's routes
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_response(CompatQueuedOut, 202)
    async def book_async() -> Response:
        """The original's queued path: every valid request is queued (`202`); the booking's final status
        is the outcome."""
        return await intake_response(intake.book_async)

    app.add_url_rule("/api/book-async", "book_async", book_async, methods=["POST"])
    app.add_url_rule("/book", "book", book_async, methods=["POST"])

    @app.post("/api/book-secure")
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_response(CompatBookedOut)
    @document_response(Problem, 409)
    @document_response(Problem, 429)
    async def book_secure() -> Response:
        """The original's locked path: seat lock, then store write; `429` while another request holds the lock."""
        return await intake_response(intake.book_secure)

    @app.post("/api/book-naive")
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_response(CompatBookedOut)
    @document_response(Problem, 409)
    async def book_naive() -> Response:
        """The original's unlocked path: read, then conditional write; the store refuses a second buyer."""
        return await intake_response(intake.book_naive)

    @app.get("/api/seats")
    @tag(["original"])
    @document_querystring(CompatEventQuery)
    @document_response(CompatSeatsOut)
    async def compat_seats() -> Response:
        """The event's seats numbered 1..capacity, status AVAILABLE / LOCKED / BOOKED."""
        event = await service.compat_event(request.args.get("eventId"))
        seats = await service.seats(event.id)
        return json_response({"eventId": event.id, "seats": [compat_seat_json(s) for s in seats]})

    @app.get("/api/random-seat")
    @tag(["original"])
    @document_querystring(CompatEventQuery)
    @document_response(CompatSeatOut)
    @document_response(Problem, 409)
    async def compat_random_seat() -> Response:
        """The first available seat (`409 sold_out` when none is left)."""
        event = await service.compat_event(request.args.get("eventId"))
        for seat in await service.seats(event.id):
            if seat.status is SeatStatus.AVAILABLE:
                return json_response(compat_seat_json(seat))
        raise SoldOut(f"event {event.id} has no seat left")

    @app.get("/health")
    @tag(["original"])
    @document_response(StatusOut)
    async def compat_health() -> Response:
        """Liveness, as the original answered it."""
        return json_response({"status": "ok"})

    # ------------------------------------------------------------------ operations
    @app.get("/healthz")
    @tag(["operations"])
    @document_response(StatusOut)
    async def healthz() -> Response:
        """200 while the process runs."""
        return json_response({"status": "ok"})

    @app.get("/readyz")
    @tag(["operations"])
    @document_response(ReadyOut)
    @document_response(Problem, 503)
    async def readyz() -> Response:
        """200 when store, queue and lock answer; 503 naming the ones that do not."""
        parts = await service.readiness()
        down = [name for name, state in parts.items() if state != "ok"]
        if down or not service.accepting:
            detail = ("not reachable: " + ", ".join(down)) if down else "the server is shutting down"
            body = problem(503, "unavailable", "Not ready", detail)
            body.update(parts)
            return json_response(body, 503, {"Retry-After": "1"}, PROBLEM_TYPE)
        return json_response({"status": "ready", **parts})

    @app.get("/metrics")
    @tag(["operations"])
    async def metrics() -> Response:
        """Prometheus text exposition."""
        gauges = {"queue_depth": float(service.queue.depth()), "ws_subscribers": float(len(telemetry.subscribers)),
                  "accepting": 1.0 if service.accepting else 0.0}
        return Response(telemetry.metrics_text(gauges), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    @hide
    async def index() -> Response:
        return await send_from_directory(str(static_dir), "index.html")

    @app.websocket("/ws")
    async def ws() -> None:
        """Telemetry frames: `snapshot` on connect, then lock/queue/booking/seat, `stats` every second."""
        event_filter = websocket.args.get("event") or None
        if event_filter is not None and len(event_filter) > 64:
            event_filter = None
        await websocket.accept()
        with telemetry.subscribe(event_filter) as sub:
            events = [event_json(e) for e in await service.events()
                      if event_filter is None or e.id == event_filter]
            await websocket.send(orjson.dumps({"type": "snapshot", "ts": telemetry.last_stats["ts"],
                                               "events": events, "stats": telemetry.last_stats}).decode())
            while True:
                frame = await sub.next_frame()
                await websocket.send(orjson.dumps(frame).decode())

    return app


class _AuthError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


