"""Drives `ticketblitz.http.core.ServerConnection` over in-memory bytes, as the door does, and flattens
its events so that the same input cut into any pieces gives the same list (shared by the core's unit
tests and its fuzz tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h11

from ticketblitz.http import CLOSED, END, NEED_DATA, Data, Limits, Refusal, Request, ServerConnection

# what the core may answer a refusal with (408 is the door's)
REFUSAL_STATUSES = {400, 405, 413, 414, 431, 505}


def flatten(events: Iterable[Any]) -> list[Any]:
    """Request heads as tuples, a body as one ("body", bytes) then "end", refusals as ("refused", status)."""
    out: list[Any] = []
    body = bytearray()
    for event in events:
        if isinstance(event, Request):
            out.append(("request", event.method, event.target, event.path, event.query, event.version,
                        event.keep_alive, tuple(sorted(event.headers.items()))))
            if event.body is not None:
                out += [("body", event.body), "end"]
        elif isinstance(event, Data):
            body += event.data
        elif event is END:
            out += [("body", bytes(body)), "end"]
            body.clear()
        elif isinstance(event, Refusal):
            out.append(("refused", event.status))
        elif event is CLOSED:
            out.append("closed")
    return out


def drive(pieces: Iterable[bytes], limits: Limits | None = None, *, eof: bool = True,
          raw: bool = False) -> list[Any]:
    """Feed the pieces one by one (then end of input), collecting events until CLOSED or a Refusal.
    The core must never raise, and must never ask for data it already has."""
    conn = ServerConnection(limits)
    events: list[Any] = []
    for piece in [*pieces, *([b""] if eof else [])]:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if event is CLOSED or isinstance(event, Refusal):
                again = conn.next_event()  # a finished connection stays finished
                assert again is event or (isinstance(event, Refusal) and again == event), (event, again)
                return events if raw else flatten(events)
    return events if raw else flatten(events)


def splits(data: bytes) -> Iterable[list[bytes]]:
    """The input whole, cut in two at every byte boundary, and byte by byte."""
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


def h11_response(answer: bytes, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    """Parse an answer with h11 as a client would (h11 is an independent judge of well-formedness)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(answer)
    client.receive_data(b"")
    status, headers, body = 0, {}, bytearray()
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.NEED_DATA:
            break
    assert status, "no response"
    return status, headers, bytes(body)
