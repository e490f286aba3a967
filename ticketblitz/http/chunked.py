"""The chunked transfer coding (RFC 9112 §7.1), decoded from a buffer as it arrives.

One decoder serves both directions: requests from clients (strict, with the body limit checked on
each chunk-size line before its data arrives) and Hypercorn's responses, which the door relays as
they are and only needs to find the end of."""

from __future__ import annotations

import re

from .fields import FIELD_LINES_RE, Refusal

MAX_SIZE_LINE = 4096  # chunk-size line with its extensions

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_SIZE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)

# what `ChunkedDecoder.step` answers when it has no data to hand out
NEED = "need"
DONE = "done"

_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedDecoder:
    """State of one chunked body. `step(buf)` consumes from the front of `buf` and answers the decoded
    bytes of one chunk (or part of one), NEED (more bytes needed), DONE (the last chunk and the trailer
    section were read: the message is complete) or a Refusal."""

    __slots__ = ("_left", "_max_body", "_max_fields", "_max_trailer", "_state", "total")

    def __init__(self, max_body: int, max_trailer_bytes: int, max_trailer_fields: int) -> None:
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk still to come
        self._max_body = max_body
        self._max_trailer = max_trailer_bytes
        self._max_fields = max_trailer_fields
        self.total = 0  # decoded body bytes so far

    def step(self, buf: bytearray) -> bytes | str | Refusal:
        while True:
            state = self._state
            if state == _DATA:
                if not buf:
                    return NEED
                n = min(self._left, len(buf))
                data = bytes(buf[:n])
                del buf[:n]
                self._left -= n
                if not self._left:
                    self._state = _DATA_END
                return data
            if state == _SIZE:
                end = buf.find(b"\r\n", 0, MAX_SIZE_LINE + 2)
                if end < 0:
                    if len(buf) > MAX_SIZE_LINE or b"\n" in buf:
                        return Refusal(400, "chunked body: a malformed chunk-size line")
                    return NEED
                match = CHUNK_SIZE_RE.fullmatch(buf, 0, end)
                if match is None:
                    return Refusal(400, "chunked body: a malformed chunk-size line")
                size = int(match.group(1), 16)
                del buf[: end + 2]
                if self.total + size > self._max_body:
                    return Refusal(413, f"body: larger than the limit of {self._max_body} bytes")
                self.total += size
                if size:
                    self._state, self._left = _DATA, size
                else:
                    self._state = _TRAILER
                continue
            if state == _DATA_END:
                if len(buf) < 2:
                    if buf and buf[0] != 13:
                        return Refusal(400, "chunked body: chunk data not followed by CRLF")
                    return NEED
                if buf[0] != 13 or buf[1] != 10:
                    return Refusal(400, "chunked body: chunk data not followed by CRLF")
                del buf[:2]
                self._state = _SIZE
                continue
            return self._trailer(buf)

    def _trailer(self, buf: bytearray) -> str | Refusal:
        """The trailer section: checked like header fields, then dropped (nothing here reads trailers)."""
        if buf[:2] == b"\r\n":
            del buf[:2]
            return DONE
        end = buf.find(b"\r\n\r\n", 0, self._max_trailer + 4)
        if end < 0:
            if len(buf) > self._max_trailer:
                return Refusal(431, f"chunked body: trailer section larger than {self._max_trailer} bytes")
            if len(buf) >= 2 and buf[0] == 13 and buf[1] != 10:
                return Refusal(400, "chunked body: a malformed trailer section")
            return NEED
        section = bytes(buf[: end + 2])
        if section.count(b"\n") > self._max_fields:
            return Refusal(431, f"chunked body: more than {self._max_fields} trailer fields")
        if len(FIELD_LINES_RE.findall(section.decode("latin-1"))) != section.count(b"\n"):
            return Refusal(400, "chunked body: a malformed trailer field")
        del buf[: end + 4]
        return DONE
