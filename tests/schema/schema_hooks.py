"""Schemathesis hooks for the schema suite (loaded by `schemathesis run` through SCHEMATHESIS_HOOKS).

Random ids only ever find `404`; these hooks also send some requests to the events and bookings that
exist on the server (the seeded world, passed in TICKETBLITZ_SCHEMA_WORLD as JSON), so that the happy
paths and the state checks are exercised too (with the admin token; anonymous requests for a booking
must be refused, which `ignored_auth` checks, and an added secret would look to it like a forged
credential). A check of the booking routes' API 1.1 refusals stands in for `ignored_auth` in the admin
run. They keep
the generated events small: a run that created 200,000-seat events would spend its time building seat
maps and prove nothing a 20-seat event does not.
"""

from __future__ import annotations

import json
import os
from typing import Any

import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation

WORLD: dict[str, Any] = json.loads(os.environ.get("TICKETBLITZ_SCHEMA_WORLD") or "{}")
KNOWN = {"event_id": WORLD.get("event_ids", []), "booking_id": WORLD.get("booking_ids", [])}
ADMIN_RUN = bool(os.environ.get("TICKETBLITZ_SCHEMA_ADMIN"))
PROBES: list[int] = []  # statuses of the requests the check below sends itself


@schemathesis.hook
def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> Any:
    """The generated case, or the same for a known event or booking (unless its path is the invalid part
    of a negative case)."""
    path = case.path_parameters or {}
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return st.just(case)
    names = [name for name, known in KNOWN.items() if known and isinstance(path.get(name), str)]
    if not names:
        return st.just(case)
    name = names[0]

    def with_id(value: str) -> schemathesis.Case:
        case.path_parameters = {**path, name: value}
        return case

    return st.sampled_from([path[name], *KNOWN[name]]).map(with_id)


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """POST /api/events: sections of at most 4 rows of 4 seats (valid sizes stay valid)."""
    operation = context.operation
    if operation is None or operation.path != "/api/events" or not isinstance(body, dict):
        return body
    sections = body.get("sections")
    if isinstance(sections, list):
        for section in sections:
            if not isinstance(section, dict):
                continue
            for key in ("rows", "seats_per_row"):
                value = section.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
                    section[key] = 1 + value % 4
    return body


OWNER_PATHS = {"/api/bookings/{booking_id}", "/api/bookings/{booking_id}/confirm", "/api/bookings/{booking_id}/cancel"}
_probed: set[str] = set()


@schemathesis.check
def booking_needs_its_secret(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                             case: schemathesis.Case) -> bool | None:
    """API 1.1 for the routes of one booking, probed once per operation when the admin token opened it:
    without an Authorization header `401`; with a secret that is not this booking's `404`. (Schemathesis's
    own `ignored_auth` expects 401/403 for a wrong credential; the contract answers 404, so that a
    stranger cannot tell which bookings exist.)"""
    if not ADMIN_RUN or case.operation.path not in OWNER_PATHS or not 200 <= response.status_code < 300:
        return None
    if case.operation.label in _probed or str(response.request.method).upper() != case.operation.method.upper():
        return None  # probed already, or the answer to another check's probe (e.g. an unexpected method)
    _probed.add(case.operation.label)
    sent = response.request
    headers = {k: v for k, v in sent.headers.items() if k.lower() not in {"authorization", "content-length"}}
    for extra, expected in (({}, 401), ({"Authorization": "Bearer not-this-bookings-secret"}, 404)):
        probe = requests.request(str(sent.method), str(sent.url), headers={**headers, **extra}, data=sent.body,
                                 timeout=30)
        PROBES.append(probe.status_code)
        if probe.status_code != expected:
            raise AssertionError(f"{sent.method} {sent.url} with {extra or 'no Authorization header'}: "
                                 f"expected {expected}, got {probe.status_code} {probe.text[:300]}")
    return True
