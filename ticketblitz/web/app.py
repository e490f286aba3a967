"""The Quart-Trio app: organizer routes, bookings, the original's compat routes, reads, operations,
the visualizer and /ws. Handlers are thin: parse with the declared schema, call the booking service,
map domain errors to problem+json (in `problem_of`, the one mapping)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import orjson
import trio
from quart import Response, g, request, send_from_directory, websocket
from quart_schema import (
    QuartSchema,
    document_headers,
    document_querystring,
    document_request,
    document_response,
    hide,
    security_scheme,
    tag,
)
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, NotFound

from .. import intake, reads
from ..domain.errors import BookingError, Forbidden, SoldOut, Unauthorized
from ..domain.ownership import is_token
from ..policy import API_HEADERS, PAGE_HEADERS, bearer, check_json_body, cors_headers
from ..representation import (
    booking_json,
    compat_seat_json,
    event_json,
    http_code,
    problem,
    problem_of,
)
from ..schemas import (
    BookingIn,
    BookingOut,
    ChallengeOut,
    CompatBookedOut,
    CompatBookingIn,
    CompatEventQuery,
    CompatQueuedOut,
    CompatSeatOut,
    CompatSeatsOut,
    EventIn,
    EventOut,
    EventsOut,
    FlashSaleIn,
    FlashSaleOut,
    FlashSaleStateOut,
    IdempotencyHeaders,
    JoinIn,
    LineOut,
    NewBookingOut,
    NewTicketOut,
    ReadyOut,
    ReadyProblem,
    SeatMapHeaders,
    SeatMapOut,
    SeatMapQuery,
    StatusOut,
    TicketOut,
    WaitQuery,
    parse_body,
)
from ..service import BookingService
from ..telemetry import Subscriber, iso_time
from ..telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .flash_sale import FlashSaleRunner, FlashSaleRunning
from .openapi import BOOKING_OWNER, TicketBlitzOpenAPI, problems, quart_security_schemes

log = logging.getLogger("ticketblitz.web")

PROBLEM_TYPE = "application/problem+json"
DOCS_UI = Path(__file__).resolve().parent / "docs_ui"  # the /docs page and its assets (package data)
DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "docs.js"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PARAMETER = re.compile(r"<(?:(path):)?[^>]+>")
_templates: dict[tuple[str, str | None], str] = {}


def route_template(method: str, rule: str | None) -> str:
    """The route's name in telemetry and /metrics: `GET /api/bookings/{id}`; a bounded set of names
    (unknown methods are OTHER, paths no route matched are `(unmatched)`)."""
    key = (method, rule)
    name = _templates.get(key)
    if name is None:
        verb = method if method in METHODS else "OTHER"
        path = _PARAMETER.sub(lambda m: "{path}" if m.group(1) else "{id}", rule) if rule else "(unmatched)"
        name = f"{verb} {path}"
        if len(_templates) < 1000:
            _templates[key] = name
    return name

DESCRIPTION = """TicketBlitz sells a fixed stock of seats to a crowd that arrives all at once, without selling
a seat twice and without losing an accepted request.

* Booking requests are validated, admitted at the edge and queued durably: `202` means the booking
  WILL reach a decision (`held` or `rejected`); poll `GET /api/bookings/{id}?wait=N`.
* A booking belongs to whoever holds its `secret`, which only the answer that created it (and an
  `Idempotency-Key` repeat) carries: reading, long-polling, confirming and cancelling it need
  `Authorization: Bearer <secret>` (or the admin token). Without an `Authorization` header `401`; with a
  secret that is not this booking's `404`, whether or not the booking exists.
* Organizer routes (`POST /api/events`) need `Authorization: Bearer <admin token>`: `401` without,
  `403` with a wrong one. Reading events and seats and the operations routes need no token.
* `POST` bodies must be sent as `Content-Type: application/json` (`415` otherwise); bodies over the
  limit (64 KiB by default) get `413`.
* Every error is `application/problem+json` with a `code` (see API.md). A `422` names the field in
  `detail` and in the extra member `field`; a `503` may name the failed backing service in `component`;
  `429` (and `503` when retrying may help) carries `Retry-After`.
* Unknown fields in the bodies of `/api/...` routes are refused (`422`); the original's compat routes
  ignore them.
