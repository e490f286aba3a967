"""A tiny TCP proxy for fault tests, run in the test's nursery on 127.0.0.1 in front of a real server.

It can *freeze* (stop forwarding, holding what it read, as a stalled server or network does; on `thaw`
the held bytes go on) and *cut* (close every connection and refuse new ones, as a killed server does;
`restore` listens again on the same port). `rewrite` edits each reply frame of a length-prefixed
protocol (Kafka: a 4-byte big-endian size, then the frame), keeping its length; the Kafka tests use it to
advertise the proxy instead of the broker, so that clients keep talking through the proxy.

Not a test module: the integration tests import it as `conftest_redis` is imported.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import trio

Rewrite = Callable[[bytes], bytes]
CHUNK = 65536


class TcpProxy:
    """Forwards connections made to `port` to `target`; see the module docstring."""

    def __init__(self, target_host: str, target_port: int, *, rewrite: Rewrite | None = None) -> None:
        self.target = (target_host, target_port)
        self.rewrite = rewrite
        self.port = 0
        self.connections = 0  # accepted so far
        self._flowing = {"requests": trio.Event(), "replies": trio.Event()}
        for event in self._flowing.values():
            event.set()
        self._up = trio.Event()
        self._listener: trio.SocketListener | None = None
        self._scopes: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (start it with `nursery.start`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._listen()
            task_status.started()
            await trio.sleep_forever()

    # ------------------------------------------------------------------ faults
    def freeze(self, *, replies_only: bool = False) -> None:
        """Stop forwarding replies (server to client) and, unless `replies_only`, requests too."""
        self._flowing["replies"] = trio.Event()
        if not replies_only:
            self._flowing["requests"] = trio.Event()

    def thaw(self) -> None:
        """Forward again, starting with what was held."""
        for event in self._flowing.values():
            event.set()

    async def cut(self) -> None:
        """Close every connection at once and refuse new ones (connection refused) until `restore`."""
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
        for scope in list(self._scopes):
            scope.cancel()
        await trio.lowlevel.checkpoint()

    async def restore(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            await self._listen()

    # ------------------------------------------------------------------ forwarding
    async def _listen(self) -> None:
        assert self._nursery is not None
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = trio.SocketListener(sock)
        self._nursery.start_soon(self._accept_loop, self._listener)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        assert self._nursery is not None
        while True:
            try:
                client = await listener.accept()
            except (trio.ClosedResourceError, OSError):
                return  # cut
            self.connections += 1
            self._nursery.start_soon(self._serve, client)

    async def _serve(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                await _abort(client)
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, "requests", None)
                    nursery.start_soon(self._pump, upstream, client, "replies", self.rewrite)
            finally:
                self._scopes.discard(scope)
                for stream in (client, upstream):
                    await _abort(stream)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, direction: str,
                    rewrite: Rewrite | None) -> None:
        frames = _Frames() if rewrite is not None else None
        try:
            while True:
                data = await source.receive_some(CHUNK)
                await self._flowing[direction].wait()
                if not data:
                    await sink.send_eof()  # a half-close: what was sent before it still arrives
                    return
                if frames is not None and rewrite is not None:
                    data = b"".join(rewrite(frame) for frame in frames.feed(data))
                if data:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        # the other direction may still be carrying a reply: it ends on its own


class _Frames:
    """Splits a byte stream into whole length-prefixed frames (4-byte big-endian size included)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (size,) = struct.unpack(">i", self._buffer[:4])
            if len(self._buffer) < 4 + size:
                break
            frames.append(bytes(self._buffer[: 4 + size]))
            del self._buffer[: 4 + size]
        return frames


async def _abort(stream: trio.SocketStream) -> None:
    """Close at once with a reset (no lingering), as a dying server's kernel would."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    await trio.aclose_forcefully(stream)


def advertise(broker: str, proxy: str) -> Rewrite:
    """A `rewrite` for Kafka replies: every `host` + int32 `port` of `broker` (metadata, coordinators)
    becomes the proxy's port (same host, so the frame keeps its length)."""
    host, port = broker.rsplit(":", 1)
    proxy_host, proxy_port = proxy.rsplit(":", 1)
    assert host == proxy_host, "the proxy must listen on the broker's host"
    old = host.encode() + struct.pack(">i", int(port))
    new = host.encode() + struct.pack(">i", int(proxy_port))

    def rewrite(frame: bytes) -> bytes:
        return frame.replace(old, new)

    return rewrite
