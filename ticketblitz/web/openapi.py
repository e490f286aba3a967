"""The OpenAPI description served at /openapi.json.

quart-schema builds it from the handlers' decorators and the models of `ticketblitz.schemas`; this
module adds what those decorators cannot say: problem answers as `application/problem+json` with the
`code`s each status can carry, response headers (`Location`, `Retry-After`), `/metrics` as text, one
operation id per route (one handler serves both `/api/book-async` and `/book`), and query and header
parameters without the `null` that optional pydantic fields bring along.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from quart_schema import document_response
from quart_schema.openapi import OpenAPIProvider
from werkzeug.routing import Rule

from ..schemas import Problem, UnavailableProblem

T = TypeVar("T", bound=Callable[..., Any])

PROBLEM_TYPE = "application/problem+json"

# The `code`s a problem answer of each status may carry (API.md, "Errors").
CODES_BY_STATUS: dict[int, tuple[str, ...]] = {
    400: ("invalid_request",),
    401: ("unauthorized",),
    403: ("forbidden", "queue_required", "pass_invalid", "sale_not_started"),
    404: ("not_found",),
    405: ("invalid_request",),
    409: ("sold_out", "seat_unavailable", "limit_exceeded", "invalid_transition", "flash_sale_running",
          "no_waiting_room"),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_request", "idempotency_conflict", "proof_required", "proof_invalid"),
    429: ("rate_limited",),
    503: ("unavailable",),
}

STATUS_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Malformed request: the body is not JSON",
    401: "Unauthorized: no `Authorization` header where a credential is needed",
    403: "Forbidden: the admin token is not valid",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the state of the event or booking",
    413: "Payload too large: the body is over the configured limit (default 64 KiB)",
    415: "Unsupported media type: a POST body must be sent as `application/json`",
    422: "Invalid request: a value breaks the schema or a rule of the event (`field` names it)",
    429: "Too many requests: retry after `Retry-After` seconds",
    503: "Service unavailable: a backing service cannot take the request now; nothing was accepted",
}

LOCATION = {"description": "Where the created resource can be read", "required": True,
            "schema": {"type": "string"}}
RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": {"type": "string", "pattern": r"^\d+$"}}
RESPONSE_HEADERS: dict[str, dict[str, dict[str, Any]]] = {
    "201": {"Location": LOCATION},
    "202": {"Location": LOCATION},
    "429": {"Retry-After": {**RETRY_AFTER, "required": True}},
    "503": {"Retry-After": RETRY_AFTER},
}

# Bodies that are not JSON: GET /metrics answers the Prometheus text exposition.
TEXT_RESPONSES = {("/metrics", "get"): "Prometheus text exposition format (version 0.0.4)"}

# Bearer credentials (API.md, "Who may do what"); quart-schema's scheme objects take no description
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "admin": {"type": "http", "scheme": "bearer",
              "description": "the admin token (`TICKETBLITZ_ADMIN_TOKEN`): organizer routes, and any booking"},
    "booking_secret": {"type": "http", "scheme": "bearer",
                       "description": "a booking's `secret`, from the answer that created the booking"},
}
# Reading, confirming or cancelling a booking: its secret, or the admin token
BOOKING_OWNER: list[dict[str, list[str]]] = [{"booking_secret": []}, {"admin": []}]

# What the body of a booking request must be when sent (`Content-Type`, 415 otherwise).
JSON_BODY_NOTE = "Send the body as `Content-Type: application/json` (a `charset=utf-8` parameter is fine)."


def quart_security_schemes() -> dict[str, Any]:
    """The security schemes as QuartSchema takes them (`finish` adds their descriptions)."""
    return {name: {k: v for k, v in scheme.items() if k != "description"} for name, scheme in SECURITY_SCHEMES.items()}


def problems(*statuses: int) -> Callable[[T], T]:
    """Document problem+json answers for these statuses (503 with the optional `component`)."""

    def decorator(func: T) -> T:
        for status in statuses:
            func = document_response(UnavailableProblem if status == 503 else Problem, status)(func)
        return func

    return decorator


class TicketBlitzOpenAPI(OpenAPIProvider):
    """quart-schema's generator with TicketBlitz's finishing touches (see the module docstring)."""

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        for path_item in paths.values():
            for method, operation in path_item.items():
                # the endpoint, not the function: one function may serve several routes
                operation["operationId"] = f"{method}_{rule.endpoint}"
        return paths, components

    def build_response_object(self, model: Any, headers_model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        response, definitions = super().build_response_object(model, headers_model)
        if isinstance(model, type) and issubclass(model, Problem):
            response["content"] = {PROBLEM_TYPE: response["content"].pop("application/json")}
        return response, definitions

    def schema(self) -> dict[str, Any]:
        return finish(super().schema())


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Tighten the generated document in place (and return it)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, scheme in components.get("securitySchemes", {}).items():
        if name in SECURITY_SCHEMES:
            scheme["description"] = SECURITY_SCHEMES[name]["description"]
    for path, path_item in document["paths"].items():
        for method, operation in path_item.items():
            if not operation.get("description"):
                operation.pop("description", None)  # quart-schema writes "" when the docstring has one line
            text = TEXT_RESPONSES.get((path, method))
            if text is not None:
                operation["responses"].setdefault("200", {}).update(
                    {"description": text, "content": {"text/plain": {"schema": {"type": "string"}}}})
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _without_null(parameter["schema"])
            body = operation.get("requestBody")
            if body is not None:
                body["required"] = True
                body.setdefault("description", JSON_BODY_NOTE)
            responses = {str(status): response for status, response in operation["responses"].items()}
            for status, extra in EXTRA_RESPONSES.get((path, method), {}).items():
                response = responses.setdefault(status, {})
                for name, value in copy.deepcopy(extra).items():
                    if isinstance(value, dict):
                        response.setdefault(name, {}).update(value)
                    else:
                        response[name] = value
            operation["responses"] = dict(sorted(responses.items(), key=lambda item: int(item[0])))
            for status, response in operation["responses"].items():
                _finish_response(int(status), response, schemas)
    return document


# the seat map's validators and caching headers (quart-schema would put response headers in the media
# type object, which OpenAPI 3.1 does not allow), and its 304, an answer without a body
_SEAT_MAP_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "description": "strong entity tag of this map in this encoding"},
    "Cache-Control": {"schema": {"type": "string", "const": "no-cache"},
                      "description": "a stored copy is revalidated (If-None-Match) before use"},
    "Vary": {"schema": {"type": "string"}, "description": "names Accept-Encoding"},
}
EXTRA_RESPONSES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("/api/events/{event_id}/seats", "get"): {
        "200": {"headers": _SEAT_MAP_HEADERS},
        "304": {"description": "Not modified: `If-None-Match` names the map's current `ETag`; no body",
                "headers": _SEAT_MAP_HEADERS},
    },
}


def _finish_response(status: int, response: dict[str, Any], schemas: dict[str, Any]) -> None:
    if not response.get("description"):
        response["description"] = STATUS_DESCRIPTIONS.get(status, "")
    elif status >= 400:
        # quart-schema uses the model's docstring; the status says more
        response["description"] = STATUS_DESCRIPTIONS.get(status, response["description"])
    headers = RESPONSE_HEADERS.get(str(status))
    if headers:
        response["headers"] = copy.deepcopy(headers)
    content = response.get("content", {})
    problem = content.get(PROBLEM_TYPE)
    if problem is None:
        return
    schema = problem["schema"]
    name = schema.get("title", "Problem")
    schemas.setdefault(name, schema)
    constraint: dict[str, Any] = {"properties": {"status": {"const": status}}}
    codes = CODES_BY_STATUS.get(status)
    if codes:
        constraint["properties"]["code"] = {"enum": list(codes)}
    problem["schema"] = {"allOf": [{"$ref": f"#/components/schemas/{name}"}, constraint]}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the `null` branch and `default: null` of an optional pydantic field:
    a query or header parameter is absent or a string, never JSON null."""
    options: Iterable[dict[str, Any]] = schema.get("anyOf", ())
    kept = [option for option in options if option.get("type") != "null"]
    if kept and len(kept) != len(schema.get("anyOf", ())):
        rest = {k: v for k, v in schema.items() if k not in {"anyOf", "default"}}
        return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}
    if schema.get("default", ...) is None:
        return {k: v for k, v in schema.items() if k != "default"}
    return schema
