"""HTTP rules that both doors apply the same way: the media type of request bodies (415), CORS, the
security headers of pages, and reading a bearer credential. Plain functions, no I/O."""

from __future__ import annotations

import functools

from .domain.errors import BookingError

JSON_TYPE = "application/json"

# Pages (the visualizer, its assets): no framing by other sites, no sniffing, no referrer, scripts and
# connections only to this origin (a same-origin websocket included).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Every answer of the API
API_HEADERS = {"X-Content-Type-Options": "nosniff"}

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, Queue-Pass"
CORS_MAX_AGE = "600"


class UnsupportedMediaType(BookingError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


def check_json_body(content_type: str | None) -> None:
    """A POST body must be sent as `application/json` (a `charset` parameter is fine), so that no web page
    can make a visitor's browser book with a plain form post. Raises UnsupportedMediaType."""
    if content_type is None:
        raise UnsupportedMediaType("Content-Type: a POST body must be sent as application/json")
    media, _, params = content_type.partition(";")
    if media.strip().lower() != JSON_TYPE:
        raise UnsupportedMediaType(
            f"Content-Type: {media.strip()[:80]!r} is not supported; send the body as application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {"utf-8", "utf8"}:
            raise UnsupportedMediaType("Content-Type: the body must be UTF-8 JSON")


@functools.lru_cache(maxsize=8)  # asked on every answer (Settings.cors_origin_set), the setting never changes
def parse_origins(value: str) -> frozenset[str]:
    """`TICKETBLITZ_CORS_ORIGINS`: comma-separated origins (scheme://host[:port]); empty = CORS closed."""
    return frozenset(o.strip().rstrip("/").lower() for o in value.split(",") if o.strip())


def cors_headers(allowed: frozenset[str], origin: str | None, *, preflight: bool = False) -> dict[str, str]:
    """The CORS headers for a request from `origin`: none unless the operator listed that origin."""
    if not origin or origin.lower() not in allowed:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Allow-Headers": CORS_HEADERS,
                        "Access-Control-Max-Age": CORS_MAX_AGE})
    else:
        headers["Access-Control-Expose-Headers"] = "Location, Retry-After"
    return headers


def bearer(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header value; "" for an Authorization
    header of another form (present, but no usable credential); None when there is no header."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return credential.strip()
