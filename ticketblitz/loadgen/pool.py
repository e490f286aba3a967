"""A bounded pool of keep-alive connections to 127.0.0.1, shared by many cheap fans.

A fan borrows a connection for ONE request and gives it back; at most `size` connections exist, and a
fan that finds none free waits its turn: first come first served within a priority (0 first: a fan's
booking, its decision, its confirm; then 1: reads of fans whose turn may have come; then 2: new joins and
background reads). Real fans each have their own connection, so a fan whose turn came must not queue
behind thousands of strangers' joins in the driver. A request that fails or is cancelled closes its
connection (its state is unknown); the next borrower opens a fresh one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

from .client import HttpResponse, KeepAliveConnection


@dataclass(slots=True)
class Answer:
    response: HttpResponse
    sent_at: float  # trio clock just before the request was written (a connect, if any, included after)
    answered_at: float

    @property
    def seconds(self) -> float:
        return self.answered_at - self.sent_at


class _Waiter:
    __slots__ = ("event", "gone")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.gone = False  # cancelled while waiting: skipped by release (no O(n) removal)


PRIORITIES = 3


class Gate:
    """`size` tokens; waiters served by priority (0 first), then in arrival order."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._queues: tuple[deque[_Waiter], ...] = tuple(deque() for _ in range(PRIORITIES))
        self.waiting = 0

    async def acquire(self, priority: int) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.free > 0 and not self.waiting:
            self.free -= 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter()
        self._queues[priority].append(waiter)
        self.waiting += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.event.is_set():
                self.release()  # handed a token just as it was cancelled: pass it on
            else:
                waiter.gone = True
                self.waiting -= 1
            raise

    def release(self) -> None:
        for queue in self._queues:
            while queue:
                waiter = queue.popleft()
                if waiter.gone:
                    continue
                self.waiting -= 1
                waiter.event.set()
                return
        self.free += 1


class ConnectionPool:
    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self._gate = Gate(size)
        self._idle: list[KeepAliveConnection] = []
        self.opened = 0  # connection objects made (a discarded one is replaced by a new one)
        self.discarded = 0
        self.requests = 0

    @property
    def waiting(self) -> int:
        """Fans waiting for a free connection right now."""
        return self._gate.waiting

    async def request(self, raw: bytes, seconds: float, on_sent: list[float] | None = None,
                      priority: int = PRIORITIES - 1) -> Answer:
        """Send `raw` on a pooled connection and read the whole answer within `seconds`
        (trio.TooSlowError after it). `on_sent`, when given, gets the send time appended before the
        answer arrives (so a caller that is cancelled still knows when it sent)."""
        await self._gate.acquire(priority)
        try:
            conn = self._idle.pop() if self._idle else self._new()
            ok = False
            try:
                sent_at = trio.current_time()
                if on_sent is not None:
                    on_sent.append(sent_at)
                self.requests += 1
                with trio.fail_after(seconds):
                    response = await conn.request(raw)
                ok = True
                return Answer(response, sent_at, trio.current_time())
            finally:
                if ok:
                    self._idle.append(conn)
                else:
                    self.discarded += 1
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
        finally:
            self._gate.release()

    def _new(self) -> KeepAliveConnection:
        self.opened += 1
        return KeepAliveConnection(self.port)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
