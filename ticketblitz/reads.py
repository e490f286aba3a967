"""The read routes most requested during a sale, as plain functions of (service, request headers, path
parameters, query) → Reply, so that the lean Trio door and the Quart app answer them with the same bytes:

- `GET /api/events/{id}/seats[?form=api|compact]`: the SeatMaps cache's bytes, at most one tick stale,
  with a strong `ETag`, `304` on a matching `If-None-Match`, `Cache-Control: no-cache` (a refreshing page
  revalidates) and the gzip encoding (compressed once per build) when `Accept-Encoding` allows it;
- `GET /api/events/{id}`: the event with its counts, kept like the seat maps (at most one tick stale);
- `GET /api/bookings/{id}` without `?wait` (the long poll stays with Quart): the booking, for the holder
  of its secret or the admin token (`401` without a credential, `404` with a wrong one), from the
  service's kept answers (BookingAnswers: dropped on a change here, at most one tick stale otherwise).

Errors are problem+json exactly as `problem_of` makes them. The API/CORS headers every answer gets are
added by the door (`finish`) and by the Quart app's `after_request`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

from .domain.errors import BookingError, InvalidRequest
from .policy import API_HEADERS, bearer, cors_headers
from .representation import problem, problem_of
from .service import BookingService

log = logging.getLogger("ticketblitz.reads")

JSON = "application/json"
PROBLEM = "application/problem+json"
SEAT_MAP_FORMS = {"": "api", "api": "api", "compact": "compact"}
CACHE_CONTROL = "no-cache"  # may be stored, but revalidated (If-None-Match) before every use
VARY = "Accept-Encoding"


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = JSON


Read = Callable[..., Awaitable[Reply]]


def query_value(query: str, name: str) -> str | None:
    """The first value of `name` in a raw query string (None when absent), as Quart's `request.args`."""
    if name not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3): `gzip`/`x-gzip` with q > 0, or `*` with
    q > 0 when gzip is not named."""
    if not accept_encoding:
        return False
    star: bool | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            star = quality > 0
    return bool(star)


def none_match(if_none_match: str | None, tags: tuple[str, ...]) -> bool:
    """Whether `If-None-Match` matches one of the current tags (weak comparison, RFC 9110 §13.1.2)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate in tags:
            return True
    return False


async def seats(service: BookingService, headers: Mapping[str, str], event_id: str, query: str = "") -> Reply:
    """GET /api/events/{event_id}/seats."""
    chosen = query_value(query, "form")
    form = SEAT_MAP_FORMS.get(chosen if chosen is not None else "")
    if form is None:
        raise InvalidRequest("form: must be api or compact", field="form")
    seat_map = await service.seat_map_of(event_id, form)
    gzipped = accepts_gzip(headers.get("accept-encoding"))
    etag = seat_map.gzip_etag if gzipped else seat_map.etag
    answer = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": VARY}
    if none_match(headers.get("if-none-match"), (seat_map.etag, seat_map.gzip_etag)):
        return Reply(304, b"", answer, None)
    if gzipped:
        answer["Content-Encoding"] = "gzip"
        return Reply(200, seat_map.gzip, answer)
    return Reply(200, seat_map.body, answer)


async def event(service: BookingService, headers: Mapping[str, str], event_id: str, query: str = "") -> Reply:
    """GET /api/events/{event_id}."""
    return Reply(200, await service.event_document(event_id))


async def booking(service: BookingService, headers: Mapping[str, str], booking_id: str, query: str = "") -> Reply:
    """GET /api/bookings/{booking_id} without ?wait (a long poll is answered by the Quart route)."""
    return Reply(200, await service.booking_answer(booking_id, bearer(headers.get("authorization"))))


async def answer(read: Read, service: BookingService, headers: Mapping[str, str], param: str,
                 query: str = "") -> Reply:
    """Run one read: domain errors (and surprises) become problem+json."""
    try:
        return await read(service, headers, param, query)
    except BookingError as exc:
        status, body, extra = problem_of(exc)
        return Reply(status, orjson.dumps(body), extra, PROBLEM)
    except Exception:
        log.exception("unexpected error in read %s", getattr(read, "__name__", read))
        return Reply(503, orjson.dumps(problem(503, "unavailable", "Service unavailable",
                                               "the server could not complete the request; nothing was changed")),
                     {}, PROBLEM)


def merge_vary(current: str | None, more: str) -> str:
    """Two `Vary` values as one (no name twice)."""
    if not current:
        return more
    names = [n.strip() for n in current.split(",") if n.strip()]
    lower = {n.lower() for n in names}
    names += [n.strip() for n in more.split(",") if n.strip() and n.strip().lower() not in lower]
    return ", ".join(names)


def finish(reply: Reply, allowed_origins: frozenset[str], origin: str | None) -> dict[str, str]:
    """The headers of the door's answer: the reply's, the API headers, CORS (as the Quart app adds them)."""
    headers = dict(reply.headers)
    for name, value in API_HEADERS.items():
        headers.setdefault(name, value)
    for name, value in cors_headers(allowed_origins, origin).items():
        headers[name] = merge_vary(headers.get(name), value) if name == "Vary" else value
    return headers
