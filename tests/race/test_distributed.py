"""Two server processes (`serve --workers 2`) on one Kafka consumer group, one Redis, one PostgreSQL:
thousands of concurrent fans through HTTP, then the invariants over the final PostgreSQL state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from conftest import ADMIN_TOKEN, scratch_services
from invariants import check_store_invariants

from ticketblitz.adapters.postgres_store import PostgresStore

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_workers(services: dict[str, str], port: int, log: Path, workers: int = 2,
                        **extra_env: str) -> trio.Process:
    env = {**os.environ, "TICKETBLITZ_ADMIN_TOKEN": ADMIN_TOKEN, **extra_env}
    env.update({f"TICKETBLITZ_{k.upper()}": v for k, v in services.items()})
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ticketblitz", "serve", "--port", str(port), "--workers", str(workers)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with trio.fail_after(60):
            ready = 0
            while ready < 10:  # several answers in a row: both workers are up (connections are spread)
                try:
                    r = await client.get("/readyz")
                    ready = ready + 1 if r.status_code == 200 else 0
                except httpx.TransportError:
                    ready = 0
                assert proc.poll() is None, log.read_text()[-3000:]
                await trio.sleep(0.1)
    return proc


async def flash(port: int, tmp: Path, *args: str) -> dict[str, Any]:
    """bench/flash.py against the workers; it verifies counts and seat map itself and exits 0 only then."""
    out = tmp / f"flash-{args[0]}.json"
    result = await trio.run_process(
        [sys.executable, str(ROOT / "bench" / "flash.py"), "--url", f"http://127.0.0.1:{port}",
         "--admin-token", ADMIN_TOKEN, *args, "--json", str(out)],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, (result.stdout.decode()[-3000:], result.stderr.decode()[-3000:])
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


async def test_two_workers_5000_fans_for_500_seats_and_300_for_one_seat(tmp_path: Path) -> None:
    with scratch_services() as services:
        port = free_port()
        log = tmp_path / "workers.log"
        proc = await start_workers(services, port, log)
        try:
            report = await flash(port, tmp_path, "flash", "--clients", "5000", "--seats", "500")
            hot = await flash(port, tmp_path, "hot", "--clients", "300")
            # both workers decided bookings (one consumer group, partitions split between them)
            store = PostgresStore(services["database_url"])
            await store.open()
            try:
                summary = await check_store_invariants(store, report["event_id"])
                assert summary["counts"] == {"available": 0, "held": 500, "sold": 0}
                hot_summary = await check_store_invariants(store, hot["event_id"])
                assert hot_summary["counts"]["held"] == 1
                assert hot_summary["statuses"]["held"] == 1
            finally:
                await store.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                code = await proc.wait()
        assert code == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert text.count("exited 0") == 2, text[-3000:]


async def test_two_workers_report_as_one_in_metrics_and_telemetry(tmp_path: Path) -> None:
    """`--workers 2`: /metrics of either worker counts both (prometheus_client's multiprocess mode, in the
    supervisor's private directory, removed at exit), and /ws stats are summed over both processes."""
    import json

    from prometheus_client.parser import text_string_to_metric_families
    from trio_websocket import open_websocket_url

    with scratch_services() as services:
        port = free_port()
        log = tmp_path / "workers.log"
        # a 2 s shutdown grace (default 10 s): after a /ws session a SIGTERM waits out the whole grace, and
        # nothing is queued by then (the 5000-fan test above keeps the default grace for its drain)
        proc = await start_workers(services, port, log, TICKETBLITZ_SHUTDOWN_GRACE="2")
        base = f"http://127.0.0.1:{port}"
        route = (("code", "202"), ("route", "POST /api/events/{id}/bookings"))
        try:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                r = await client.post("/api/events", headers=admin, json={
                    "name": "Metrics night", "sections": [{"name": "A", "rows": 5, "seats_per_row": 10,
                                                          "price_cents": 100}], "max_per_user": 4, "hold_seconds": 600})
                assert r.status_code == 201, r.text
                event_id = r.json()["id"]
            for i in range(40):  # a connection each: the kernel spreads them over the workers
                async with httpx.AsyncClient(base_url=base, timeout=30) as one:
                    r = await one.post(f"/api/events/{event_id}/bookings", json={"user_id": f"u{i}", "quantity": 1})
                    assert r.status_code == 202, r.text
            samples: dict[Any, float] = {}
            with trio.fail_after(20):
                while samples.get(("ticketblitz_http_requests_total", route)) != 40 \
                        or samples.get(("ticketblitz_accepting", ())) != 2:
                    await trio.sleep(0.2)
                    async with httpx.AsyncClient(base_url=base, timeout=30) as one:
                        text = (await one.get("/metrics")).text
                    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                               for f in text_string_to_metric_families(text) for s in f.samples}
            assert samples[("ticketblitz_queue_messages_total", (("action", "produced"),))] == 40
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                with trio.fail_after(20):
                    while True:
                        frame = json.loads(await ws.get_message())
                        if frame["type"] == "stats" and frame["processes"] == 2 \
                                and frame["totals"]["requests"].get("202", 0) >= 40:
                            break
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                code = await proc.wait()
        assert code == 0, log.read_text()[-3000:]
