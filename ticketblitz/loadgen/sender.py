"""A paced burst of pre-encoded HTTP/1.1 requests from its own OS process: the first request of every fan
of a `waiting_room` sale run with `SaleOptions.burst` (the join, or without a waiting room the booking).

    python -m ticketblitz.loadgen.sender PLAN        (PLAN: a pickle written by `write_plan`)

The plan is the port, the number of keep-alive connections, an answer timeout and, in send order, per
request (fan index, offset in seconds from the start, its bytes). This process opens every connection
first (plain blocking sockets, then non-blocking), picks the start `LEAD` s later and, in one epoll loop
without any event-loop library, writes each request when its offset comes: the k-th request in send order
on connection k mod C, pipelined behind the earlier ones of that connection (the server answers a
connection's requests in order, HTTP/1.1 pipelining), all due requests of one connection in one send().
It reads the answers in the same loop (httptools) and records per request:

- `sent`: `time.perf_counter()` just BEFORE the send() that wrote the request's last byte (a request that
  did not fit the socket buffer is sent when its last byte is; nothing is back-dated to its schedule);
- `answered`: just after the recv() that completed its answer.

`perf_counter` is CLOCK_MONOTONIC on Linux, one clock for every process of the machine, so the parent
maps it onto trio's clock. Output on stdout, one JSON array per line: first `["start", start]`, then per
answer `[fan, sent, answered, status, body]` (status 0 and body = an error name when the connection broke
or the timeout passed), last `["done", stats]`. Bounded: every request gets `timeout` s after the start of
the burst's last request, and the whole process exits at the latest `timeout` + the schedule + 30 s.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import orjson

from .report import raise_fd_limit

HOST = "127.0.0.1"
LEAD = 0.5  # seconds between the last connection made and the first request sent
F_SETPIPE_SZ = 1031  # fcntl (Linux): a larger stdout pipe, so that a busy parent does not block the sender
PIPE_BYTES = 1 << 20
READ_SIZE = 65536
CONNECT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    port: int
    connections: int
    timeout: float  # seconds for every answer after the last request's scheduled send
    requests: list[tuple[int, float, bytes]]  # (fan index, offset s, raw request), by offset


def write_plan(path: Path, plan: Plan) -> None:
    path.write_bytes(pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))


class _Conn:
    __slots__ = ("answers", "body", "broken", "inflight", "out", "out_fans", "parser", "sock", "writing")

    def __init__(self, sock: socket.socket, answers: list[Any]) -> None:
        self.sock = sock
        self.out = bytearray()  # bytes not yet written
        self.out_fans: deque[tuple[int, int]] = deque()  # (fan, bytes of `out` up to its request's end)
        self.inflight: deque[tuple[int, float]] = deque()  # (fan, sent) whose answers are due, in order
        self.body = bytearray()
        self.parser = httptools.HttpResponseParser(self)
        self.answers = answers  # shared output list
        self.writing = False
        self.broken = False

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        fan, sent = self.inflight.popleft()
        self.answers.append([fan, sent, _now[0], self.parser.get_status_code(), self.body.decode("utf-8", "replace")])
        self.body = bytearray()

    def queue(self, fan: int, raw: bytes) -> None:
        self.out += raw
        self.out_fans.append((fan, len(self.out)))

    def flush(self) -> bool:
        """Write what fits; True when everything queued is written."""
        if not self.out or self.broken:
            return True
        at = time.perf_counter()
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.fail(f"send_{errno.errorcode.get(exc.errno or 0, 'error')}")
            return True
        if n:
            del self.out[:n]
            while self.out_fans and self.out_fans[0][1] <= n:
                self.inflight.append((self.out_fans.popleft()[0], at))
            self.out_fans = deque((fan, end - n) for fan, end in self.out_fans)
        return not self.out

    def receive(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"receive_{errno.errorcode.get(exc.errno or 0, 'error')}")
            return
        _now[0] = time.perf_counter()
        if not data:
            self.fail("receive_closed_early")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("bad_response")

    def fail(self, kind: str) -> None:
        if self.broken:
            return
        self.broken = True
        for fan, sent in self.inflight:
            self.answers.append([fan, sent, None, 0, kind])
        for fan, _ in self.out_fans:
            self.answers.append([fan, None, None, 0, kind])
        self.inflight.clear()
        self.out_fans.clear()
        self.out.clear()

    @property
    def pending(self) -> int:
        return len(self.inflight) + len(self.out_fans)


_now = [0.0]  # the time of the recv whose bytes are being parsed (read by the parser callbacks)


class _Output:
    """Rows to stdout without ever blocking the loop: the fd is non-blocking, what the pipe does not take
    now waits in memory for the next try (a parent busy starting fans must not delay sends or receives)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.peak = 0  # the most bytes that ever waited
        os.set_blocking(fd, False)

    def emit(self, rows: list[Any]) -> None:
        if rows:
            self.pending += b"".join(orjson.dumps(r) + b"\n" for r in rows)
            rows.clear()
        self.peak = max(self.peak, len(self.pending))
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                return
            del self.pending[:n]

    def finish(self, rows: list[Any]) -> None:
        self.emit(rows)
        os.set_blocking(self.fd, True)
        while self.pending:
            del self.pending[:os.write(self.fd, self.pending)]


