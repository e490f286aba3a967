"""A bounded pool of keep-alive connections to 127.0.0.1, shared by many cheap fans.

A fan borrows a connection for ONE request and gives it back; at most `size` connections exist, and a
fan that finds none free waits its turn (trio.CapacityLimiter is first come first served). A request
that fails or is cancelled closes its connection (its state is unknown); the next borrower opens a fresh
one.
"""

from __future__ import annotations

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


class ConnectionPool:
    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[KeepAliveConnection] = []
        self.opened = 0  # connections made (reconnects included)
        self.discarded = 0
        self.requests = 0

    @property
    def waiting(self) -> int:
        """Fans waiting for a free connection right now."""
        return self._limiter.statistics().tasks_waiting

    async def request(self, raw: bytes, seconds: float, on_sent: list[float] | None = None) -> Answer:
        """Send `raw` on a pooled connection and read the whole answer within `seconds`
        (trio.TooSlowError after it). `on_sent`, when given, gets the send time appended before the
        answer arrives (so a caller that is cancelled still knows when it sent)."""
        async with self._limiter:
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

    def _new(self) -> KeepAliveConnection:
        self.opened += 1
        return KeepAliveConnection(self.port)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
