"""The OpenAPI document at /openapi.json: valid OpenAPI 3.1 (openapi-spec-validator), and saying what
API.md 1.1 says: problem+json errors with their codes, every status an operation can answer, the
credentials each operation takes, the booking's secret, `/metrics` as text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from ticketblitz.config import Settings
from ticketblitz.server import Running, build_service, serve
from ticketblitz.web import create_app

PROBLEM = "application/problem+json"
BOOKING_ROUTES = ["/api/events/{event_id}/bookings", "/api/book-async", "/book", "/api/book-secure",
                  "/api/book-naive"]
OWNER_ROUTES = [("get", "/api/bookings/{booking_id}"), ("post", "/api/bookings/{booking_id}/confirm"),
                ("post", "/api/bookings/{booking_id}/cancel")]


@pytest.fixture
async def document(tmp_path: Any) -> AsyncIterator[dict[str, Any]]:
    service = build_service(Settings(port=0, data_dir=str(tmp_path / "data"), admin_token="t"))
    client = create_app(service).test_client()
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    yield await response.get_json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A response schema with its `$ref`s (also inside `allOf`) followed, merged into one dict."""
    if "$ref" in schema:
        return resolve(document, document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema.get("allOf", ()):
        resolved = resolve(document, part)
        for key, value in resolved.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**value, **merged[key]} if key != "properties" else {
                    name: {**value.get(name, {}), **merged[key].get(name, {})} for name in {*value, *merged[key]}}
            elif isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key] = sorted({*merged[key], *value})
            else:
                merged.setdefault(key, value)
    return merged


async def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    errors = [str(e).splitlines()[0] for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []
    validate(document)  # the version it declares, detected (raises on the first error)
    assert document["openapi"] == "3.1.0" and document["info"]["version"] == "1.1"


async def test_the_served_document_is_the_validated_one(document: dict[str, Any], tmp_path: Any,
                                                        nursery: trio.Nursery) -> None:
    """What a client downloads from a real server (through the door) is this document."""
    settings = Settings(port=0, data_dir=str(tmp_path / "served"), admin_token="t")
    running: Running = await nursery.start(partial(serve, settings))
    async with httpx.AsyncClient(base_url=running.url) as client:
        answer = await client.get("/openapi.json")
    running.stop.set()
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == document


def empty_members(node: Any, where: str = "") -> list[str]:
    """Members that are "", [] or {}, except the lists that mean something empty (security requirements
    without scopes, operations without parameters) and `const: ""` (a value that is allowed)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if value in ("", [], {}) and not ("/security[" in here or key == "parameters" or key == "const"):
                found.append(here)
            found += empty_members(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += empty_members(value, f"{where}[{index}]")
    return found


async def test_nothing_is_left_empty(document: dict[str, Any]) -> None:
    assert empty_members(document) == []
    for method, path, op in operations(document):
        assert op["responses"], (method, path)
        assert any(status.startswith("2") for status in op["responses"]), (method, path)
        assert op.get("summary"), (method, path)
        for status, response in op["responses"].items():
            # (a 304 has no body: RFC 9110 §15.4.5)
            assert response.get("description") and (status == "304" or response.get("content")), (method, path, status)


async def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))
    assert document["paths"]["/book"]["post"]["operationId"] != document["paths"]["/api/book-async"]["post"][
        "operationId"]


async def test_every_error_is_problem_json_with_its_codes(document: dict[str, Any]) -> None:
    for method, path, op in operations(document):
        assert "503" in op["responses"], (method, path)
        for status, response in op["responses"].items():
            assert response["description"], (method, path, status)
            if int(status) < 400:
                continue
            assert list(response["content"]) == [PROBLEM], (method, path, status)
            schema = resolve(document, response["content"][PROBLEM]["schema"])
            assert {"type", "title", "status", "code", "detail"} <= set(schema["properties"]), (method, path, status)
            assert {"title", "status", "code", "detail"} <= set(schema["required"]), (method, path, status)
            assert schema["properties"]["status"]["const"] == int(status)
            assert schema["properties"]["code"]["enum"], (method, path, status)
            assert "field" in schema["properties"] and "field" not in schema["required"]
            if status == "503":
                assert "component" in schema["properties"], (method, path)
            if status == "429":
                assert response["headers"]["Retry-After"]["required"] is True


async def test_statuses_each_operation_can_answer(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for method, path, op in operations(document):
        statuses = set(op["responses"])
        if "requestBody" in op:  # a JSON body: malformed, too large, not JSON, invalid
            assert {"400", "413", "415", "422"} <= statuses, (method, path)
            assert list(op["requestBody"]["content"]) == ["application/json"]
        if "{" in path:
            assert "404" in statuses, (method, path)
    assert {"401", "403"} <= set(paths["/api/events"]["post"]["responses"])
    for path in BOOKING_ROUTES:
        assert "429" in paths[path]["post"]["responses"], path
    for method, path in OWNER_ROUTES:
        assert {"401", "404"} <= set(paths[path][method]["responses"]), path
    for path in ("/api/events/{event_id}/bookings", "/api/book-secure", "/api/book-naive"):
        assert "409" in paths[path]["post"]["responses"], path
    assert "409" not in paths["/api/book-async"]["post"]["responses"]  # the queued path never refuses at the edge
    assert paths["/api/events/{event_id}/bookings"]["post"]["responses"]["202"]["headers"]["Location"]["required"]


async def test_credentials(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["admin"] == {"type": "http", "scheme": "bearer", "description": schemes["admin"]["description"]}
    assert schemes["booking_secret"]["type"] == "http" and schemes["booking_secret"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/api/events"]["post"]["security"] == [{"admin": []}]
    for method, path in OWNER_ROUTES:
        assert paths[path][method]["security"] == [{"booking_secret": []}, {"admin": []}], path
    assert "security" not in paths["/api/events"]["get"]
    assert "security" not in paths["/api/events/{event_id}/bookings"]["post"]


async def test_the_booking_secret_is_only_in_answers_that_create_a_booking(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for status in ("202", "200"):
        booking = resolve(document, paths["/api/events/{event_id}/bookings"]["post"]["responses"][status]["content"][
            "application/json"]["schema"])
        assert "secret" in booking["required"] and booking["properties"]["secret"]["type"] == "string"
    for path in ("/api/book-async", "/book", "/api/book-secure", "/api/book-naive"):
        answer = resolve(document, paths[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
        booking = resolve(document, answer["properties"]["booking"])
        assert "secret" in booking["required"], path
    for method, path in OWNER_ROUTES:
        booking = resolve(document, paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"])
        assert "secret" not in booking["properties"], path
        reasons = next(option["enum"] for option in booking["properties"]["reason"]["anyOf"] if "enum" in option)
        assert set(reasons) == {"seat_unavailable", "sold_out", "limit_exceeded", "processing_failed"}


async def test_metrics_are_text_and_parameters_are_never_null(document: dict[str, Any]) -> None:
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(metrics["content"]) == ["text/plain"]
    for method, path, op in operations(document):
        for parameter in op.get("parameters", []):
            schema = parameter["schema"]
            assert "null" not in str(schema.get("anyOf", "")) and "default" not in schema, (method, path, parameter)
    header = next(p for p in document["paths"]["/api/events/{event_id}/bookings"]["post"]["parameters"]
                  if p["in"] == "header")
    assert header["name"] == "Idempotency-Key" and header["schema"]["maxLength"] == 128
