"""Bad input of every shape: a clear 4xx problem+json naming what is wrong, and no change of state."""

from __future__ import annotations

from typing import Any

from conftest import ADMIN, Harness
from invariants import check_invariants

BIG = "x" * 70_000

# (method, path template, headers, raw body, expected status, expected field or None)
CASES: list[tuple[str, str, dict[str, str], bytes | None, int, str | None]] = [
    ("POST", "/api/events/{e}/bookings", {}, b"", 400, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "application/json; charset=utf-8"}, b"{", 400, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "Application/JSON"}, b"[]", 422, "body"),
    ("POST", "/api/events/{e}/bookings", {}, b"{", 400, None),
    ("POST", "/api/events/{e}/bookings", {}, b"\xff\xfe\x00garbage", 400, None),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 1,}', 400, None),
    ("POST", "/api/events/{e}/bookings", {}, b"null", 422, "body"),
    ("POST", "/api/events/{e}/bookings", {}, b"[]", 422, "body"),
    ("POST", "/api/events/{e}/bookings", {}, b'"u"', 422, "body"),
    ("POST", "/api/events/{e}/bookings", {}, b"42", 422, "body"),
    ("POST", "/api/events/{e}/bookings", {}, b"{}", 422, None),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u"}', 422, "seat_ids/quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 1, "seat_ids": ["A-1-1"]}', 422,
     "seat_ids/quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": 7, "quantity": 1}', 422, "user_id"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "", "quantity": 1}', 422, "user_id"),
    ("POST", "/api/events/{e}/bookings", {}, ('{"user_id": "' + "u" * 65 + '", "quantity": 1}').encode(), 422,
     "user_id"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "a\\u0000b", "quantity": 1}', 422, "user_id"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": "1"}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 1.5}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": true}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 0}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": -3}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 99999999999999999999999}', 422,
     "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 3}', 422, "quantity"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": []}', 422, "seat_ids"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": "A-1-1"}', 422, "seat_ids"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["A-1-1", "A-1-1"]}', 422, "seat_ids"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["A-1-1", "A-1-2", "A-1-3"]}', 422,
     "seat_ids"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["Z-1-1"]}', 422, "seat_ids[0]"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["A-11-1"]}', 422, "seat_ids[0]"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["A-0-1"]}', 422, "seat_ids[0]"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": ["../../etc"]}', 422, "seat_ids[0]"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "seat_ids": [1]}', 422, "seat_ids[0]"),
    ("POST", "/api/events/{e}/bookings", {}, b'{"user_id": "u", "quantity": 1, "admin": true}', 422, "admin"),
    ("POST", "/api/events/{e}/bookings", {"Idempotency-Key": ""}, b'{"user_id": "u", "quantity": 1}', 422,
     "Idempotency-Key"),
    ("POST", "/api/events/{e}/bookings", {"Idempotency-Key": "k" * 129}, b'{"user_id": "u", "quantity": 1}', 422,
     "Idempotency-Key"),
    ("POST", "/api/events/{e}/bookings", {}, BIG.encode(), 413, None),
    ("POST", "/api/events/evt_missing/bookings", {}, b'{"user_id": "u", "quantity": 1}', 404, None),
    ("POST", "/api/events/%F0%9F%98%80/bookings", {}, b'{"user_id": "u", "quantity": 1}', 404, None),
    ("POST", "/api/events/" + "e" * 3000 + "/bookings", {}, b'{"user_id": "u", "quantity": 1}', 404, None),
    ("GET", "/api/bookings/bkg_missing?wait=abc", {}, None, 422, "wait"),
    ("GET", "/api/bookings/bkg_missing?wait=31", {}, None, 422, "wait"),
    ("GET", "/api/bookings/bkg_missing?wait=-1", {}, None, 422, "wait"),
    ("GET", "/api/bookings/bkg_missing?wait=nan", {}, None, 422, "wait"),
    ("GET", "/api/bookings/%00", ADMIN, None, 404, None),
    ("GET", "/api/bookings/%00", {}, None, 401, None),
    ("DELETE", "/api/events/{e}", {}, None, 405, None),
    ("PUT", "/api/events/{e}/bookings", {}, b"{}", 405, None),
    ("GET", "/api/nothing-here", {}, None, 404, None),
    ("POST", "/api/book-async", {}, b'{"userId": "u"}', 422, "seatNumber"),
    ("POST", "/api/book-async", {}, b'{"userId": "u", "seatNumber": 0}', 422, "seatNumber"),
    ("POST", "/api/book-async", {}, b'{"userId": "u", "seatNumber": "1"}', 422, "seatNumber"),
    ("POST", "/api/book-async", {}, b'{"userId": "u", "seatNumber": 101, "eventId": "{e}"}', 422, "seatNumber"),
    ("POST", "/api/book-async", {}, b'{"userId": "u", "seatNumber": 1, "eventId": "evt_missing"}', 404, None),
    ("POST", "/book", {}, b'{"userId": ["u"], "seatNumber": 1}', 422, "userId"),
    ("POST", "/api/book-secure", {}, b"not json", 400, None),
    ("POST", "/api/book-naive", {}, b'{"userId": null, "seatNumber": 1}', 422, "userId"),
    ("POST", "/api/events", dict(ADMIN), b'{"name": "x"}', 422, "sections"),
    ("POST", "/api/events", dict(ADMIN), b'{"name": "", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}]}',
     422, "name"),
    ("POST", "/api/events", dict(ADMIN), b'{"name": "x", "sections": []}', 422, "sections"),
    ("POST", "/api/events", dict(ADMIN), b'{"name": "x", "sections": [{"name": "A-B", "rows": 1, "seats_per_row": 1}]}',
     422, "sections[0].name"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1001, "seats_per_row": 1}]}',
     422, "sections[0].rows"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1000, "seats_per_row": 1000}]}', 422, "sections"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1, "price_cents": -1}]}', 422,
     "sections[0].price_cents"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}], "max_per_user": 21}', 422,
     "max_per_user"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}], "hold_seconds": 4}', 422,
     "hold_seconds"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}], "starts_at": "tomorrow"}', 422,
     "starts_at"),
    ("POST", "/api/events", dict(ADMIN),
     b'{"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}], "starts_at": "2027-01-01T10:00:00"}',
     422, "starts_at"),
    ("POST", "/api/events", {"Authorization": "Basic abc"}, b"{}", 403, None),
    ("POST", "/api/events", {}, b"{}", 401, None),
    ("POST", "/api/bookings/bkg_missing/confirm", ADMIN, None, 404, None),
    ("POST", "/api/bookings/bkg_missing/confirm", {}, None, 401, None),
    # a body not sent as application/json: a web page's plain form post must not book (API 1.1)
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "application/x-www-form-urlencoded"},
     b'{"user_id": "u", "quantity": 1}', 415, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "text/plain"}, b'{"user_id": "u", "quantity": 1}', 415,
     None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--", 415, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "application/jsonp"}, b'{"user_id": "u", "quantity": 1}',
     415, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": "application/json; charset=latin-1"},
     b'{"user_id": "u", "quantity": 1}', 415, None),
    ("POST", "/api/events/{e}/bookings", {"Content-Type": ""}, b'{"user_id": "u", "quantity": 1}', 415, None),
    ("POST", "/api/book-async", {"Content-Type": "text/plain"}, b'{"userId": "u", "seatNumber": 1}', 415, None),
    ("POST", "/api/book-secure", {"Content-Type": "text/plain"}, b'{"userId": "u", "seatNumber": 1}', 415, None),
    ("POST", "/api/events", {**ADMIN, "Content-Type": "text/plain"}, b'{"name": "x", "sections": []}', 415, None),
]
NO_CONTENT_TYPE = ("POST", "/api/events/{e}/bookings", None, b'{"user_id": "u", "quantity": 1}', 415, None)


