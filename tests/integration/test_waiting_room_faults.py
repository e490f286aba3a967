"""The waiting room while its store stalls, against the real stores (no mocks): a whole server, its
admitter running, the line's store made to stop answering mid-sale.

- PostgreSQL (distributed) behind a TCP proxy that freezes (a stalled database or network);
- SQLite (embedded) while another connection holds the database's write lock (a stuck writer).

What a fan relies on: a join the store could not record is answered 503 problem+json within the
deadline (never a 5xx other than 503, never a hang) and records nothing, so that its retry after the
stall gets the next place with no gap; places already given are kept; the admitter's ticks fail while the
store stalls and the line moves again by itself afterwards, at its rate, not faster to make up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio
from conftest import ADMIN, FakeClock, make_settings, scratch_services, start_server
from tcp_proxy import TcpProxy

from ticketblitz.config import Settings
from ticketblitz.domain.errors import Unavailable
from ticketblitz.server import Running

STORE_TIMEOUT = 1.0
RATE = 2  # passes per second of the fake clock


@asynccontextmanager
async def server(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Running, FakeClock]]:
    async with trio.open_nursery() as nursery:
        running, clock = await start_server(settings, nursery)
        async with httpx.AsyncClient(base_url=running.url, timeout=30.0) as client:
            yield client, running, clock
        running.stop.set()


async def make_room(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/events", headers=ADMIN, json={
        "name": "Stalled night", "max_per_user": 1, "hold_seconds": 60,
        "sections": [{"name": "A", "rows": 1, "seats_per_row": 10}],
        "waiting_room": {"mode": "fifo", "admit_per_second": RATE, "pass_seconds": 60, "challenge_bits": 0}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def join(client: httpx.AsyncClient, event_id: str, user: str) -> httpx.Response:
    return await client.post(f"/api/events/{event_id}/queue", json={"user_id": user})


async def read(client: httpx.AsyncClient, joined: dict[str, Any], wait: float | None = None) -> dict[str, Any]:
    params = {"wait": wait} if wait is not None else None
    r = await client.get(f"/api/queue/{joined['id']}", params=params,
                         headers={"Authorization": f"Bearer {joined['secret']}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def stalled_sale(client: httpx.AsyncClient, running: Running, clock: FakeClock,
                       stall: Callable[[], Awaitable[None]], unstall: Callable[[], Awaitable[None]]) -> None:
    eid = await make_room(client)
    first = []
    for user in ("a", "b", "c"):
        r = await join(client, eid, user)
        assert r.status_code == 201, r.text
        first.append(r.json())
    assert [t["position"] for t in first] == [1, 2, 3]

    await stall()
    try:
        answers: dict[str, httpx.Response] = {}

        async def try_join(user: str) -> None:
            answers[user] = await join(client, eid, user)

        with trio.fail_after(STORE_TIMEOUT + 8):  # the deadline, its grace and a loaded machine: never a hang
            async with trio.open_nursery() as nursery:
                for user in ("d", "e", "f"):
                    nursery.start_soon(try_join, user)
        for user, r in answers.items():
            assert r.status_code == 503, (user, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["status"] == 503
        clock.advance(5.0)  # the admitter's ticks fail meanwhile (the line's row does not answer)
        with pytest.raises(Unavailable):
            await running.service.waiting_room.tick(eid)
    finally:
        await unstall()

    # nothing of the failed joins was recorded: their retries get the next places, no gap, no repeat
    retried = []
    for user in ("d", "e", "f"):
        r = await join(client, eid, user)
        assert r.status_code == 201, r.text
        retried.append(r.json())
    assert [t["position"] for t in retried] == [4, 5, 6]
    again = await join(client, eid, "a")
    assert again.status_code == 200 and again.json()["id"] == first[0]["id"]

    # the admitter recovers by itself (no hand-made tick): a long-poll sees the first pass come, and the
    # 5 s the store stalled refill at most one second of passes (the bucket's cap), not ten
    for fan in first[:RATE]:
        admitted = await read(client, fan, wait=20)
        assert admitted["status"] == "admitted" and admitted["pass"]
    await trio.sleep(0.5)  # five more admitter ticks on a clock that does not move
    line = (await client.get(f"/api/events/{eid}/queue")).json()
    assert line["admitted_through"] == RATE and line["joined"] == 6, line
    states = [(await read(client, t))["status"] for t in first + retried]
    assert states == ["admitted"] * RATE + ["waiting"] * (6 - RATE)


async def test_a_stalled_postgresql_fails_joins_with_503_records_nothing_and_the_line_recovers(
        tmp_path: Path) -> None:
    with scratch_services() as services:
        url = urlsplit(services["database_url"])
        assert url.hostname and url.port
        proxy = TcpProxy(url.hostname, url.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            netloc = url.netloc.rsplit("@", 1)[0] + "@" + proxy.address if "@" in url.netloc else proxy.address
            through_proxy = urlunsplit(url._replace(netloc=netloc))
            settings = make_settings(tmp_path, {**services, "database_url": through_proxy},
                                     store_timeout=STORE_TIMEOUT)
            async with server(settings) as (client, running, clock):
                async def stall() -> None:
                    proxy.freeze()

                async def unstall() -> None:
                    proxy.thaw()

                await stalled_sale(client, running, clock, stall, unstall)
            nursery.cancel_scope.cancel()


async def test_a_stuck_sqlite_writer_fails_joins_with_503_records_nothing_and_the_line_recovers(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, store_timeout=STORE_TIMEOUT)
    async with server(settings) as (client, running, clock):
        blocker: list[sqlite3.Connection] = []

        async def stall() -> None:
            db = sqlite3.connect(str(settings.db_path), isolation_level=None, check_same_thread=False)
            db.execute("BEGIN EXCLUSIVE")  # another process's writer that does not let go
            blocker.append(db)

        async def unstall() -> None:
            db = blocker.pop()
            db.execute("ROLLBACK")
            db.close()

        await stalled_sale(client, running, clock, stall, unstall)
