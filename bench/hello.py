"""Hello-world baselines of TicketBlitz's own stack, one per door (see ARCHITECTURE.md, "Two doors, one
process"): both answer `POST /hello` (and GET) with `{"hello": "world"}` on 127.0.0.1.

- `quart`: a Quart-Trio app served by `hypercorn.trio.serve` — what every non-intake route goes through.
- `door` (also `intake-door`): `ticketblitz.door.IntakeDoor` itself — Trio, the sans-IO core
  `ticketblitz.http` (every limit and smuggling check), deadlines, orjson, keep-alive and pipelining, its
  socket fast path — with `/hello` added to its intake routes and a stand-in for the booking service (its
  settings and telemetry). (Until 2026-12-01 `door` was a copy of the door's loop in this file; it is the
  real door now, so the baseline cannot drift from what serves the routes.)
- `httptools`: a bare Trio accept loop with the httptools C parser and orjson and none of those checks
  (the door before it had its own HTTP core): the ceiling the door is measured against.

    python bench/hello.py quart --port 18001
    python bench/hello.py door --port 18002
    python bench/hello.py httptools --port 18003
    python bench/hello.py intake-door --port 18004

It prints "listening on http://127.0.0.1:PORT" once ready and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from functools import partial

import httptools
import orjson
import trio

HOST = "127.0.0.1"
HELLO = orjson.dumps({"hello": "world"})
READ_SIZE = 65536


# ====================================================================== mode "httptools"


class _Request:
    """httptools callbacks: collects complete requests (method, url, keep-alive) of one connection."""

    __slots__ = ("complete", "parser", "url")

    def __init__(self) -> None:
        self.url = b""
        self.complete: list[tuple[bytes, bytes, bool]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete.append((self.parser.get_method(), self.url, self.parser.should_keep_alive()))
        self.url = b""


def _answer(method: bytes, url: bytes, keep_alive: bool) -> bytes:
    if url.split(b"?", 1)[0] == b"/hello" and method in (b"GET", b"POST"):
        status, body = b"200 OK", HELLO
    else:
        status, body = b"404 Not Found", b'{"code":"not_found"}'
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (status, len(body))
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


async def _door_connection(stream: trio.SocketStream) -> None:
    request = _Request()
    async with stream:
        try:
            while data := await stream.receive_some(READ_SIZE):
                try:
                    request.parser.feed_data(data)
                except httptools.HttpParserError:
                    await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                if request.complete:
                    answers = [_answer(*r) for r in request.complete]
                    keep_alive = request.complete[-1][2]
                    request.complete.clear()
                    await stream.send_all(b"".join(answers))
                    if not keep_alive:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass


async def _serve(handler: object, port: int, stop: trio.Event) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((HOST, port))
    sock.listen(4096)
    listener = trio.SocketListener(sock)
    print(f"listening on http://{HOST}:{port}", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, [listener]))  # type: ignore[arg-type]
        await stop.wait()
        nursery.cancel_scope.cancel()


async def serve_httptools(port: int, stop: trio.Event) -> None:
    await _serve(_door_connection, port, stop)


# ====================================================================== mode "intake-door"


async def serve_intake_door(port: int, stop: trio.Event) -> None:
    import time
    from types import SimpleNamespace

    from ticketblitz import intake
    from ticketblitz.config import Settings
    from ticketblitz.door import IntakeDoor
    from ticketblitz.telemetry import Telemetry

    async def hello(service: object, call: intake.Call) -> intake.Answer:
        return intake.Answer(200, {"hello": "world"})

    intake.COMPAT_ROUTES["/hello"] = hello  # type: ignore[assignment]
    service = SimpleNamespace(settings=Settings(), telemetry=Telemetry(time.time))
    door = IntakeDoor(service, "/nonexistent/app.sock")  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(4096)
    sock.setblocking(False)
    async with trio.open_nursery() as nursery:
        await nursery.start(door.serve, sock)
        print(f"listening on http://{HOST}:{port}", flush=True)
        await stop.wait()
        door.close()


# ====================================================================== mode "quart"


def quart_app() -> object:
    from quart_trio import QuartTrio

    app = QuartTrio("hello")

    @app.route("/hello", methods=["GET", "POST"])
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


async def serve_quart(port: int, stop: trio.Event) -> None:
    import hypercorn.trio
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.backlog = 4096
    config.accesslog = None
    config.graceful_timeout = 2
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn.trio.serve, quart_app(), config, shutdown_trigger=stop.wait))
        print(f"listening on http://{HOST}:{port}", flush=True)


# ====================================================================== command line


async def main_async(mode: str, port: int) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        nursery.start_soon(watch_signals)
        serve = {"door": serve_intake_door, "httptools": serve_httptools, "quart": serve_quart,
                 "intake-door": serve_intake_door}[mode]
        await serve(port, stop)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hello.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("quart", "door", "httptools", "intake-door"),
                        help="which door to serve the hello world on")
    parser.add_argument("--port", type=int, required=True, help=f"port on {HOST}")
    args = parser.parse_args(argv)
    trio.run(main_async, args.mode, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
