"""The built-in load generator: `ticketblitz flash-sale` (its own process) against a real embedded server
on a real port, and the visualizer's button behind it, `POST /api/admin/flash-sale`, which runs the same
command as a child of the server and relays its progress as `loadgen` frames on /ws."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from conftest import ADMIN, ADMIN_TOKEN, make_settings
from trio_websocket import WebSocketConnection, open_websocket_url

from ticketblitz.server import Running, build_service, serve
from ticketblitz.service import BookingService

USERS, SEATS = 300, 50


@pytest.fixture
async def server(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Running]:
    """An embedded server behind the intake door on a free port of 127.0.0.1."""
    settings = make_settings(tmp_path)
    running: Running = await nursery.start(partial(serve, settings, service=build_service(settings)))
    yield running
    running.stop.set()


async def flash_sale(*args: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
    """`python -m ticketblitz flash-sale ARGS` (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TICKETBLITZ_ADMIN_TOKEN"}
    if token is not None:
        env["TICKETBLITZ_ADMIN_TOKEN"] = token
    with trio.fail_after(90):
        done = await trio.run_process([sys.executable, "-m", "ticketblitz", "flash-sale", *args], env=env,
                                      capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def event_of(url: str, event_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get(f"/api/events/{event_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.mark.parametrize("route", ["bookings", "book-async", "book-secure", "book-naive"])
async def test_cli_json_report_is_verified_against_the_server(server: Running, route: str) -> None:
    code, out, err = await flash_sale("--users", str(USERS), "--seats", str(SEATS), "--route", route,
                                      "--url", server.url, "--json")
    assert code == 0, (out[-2000:], err[-2000:])
    report = orjson.loads(out)
    assert report["users"] == USERS and report["seats"] == SEATS and report["route"] == route
    assert sum(report["by_code"].values()) == report["answered"] == USERS
    assert report["burst"]["socket_errors"] == {}
    v = report["verification"]
    assert report["verified"] is True and report["passed"] is True and v["ok"] is True
    assert report["oversold"] == v["oversold"] == 0
    assert 1 <= v["held_seats"] <= SEATS
    assert report["pending"] == 0 and report["decided"] == v["accepted"]
    if route in ("bookings", "book-async"):  # queued paths: every seat finds a buyer among 6 fans per seat
        assert v["held_seats"] == SEATS
    # the report's numbers are the server's
    event = await event_of(server.url, report["event_id"])
    assert event["capacity"] == SEATS
    assert event["counts"] == v["counts"] == {"available": SEATS - v["held_seats"], "held": v["held_seats"], "sold": 0}


async def test_cli_refuses_other_hosts_a_missing_and_a_wrong_token(server: Running) -> None:
    code, out, err = await flash_sale("--users", "5", "--seats", "5", "--url", "http://10.1.2.3:8000")
    assert code == 2 and "refusing host '10.1.2.3'" in err and len(err.strip().splitlines()) == 1
    code, out, err = await flash_sale("--users", "5", "--seats", "5", "--url", server.url, token=None)
    assert code == 2 and "TICKETBLITZ_ADMIN_TOKEN" in err and len(err.strip().splitlines()) == 1
    code, out, err = await flash_sale("--users", "5", "--seats", "5", "--url", server.url, token="wrong")
    assert code == 2 and "403" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = await flash_sale("--users", "5", "--seats", "5", "--url", server.url, "--json-progress",
                                      token="wrong")
    line = orjson.loads(out)
    assert code == 2 and line["state"] == "failed" and "403" in line["error"]
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/api/events")).json()["events"] == []  # nothing was created


# ---------------------------------------------------------------------- POST /api/admin/flash-sale


async def test_endpoint_refuses_without_token_and_bad_bodies_without_a_change(server: Running) -> None:
    path = "/api/admin/flash-sale"
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post(path, json={"users": 10, "seats": 10})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = await client.post(path, json={"users": 10, "seats": 10}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert (await client.get(path)).status_code == 401
        bad = [({"users": 0}, "users"), ({"users": 20_001}, "users"), ({"seats": 0}, "seats"),
               ({"seats": 200_001}, "seats"), ({"seats": 1009}, "seats"), ({"route": "book-fast"}, "route"),
               ({"users": "10"}, "users"), ({"users": True}, "users"), ({"fans": 10}, "fans")]
        for body, field in bad:
            r = await client.post(path, json=body, headers=ADMIN)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "invalid_request" and r.json()["field"] == field, r.text
        r = await client.post(path, content=b"{", headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        r = await client.post(path, content=b"{}", headers={**ADMIN, "Content-Type": "text/plain"})
        assert r.status_code == 415
        assert (await client.get("/api/events")).json()["events"] == []
        r = await client.get(path, headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"state": "idle", "running": False}


def frames_of(message: str) -> list[dict[str, Any]]:
    """The frames of one /ws message: a bare frame, or a `batch` of them (spec/telemetry.md)."""
    frame = orjson.loads(message)
    return list(frame["frames"]) if frame.get("type") == "batch" else [frame]


async def loadgen_frames(ws: WebSocketConnection, event_id: str) -> list[dict[str, Any]]:
    """Every `loadgen` frame of the event until the run's `finished` (or `failed`) one."""
    seen: list[dict[str, Any]] = []
    while True:
        for frame in frames_of(await ws.get_message()):
            if frame.get("type") == "loadgen" and frame.get("event_id") == event_id:
                seen.append(frame)
                if frame["state"] in ("finished", "failed"):
                    return seen


async def test_endpoint_runs_one_sale_at_a_time_and_relays_its_frames(server: Running) -> None:
    path = "/api/admin/flash-sale"
    ws_url = server.url.replace("http://", "ws://") + "/ws"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, open_websocket_url(ws_url) as ws:
        assert frames_of(await ws.get_message())[0]["type"] == "snapshot"
        r = await client.post(path, json={"users": USERS, "seats": SEATS}, headers=ADMIN)
        assert r.status_code == 202, r.text
        started = r.json()
        assert started == {"event_id": started["event_id"], "users": USERS, "seats": SEATS, "route": "bookings",
                           "state": "started"}
        again = await client.post(path, json={"users": 1, "seats": 1}, headers=ADMIN)
        assert again.status_code == 409 and again.json()["code"] == "flash_sale_running", again.text
        state = (await client.get(path, headers=ADMIN)).json()
        assert state["running"] is True and state["event_id"] == started["event_id"]
        with trio.fail_after(90):
            frames = await loadgen_frames(ws, started["event_id"])
        states = [f["state"] for f in frames]
        assert states[0] == "started" and states[-1] == "finished", frames[-1]
        assert set(states[1:-1]) <= {"progress"}
        finished = frames[-1]
        assert {k: finished[k] for k in ("users", "seats", "route")} == {"users": USERS, "seats": SEATS,
                                                                       "route": "bookings"}
        assert sum(finished["by_code"].values()) == finished["answered"] == USERS
        assert finished["oversold"] == 0 and finished["pending"] == 0
        # the event's final counts agree with the frame: every 202 became a held seat, no more
        event = (await client.get(f"/api/events/{started['event_id']}")).json()
        assert event["counts"] == {"available": 0, "held": SEATS, "sold": 0}
        assert finished["by_code"]["202"] == finished["decided"] == event["counts"]["held"]
        with trio.fail_after(10):  # `running` until the child has exited, moments after its last line
            while True:
                last = (await client.get(path, headers=ADMIN)).json()
                if not last["running"]:
                    break
                await trio.sleep(0.05)
        assert last == {**{k: v for k, v in finished.items() if k not in ("type", "ts", "process")}, "running": False}
        r = await client.post(path, json={"users": 5, "seats": 5, "route": "book-naive"}, headers=ADMIN)
        assert r.status_code == 202  # the next one may start once the first finished


async def test_shutdown_stops_a_running_sale_and_its_child(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, consumers=0)  # nothing is decided: the child would wait 45 s
    service: BookingService = build_service(settings)
    published: list[dict[str, Any]] = []
    waiting = trio.Event()  # the child reported bookings waiting for a decision
    publish = service.telemetry.publish

    def spy(kind: str, **data: Any) -> None:
        if kind == "loadgen":
            published.append(data)
            if data.get("pending"):
                waiting.set()
        publish(kind, **data)

    service.telemetry.publish = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(partial(serve, settings, service=service))
        async with httpx.AsyncClient(base_url=running.url) as client:
            r = await client.post("/api/admin/flash-sale", json={"users": 20, "seats": 10}, headers=ADMIN)
            assert r.status_code == 202, r.text
            with trio.fail_after(30):
                await waiting.wait()
            assert len(children_running(published[-1]["event_id"])) == 1
        stopping = trio.current_time()
        running.stop.set()
        nursery.cancel_scope.deadline = stopping + 20  # 2 s of grace, then the child is terminated
    assert trio.current_time() - stopping < 15, "the server did not stop in time"
    assert published[-1]["state"] == "failed" and "shutting down" in published[-1]["error"], published[-1]
    assert children_running(published[-1]["event_id"]) == []


def children_running(event_id: str) -> list[int]:
    """PIDs of processes whose command line names the event (the sale's child passes --event-id)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if event_id.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
    return pids


async def test_runner_waiting_room_sale_runs_the_load_generators_waiting_room_mode(server: Running,
                                                                                   nursery: trio.Nursery) -> None:
    """FlashSaleRunner with a waiting room (what the page's "through a waiting room" option asks for): the
    sale's event gets the waiting room and its opening time, the child runs `flash-sale --waiting-room`, and
    the run ends finished and verified with every seat sold and the rest of the line sold out."""
    from ticketblitz.web.flash_sale import FlashSaleRunner

    runner = FlashSaleRunner(server.service)
    room = {"mode": "fifo", "admit_per_second": 200}
    started = await runner.start(nursery, server.url, USERS, SEATS, "bookings", waiting_room=room, sale_starts_in=2)
    assert started["waiting_room"] == room and started["sale_starts_at"], started
    event = await event_of(server.url, started["event_id"])
    assert event["waiting_room"]["mode"] == "fifo" and event["waiting_room"]["admit_per_second"] == 200, event
    assert event["sale_starts_at"] and event["capacity"] == SEATS
    command = runner.command(server.url, {**started})
    assert "--waiting-room" in command and command[command.index("--timeout") + 1] == "32"
    with trio.fail_after(100):
        while True:
            state = runner.snapshot()
            if not state["running"]:
                break
            await trio.sleep(0.1)
    assert state["state"] == "finished", state
    assert state["oversold"] == 0 and state["passed"] is True and state["waiting_room"] == room, state
    async with httpx.AsyncClient(base_url=server.url) as client:
        line = (await client.get(f"/api/events/{started['event_id']}/queue")).json()
    assert line["joined"] == USERS and line["sold_out"] is True and line["waiting"] == 0, line
    event = await event_of(server.url, started["event_id"])
    assert event["counts"] == {"available": 0, "held": 0, "sold": SEATS}, event["counts"]
