"""A full file table: a real server process (embedded, its own data dir and port) started with
RLIMIT_NOFILE 256 and flooded with 500 idle connections. It must stay up (the accept loop backs off on
EMFILE instead of dying), and once the flood is gone it answers and books."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio

NOFILE = 256
FLOOD = 500
TOKEN = "flood-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def _ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], seconds: float) -> None:
    with trio.fail_after(seconds):
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                if (await client.get("/healthz", timeout=2.0)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.2)


async def test_a_flood_past_the_file_limit_does_not_stop_the_server(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 200:  # this process holds the flood's sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}
    env.update(TICKETBLITZ_ADMIN_TOKEN=TOKEN, TICKETBLITZ_IDLE_TIMEOUT="2", TICKETBLITZ_HEADER_TIMEOUT="2",
               TICKETBLITZ_SHUTDOWN_GRACE="2")
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve", "--port", str(port), "--data-dir",  # noqa: ASYNC220
                             str(tmp_path / "data")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_low_nofile)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            await _ready(client, proc, 30)
            r = await client.post("/api/events", headers={"Authorization": f"Bearer {TOKEN}"}, json={
                "name": "flood", "sections": [{"name": "A", "rows": 10, "seats_per_row": 10, "price_cents": 1}]})
            assert r.status_code == 201, r.text
            event_id = r.json()["id"]

            flood: list[trio.socket.SocketType] = []
            try:
                for _ in range(FLOOD):  # idle connections: more than the server has descriptors
                    sock = trio.socket.socket()
                    flood.append(sock)
                    await sock.connect(("127.0.0.1", port))
                await trio.sleep(1.5)  # the server accepts until EMFILE, then backs off
                assert proc.poll() is None, "the server died of the flood"
            finally:
                for sock in flood:
                    sock.close()

            await _ready(client, proc, 20)  # the flood is gone: it answers again
            r = await client.post(f"/api/events/{event_id}/bookings", json={"user_id": "after-flood", "quantity": 1})
            assert r.status_code == 202, r.text
            booking = r.json()
            r = await client.get(f"/api/bookings/{booking['id']}", params={"wait": 10},
                                 headers={"Authorization": f"Bearer {booking.get('secret', TOKEN)}"})
            assert r.status_code == 200 and r.json()["status"] == "held", r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert "EMFILE" in output, output[-2000:]  # the back-off was exercised, and logged
    assert "Traceback" not in output.split("EMFILE", 1)[0][-200:]