async def _state(h: Harness, event_id: str) -> Any:
    events = (await h.client.get("/api/events")).json()
    bookings = await h.service.store.bookings_of_event(event_id)
    return events, [(b.id, b.status) for b in bookings]


async def test_bad_input_is_a_named_4xx_and_changes_nothing(harness: Harness) -> None:
    event = await harness.create_event(max_per_user=2)
    r = await harness.book(event["id"], {"user_id": "existing", "seat_ids": ["A-1-1"]})
    await harness.settle(r.json()["id"])
    before = await _state(harness, event["id"])
    failures = []
    for method, template, given, body, status, field in [*CASES, NO_CONTENT_TYPE]:
        path = template.replace("{e}", event["id"])
        raw = body.replace(b"{e}", event["id"].encode()) if body is not None else None
        if given is None:  # no Content-Type header at all
            headers: dict[str, str] = {}
        elif any(name.lower() == "content-type" for name in given) or raw is None:
            headers = given
        else:
            headers = {"Content-Type": "application/json", **given}
        r = await harness.client.request(method, path, headers=headers, content=raw)
        problem_ok = r.headers.get("content-type", "").startswith("application/problem+json")
        got = r.json() if problem_ok else {}
        if r.status_code != status or not problem_ok or got.get("status") != status or "code" not in got:
            failures.append(f"{method} {path[:60]} {raw!r:.60}: {r.status_code} {r.text[:160]}")
        elif field is not None and got.get("field") != field:
            failures.append(f"{method} {path[:60]} {raw!r:.60}: field {got.get('field')!r} != {field!r}")
        elif status == 422 and not got.get("detail"):
            failures.append(f"{method} {path[:60]}: 422 without detail")
    assert not failures, "\n".join(failures)
    assert await _state(harness, event["id"]) == before
    await check_invariants(harness, event["id"])


async def test_unicode_user_ids_are_fine(harness: Harness) -> None:
    event = await harness.create_event()
    for user in ("ünïcødé", "😀" * 16, "用户-42", "a b"):
        r = await harness.book(event["id"], {"user_id": user, "quantity": 1})
        assert r.status_code == 202, r.text
        assert (await harness.settle(r.json()["id"]))["user_id"] == user
    await check_invariants(harness, event["id"])


async def test_a_malformed_request_line_or_header_does_not_hurt_the_server(harness: Harness) -> None:
    import trio

    host, port = harness.url.removeprefix("http://").rsplit(":", 1)
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"POST /api/book-async HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(raw)
            with trio.fail_after(5):
                answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 4"), (raw[:40], answer[:80])
    assert (await harness.client.get("/healthz")).status_code == 200
