"""The telemetry relay over a real Redis: two hubs (as two server processes would run them) see each
other's frames and sum each other's stats; one whose Redis goes away keeps serving its own subscribers,
never blocks, and relays again once Redis is back. No fakes: real Redis, real threads, real pub/sub."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from conftest_redis import TELEMETRY_DB, redis_test_url
from tcp_proxy import TcpProxy

from ticketblitz.telemetry import Telemetry
from ticketblitz.telemetry.relay import RedisRelay, channel_for


@pytest.fixture
def url() -> str:
    return redis_test_url(TELEMETRY_DB)


def hub(url: str, name: str) -> Telemetry:
    return Telemetry(time.time, relay=RedisRelay(url, timeout=1.0), process=name)


async def frames_from(sub: Any, process: str, kind: str, seconds: float, poke: Any = None) -> dict[str, Any]:
    """The first frame of `kind` from `process` that the subscriber receives (poking the publisher)."""
    with trio.fail_after(seconds):
        while True:
            if poke is not None:
                poke()
            with trio.move_on_after(0.3):
                while True:
                    message = json.loads(await sub.next_message())
                    for frame in message["frames"] if message["type"] == "batch" else [message]:
                        if frame["type"] == kind and frame.get("process") == process:
                            return dict(frame)


async def until(check: Any, seconds: float) -> None:
    with trio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - the stats arrive on their own clock
            await trio.sleep(0.1)


def test_the_channel_is_scoped_by_database(url: str) -> None:
    assert channel_for(url) == f"tb:telemetry:{TELEMETRY_DB}"
    assert channel_for("redis://127.0.0.1:6379/0") == channel_for("redis://127.0.0.1:6379") == "tb:telemetry"


async def test_two_hubs_relay_frames_and_sum_stats(url: str, nursery: trio.Nursery) -> None:
    a, b = hub(url, "host-a:1"), hub(url, "host-b:2")
    await nursery.start(a.run)
    await nursery.start(b.run)
    with b.subscribe() as sub:
        sub.admin = True
        # A builds frames once it hears (B's stats, within a second) that someone listens
        frame = await frames_from(sub, "host-a:1", "loadgen", 10,
                                  poke=lambda: a.publish("loadgen", state="progress", event_id="e", sent=1))
        assert frame["state"] == "progress" and frame["ts"].endswith("Z")
        a.booking(type("B", (), {"id": "b1", "event_id": "e", "status": "held", "reason": None,
                                 "user_id": "u1", "seat_ids": ("A-1-1",)})())
        booking = await frames_from(sub, "host-a:1", "booking", 5)
        assert booking["id"] == "b1" and booking["user_id"] == "u1"  # the admin form crosses processes
        for _ in range(5):
            a.record_request(202, 0.002, "POST /api/book-async")
        b.record_request(409, 0.004, "POST /api/book-async")
        await until(lambda: b.last_stats["processes"] == 2
                    and b.last_stats["totals"]["requests"] == {"202": 5, "409": 1}, 10)
        assert a.last_stats["processes"] == 2 and a.last_stats["totals"]["requests"] == {"202": 5, "409": 1}
    assert b.relay is not None and b.relay.received > 0


async def test_a_hub_survives_redis_going_away_and_relays_again(url: str, nursery: trio.Nursery) -> None:
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await nursery.start(proxy.run)
    a = hub(f"redis://{proxy.address}/{TELEMETRY_DB}", "host-a:1")
    b = hub(url, "host-b:2")
    await nursery.start(a.run)
    await nursery.start(b.run)
    with a.subscribe() as local, b.subscribe() as remote:
        await frames_from(remote, "host-a:1", "loadgen", 10, poke=lambda: a.publish("loadgen", state="started"))
        await proxy.cut()  # Redis is gone for A
        started = trio.current_time()
        for i in range(2_000):  # the booking path goes on, and A's own subscribers still get everything
            a.publish("loadgen", state="progress", sent=i)
        assert trio.current_time() - started < 0.5
        await frames_from(local, "host-a:1", "loadgen", 5, poke=lambda: a.publish("loadgen", state="progress"))
        await trio.sleep(1.5)
        await until(lambda: a.relay.dropped > 0, 10)  # type: ignore[union-attr]
        await proxy.restore()
        frame = await frames_from(remote, "host-a:1", "loadgen", 20,
                                  poke=lambda: a.publish("loadgen", state="finished"))
        assert frame["state"] == "finished"