def run(plan: Plan) -> dict[str, Any]:
    fd = sys.stdout.fileno()
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # not a pipe, or a smaller limit: more waits in memory
    out = _Output(fd)
    raise_fd_limit(plan.connections + 16)  # a descriptor per connection, and the process's own
    answers: list[Any] = []
    cpu0 = time.process_time()
    connect_started = time.perf_counter()
    conns: list[_Conn] = []
    for _ in range(min(plan.connections, max(1, len(plan.requests)))):
        sock = socket.create_connection((HOST, plan.port), timeout=CONNECT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns.append(_Conn(sock, answers))
    connect_seconds = time.perf_counter() - connect_started
    selector = selectors.EpollSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    start = time.perf_counter() + LEAD
    answers.append(["start", start])
    out.emit(answers)
    requests = plan.requests
    total = len(requests)
    offsets = [start + offset for _, offset, _ in requests]
    last_due = offsets[-1] if offsets else start
    give_up = last_due + plan.timeout
    count = len(conns)
    i = 0
    done = 0
    sends = 0
    loops = 0
    late_max = 0.0
    while done < total:
        now = time.perf_counter()
        if now >= give_up:
            for conn in conns:
                conn.fail("timeout")
            answers += [[fan, None, None, 0, "not_sent"] for fan, _, _ in requests[i:]]
            i = total
            done += len(answers)
            out.emit(answers)
            break
        touched: dict[int, _Conn] = {}
        while i < total and offsets[i] <= now:
            conn = conns[i % count]
            fan, _, raw = requests[i]
            late_max = max(late_max, now - offsets[i])
            if conn.broken:
                answers.append([fan, None, None, 0, "connection_broken"])
            else:
                conn.queue(fan, raw)
                touched[id(conn)] = conn
            i += 1
        for conn in touched.values():
            sends += 1
            if not conn.flush() and not conn.writing:
                conn.writing = True
                selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        timeout = max(0.0, min(0.05, offsets[i] - time.perf_counter())) if i < total else 0.05
        loops += 1
        for key, mask in selector.select(timeout):
            conn = key.data
            if mask & selectors.EVENT_READ:
                conn.receive()
            if mask & selectors.EVENT_WRITE and conn.flush() and conn.writing:
                conn.writing = False
                if not conn.broken:
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
            if conn.broken:
                try:
                    selector.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
        done += len(answers)
        out.emit(answers)
    for conn in conns:
        conn.sock.close()
    stats = {"connections": count, "connect_seconds": round(connect_seconds, 3), "requests": total,
             "send_calls": sends, "loops": loops, "schedule_late_max_ms": round(late_max * 1000, 3),
             "stdout_peak_bytes": out.peak, "cpu_s": round(time.process_time() - cpu0, 3),
             "pid": os.getpid()}
    answers.append(["done", stats])
    out.finish(answers)
    return stats


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ticketblitz.loadgen.sender PLAN", file=sys.stderr)
        return 2
    plan = pickle.loads(Path(argv[0]).read_bytes())  # our own parent's file (trusted)
    run(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
