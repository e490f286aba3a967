"""The sans-IO HTTP core (`ticketblitz.http`), in memory: target forms, limits on complete and incomplete
heads, any split of the input, pipelining, chunked bodies, smuggling attempts, percent and UTF-8
errors, keep-alive rules, and the bytes of answers and of relayed requests."""

from __future__ import annotations

import h11
import pytest
from http_driver import drive, h11_response, splits

from ticketblitz.http import END, NEED_DATA, Data, Limits, Refusal, Request, ServerConnection, TargetForm, serialize
from ticketblitz.http.core import ASTERISK_ANSWER, CONTINUE, Phase
from ticketblitz.http.relay import ResponseFraming, upstream_request

SMALL = Limits(max_head_bytes=1024, max_headers=10, max_target_bytes=256, max_body_bytes=2048)
H = b"Host: x\r\n"


def one(data: bytes, limits: Limits | None = None) -> Request:
    events = drive([data], limits, raw=True)
    assert isinstance(events[0], Request), events
    return events[0]


def refused(data: bytes, limits: Limits | None = None) -> int:
    """The status the core refuses `data` with, the same for every way of cutting it."""
    statuses = set()
    for pieces in splits(data) if len(data) < 600 else [[data], [data[i:i + 7] for i in range(0, len(data), 7)]]:
        events = drive(pieces, limits)
        assert events and events[-1][0] == "refused", (pieces[:2], events)
        statuses.add(events[-1][1])
    assert len(statuses) == 1, statuses
    return statuses.pop()


# ---------------------------------------------------------------------- request-target forms

