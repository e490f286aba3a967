"""What relaying a request to Hypercorn needs, apart from I/O.

Why this cannot be smuggled: the door never forwards the client's bytes. Every request of a relayed
connection is parsed and checked by `core.ServerConnection` first (so it met every limit), and what
Hypercorn receives is `upstream_request(...)`: a head written anew — origin-form target, one Host, no
Content-Length/Transfer-Encoding/Connection/Expect/Upgrade of the client's — and the decoded body with
one `content-length`. Hypercorn (h11) therefore sees exactly the messages the door saw, one at a time
(the door waits for each answer before it sends the next request); there is no second reading of the
client's framing that could disagree with the door's. `ResponseFraming` finds where Hypercorn's answer
ends, so that the door knows when the next pipelined request may go (to Hypercorn or to its own
routes) and whether the connection stays open. Only after Hypercorn answered `101 Switching Protocols`
to a websocket handshake do bytes pass through unparsed, both ways: that connection speaks websocket
from then on, and HTTP framing no longer applies.
"""

from __future__ import annotations

import re

from .chunked import DONE, NEED, ChunkedDecoder
from .core import Request
from .fields import Refusal

# request fields the door does not pass on: framing and connection management are its own (RFC 9110
# §7.6.1 hop-by-hop fields), Expect is answered by the door, Host is written from the target
_NOT_RELAYED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade",
    "expect", "te", "trailer", "http2-settings",
})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def upstream_request(request: Request, body: bytes) -> bytes:
    """The request as the door sends it to Hypercorn: a canonical head, then the decoded body."""
    named: frozenset[str] | set[str] = _NOT_RELAYED
    connection = request.headers.get("connection")
    if connection is not None:  # fields named by Connection are hop-by-hop too
        named = _NOT_RELAYED | {t.strip().lower() for t in connection.split(",")}
    target = request.raw_path + ("?" + request.query if request.query else "")
    head = [f"{request.method} {target} HTTP/{request.version}\r\n"]
    if request.authority or request.version == "1.1":
        head.append(f"host: {request.authority}\r\n")
    for name, value in request.fields:
        lowered = name.lower()
        if lowered not in named:
            head.append(f"{lowered}: {value}\r\n")
    if request.upgrade == "websocket":
        head.append(f"connection: upgrade\r\nupgrade: {request.headers['upgrade']}\r\n")
    elif not request.keep_alive:
        head.append("connection: close\r\n")
    if body or request.method in _BODY_METHODS:
        head.append(f"content-length: {len(body)}\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


_STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})[^\r\n]*")
MAX_RESPONSE_HEAD = 256 * 1024

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _COMPLETE, _SWITCHED = range(6)


class ResponseFraming:
    """Follows one of Hypercorn's answers through its bytes, which the door forwards as they come.

    `feed(data)` (b"" when Hypercorn closed) answers how many of `data`'s bytes belong to this answer;
    the rest (only possible after 101) belongs to the new protocol. Then `complete` says the answer is
    whole, `switched` that it was a 101 (pipe from now on), `keep_alive` whether the connection may carry
    another request, `error` that Hypercorn's bytes made no sense or ended early (close both sides)."""

    __slots__ = ("_buf", "_chunks", "_left", "_state", "error", "forwarded", "head_only", "keep_alive", "status")

    def __init__(self, method: str) -> None:
        self.head_only = method == "HEAD"  # a HEAD answer has no body, whatever its Content-Length
        self._state = _HEAD
        self._buf = bytearray()
        self._left = 0
        self._chunks: ChunkedDecoder | None = None
        self.status = 0
        self.keep_alive = True
        self.error: str | None = None
        self.forwarded = 0  # bytes of this answer seen so far

    @property
    def complete(self) -> bool:
        return self._state in (_COMPLETE, _SWITCHED) or self.error is not None

    @property
    def switched(self) -> bool:
        return self._state == _SWITCHED

    def feed(self, data: bytes) -> int:
        if not data:
            self._eof()
            return 0
        taken = 0
        while taken < len(data) and not self.complete:
            taken += self._take(data, taken)
        self.forwarded += taken
        return taken

    def _eof(self) -> None:
        if self._state == _UNTIL_CLOSE:
            self._state = _COMPLETE
        elif not self.complete:
            self.error = "the application server closed the connection inside an answer"
        self.keep_alive = False

    def _take(self, data: bytes, start: int) -> int:
        state = self._state
        if state == _LENGTH:
            n = min(self._left, len(data) - start)
            self._left -= n
            if not self._left:
                self._state = _COMPLETE
            return n
        if state == _UNTIL_CLOSE:
            return len(data) - start
        if state == _CHUNKED:
            return self._take_chunked(data, start)
        return self._take_head(data, start)

    def _take_head(self, data: bytes, start: int) -> int:
        before = len(self._buf)
        self._buf += data[start:]
        end = self._buf.find(b"\r\n\r\n", max(before - 3, 0))
        if end < 0:
            if len(self._buf) > MAX_RESPONSE_HEAD:
                self.error = "the application server's answer head is too large"
            return len(data) - start
        head = bytes(self._buf[:end])
        self._buf.clear()
        used = end + 4 - before  # bytes of `data` up to the end of the head
        self._start_body(head)
        return used

    def _start_body(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        match = _STATUS_LINE_RE.fullmatch(lines[0])
        if match is None:
            self.error = "the application server's answer has no HTTP/1.x status line"
            return
        self.status = status = int(match.group(2))
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            fields[name] = fields[name] + b", " + value.strip() if name in fields else value.strip()
        if status == 101:
            self._state = _SWITCHED
            return
        if status < 200:  # an interim answer: the final one follows
            self._state = _HEAD
            return
        tokens = {t.strip() for t in fields.get(b"connection", b"").lower().split(b",")}
        if match.group(1) == b"0" or b"close" in tokens:
            self.keep_alive = False
        if self.head_only or status in (204, 304):
            self._state = _COMPLETE
        elif b"transfer-encoding" in fields:
            if fields[b"transfer-encoding"].strip().lower() != b"chunked":
                self._state = _UNTIL_CLOSE
                self.keep_alive = False
            else:
                self._state = _CHUNKED
                self._chunks = ChunkedDecoder(1 << 62, MAX_RESPONSE_HEAD, 10_000)
        elif b"content-length" in fields and fields[b"content-length"].isdigit():
            self._left = int(fields[b"content-length"])
            self._state = _LENGTH if self._left else _COMPLETE
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False

    def _take_chunked(self, data: bytes, start: int) -> int:
        assert self._chunks is not None
        before = len(self._buf)
        self._buf += data[start:]
        while True:
            result = self._chunks.step(self._buf)
            if result is NEED:
                return len(data) - start  # all of it is in the decoder's hands now
            if result is DONE:
                used = len(data) - start - len(self._buf)  # the rest is not part of this answer
                self._buf.clear()
                self._state = _COMPLETE
                return used
            if isinstance(result, Refusal):
                self.error = f"the application server's chunked answer is malformed: {result.detail}"
                return len(data) - start
            del before  # (data: decoded and dropped; the raw bytes are what is forwarded)
            before = 0
