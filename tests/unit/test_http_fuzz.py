"""Property tests of the HTTP core (hypothesis), over raw bytes and over structured requests with
mutations: every input, cut anywhere, gives requests or a refusal with an answerable status, never an
exception out of the parser; a valid request is read exactly as it was written; and whatever the core
accepts, Hypercorn's parser (h11) reads from the door's re-serialisation as exactly the same message,
with nothing left over (no smuggling through the relay).

Bounded for `make test` (`TICKETBLITZ_FUZZ_EXAMPLES` examples per test, default 1500); `make fuzz`
runs the same properties far longer, and atheris on the raw-bytes one (tests/fuzz/)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import h11
import orjson
from http_driver import REFUSAL_STATUSES, drive, flatten, h11_response
from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from ticketblitz.http import END, Data, Limits, Refusal, Request, serialize
from ticketblitz.http.relay import upstream_request

EXAMPLES = int(os.environ.get("TICKETBLITZ_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = Limits(max_head_bytes=2048, max_headers=16, max_target_bytes=512, max_body_bytes=4096)


def check_input(data: bytes, cuts: list[int], limits: Limits = LIMITS) -> list[Any]:
    """The properties every input must have; returns the flattened events of the uncut input."""
    events = drive([data], limits, raw=True)
    pieces = [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True) if b > a]
    flat = flatten(events)
    assert flatten(drive(pieces, limits, raw=True)) == flat, "the same bytes cut otherwise read otherwise"
    request: Request | None = None
    body = bytearray()
    for event in events:
        if isinstance(event, Refusal):
            assert event.status in REFUSAL_STATUSES and event is events[-1]
            answer = serialize(event.status, "application/problem+json", event.headers,
                               orjson.dumps({"status": event.status, "detail": event.detail}), keep_alive=False)
            assert h11_response(answer)[0] == event.status
        elif isinstance(event, Request):
            assert len(event.target) <= limits.max_target_bytes and len(event.headers) <= limits.max_headers
            request, body = event, bytearray()
            if event.body is not None:
                check_relayed(event, event.body, limits)
        elif isinstance(event, Data):
            body += event.data
            assert len(body) <= limits.max_body_bytes
        elif event is END:
            assert request is not None
            check_relayed(request, bytes(body), limits)
    return flat


def kinds(flat: list[Any]) -> str:
    """What an input gave, for hypothesis' statistics (--hypothesis-show-statistics)."""
    return " ".join(sorted({str(e[0]) if isinstance(e, tuple) else e for e in flat}) or ["nothing"]) \
        + "".join(f" {e[1]}" for e in flat if isinstance(e, tuple) and e[0] == "refused")


def check_relayed(request: Request, body: bytes, limits: Limits) -> None:
    """h11 (Hypercorn's parser) reads the door's re-serialisation as this one message, nothing more."""
    assert len(body) <= limits.max_body_bytes
    if request.upgrade is not None:
        return  # h11 hands what follows to the new protocol; nothing to compare after the head
    server = h11.Connection(h11.SERVER)
    server.receive_data(upstream_request(request, body))
    seen = server.next_event()
    assert isinstance(seen, h11.Request), seen
    assert seen.method.decode() == request.method
    assert seen.target.decode("latin-1") == request.raw_path + ("?" + request.query if request.query else "")
    got = bytearray()
    while True:
        event = server.next_event()
        if isinstance(event, h11.Data):
            got += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    assert bytes(got) == body
    assert server.next_event() in (h11.PAUSED, h11.NEED_DATA)
    assert not server.trailing_data[0], "bytes after the message: a second request h11 would read"


# ---------------------------------------------------------------------- raw bytes

FRAGMENTS = [
    b"GET ", b"POST ", b"OPTIONS ", b"CONNECT ", b"/", b"/a?b", b"*", b"http://h", b"h:1", b"%", b"%2", b"%41",
    b"%ff", b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"Host: x", b"Host:",
    b"Content-Length: ", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Connection: close",
    b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue", b":", b" ", b"\t", b"\x00",
    b"\x7f", b"\xff", b"0", b"5", b"a", b"ffff", b"-1", b",", b";", b"=", b'"', b"0\r\n\r\n", b"5\r\nhello\r\n",
    b"X-A: b",
]
PREFIXES = [b"POST / HTTP/1.1\r\nHost: x\r\n", b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"]
raw_inputs = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(PREFIXES), st.lists(st.sampled_from(FRAGMENTS), max_size=20).map(b"".join))
    .map(b"".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=30).map(b"".join),
)


