"""The real `ticketblitz serve` process with a waiting room: killed by SIGKILL in the middle of a crowd
joining, it loses no place it answered, and the process that comes next moves the line on in order."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import trio
from test_process import TOKEN, ServerProcess, client_of

FANS = 400
KILL_AFTER = 150  # joins answered 201 before the SIGKILL


async def test_kill_9_mid_join_loses_no_answered_place_and_the_line_moves_on(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    try:
        await _crash_and_resume(server)
    finally:  # a failed assertion must not leave the process running
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            await server.proc.wait()


async def _crash_and_resume(server: ServerProcess) -> None:
    await server.start()
    answered: dict[str, dict[str, Any]] = {}  # user -> the ticket of its 201
    async with client_of(server) as client:
        r = await client.post("/api/events", headers={"Authorization": f"Bearer {TOKEN}"}, json={
            "name": "Crash line", "max_per_user": 1,
            "sections": [{"name": "A", "rows": 1, "seats_per_row": 50}],
            "waiting_room": {"mode": "fifo", "admit_per_second": 1000, "pass_seconds": 600}})
        assert r.status_code == 201, r.text
        event_id = r.json()["id"]

        async def fan(n: int) -> None:
            try:
                r = await client.post(f"/api/events/{event_id}/queue", json={"user_id": f"fan-{n}"})
            except httpx.TransportError:
                return  # cut by the kill: never answered, so never promised
            assert r.status_code == 201, r.text
            answered[f"fan-{n}"] = r.json()
            if len(answered) == KILL_AFTER:
                assert server.proc is not None
                server.proc.kill()

        async with trio.open_nursery() as nursery:
            for n in range(FANS):
                nursery.start_soon(fan, n)
    assert server.proc is not None
    assert await server.proc.wait() == -signal.SIGKILL
    assert len(answered) >= KILL_AFTER

    await server.start()  # the same data dir
    async with client_of(server) as client:
        # every answered place is there, read with the secret its 201 gave, at the position it was told
        for user, told in answered.items():
            r = await client.get(f"/api/queue/{told['id']}", headers={"Authorization": f"Bearer {told['secret']}"})
            assert r.status_code == 200, (user, r.text)
            assert r.json()["position"] == told["position"] and r.json()["user_id"] == user
        positions = sorted(t["position"] for t in answered.values())
        assert len(set(positions)) == len(positions)
        # a fan whose join was cut retries: a place (201, new) or the one recorded before the kill (200)
        retried = {}
        for n in range(FANS):
            user = f"fan-{n}"
            r = await client.post(f"/api/events/{event_id}/queue", json={"user_id": user})
            if user in answered:
                assert r.status_code == 200, r.text
                assert r.json()["id"] == answered[user]["id"] and r.json()["secret"] == answered[user]["secret"]
            else:
                assert r.status_code in (200, 201), r.text
            retried[user] = r.json()
        await trio.sleep(0.3)  # the public line is at most two admitter ticks (0.2 s) old
        line = (await client.get(f"/api/events/{event_id}/queue")).json()
        assert line["joined"] == FANS
        assert sorted(t["position"] for t in retried.values()) == list(range(1, FANS + 1))
        # the new process's admitter goes on: the 50 seats' passes go to positions 1..50, in order
        by_position = {t["position"]: t for t in retried.values()}
        for position in (1, 50):
            fan = by_position[position]
            r = await client.get(f"/api/queue/{fan['id']}", params={"wait": 20},
                                 headers={"Authorization": f"Bearer {fan['secret']}"})
            assert r.json()["status"] == "admitted", r.text
        await trio.sleep(0.5)  # five more admitter ticks: the 51st waits, 50 passes are out for 50 seats
        line = (await client.get(f"/api/events/{event_id}/queue")).json()
        assert line["admitted_through"] == 50 and line["outstanding"] == 50, line
    assert await server.signal_and_wait(signal.SIGTERM) == 0
