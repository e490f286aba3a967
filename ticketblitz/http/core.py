"""A sans-IO HTTP/1.1 server core: bytes in, request events or a refusal out; answers in, bytes out.

No sockets, no clocks, no Trio: `ticketblitz/door.py` owns the socket and the deadlines and feeds
this (the split of Hypercorn's `protocol/h11.py` and `trio/tcp_server.py`). Like h11, every bad input
becomes one value, a `Refusal` with the status to answer (h11's `error_status_hint`) and a detail;
nothing the client sends makes the parser raise.

    conn = ServerConnection(Limits(...))
    conn.receive_data(data)              # b"" when the client closed its side
    event = conn.next_event()            # Request | Data | END | NEED_DATA | CLOSED | Refusal

Per request: one `Request` (a checked head), `Data` pieces of the decoded body (Content-Length or
chunked), then `END`. A request whose whole body came with its head (the common case, and every
bodiless one) is one event: the `Request` with `body` set, and no `Data` or `END` follow. The next
`next_event()` starts the next pipelined request when the last one kept the connection alive, else
it answers CLOSED. After a Refusal the connection is done: answer it
and close.

What is refused, on complete heads and on heads still arriving alike:

- 400: garbage; a request line that is not `method SP target SP HTTP/x.y`; a target that fits no
  form, or not its method (authority form without CONNECT, `*` without OPTIONS, CONNECT without
  host:port); a bad `%` escape, or a path that is not UTF-8 once decoded; a fragment; obs-fold,
  whitespace before a colon, control characters, a bare CR or LF; no Host (HTTP/1.1) or several, or
  one that is not host[:port]; Content-Length together with Transfer-Encoding; Content-Length values
  that differ or are not digits; Transfer-Encoding in HTTP/1.0, or other than exactly `chunked` (no
  other coding is decoded here, so `gzip, chunked` is 400 too, not 501); bad chunk sizes, extensions
  or chunk endings; a client that closes inside a request.
- 405 (with `Allow`): CONNECT host:port: the door is no proxy (the connection closes, as a client may
  already be sending tunnel bytes).
- 413: a Content-Length over `max_body_bytes`, or a chunked body that grows past it (checked at each
  chunk-size line, before its data arrives).
- 414: a request-target longer than `max_target_bytes`.
- 431: a head longer than `max_head_bytes`, or more than `max_headers` fields (trailers alike).
- 505: a well-formed `HTTP/x.y` other than 1.0 and 1.1 (e.g. `PRI * HTTP/2.0`).

(408 is the door's: only it has a clock; `phase` tells it which deadline applies.)

Target forms: origin (`/p?q`) and absolute (`http://host/p?q`; an empty path means "/", the target's
authority replaces Host) are served; `OPTIONS *` is a Request of form ASTERISK, which the door answers
`204` with `Allow` (`ASTERISK_ANSWER`); CONNECT is refused as above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from .chunked import DONE, NEED, ChunkedDecoder
from .fields import FIELD_LINES_RE, TCHAR, Refusal, field_problem
from .target import HOST_RE, TargetError, TargetForm, parse_target

__all__ = ["CLOSED", "END", "NEED_DATA", "Data", "Limits", "Phase", "Refusal", "Request", "ServerConnection",
           "TargetForm", "serialize"]

ALLOW = "GET, HEAD, POST, OPTIONS"  # what the server as a whole answers (OPTIONS *, the 405 of CONNECT)
MAX_METHOD = 32  # longer "methods" are garbage
MAX_LEADING_CRLF = 8  # empty lines tolerated before a request line (RFC 9112 §2.2)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may be: each limit is checked as soon as the bytes that break it arrive."""

    max_head_bytes: int = 16 * 1024  # request line + header fields + the empty line → 431
    max_headers: int = 100  # header fields → 431
    max_target_bytes: int = 8 * 1024  # the request-target → 414
    max_body_bytes: int = 64 * 1024  # decoded body → 413


class Phase:
    """Where the connection is, for the deadline that applies (`ServerConnection.phase`)."""

    IDLE = "idle"  # between requests, nothing of the next one received: the idle timeout (close quietly)
    HEAD = "head"  # part of a head received: the header deadline (408)
    BODY = "body"  # head complete, body incomplete: the body deadline (408)
    DONE = "done"  # the connection will read no more requests


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # feed more bytes (or b"" at end of input)
END = _Sentinel("END")  # the request's body is complete: answer it
CLOSED = _Sentinel("CLOSED")  # no more requests: the client closed between requests, or keep-alive ended