@pytest.mark.parametrize(("target", "form", "raw", "path", "query", "authority"), [
    ("/", TargetForm.ORIGIN, "/", "/", "", "x"),
    ("/p?q=1&r", TargetForm.ORIGIN, "/p", "/p", "q=1&r", "x"),
    ("/a%20b/%E2%82%AC?x=%zz", TargetForm.ORIGIN, "/a%20b/%E2%82%AC", "/a b/€", "x=%zz", "x"),
    ("/api/events/%F0%9F%98%80/bookings", TargetForm.ORIGIN, "/api/events/%F0%9F%98%80/bookings",
     "/api/events/😀/bookings", "", "x"),
    ("/a%00b", TargetForm.ORIGIN, "/a%00b", "/a\x00b", "", "x"),
    ("http://example.com", TargetForm.ABSOLUTE, "/", "/", "", "example.com"),
    ("http://example.com?q", TargetForm.ABSOLUTE, "/", "/", "q", "example.com"),
    ("HTTP://example.com:8080/p/q?r=s", TargetForm.ABSOLUTE, "/p/q", "/p/q", "r=s", "example.com:8080"),
    ("https://[::1]:8443/x", TargetForm.ABSOLUTE, "/x", "/x", "", "[::1]:8443"),
])
def test_target_forms_that_are_served(target: str, form: TargetForm, raw: str, path: str, query: str,
                                      authority: str) -> None:
    request = one(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (request.form, request.raw_path, request.path, request.query, request.authority) == \
        (form, raw, path, query, authority)
    assert request.target == target


def test_options_asterisk_is_a_request_of_its_own_form() -> None:
    request = one(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert request.form is TargetForm.ASTERISK and request.path == ""
    status, headers, body = h11_response(ASTERISK_ANSWER, "OPTIONS")
    assert (status, headers[b"allow"], body) == (204, b"GET, HEAD, POST, OPTIONS", b"")


def test_connect_is_refused_405_with_allow() -> None:
    events = drive([b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"], raw=True)
    assert isinstance(events[0], Refusal) and events[0].status == 405
    assert dict(events[0].headers) == {"allow": "GET, HEAD, POST, OPTIONS"}


@pytest.mark.parametrize("line", [
    b"GET example.com:80 HTTP/1.1",  # authority form without CONNECT
    b"CONNECT /path HTTP/1.1",  # CONNECT without host:port
    b"CONNECT example.com HTTP/1.1",
    b"CONNECT * HTTP/1.1",
    b"GET * HTTP/1.1",  # asterisk without OPTIONS
    b"POST * HTTP/1.1",
    b"GET http:///p HTTP/1.1",  # absolute form without a host
    b"GET http://user@host/ HTTP/1.1",  # user information
    b"GET ftp://host/ HTTP/1.1",  # not http(s)
    b"GET http:/x HTTP/1.1",
    b"GET x HTTP/1.1",
    b"GET /p#frag HTTP/1.1",
    b"GET http://h/p#frag HTTP/1.1",
    b"GET /%zz HTTP/1.1",  # bad escapes
    b"GET /%4 HTTP/1.1",
    b"GET /% HTTP/1.1",
    b"GET /%ff HTTP/1.1",  # not UTF-8 once decoded
    b"GET /%c0%af HTTP/1.1",  # overlong
    b"GET /%ed%a0%80 HTTP/1.1",  # a surrogate
    b"GET http://x/%80 HTTP/1.1",
])
def test_targets_that_fit_no_form_or_do_not_decode_are_400(line: str) -> None:
    assert refused(line + b"\r\nHost: x\r\n\r\n") == 400


def test_the_issue_8_packet_is_a_400_not_a_crash() -> None:
    assert refused(b"GET http://x HTTP/1.1\r\n\r\n") == 400  # no Host: HTTP/1.1 needs one
    assert one(b"GET http://x HTTP/1.1\r\nHost: y\r\n\r\n").path == "/"


# ---------------------------------------------------------------------- request lines and versions

@pytest.mark.parametrize(("data", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"\x00\x01\x02\x03\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),  # HTTP/0.9
    (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
    (b" GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # raw non-ASCII in the target
    (b"GET /\tx HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/11\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/3.0\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"A" * 33 + b" / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a 33-character method
    (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400),
    (b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),  # bare CR
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    (b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # empty lines instead of a request
])
def test_malformed_request_lines(data: bytes, status: int) -> None:
    assert refused(data) == status


def test_a_few_empty_lines_before_a_request_are_tolerated() -> None:
    assert drive([b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"])[0][0] == "request"


def test_methods_are_tokens_and_case_sensitive() -> None:
    assert one(b"get / HTTP/1.1\r\nHost: x\r\n\r\n").method == "get"
    assert one(b"M-SEARCH / HTTP/1.1\r\nHost: x\r\n\r\n").method == "M-SEARCH"


# ---------------------------------------------------------------------- header fields

@pytest.mark.parametrize("fields", [
    b"Content-Length : 0\r\n",  # whitespace before the colon
    b"Content-Length\t: 0\r\n",
    b"X: a\r\n folded\r\n",  # obs-fold
    b"X: a\r\n\tfolded\r\n",
    b" X: a\r\n",
    b"X a\r\n",  # no colon
    b": a\r\n",  # empty name
    b"X(: a\r\n",  # name not a token
    b"X\x00: a\r\n",
    b"X: a\x00b\r\n",  # control characters in values
    b"X: a\x01\r\n",
    b"X: \x7f\r\n",
    b"X: a\x0bb\r\n",
    b"\xffX: a\r\n",
])
def test_bad_field_lines_are_400(fields: bytes) -> None:
    assert refused(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n") == 400


def test_field_values_trim_whitespace_keep_obs_text_and_join_repeats() -> None:
    request = one(b"GET / HTTP/1.1\r\nHost: x\r\nX-A:  one \t\r\nx-a: two\r\nX-B: caf\xe9\r\nX-E:\r\n"
                  b"X-Spaces: a  b\tc\r\n\r\n")
    assert request.headers["x-a"] == "one, two"
    assert request.headers["x-b"] == "caf\xe9"
    assert request.headers["x-e"] == ""
    assert request.headers["x-spaces"] == "a  b\tc"
    assert request.fields[1:3] == [("X-A", "one"), ("x-a", "two")]


@pytest.mark.parametrize(("fields", "ok"), [
    (b"", False),  # HTTP/1.1 needs Host
    (b"Host: a\r\nHost: b\r\n", False),
    (b"Host: a\r\nHost: a\r\n", False),
    (b"Host: a b\r\n", False),
    (b"Host: a/b\r\n", False),
    (b"Host: a@b\r\n", False),
    (b"Host: a:99999999\r\n", False),
    (b"Host: \r\n", True),
    (b"Host: example.com:8080\r\n", True),
    (b"Host: [::1]:80\r\n", True),
    (b"Host: 127.0.0.1\r\n", True),
])
def test_host(fields: bytes, ok: bool) -> None:
    data = b"GET / HTTP/1.1\r\n" + fields + b"\r\n"
    if ok:
        assert drive([data])[0][0] == "request"
    else:
        assert refused(data) == 400


def test_http10_needs_no_host() -> None:
    request = one(b"GET / HTTP/1.0\r\n\r\n")
    assert (request.version, request.authority, request.keep_alive) == ("1.0", "", False)


# ---------------------------------------------------------------------- limits, complete and incomplete

def test_head_size_limit_in_one_piece_and_dripped() -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 60_000 + b"\r\n\r\n"
    assert refused(big) == 431
    # incomplete: refused as soon as the head passes the limit, before it ends
    conn = ServerConnection()
    conn.receive_data(big[:16_385])
    assert isinstance(conn.next_event(), Refusal)
    conn = ServerConnection(SMALL)
    for i in range(2000):
        conn.receive_data(big[i:i + 1])
        event = conn.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, Refusal) and event.status == 431
            assert i == SMALL.max_head_bytes  # the first byte past the limit
            break
    else:
        pytest.fail("never refused")


def test_head_exactly_at_the_limit_is_served() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX: "
    data = head + b"a" * (SMALL.max_head_bytes - len(head) - 4) + b"\r\n\r\n"
    assert len(data) == SMALL.max_head_bytes
    assert drive([data], SMALL)[0][0] == "request"
    assert refused(head + b"a" * (SMALL.max_head_bytes - len(head) - 3) + b"\r\n\r\n", SMALL) == 431


def test_header_count_limit_in_one_piece_and_dripped() -> None:
    fields = b"".join(b"X%d: y\r\n" % i for i in range(3000))
    assert refused(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n") == 431  # 3,000 fields (and > 16 KiB)
    fields = b"".join(b"X: %d\r\n" % i for i in range(100))
    ok = b"GET / HTTP/1.1\r\nHost: x\r\n" + fields[:-len(b"X: 99\r\n")] + b"\r\n"  # Host + 99 = 100 fields
    assert drive([ok])[0][0] == "request"
    assert refused(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n") == 431  # 101 fields, well under 16 KiB
    conn = ServerConnection(SMALL)  # incomplete: refused once the 11th field line ends
    conn.receive_data(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"X: y\r\n")
    event = conn.next_event()
    assert isinstance(event, Refusal) and event.status == 431


def test_target_length_limit_in_one_piece_and_dripped() -> None:
    assert refused(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 414
    assert refused(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 414  # head under 16 KiB
    assert refused(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", SMALL) == 414
    target = b"/" + b"a" * (SMALL.max_target_bytes - 1)
    assert drive([b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"], SMALL)[0][2] == target.decode()
    conn = ServerConnection(SMALL)  # incomplete: refused before the request line ends
    conn.receive_data(b"GET /" + b"a" * 255)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"a")
    event = conn.next_event()
    assert isinstance(event, Refusal) and event.status == 414


def test_incomplete_garbage_is_refused_early() -> None:
    for start in (b"\x16\x03\x01\x02\x00", b"GET /\x00", b"GET / HTTP/1.1 x", b"A" * 40, b"GET / HTTP/1.1\n"):
        conn = ServerConnection()
        conn.receive_data(start)
        event = conn.next_event()
        assert isinstance(event, Refusal) and event.status == 400, start


@pytest.mark.parametrize(("fields", "body", "status"), [
    (b"Content-Length: 2049\r\n", b"", 413),
    (b"Content-Length: 99999999999999999999999999999\r\n", b"", 413),
    (b"Content-Length: " + b"9" * 900 + b"\r\n", b"", 413),
    (b"Transfer-Encoding: chunked\r\n", b"801\r\n", 413),  # one chunk over the limit, before its data
    (b"Transfer-Encoding: chunked\r\n", b"400\r\n" + b"a" * 1024 + b"\r\n401\r\n", 413),  # the sum
    (b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n", 413),
])
def test_body_limit(fields: bytes, body: bytes, status: int) -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + body, SMALL) == status


def test_a_length_of_5000_digits_is_413_not_an_int_error() -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n") == 413
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"0" * 5000 + b"1\r\n\r\nx"])[1] == ("body", b"x")


def test_body_at_the_limit_is_served() -> None:
    body = b"a" * SMALL.max_body_bytes
    events = drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + body], SMALL)
    assert events[1] == ("body", body)
    chunked = b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n"
    events = drive([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked], SMALL)
    assert events[1] == ("body", body)


# ---------------------------------------------------------------------- any split, pipelining

PIPELINE = (
    b"POST /api/events/evt_1/bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 13\r\n\r\n{\"quantity\":1}"[:-1] + b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1;q=\"a b\"\r\nabc\r\n1 ; e\r\nd\r\n0\r\nTrailer-Field: t\r\n\r\n"
    b"\r\n"  # a stray CRLF between requests
    b"GET http://example.com/abs HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n"
    b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n"  # after Connection: close: not read
)


def test_a_pipeline_cut_anywhere_gives_the_same_events() -> None:
    expected = drive([PIPELINE])
    assert [e[0] if isinstance(e, tuple) else e for e in expected] == \
        ["request", "body", "end"] * 4 + ["closed"]
    assert expected[1] == ("body", b'{"quantity":1')
    assert expected[7] == ("body", b"abcd")
    assert expected[9][3] == "/abs"
    for pieces in splits(PIPELINE):
        assert drive(pieces) == expected


def test_pipelined_requests_are_read_one_at_a_time() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    first = conn.next_event()
    assert isinstance(first, Request) and first.path == "/1" and first.body == b""
    second = conn.next_event()
    assert isinstance(second, Request) and second.path == "/2"
    assert conn.next_event() is NEED_DATA and conn.phase == Phase.IDLE


def test_phases_tell_the_door_which_deadline_runs() -> None:
    conn = ServerConnection()
    assert conn.phase == Phase.IDLE
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\n")
    assert conn.next_event() is NEED_DATA and conn.phase == Phase.HEAD
    conn.receive_data(b"Content-Length: 4\r\n\r\nab")
    assert isinstance(conn.next_event(), Request)
    assert isinstance(conn.next_event(), Data)
    assert conn.next_event() is NEED_DATA and conn.phase == Phase.BODY
    conn.receive_data(b"cd")
    assert isinstance(conn.next_event(), Data)
    assert conn.next_event() is END and conn.phase == Phase.IDLE
    conn.receive_data(b"G")
    assert conn.next_event() is NEED_DATA and conn.phase == Phase.HEAD


def test_end_of_input() -> None:
    assert drive([b""]) == ["closed"]
    assert drive([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]) == drive([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert drive([b"GET / HTTP/1.1\r\nHo"])[-1] == ("refused", 400)  # closed inside a head
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"])[-1] == ("refused", 400)
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"])[-1] == \
        ("refused", 400)
    # a client that sends a whole request and half-closes still gets it served
    assert drive([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""])[-1] == "closed"
    assert drive([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], eof=False)[-1] == "end"


# ---------------------------------------------------------------------- chunked bodies

@pytest.mark.parametrize("chunks", [
    b"x\r\n",  # not hex
    b"-1\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",  # whitespace not before an extension
    b"5;\r\nhello\r\n0\r\n\r\n",  # an empty extension
    b"5;a=\r\nhello\r\n0\r\n\r\n",
    b"5;a=\"b\r\nhello\r\n0\r\n\r\n",  # an unterminated quoted string
    b"5;(\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",  # bare LF
    b"5\r\nhelloX\r\n0\r\n\r\n",  # data longer than its size
    b"5\r\nhell\r\n0\r\n\r\n",  # shorter
    b"5\r\nhello\n0\r\n\r\n",
    b"00000000000000001\r\na\r\n0\r\n\r\n",  # 17 hex digits
    b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n",
    b"5\r\nhello\r\n0\r\n folded: x\r\n\r\n",
    b"1" * 5000 + b"\r\n",  # an endless size line
])
def test_bad_chunked_framing_is_400(chunks: bytes) -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks) == 400


def test_chunked_trailers_are_checked_and_limited() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    assert drive([head + b"A: 1\r\nB: 2\r\n\r\n"])[1] == ("body", b"")
    assert refused(head + b"T: 1\r\n" * 11 + b"\r\n", SMALL) == 431
    assert refused(head + b"T: " + b"a" * 2000 + b"\r\n\r\n", SMALL) == 431


def test_chunk_extensions_are_allowed_and_dropped() -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" \
           b"5 ; a = b ; c=\"d;\\\"e\"\r\nhello\r\nA\r\n0123456789\r\n0;last\r\n\r\n"
    assert drive([data])[1] == ("body", b"hello0123456789")


# ---------------------------------------------------------------------- smuggling

@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # CL.TE
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",  # TE.CL
    b"Content-Length: 5\r\nContent-Length: 6\r\n",  # differing duplicates
    b"Content-Length: 5, 6\r\n",
    b"Content-Length: -5\r\n",
    b"Content-Length: +5\r\n",
    b"Content-Length: 5.0\r\n",
    b"Content-Length: 0x5\r\n",
    b"Content-Length: 5 5\r\n",
    b"Content-Length: \r\n",
    b"Content-Length: 5,\r\n",
    b"Content-Length: \xb2\r\n",  # a superscript two: str.isdigit() says yes
    b"Content-Length: \xd9\xa5\r\n",  # Arabic-Indic five as UTF-8
    b"Transfer-Encoding: gzip\r\n",  # not chunked last
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",  # a coding we do not decode
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: chunked;q=1\r\n",
    b"Transfer-Encoding:\r\n",
    b"Transfer-Encoding : chunked\r\n",  # whitespace before the colon
    b"Transfer-Encoding\x0b: chunked\r\n",
    b"Transfer-Encoding: \x0bchunked\r\n",
    b"X: y\r\n Transfer-Encoding: chunked\r\n",  # obs-fold
    b"Transfer-Encoding: chunked\x00\r\n",
    b"Content-Length: 5\x00\r\n",
    b"Content\x00-Length: 5\r\n",
])
def test_smuggling_pairs_are_400(fields: bytes) -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\nhello0\r\n\r\n") == 400


def test_transfer_encoding_in_http10_is_400() -> None:
    assert refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400


def test_framing_that_is_fine() -> None:
    body = drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"])
    assert body[1] == ("body", b"hello")  # equal duplicates are one length
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello"])[1] == ("body", b"hello")
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello"])[1] == ("body", b"hello")
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n"])[1] \
        == ("body", b"hello")
    assert drive([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n"])[1] == ("body", b"")
    get = one(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert get.body == b"abc"  # a GET may have a body; its length still frames the connection


# ---------------------------------------------------------------------- keep-alive, Expect, Upgrade

@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"1.1", None, True),
    (b"1.1", b"close", False),
    (b"1.1", b"Keep-Alive, CLOSE", False),
    (b"1.1", b"keep-alive", True),
    (b"1.0", None, False),
    (b"1.0", b"keep-alive", True),
    (b"1.0", b"Keep-Alive", True),
    (b"1.0", b"keep-alive, close", False),
])
def test_keep_alive_rules(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    fields = b"Connection: " + connection + b"\r\n" if connection is not None else b""
    request = one(b"GET / HTTP/" + version + b"\r\nHost: x\r\n" + fields + b"\r\n")
    assert request.keep_alive is keep_alive
    head = b"GET / HTTP/" + version + b"\r\nHost: x\r\n" + fields + b"\r\n"
    after = drive([head + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert [e[0] if isinstance(e, tuple) else e for e in after].count("request") == (2 if keep_alive else 1)


def test_expect_100_continue_is_owed_once_before_the_body() -> None:
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n")
    request = conn.next_event()
    assert isinstance(request, Request) and request.expect_continue
    assert conn.next_event() is NEED_DATA
    assert conn.take_continue() and not conn.take_continue()
    conn.receive_data(b"ok")
    assert isinstance(conn.next_event(), Data) and conn.next_event() is END
    conn = ServerConnection()  # the body came already: nothing owed
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(conn.next_event(), Request) and not conn.take_continue()
    conn = ServerConnection()  # a 413 instead of a 100
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n")
    refusal = conn.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 413 and not conn.take_continue()
    assert h11_response(CONTINUE + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")[0] == 200


def test_websocket_upgrade_ends_http_on_the_connection() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello")
    request = conn.next_event()
    assert isinstance(request, Request) and request.upgrade == "websocket"
    assert conn.phase == Phase.DONE
    assert conn.trailing_data() == b"\x81\x05hello"
    for not_ws in (b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Content-Length: 0\r\n\r\n",
                   b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
                   b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                   b"GET /ws HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"):
        assert one(not_ws).upgrade is None


# ---------------------------------------------------------------------- answers

def test_answers_are_well_formed_http() -> None:
    answer = serialize(202, "application/json", {"Location": "/api/bookings/b1"}, b'{"id":"b1"}', keep_alive=True)
    assert h11_response(answer) == (202, {b"content-type": b"application/json", b"content-length": b"11",
                                          b"location": b"/api/bookings/b1"}, b'{"id":"b1"}')
    closing = serialize(413, "application/problem+json", [("retry-after", "1")], b"{}", keep_alive=False)
    assert h11_response(closing)[1][b"connection"] == b"close"
    assert b"connection: keep-alive\r\n" in serialize(200, None, {}, b"", keep_alive=True, http10=True)
    for status in (204, 304):
        answer = serialize(status, "application/json", {}, b"ignored", keep_alive=True)
        assert b"content-length" not in answer and not answer.endswith(b"ignored")
        assert h11_response(answer)[0] == status
    assert h11_response(serialize(599, None, {}, b"x", keep_alive=False))[0] == 599  # no reason phrase


def test_answers_never_split_on_header_values() -> None:
    answer = serialize(200, "text/plain", {"X-Evil": "a\r\nSet-Cookie: x=1", "X\r\nBad": "v"}, b"", keep_alive=True)
    status, headers, _ = h11_response(answer)
    assert status == 200 and b"set-cookie" not in headers


# ---------------------------------------------------------------------- relaying to Hypercorn

def _h11_server_view(data: bytes) -> list[object]:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    events = []
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    return events


def test_upstream_requests_are_canonical_and_h11_reads_exactly_them() -> None:
    raw = (b"POST http://example.com/p%20q?x=1 HTTP/1.1\r\nHost: other\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nExpect: 100-continue\r\nX-Keep:  v \r\nTE: trailers\r\n"
           b"\r\n5\r\nhello\r\n0\r\n\r\n")
    events = drive([raw], raw=True)
    request = events[0]
    body = b"".join(e.data for e in events if isinstance(e, Data))
    sent = upstream_request(request, body)
    assert sent == (b"POST /p%20q?x=1 HTTP/1.1\r\nhost: example.com\r\nx-keep: v\r\ncontent-length: 5\r\n\r\nhello")
    seen = _h11_server_view(sent)
    assert isinstance(seen[0], h11.Request) and seen[0].target == b"/p%20q?x=1"
    assert [e.data for e in seen if isinstance(e, h11.Data)] == [b"hello"]
    assert isinstance(seen[-1], h11.EndOfMessage)


def test_upstream_requests_keep_websocket_handshakes_and_close() -> None:
    ws = one(b"GET /ws?event=e HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
    sent = upstream_request(ws, b"")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in sent and b"sec-websocket-key: k\r\n" in sent
    close = one(b"GET / HTTP/1.0\r\n\r\n")
    assert upstream_request(close, b"") == b"GET / HTTP/1.0\r\nconnection: close\r\n\r\n"
    h2c = one(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert upstream_request(h2c, b"") == b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"  # no h2c behind the door's back
    post = one(b"POST /e HTTP/1.1\r\nHost: x\r\n\r\n")
    assert upstream_request(post, b"").endswith(b"content-length: 0\r\n\r\n")


RESPONSES = [
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", True, False),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", True, False),
    ("GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n", True, False),
    ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", True, False),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", True, False),
    ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", True, False),
    ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", True, False),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok", False, False),
    ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", True, False),
    ("GET", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n", True, True),
]


@pytest.mark.parametrize(("method", "response", "keep_alive", "switched"), RESPONSES)
def test_response_framing_finds_the_end_of_an_answer_cut_anywhere(method: str, response: bytes, keep_alive: bool,
                                                                 switched: bool) -> None:
    after = b"\x81\x02hi" if switched else b""
    for pieces in splits(response + after):
        framing = ResponseFraming(method)
        forwarded = bytearray()
        rest = bytearray()
        for piece in pieces:
            if framing.complete:
                rest += piece
                continue
            taken = framing.feed(piece)
            forwarded += piece[:taken]
            rest += piece[taken:]
        assert framing.complete and not framing.error, pieces
        assert bytes(forwarded) == response and bytes(rest) == after
        assert (framing.keep_alive, framing.switched) == (keep_alive, switched)


def test_response_framing_until_close_and_early_close() -> None:
    framing = ResponseFraming("GET")
    assert framing.feed(b"HTTP/1.1 200 OK\r\n\r\nsome body") == 28
    assert not framing.complete
    framing.feed(b"")
    assert framing.complete and not framing.error and not framing.keep_alive
    framing = ResponseFraming("GET")
    framing.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    framing.feed(b"")
    assert framing.error and framing.forwarded
    framing = ResponseFraming("GET")
    framing.feed(b"")
    assert framing.error and not framing.forwarded
    framing = ResponseFraming("GET")
    framing.feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert framing.error
