"""A minimal HTTP/1.1 client on raw trio sockets, for 127.0.0.1 only.

httptools' parser when installed (a few microseconds per response), else a pure-Python fallback that
needs Content-Length (which this server always sends). Plain `trio.socket`: no name resolution and no
happy eyeballs, so that ten thousand connections cost the driver little and the server is what gets
measured.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import orjson
import trio

try:
    import httptools
except ImportError:  # the driver still works, with the slower pure-Python parser below
    httptools = None  # type: ignore[assignment]

ALLOWED_HOST = "127.0.0.1"
# The names a --url may give for this machine; the driver always connects to 127.0.0.1 itself.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost"})


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response, or the connection ended before one was complete."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    keep_alive: bool

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class _HttptoolsParser:
    """Response parser on httptools (the C parser uvicorn uses): a few microseconds per response."""

    __slots__ = ("_body", "_keep_alive", "_parser", "complete")

    def __init__(self) -> None:
        self._body = bytearray()
        self.complete = False
        self._keep_alive = False
        self._parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.complete = True
        # read here: once feed_data has returned, llhttp has reset and should_keep_alive() says False
        # (httptools 0.9), which made every "keep-alive" connection reconnect for each request
        self._keep_alive = self._parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"bad response: {exc}") from exc

    def response(self) -> HttpResponse:
        return HttpResponse(self._parser.get_status_code(), bytes(self._body), self._keep_alive)


class _SimpleParser:
    """Fallback without httptools: status line and headers, then exactly Content-Length body bytes.
    Enough for this server, which always sends Content-Length."""

    __slots__ = ("_buffer", "_keep_alive", "_length", "_status", "complete")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None  # body length, known once the headers are in
        self._status = 0
        self._keep_alive = True
        self.complete = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if self._length is None:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            self._parse_head(bytes(self._buffer[:head_end]).decode("latin-1"))
            del self._buffer[: head_end + 4]
        self.complete = len(self._buffer) >= (self._length or 0)

    def _parse_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line!r}")
        self._status = int(parts[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        if "content-length" not in headers:
            raise ProtocolError("response without Content-Length (the fallback parser needs it)")
        self._length = int(headers["content-length"])
        self._keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"

    def response(self) -> HttpResponse:
        return HttpResponse(self._status, bytes(self._buffer[: self._length or 0]), self._keep_alive)


ResponseParser = _HttptoolsParser if httptools is not None else _SimpleParser


def build_request(method: str, path: str, port: int, body: Any = None, *, token: str | None = None,
                  keep_alive: bool = True) -> bytes:
    """The request's bytes, written once up front so that sending costs one syscall and no formatting."""
    payload = orjson.dumps(body) if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {ALLOWED_HOST}:{port}", "Accept: application/json",
             f"Content-Length: {len(payload)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


async def connect(port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port. Plain trio.socket: no name resolution, no happy eyeballs,
    so ten thousand of these cost little."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((ALLOWED_HOST, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def read_response(stream: trio.SocketStream) -> HttpResponse:
    """Read one whole response (status, headers, body) from the stream."""
    parser = ResponseParser()
    while not parser.complete:
        data = await stream.receive_some(65536)
        if not data:
            raise ProtocolError("connection closed before a complete response")
        parser.feed(data)
    return parser.response()


class KeepAliveConnection:
    """One persistent connection for sequential requests (setup, verification, long polls). It
    reconnects when the server has closed it, and retries once when a reused connection turns out stale."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stream: trio.SocketStream | None = None

    async def request(self, raw: bytes) -> HttpResponse:
        for attempt in (1, 2):
            reused = self._stream is not None
            if self._stream is None:
                self._stream = await connect(self._port)
            try:
                await self._stream.send_all(raw)
                response = await read_response(self._stream)
            except (trio.BrokenResourceError, ProtocolError):
                await self.aclose()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection: retry fresh
                    continue
                raise
            if not response.keep_alive:
                await self.aclose()
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


def socket_error_kind(phase: str, exc: BaseException) -> str:
    """A short, countable name for a socket failure: connect_refused, receive_reset, send_EPIPE, ..."""
    if isinstance(exc, ProtocolError):
        return f"{phase}_closed_early" if "closed" in str(exc) else "bad_response"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return f"{phase}_refused"
    if isinstance(cause, ConnectionResetError):
        return f"{phase}_reset"
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"{phase}_{errno.errorcode.get(cause.errno, cause.errno)}"
    return f"{phase}_{type(exc).__name__}"


@dataclass(slots=True)
class Target:
    """Where the server listens: a port on 127.0.0.1."""

    port: int


def loopback_url(url: str, flag: str = "--url") -> SplitResult:
    """The parts of an `http://` URL on this machine (127.0.0.1 or localhost); anything else is refused: a
    load generator that could be pointed at any host would be a denial-of-service tool, so this one only
    loads this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{flag} {url!r}: only http:// is supported")
    if parts.hostname not in LOOPBACK_NAMES:
        raise ValueError(f"{flag} {url!r}: refusing host {parts.hostname!r}; only {ALLOWED_HOST} "
                         "(or localhost) may be loaded")
    return parts


def url_port(parts: SplitResult, url: str, flag: str = "--url") -> int:
    """The TCP port of a URL's parts (80 when it names none)."""
    try:
        return parts.port or 80
    except ValueError:
        raise ValueError(f"{flag} {url!r}: the port is not a TCP port") from None


def parse_target(url: str, flag: str = "--url") -> Target:
    """`http://127.0.0.1:PORT` (or `http://localhost:PORT`), nothing more (see `loopback_url`)."""
    parts = loopback_url(url, flag)
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"{flag} {url!r}: give only scheme, host and port")
    return Target(url_port(parts, url, flag))


async def fetch_json(conn: KeepAliveConnection, port: int, path: str, token: str | None = None) -> Any:
    """GET path; the decoded body of a 200 (RuntimeError for any other answer)."""
    response = await conn.request(build_request("GET", path, port, token=token))
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {response.body[:300]!r}")
    return response.json()