@FUZZ
@given(data=raw_inputs, cuts=st.lists(st.integers(0, 600), max_size=6))
def test_any_bytes_give_requests_or_a_refusal(data: bytes, cuts: list[int]) -> None:
    tally(kinds(check_input(data, [c for c in cuts if c <= len(data)])))


# ---------------------------------------------------------------------- structured requests

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKEN = st.text(TCHARS, min_size=1, max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30) \
    .map(str.strip)
FRAMED = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}


@st.composite
def requests(draw: Any) -> tuple[bytes, tuple[Any, ...]]:
    """A valid request and what the core must read from it."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "M-SEARCH"]))
    segments = draw(st.lists(st.text(max_size=8), max_size=4))
    path = "/" + "/".join(segments)
    raw_path = quote(path, safe="/")
    query = draw(st.one_of(st.just(""), st.text("abc=&%20+", max_size=10)))
    target = raw_path + ("?" + query if query else "")
    absolute = draw(st.booleans())
    version = draw(st.sampled_from(["1.1", "1.0"]))
    fields = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6).map(
        lambda pairs: [(n, v) for n, v in pairs if n.lower() not in FRAMED]))
    body = draw(st.binary(max_size=300)) if method in ("POST", "PUT", "PATCH") else b""
    chunked = version == "1.1" and bool(body) and draw(st.booleans())
    close = draw(st.booleans())
    head = [f"{method} {'http://example.com' + target if absolute else target} HTTP/{version}", "Host: x:1"]
    head += [f"{n}: {v}" for n, v in fields]
    if close:
        head.append("Connection: close" if version == "1.1" else "Connection: x")
    elif version == "1.0":
        head.append("Connection: keep-alive")
    if chunked:
        head.append("Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 64), max_size=8))
        chunks, at = [], 0
        for size in [*sizes, len(body)]:
            piece = body[at:at + size]
            if piece:
                ext = draw(st.sampled_from(["", ";a", ";a=b", ' ; q="x y"']))
                chunks.append(b"%x%s\r\n%s\r\n" % (len(piece), ext.encode(), piece))
            at += len(piece)
            if at >= len(body):
                break
        wire_body = b"".join(chunks) + b"0\r\n" + (b"T: v\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    elif body or draw(st.booleans()):
        head.append(f"Content-Length: {len(body)}")
        wire_body = body
    else:
        wire_body = b""
    headers: dict[str, str] = {"host": "x:1"}
    for name, value in fields:
        key = name.lower()
        headers[key] = headers[key] + ", " + value if key in headers else value
    wire = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + wire_body
    expected = (method, path, query, version, not close, body, headers)
    return wire, expected


MUTATIONS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"%", b"0", b"9", b",",
             b"\r\nContent-Length: 3", b"\r\nTransfer-Encoding: chunked", b"\r\n X: fold", b"\r\n\r\n"]


@st.composite
def mutated(draw: Any) -> tuple[bytes, list[tuple[Any, ...]] | None]:
    """One to three pipelined requests, and maybe one mutation of their bytes (then: no expectation)."""
    made = draw(st.lists(requests(), min_size=1, max_size=3))
    wire = b"".join(w for w, _ in made)
    expected: list[tuple[Any, ...]] | None = []
    for _, e in made:
        assert expected is not None
        expected.append(e)
        if not e[4]:  # that one closes: the rest is not read
            break
    kind = draw(st.sampled_from(["none", "none", "insert", "delete", "replace", "truncate"]))
    if kind != "none" and wire:
        at = draw(st.integers(0, len(wire) - 1))
        if kind == "insert":
            wire = wire[:at] + draw(st.sampled_from(MUTATIONS)) + wire[at:]
        elif kind == "delete":
            wire = wire[:at] + wire[at + 1:]
        elif kind == "replace":
            wire = wire[:at] + draw(st.sampled_from(MUTATIONS))[:1] + wire[at + 1:]
        else:
            wire = wire[:at]
        expected = None
    return wire, expected


@FUZZ
@given(case=mutated(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_structured_requests_with_mutations(case: tuple[bytes, list[tuple[Any, ...]] | None], cuts: list[int]) -> None:
    wire, expected = case
    flat = check_input(wire, [c for c in cuts if c <= len(wire)])
    tally(kinds(flat))
    if expected is None:
        return
    got = [e for e in flat if e != "end" and e != "closed"]
    assert len(got) == 2 * len(expected), flat
    for (method, path, query, version, keep_alive, body, headers), head, data in \
            zip(expected, got[0::2], got[1::2], strict=True):
        assert head[0] == "request", head
        assert (head[1], head[3], head[4], head[5], head[6]) == (method, path, query, version, keep_alive)
        got_headers = dict(head[7])
        for name, value in headers.items():
            assert got_headers[name] == value
        assert data == ("body", body)