* A method a path does not serve answers `405` with code `invalid_request`; an unknown path `404`.
* `POST /api/admin/flash-sale` (admin) runs the built-in load generator against this server, as the
  visualizer's flash-sale button does: one run at a time per process (`409 flash_sale_running`), at most
  120 s; its progress arrives as `loadgen` frames on `/ws`.
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
        info={"title": "TicketBlitz", "version": "1.1", "description": DESCRIPTION},
        security_schemes=quart_security_schemes(),
        swagger_ui_path=None,  # /docs is served below from the vendored copy (docs_ui/), not from a CDN
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=TicketBlitzOpenAPI,
    )
    telemetry = service.telemetry

    # ------------------------------------------------------------------ cross-cutting
    @app.before_request
    async def _start_clock() -> None:
        g.started = time.perf_counter()
        # Take in the whole body before anything answers (401, 404, 405, a handler that ignores it):
        # Hypercorn leaves a keep-alive connection stalled when the answer goes out while the body is
        # still arriving, and the client's next request on it waits forever. (A body announced over
        # the limit is not read here: the route refuses it with 413 if it reads bodies.)
        length = request.content_length
        chunked = length is None and "Transfer-Encoding" in request.headers
        if chunked or (length and length <= settings.max_body_bytes):
            await request.get_data(cache=True)

    @app.after_request
    async def _record(response: Response) -> Response:
        started = getattr(g, "started", None)
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else None
            telemetry.record_request(response.status_code, time.perf_counter() - started,
                                     route_template(request.method, rule))
        page = request.path in ("/", "/docs") or request.path.startswith(("/static/", "/docs/"))
        for name, value in (PAGE_HEADERS if page else API_HEADERS).items():
            response.headers.setdefault(name, value)
        for name, value in cors_headers(settings.cors_origin_set, request.headers.get("Origin"),
                                        preflight=request.method == "OPTIONS").items():
            if name == "Vary":  # the seat map varies by Accept-Encoding already
                value = reads.merge_vary(response.headers.get("Vary"), value)
            response.headers[name] = value
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
        # a 405 must say which methods the path serves (RFC 9110, section 15.5.6)
        headers = {name: value for name, value in error.get_headers() if name.lower() == "allow"}
        if status == 413:
            detail = f"body: larger than the limit of {settings.max_body_bytes} bytes"
        return problem_response(status, code, error.name, detail, headers=headers or None)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(503, "unavailable", "Service unavailable",
                                "the server could not complete the request; nothing was changed")

    def credential() -> str | None:
        """The bearer credential of the request (None: no Authorization header)."""
        return bearer(request.headers.get("Authorization"))

    def require_admin() -> None:
        token = credential()
        if token is None:
            raise Unauthorized("an organizer route needs Authorization: Bearer <admin token>")
        if not is_token(settings.admin_token, token):  # an empty admin token never opens anything
            raise Forbidden("the admin token is not valid")

    async def raw_body() -> bytes:
        raw: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
        return raw

    async def body_of(model: Any) -> Any:
        check_json_body(request.headers.get("Content-Type"))
        return parse_body(model, await raw_body())

    async def read_response(read: reads.Read, param: str) -> Response:
        """The hot reads answer through `ticketblitz.reads`, like the Trio-native door."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await reads.answer(read, service, headers, param, request.query_string.decode("latin-1"))
        response = Response(reply.body, status=reply.status, headers=reply.headers)
        if reply.content_type is None:
            del response.headers["Content-Type"]
        else:
            response.content_type = reply.content_type
        return response

    async def intake_response(route: Any, *path_args: str, json_body: bool = True) -> Response:
        """The intake routes (and the waiting room's and the booking long-poll's GETs, `json_body=False`)
        answer through `ticketblitz.intake`, like the Trio-native door."""
        call = intake.Call({k.lower(): v for k, v in request.headers.items()},
                           await raw_body() if json_body else b"", request.query_string.decode("latin-1"))
        result = await intake.answer(route, service, call, *path_args, json_body=json_body)
        return json_response(result.body, result.status, result.headers, result.content_type)

    # ------------------------------------------------------------------ events
    @app.post("/api/events")
    @tag(["events"])
    @security_scheme([{"admin": []}])
    @document_request(EventIn)
    @document_response(EventOut, 201)
    @problems(400, 401, 403, 413, 415, 422, 503)
    async def create_event() -> Response:
        """Create an event and its seats (organizer; needs the admin token)."""
        require_admin()
        spec = await body_of(EventIn)
        event = await service.create_event(spec.to_event(service.clock()))
        return json_response(event_json(event), 201, {"Location": f"/api/events/{event.id}"})

    @app.get("/api/events")
    @tag(["events"])
    @document_response(EventsOut)
    @problems(503)
    async def list_events() -> Response:
        """Every event with its counts."""
        return json_response({"events": [event_json(e) for e in await service.events()]})

    @app.get("/api/events/<event_id>")
    @tag(["events"])
    @document_response(EventOut)
    @problems(404, 503)
    async def get_event(event_id: str) -> Response:
        """One event with its counts."""
        return await read_response(reads.event, event_id)

    @app.get("/api/events/<event_id>/seats")
    @tag(["events"])
    @document_querystring(SeatMapQuery)
    @document_headers(SeatMapHeaders)
    @document_response(SeatMapOut)
    @problems(404, 422, 503)
    async def get_seats(event_id: str) -> Response:
        """The event's seat map with each seat's status, at most one tick stale (see the README).

        Answers carry a strong `ETag` and `Cache-Control: no-cache`: a repeat with `If-None-Match` gets
        `304` without a body while the map is unchanged. With `Accept-Encoding: gzip` the body is gzip
        (`Vary: Accept-Encoding`). `?form=compact` (a project extension) answers a much smaller document:
        per section its `name`, `rows`, `seats_per_row` and `status`, one character per seat row after row
        (`a` available, `h` held, `s` sold): `{"event_id", "form": "compact", "sections": [...]}`."""
        return await read_response(reads.seats, event_id)

    # ------------------------------------------------------------------ bookings
    @app.post("/api/events/<event_id>/bookings")
    @tag(["bookings"])
    @document_request(BookingIn)
    @document_headers(IdempotencyHeaders)
    @document_response(NewBookingOut, 202)
    @document_response(NewBookingOut, 200)
    @problems(400, 403, 404, 409, 413, 415, 422, 429, 503)
    async def create_booking(event_id: str) -> Response:
        """Ask for seats: `202` pending (durably queued), `200` on an Idempotency-Key repeat, `409` when
        the edge already knows the answer."""
        return await intake_response(intake.create_booking, event_id)

    @app.get("/api/bookings/<booking_id>")
    @tag(["bookings"])
    @security_scheme(BOOKING_OWNER)
    @document_querystring(WaitQuery)
    @document_response(BookingOut)
    @problems(401, 404, 422, 429, 503)
    async def get_booking(booking_id: str) -> Response:
        """A booking; `?wait=N` long-polls up to N seconds until it leaves `pending`."""
        if "wait" not in request.args:
            return await read_response(reads.booking, booking_id)
        return await intake_response(intake.booking_long_poll, booking_id, json_body=False)

    @app.post("/api/bookings/<booking_id>/confirm")
    @tag(["bookings"])
    @security_scheme(BOOKING_OWNER)
    @document_response(BookingOut)
    @problems(401, 404, 409, 413, 415, 503)
    async def confirm_booking(booking_id: str) -> Response:
        """Buy a held booking: its seats become `sold` (idempotent on a confirmed booking)."""
        return json_response(booking_json(await service.confirm(booking_id, credential())))

    @app.post("/api/bookings/<booking_id>/cancel")
    @tag(["bookings"])
    @security_scheme(BOOKING_OWNER)
    @document_response(BookingOut)
    @problems(401, 404, 409, 413, 415, 503)
    async def cancel_booking(booking_id: str) -> Response:
        """Release a held booking: its seats become `available`."""
        return json_response(booking_json(await service.cancel(booking_id, credential())))

    # ------------------------------------------------------------------ the waiting room (API 1.2)
    @app.post("/api/events/<event_id>/queue")
    @tag(["waiting room"])
    @document_request(JoinIn)
    @document_response(NewTicketOut, 201)
    @document_response(NewTicketOut, 200)
    @problems(400, 404, 409, 413, 415, 422, 429, 503)
    async def join_queue(event_id: str) -> Response:
        """Take a place in the event's waiting room (`200` with the same ticket for a user who has one)."""
        return await intake_response(intake.join_queue, event_id)

    @app.get("/api/events/<event_id>/queue")
    @tag(["waiting room"])
    @document_response(LineOut)
    @problems(404, 409, 503)
    async def get_line(event_id: str) -> Response:
        """The event's line in public numbers (and the lottery's seed once drawn)."""
        return await intake_response(intake.queue_line, event_id, json_body=False)

    @app.get("/api/events/<event_id>/queue/challenge")
    @tag(["waiting room"])
    @document_response(ChallengeOut)
    @problems(404, 409, 503)
    async def get_challenge(event_id: str) -> Response:
        """A proof-of-work challenge for joining (when the event's `challenge_bits` > 0)."""
        return await intake_response(intake.queue_challenge, event_id, json_body=False)

    @app.get("/api/queue/<ticket_id>")
    @tag(["waiting room"])
    @security_scheme(BOOKING_OWNER)
    @document_querystring(WaitQuery)
    @document_response(TicketOut)
    @problems(401, 404, 422, 429, 503)
    async def get_ticket(ticket_id: str) -> Response:
        """A ticket (with its pass once admitted); `?wait=N` long-polls until its status or position changes."""
        return await intake_response(intake.queue_ticket, ticket_id, json_body=False)

    # ------------------------------------------------------------------ the original's routes
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_headers(IdempotencyHeaders)
    @document_response(CompatQueuedOut, 202)
    @document_response(CompatQueuedOut, 200)
    @problems(400, 403, 404, 413, 415, 422, 429, 503)
    async def book_async() -> Response:
        """The original's queued path: every valid request is queued (`202`); the booking's final status
        is the outcome."""
        return await intake_response(intake.book_async)

    app.add_url_rule("/api/book-async", "book_async", book_async, methods=["POST"])
    app.add_url_rule("/book", "book", book_async, methods=["POST"])

    @app.post("/api/book-secure")
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_headers(IdempotencyHeaders)
    @document_response(CompatBookedOut)
    @problems(400, 403, 404, 409, 413, 415, 422, 429, 503)
    async def book_secure() -> Response:
        """The original's locked path: seat lock, then store write; `429` while another request holds the lock."""
        return await intake_response(intake.book_secure)

    @app.post("/api/book-naive")
    @tag(["original"])
    @document_request(CompatBookingIn)
    @document_headers(IdempotencyHeaders)
    @document_response(CompatBookedOut)
    @problems(400, 403, 404, 409, 413, 415, 422, 429, 503)
    async def book_naive() -> Response:
        """The original's unlocked path: read, then conditional write; the store refuses a second buyer."""
        return await intake_response(intake.book_naive)

    @app.get("/api/seats")
    @tag(["original"])
    @document_querystring(CompatEventQuery)
    @document_response(CompatSeatsOut)
    @problems(404, 503)
    async def compat_seats() -> Response:
        """The event's seats numbered 1..capacity, status AVAILABLE / LOCKED / BOOKED."""
        event = await service.compat_event(request.args.get("eventId"))
        return Response(await service.seat_map(event.id, "compat"), content_type="application/json")

    @app.get("/api/random-seat")
    @tag(["original"])
    @document_querystring(CompatEventQuery)
    @document_response(CompatSeatOut)
    @problems(404, 409, 503)
    async def compat_random_seat() -> Response:
        """The first available seat (`409 sold_out` when none is left)."""
        event = await service.compat_event(request.args.get("eventId"))
        seat = await service.first_available_seat(event.id)
        if seat is None:
            raise SoldOut(f"event {event.id} has no seat left")
        return json_response(compat_seat_json(seat))

    @app.get("/health")
    @tag(["original"])
    @document_response(StatusOut)
    @problems(503)
    async def compat_health() -> Response:
        """Liveness, as the original answered it."""
        return json_response({"status": "ok"})

    # ------------------------------------------------------------------ operations
    @app.get("/healthz")
    @tag(["operations"])
    @document_response(StatusOut)
    @problems(503)
    async def healthz() -> Response:
        """200 while the process runs."""
        return json_response({"status": "ok"})

    @app.get("/readyz")
    @tag(["operations"])
    @document_response(ReadyOut)
    @document_response(ReadyProblem, 503)
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
    @problems(503)
    async def metrics() -> Response:
        """Prometheus text exposition (prometheus_client; with `--workers N`, every worker's numbers)."""
        return Response(telemetry.metrics_text(), content_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ the flash-sale button
    flash_sales = FlashSaleRunner(service)
    app.extensions["flash_sales"] = flash_sales

    @app.after_serving
    async def _stop_flash_sale() -> None:
        flash_sales.stop()  # the serving nursery (app.nursery) then waits for its child to be terminated

    @app.post("/api/admin/flash-sale")
    @tag(["operations"])
    @security_scheme([{"admin": []}])
    @document_request(FlashSaleIn)
    @document_response(FlashSaleOut, 202)
    @problems(400, 401, 403, 409, 413, 415, 422, 503)
    async def start_flash_sale() -> Response:
        """Start a flash sale against this server (admin): a fresh event of `seats` seats, then `users` fans
        at once through `route`, by the built-in load generator (`ticketblitz flash-sale`). `409
        flash_sale_running` while one runs; progress as `loadgen` frames on /ws, the last state at GET."""
        require_admin()
        spec = await body_of(FlashSaleIn)
        if flash_sales.running:
            return problem_response(409, "flash_sale_running", "Flash sale running",
                                    "a flash sale is running on this server; wait for its `finished` frame")
        if not service.accepting:
            return problem_response(503, "unavailable", "Service unavailable", "the server is shutting down",
                                    headers={"Retry-After": "5"})
        try:
            url = flash_sales.target_url(app.config.get("TICKETBLITZ_URL"))
        except RuntimeError as exc:
            return problem_response(503, "unavailable", "Service unavailable", str(exc))
        try:
            body = await flash_sales.start(
                app.nursery, url, spec.users, spec.seats, spec.route,
                **({"waiting_room": spec.waiting_room.model_dump(), "sale_starts_in": spec.sale_starts_in}
                   if spec.waiting_room is not None else {}))
        except FlashSaleRunning:
            return problem_response(409, "flash_sale_running", "Flash sale running",
                                    "a flash sale is running on this server; wait for its `finished` frame")
        return json_response(body, 202, {"Location": "/api/admin/flash-sale"})

    @app.get("/api/admin/flash-sale")
    @tag(["operations"])
    @security_scheme([{"admin": []}])
    @document_response(FlashSaleStateOut)
    @problems(401, 403, 503)
    async def flash_sale_state() -> Response:
        """The last flash sale's state (admin): its last `loadgen` frame's members and `running`, so that a
        page opened mid-run can catch up; `{"state": "idle"}` before the first."""
        require_admin()
        return json_response(flash_sales.snapshot())

    @app.get("/")
    @hide
    async def index() -> Response:
        return await send_from_directory(str(static_dir), "index.html")

    @app.get("/docs")
    @hide
    async def docs() -> Response:
        """The API explorer: Swagger UI, vendored (docs_ui/README.md), on /openapi.json."""
        return await send_from_directory(DOCS_UI, "index.html")

    @app.get("/docs/<name>")
    @hide
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise NotFound()
        return await send_from_directory(DOCS_UI, name)

    @app.websocket("/ws")
    async def ws() -> Response | None:
        """Telemetry: `snapshot` on connect, then one message per tick (a `batch` of frames, or one bare
        frame) and `stats` every second. Anonymous frames carry no booking or user ids; a first frame
        {"type": "auth", "token": <admin token>} opens them. Wire format: docs/API.md."""
        event_filter = websocket.args.get("event") or None
        if event_filter is not None and len(event_filter) > 64:
            event_filter = None
        if len(telemetry.subscribers) >= settings.max_ws_subscribers:
            return problem_response(503, "unavailable", "Service unavailable",
                                    f"{settings.max_ws_subscribers} subscribers are connected already; retry later",
                                    headers={"Retry-After": "5"})
        await websocket.accept()
        with telemetry.subscribe(event_filter) as sub:
            events = [event_json(e) for e in await service.events()
                      if event_filter is None or e.id == event_filter]
            stats = telemetry.last_stats
            lines = [line.as_json() for line in service.waiting_room.lines.values()
                     if event_filter is None or line.event_id == event_filter]
            await websocket.send(orjson.dumps({"type": "snapshot", "ts": iso_time(service.clock()),
                                               "process": telemetry.process, "events": events, "stats": stats,
                                               "processes": stats.get("processes", 1),
                                               "waiting_rooms": lines}).decode())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_frames, sub)
                while True:
                    await websocket.send(await sub.next_message())
        return None

    async def _read_frames(sub: Subscriber) -> None:
        """The subscriber's frames: the first may authenticate it as admin; the rest are read and ignored
        (so that a chatty client cannot fill buffers)."""
        first = True
        while True:
            raw = await websocket.receive()
            if not first:
                continue
            first = False
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("type") == "auth":
                token = message.get("token")
                sub.admin = isinstance(token, str) and is_token(settings.admin_token, token)
                await websocket.send(orjson.dumps({"type": "auth", "ok": sub.admin}).decode())

    return app


