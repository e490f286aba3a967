"""A TCP proxy on 127.0.0.1 that can stall: while frozen it forwards nothing in the chosen direction(s),
keeping every connection open and every byte (they flow on, in order, when the freeze ends).

Put between the servers and Redis, `freeze 3 replies` is "Redis answers nothing for 3 s": commands still
reach Redis and run, their replies come late (after the client's socket timeout, usually), which is the
"a script ran but its reply was lost" case. `freeze 3 both` holds the commands too.

Run as its own process (the chaos suite does), so that the client's load never delays the proxy:

    python tests/chaos/stall_proxy.py --listen-port 0 --upstream-port 6379 --port-file proxy.port

It writes "<listen port> <control port>" to --port-file once listening. The control port takes one
line per connection and answers one line: `freeze SECONDS [replies|requests|both]` -> `ok frozen until
<monotonic>`, `thaw` -> `ok`, `status` -> `ok connections=N frozen=0|1 forwarded_up=B forwarded_down=B`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field

import trio

HOST = "127.0.0.1"
CHUNK = 65536
MAX_FREEZE = 60.0  # bounded: a typo must not stall Redis for an hour


@dataclass
class Gate:
    """When each direction may flow again (trio.current_time() clock); `changed` wakes the pumps."""

    until: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})
    changed: trio.Event = field(default_factory=trio.Event)
    connections: int = 0
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def freeze(self, seconds: float, directions: tuple[str, ...]) -> float:
        until = trio.current_time() + seconds
        for d in directions:
            self.until[d] = max(self.until[d], until)
        self._wake()
        return until

    def thaw(self) -> None:
        self.until = {"up": 0.0, "down": 0.0}
        self._wake()

    def frozen(self) -> bool:
        now = trio.current_time()
        return any(t > now for t in self.until.values())

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_open(self, direction: str) -> None:
        while True:
            until = self.until[direction]
            if until <= trio.current_time():
                return
            changed = self.changed
            with trio.move_on_at(until):
                await changed.wait()


async def pump(source: trio.SocketStream, sink: trio.SocketStream, gate: Gate, direction: str) -> None:
    """Copy bytes; while the gate is closed for this direction, read nothing more and send nothing."""
    try:
        while True:
            await gate.wait_open(direction)
            data = await source.receive_some(CHUNK)
            if not data:
                break
            # bytes read just before a freeze began are held too: that is what a stalled peer looks like
            await gate.wait_open(direction)
            await sink.send_all(data)
            gate.forwarded[direction] += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def handle(client: trio.SocketStream, upstream_port: int, gate: Gate) -> None:
    gate.connections += 1
    try:
        try:
            upstream = await trio.open_tcp_stream(HOST, upstream_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def one_way(src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
                await pump(src, dst, gate, direction)
                nursery.cancel_scope.cancel()  # one side closed: close both (as a dead peer would)

            nursery.start_soon(one_way, client, upstream, "up")
            nursery.start_soon(one_way, upstream, client, "down")
    finally:
        gate.connections -= 1


async def control(stream: trio.SocketStream, gate: Gate) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(5):
            while b"\n" not in buf and len(buf) < 256:
                data = await stream.receive_some(256)
                if not data:
                    break
                buf += data
        words = buf.decode("ascii", "replace").split()
        answer = "error unknown command"
        if words[:1] == ["freeze"] and len(words) in (2, 3):
            try:
                seconds = float(words[1])
            except ValueError:
                seconds = math.nan
            mode = words[2] if len(words) == 3 else "replies"
            directions = {"replies": ("down",), "requests": ("up",), "both": ("up", "down")}.get(mode)
            if not (0 < seconds <= MAX_FREEZE) or directions is None:
                answer = f"error freeze SECONDS (0..{MAX_FREEZE:g}] [replies|requests|both]"
            else:
                answer = f"ok frozen until {gate.freeze(seconds, directions):.3f}"
        elif words == ["thaw"]:
            gate.thaw()
            answer = "ok"
        elif words == ["status"]:
            answer = (f"ok connections={gate.connections} frozen={int(gate.frozen())} "
                      f"forwarded_up={gate.forwarded['up']} forwarded_down={gate.forwarded['down']}")
        try:
            await stream.send_all(answer.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def main(listen_port: int, upstream_port: int, control_port: int, port_file: str | None) -> None:
    gate = Gate()
    listeners = await trio.open_tcp_listeners(listen_port, host=HOST)
    controls = await trio.open_tcp_listeners(control_port, host=HOST)
    ports = (listeners[0].socket.getsockname()[1], controls[0].socket.getsockname()[1])
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{ports[0]} {ports[1]}\n")
        os.replace(tmp, port_file)
    print(f"stall proxy: 127.0.0.1:{ports[0]} -> 127.0.0.1:{upstream_port}, control 127.0.0.1:{ports[1]}",
          flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: handle(s, upstream_port, gate), listeners)
        nursery.start_soon(trio.serve_listeners, lambda s: control(s, gate), controls)


async def command(control_port: int, line: str) -> str:
    """Send one control line, return the answer line (used by the chaos suite)."""
    stream = await trio.open_tcp_stream(HOST, control_port)
    async with stream:
        await stream.send_all(line.encode() + b"\n")
        buf = b""
        with trio.fail_after(5):
            while not buf.endswith(b"\n"):
                data = await stream.receive_some(256)
                if not data:
                    break
                buf += data
    return buf.decode().strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--port-file")
    args = parser.parse_args()
    try:
        trio.run(main, args.listen_port, args.upstream_port, args.control_port, args.port_file)
    except KeyboardInterrupt:
        sys.exit(0)
