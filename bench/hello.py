"""Hello-world baselines of TicketBlitz's own stack, one per door (see ARCHITECTURE.md, "Two doors, one
process"): both answer `POST /hello` (and GET) with `{"hello": "world"}` on 127.0.0.1.

- `quart`: a Quart-Trio app served by `hypercorn.trio.serve` — what every non-intake route goes through.
- `door`: a bare Trio accept loop with the httptools C parser and orjson, keep-alive and pipelining —
  the approach of `ticketblitz/door.py`, without the booking service behind it.

    python bench/hello.py quart --port 18001
    python bench/hello.py door --port 18002

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


# ====================================================================== mode "door"


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


async def serve_door(port: int, stop: trio.Event) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((HOST, port))
    sock.listen(4096)
    listener = trio.SocketListener(sock)
    print(f"listening on http://{HOST}:{port}", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, _door_connection, [listener]))
        await stop.wait()
        nursery.cancel_scope.cancel()


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
        await (serve_door if mode == "door" else serve_quart)(port, stop)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hello.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("quart", "door"), help="which door to serve the hello world on")
    parser.add_argument("--port", type=int, required=True, help=f"port on {HOST}")
    args = parser.parse_args(argv)
    trio.run(main_async, args.mode, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