class Data:
    """A piece of the decoded request body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"


class Request:
    """A complete, checked request head."""

    __slots__ = ("authority", "body", "body_length", "chunked", "expect_continue", "fields", "form", "headers",
                 "keep_alive", "method", "path", "query", "raw_path", "target", "upgrade", "version")

    def __init__(self, method: str, target: str, version: str, form: TargetForm, raw_path: str, path: str,
                 query: str, fields: list[tuple[str, str]], headers: dict[str, str], authority: str) -> None:
        self.method = method  # as sent (methods are case-sensitive)
        self.target = target  # the request-target as sent
        self.version = version  # "1.1" or "1.0"
        self.form = form
        self.raw_path = raw_path  # percent-encoded, as sent ("/" for an absolute form without a path)
        self.path = path  # percent-decoded, UTF-8
        self.query = query  # after "?", as sent
        self.fields = fields  # (name as sent, value) in order, repeats kept
        self.headers = headers  # lower-case name → value, repeated fields joined with ", "
        self.authority = authority  # the target's authority (absolute/authority form), else the Host value
        self.keep_alive = True
        self.body_length: int | None = 0  # Content-Length; None for a chunked body
        self.chunked = False
        self.expect_continue = False  # Expect: 100-continue (HTTP/1.1)
        self.upgrade: str | None = None  # "websocket" for a websocket handshake (GET, Connection: upgrade)
        self.body: bytes | None = None  # the whole body when it came with the head (no Data/END follow)

    def __repr__(self) -> str:
        return f"Request({self.method} {self.target} HTTP/{self.version})"


Event = Request | Data | Refusal | _Sentinel

_FAST_LINE_RE = re.compile(rf"([{TCHAR}]{{1,{MAX_METHOD}}}) ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
_REQUEST_LINE_RE = re.compile(rf"([{TCHAR}]{{1,{MAX_METHOD}}}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_FIRST_LINE_BAD_RE = re.compile(rb"[^\x21-\x7e ]")  # what no request line may contain (but its CRLF)
_CONTENT_LENGTH_RE = re.compile(r"[0-9]+")

_IDLE, _HEAD, _BODY, _CHUNKED, _DONE, _ERROR = range(6)


class ServerConnection:
    """One client connection's requests, parsed and checked (see the module docstring)."""

    __slots__ = ("_buf", "_checked", "_chunks", "_continue", "_eof", "_first_line", "_keep_alive", "_leading",
                 "_left", "_lines", "_refusal", "_space1", "_space2", "_state", "_upgrade", "limits")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._eof = False
        self._state = _IDLE
        self._refusal: Refusal | None = None
        self._keep_alive = True
        self._upgrade = False
        self._continue = False  # a 100 Continue is owed before the body is read
        self._left = 0  # Content-Length bytes still to come
        self._chunks: ChunkedDecoder | None = None
        self._new_head()

    def _new_head(self) -> None:
        self._checked = 0  # bytes of the incomplete head already checked
        self._lines = 0  # LFs among them
        self._first_line = -1  # end of the request line once its LF arrived
        self._space1 = -1  # the spaces of the incomplete request line
        self._space2 = -1
        self._leading = 0  # empty lines skipped before this request line

    # ------------------------------------------------------------------ feeding

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" when it closed its sending side."""
        if data:
            if self._eof:
                raise RuntimeError("receive_data after end of input")
            self._buf += data
        else:
            self._eof = True

    @property
    def phase(self) -> str:
        state = self._state
        if state == _IDLE:
            return Phase.HEAD if self._buf else Phase.IDLE
        if state == _HEAD:
            return Phase.HEAD
        if state in (_BODY, _CHUNKED):
            return Phase.BODY
        return Phase.DONE

    def take_continue(self) -> bool:
        """True once, when the client waits for `100 Continue` before sending the body it announced."""
        owed = self._continue and not self._buf
        self._continue = False
        return owed

    def trailing_data(self) -> bytes:
        """What the client sent after the last request (after a `101 Switching Protocols`: the new protocol)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    # ------------------------------------------------------------------ events

    def next_event(self) -> Event:
        state = self._state
        if state == _BODY:
            return self._body()
        if state == _CHUNKED:
            return self._chunked()
        if state <= _HEAD:
            return self._head()
        if state == _ERROR:
            assert self._refusal is not None
            return self._refusal
        return CLOSED

    def _refuse(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> Refusal:
        self._state = _ERROR
        self._refusal = Refusal(status, detail, headers)
        return self._refusal

    def _head(self) -> Event:
        buf = self._buf
        if buf[:2] == b"\r\n":  # robustness: empty lines before a request line (RFC 9112 §2.2)
            leading = self._leading
            while buf[:2] == b"\r\n":
                leading += 1
                if leading > MAX_LEADING_CRLF:
                    return self._refuse(400, "empty lines instead of a request line")
                del buf[:2]
            self._new_head()
            self._leading = leading
        if not buf:
            if self._eof:
                self._state = _DONE
                return CLOSED
            self._state = _IDLE
            return NEED_DATA
        self._state = _HEAD
        end = buf.find(b"\r\n\r\n", max(self._checked - 3, 0))
        if end < 0:
            refusal = self._check_incomplete()
            if refusal is not None:
                return refusal
            if self._eof:
                return self._refuse(400, "the connection ended inside a request head")
            return NEED_DATA
        size = end + 4
        if size > self.limits.max_head_bytes:
            refusal = self._check_incomplete(size)  # what the bytes up to the limit fail, else 431
            assert refusal is not None
            return refusal
        text = buf[:end + 2].decode("latin-1")  # the request line and every field line, each with its CRLF
        del buf[:size]
        result = self._parse_head(text)
        if type(result) is Refusal:
            # the same bytes arriving one by one would have failed an early check first, if any: that
            # refusal, so that a request reads the same however it is cut
            buf[:0] = text.encode("latin-1") + b"\r\n"
            return self._check_incomplete(size) or result
        if self._checked:  # parts of this head were checked as they came
            self._new_head()
        self._leading = 0
        return result

    def _check_incomplete(self, size: int = -1) -> Refusal | None:
        """The checks a head can fail before it is complete, on the bytes that arrived since the last call
        (of a head of `size` bytes when it is complete). Each check fails at one byte, and the refusal is
        the one of the earliest such byte: the same whether the head came whole or byte by byte."""
        buf, limits = self._buf, self.limits
        # a complete head: up to its empty line (whose LF ends no field); past the limit: only the 431
        end = len(buf) if size < 0 else size - 2
        size = len(buf) if size < 0 else size
        start, stop = self._checked, min(end, limits.max_head_bytes)
        self._checked = stop
        if self._first_line < 0:  # the request line is still arriving: visible ASCII and at most two spaces
            lf = buf.find(b"\n", start, stop)
            if lf >= 0:
                if lf == 0 or buf[lf - 1] != 13:
                    return self._refuse(400, "a bare LF in the request line")
                content_end = lf - 1
            elif stop > start and buf[stop - 1] == 13:
                content_end = stop - 1  # a CR that must be followed by LF: checked again with the next bytes
                self._checked = stop - 1
            else:
                content_end = stop
            if _FIRST_LINE_BAD_RE.search(buf, start, content_end):
                return self._refuse(400, "a malformed request line")
            space = buf.find(b" ", start, content_end)
            while space >= 0:
                if self._space1 < 0:
                    self._space1 = space
                elif self._space2 < 0:
                    self._space2 = space
                else:
                    return self._refuse(400, "a malformed request line")
                space = buf.find(b" ", space + 1, content_end)
            first = self._space1
            if (first if first >= 0 else content_end) > MAX_METHOD:
                return self._refuse(400, "a malformed request line")
            if first >= 0:
                target_end = self._space2 if self._space2 >= 0 else content_end
                if target_end - first - 1 > limits.max_target_bytes:
                    return self._refuse(414, f"request-target longer than {limits.max_target_bytes} bytes")
            if lf >= 0:
                self._first_line = content_end
                refusal = self._check_request_line(buf[:content_end].decode("latin-1"))
                if refusal is not None:
                    return refusal
        # every LF must end a CRLF; each ends a line, and every line after the first is a field
        lfs = buf.count(b"\n", start, stop)
        faults: list[tuple[int, int, str]] = []
        if lfs != buf.count(b"\r\n", max(start - 1, 0), stop):
            lf = buf.find(b"\n", start, stop)
            while lf > 0 and buf[lf - 1] == 13:
                lf = buf.find(b"\n", lf + 1, stop)
            faults.append((lf, 400, "a bare LF in the request head"))
        if self._lines + lfs - 1 > limits.max_headers:
            lf = start - 1
            for _ in range(limits.max_headers + 2 - self._lines):
                lf = buf.find(b"\n", lf + 1, stop)
            faults.append((lf, 431, f"more than {limits.max_headers} header fields"))
        self._lines += lfs
        if size > limits.max_head_bytes:
            faults.append((limits.max_head_bytes, 431, f"request head larger than {limits.max_head_bytes} bytes"))
        if faults:
            _, status, detail = min(faults)
            return self._refuse(status, detail)
        return None

    def _check_request_line(self, line: str) -> Refusal | None:
        """The refusal a complete request line earns on its own, else None."""
        match = _REQUEST_LINE_RE.fullmatch(line)
        if match is not None:
            if match.group(3) != "1" or match.group(4) not in "01":
                return self._refuse(505, f"HTTP/{match.group(3)}.{match.group(4)} is not supported; use HTTP/1.1")
            if len(match.group(2)) > self.limits.max_target_bytes:
                return self._refuse(414, f"request-target longer than {self.limits.max_target_bytes} bytes")
            return None
        parts = line.split(" ")
        if len(parts) == 3 and _VERSION_RE.fullmatch(parts[2]) is None:
            return self._refuse(400, "the request line does not end in HTTP/x.y")
        if len(parts) == 3 and len(parts[1]) > self.limits.max_target_bytes:
            return self._refuse(414, f"request-target longer than {self.limits.max_target_bytes} bytes")
        return self._refuse(400, "a malformed request line")

    def _parse_head(self, text: str) -> Event:
        limits = self.limits
        match = _FAST_LINE_RE.match(text)
        if match is None or match.end(2) - match.start(2) > limits.max_target_bytes:
            refusal = self._check_request_line(text[:text.index("\r\n")])
            assert refusal is not None
            return refusal
        method, target, minor = match.groups()
        line_end = match.end()
        found = FIELD_LINES_RE.findall(text, line_end)
        lines = text.count("\n") - 1
        if lines > limits.max_headers:
            return self._refuse(431, f"more than {limits.max_headers} header fields")
        if len(found) != lines:
            return self._refuse(400, field_problem(text[line_end:]))
        if target[0] == "/" and "%" not in target and "#" not in target and method != "CONNECT":
            form, authority = TargetForm.ORIGIN, None  # the common case, inline
            path, _, query = target.partition("?")
            raw_path = path
        else:
            try:
                form, raw_path, path, query, authority = parse_target(method, target)
            except TargetError as exc:
                return self._refuse(400, str(exc))
        if form is TargetForm.AUTHORITY:
            return self._refuse(405, "CONNECT: this server is no proxy", (("allow", ALLOW),))
        headers: dict[str, str] = {}
        for name, value in found:
            name = name.lower()
            if name in headers:
                headers[name] = headers[name] + ", " + value
            else:
                headers[name] = value
        version = "1.1" if minor == "1" else "1.0"
        host = headers.get("host")
        if host is None:
            if minor == "1":
                return self._refuse(400, "an HTTP/1.1 request needs a Host header")
            host = ""
        elif not HOST_RE.fullmatch(host):
            return self._refuse(400, "header Host: one Host field with host[:port] is needed")
        request = Request(method, target, version, form, raw_path, path, query, found, headers, authority or host)

        # framing, keep-alive, Expect and Upgrade (RFC 9112 §6.3, §9.3)
        connection = headers.get("connection")
        if connection is not None:
            tokens = {t.strip().lower() for t in connection.split(",")}
            if minor == "1":
                request.keep_alive = "close" not in tokens
            else:
                request.keep_alive = "keep-alive" in tokens and "close" not in tokens
        elif minor == "0":
            request.keep_alive = False
        if minor == "1":
            expect = headers.get("expect")
            if expect is not None and expect.strip().lower() == "100-continue":
                request.expect_continue = True
            upgrade = headers.get("upgrade")
            if upgrade is not None and connection is not None and "upgrade" in tokens and method == "GET" \
                    and "websocket" in {t.strip().lower() for t in upgrade.split(",")}:
                request.upgrade = "websocket"
        length = headers.get("content-length")
        if "transfer-encoding" in headers:
            refusal = self._check_coding(request, headers["transfer-encoding"], length)
            if refusal is not None:
                return refusal
            self._state = _CHUNKED
            self._chunks = ChunkedDecoder(limits.max_body_bytes, limits.max_head_bytes, limits.max_headers)
        else:
            if length is None:
                size = 0
            elif length.isdigit() and length.isascii() and len(length) < 16:
                size = int(length)
            else:
                checked = self._content_length(length)
                if isinstance(checked, Refusal):
                    return checked
                size = checked
            if size > limits.max_body_bytes:
                return self._refuse(413, f"body: larger than the limit of {limits.max_body_bytes} bytes")
            request.body_length = size
            self._keep_alive = request.keep_alive
            self._upgrade = request.upgrade is not None
            buf = self._buf
            if len(buf) >= size:  # the whole body is here: the request is complete, no Data or END follow
                if size:
                    request.body = bytes(buf[:size])
                    del buf[:size]
                else:
                    request.body = b""
                self._end()
                return request
            self._state = _BODY
            self._left = size
            self._continue = request.expect_continue
            return request
        self._keep_alive = request.keep_alive
        self._upgrade = request.upgrade is not None
        self._continue = request.expect_continue
        return request

    def _check_coding(self, request: Request, coding: str, length: str | None) -> Refusal | None:
        if length is not None:
            return self._refuse(400, "both Content-Length and Transfer-Encoding: the body length is ambiguous")
        if request.version != "1.1":
            return self._refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip().lower() for c in coding.split(",") if c.strip()]
        if codings != ["chunked"]:
            if not codings or codings[-1] != "chunked":
                return self._refuse(400, "Transfer-Encoding: chunked must be the final coding")
            return self._refuse(400, f"Transfer-Encoding {coding[:60]!r}: only chunked is supported")
        request.chunked = True
        request.body_length = None
        return None

    def _content_length(self, length: str) -> int | Refusal:
        """The value of Content-Length fields other than one plain number (a list of equal values)."""
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1:
            return self._refuse(400, "Content-Length: several different values")
        value = values.pop()
        if not _CONTENT_LENGTH_RE.fullmatch(value):
            return self._refuse(400, "Content-Length: not a number of bytes")
        value = value.lstrip("0") or "0"
        return int(value) if len(value) < 16 else 1 << 60

    def _body(self) -> Event:
        if not self._left:
            return self._end()
        buf = self._buf
        if not buf:
            if self._eof:
                return self._refuse(400, "the connection ended inside a request body")
            return NEED_DATA
        n = self._left
        if len(buf) <= n:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self._left -= len(data)
        return Data(data)

    def _chunked(self) -> Event:
        assert self._chunks is not None
        result = self._chunks.step(self._buf)
        if type(result) is bytes:
            return Data(result)
        if result is DONE:
            self._chunks = None
            return self._end()
        if result is NEED:
            if self._eof:
                return self._refuse(400, "the connection ended inside a request body")
            return NEED_DATA
        assert isinstance(result, Refusal)
        return self._refuse(result.status, result.detail)

    def _end(self) -> Event:
        self._continue = False
        # the next request only after one that keeps the connection; after an upgrade, what follows is
        # another protocol (`trailing_data`)
        self._state = _IDLE if self._keep_alive and not self._upgrade else _DONE
        return END


# ---------------------------------------------------------------------- answers

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
ASTERISK_ANSWER = b"HTTP/1.1 204 No Content\r\nallow: " + ALLOW.encode() + b"\r\n\r\n"  # OPTIONS *
_UNSAFE_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def serialize(status: int, content_type: str | None, headers: Mapping[str, str] | Iterable[tuple[str, str]],
              body: bytes, *, keep_alive: bool, http10: bool = False, head_only: bool = False) -> bytes:
    """An answer's bytes: status line, Content-Type and Content-Length, the headers, the body.

    `connection: close` when the connection ends after it (`keep-alive` for an HTTP/1.0 client that
    keeps it). 1xx, 204 and 304 answers carry no body and no Content-Length. Header values with control
    characters are cleaned rather than sent (no answer splitting). With `head_only` the body's bytes are
    left out (the caller sends them after the head: no copy of a large body)."""
    head = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
    no_body = status < 200 or status in (204, 304)
    if content_type and not no_body:
        head.append(b"content-type: %s\r\n" % content_type.encode("latin-1", "replace"))
    if not no_body:
        head.append(b"content-length: %d\r\n" % len(body))
    for name, value in (headers.items() if isinstance(headers, Mapping) else headers):
        if _UNSAFE_VALUE_RE.search(value) or _UNSAFE_VALUE_RE.search(name):
            name, value = _UNSAFE_VALUE_RE.sub("", name), _UNSAFE_VALUE_RE.sub(" ", value)
        head.append(b"%s: %s\r\n" % (name.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    elif http10:
        head.append(b"connection: keep-alive\r\n")
    head.append(b"\r\n")
    if not no_body and not head_only:
        head.append(body)
    return b"".join(head)
