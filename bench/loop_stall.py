"""How much do expensive reads cost the one Trio thread? (issue 8: "cheap requests that cost a lot")

Starts `ticketblitz serve` (embedded, its own data dir, a free port on 127.0.0.1), creates an event of
`--seats` seats, then for `--seconds` keeps `--readers` concurrent clients reading its seat map while a
probe asks `GET /healthz` every 20 ms; prints the seat-map answer times and the /healthz latencies
(p50, p99, max), and the time of one `/api/book-naive` on that event. Bounded in time, stops the server
it started by PID.

    .venv/bin/python bench/loop_stall.py --seats 200000 --readers 4 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import trio

TOKEN = "loop-stall-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="tb-stall-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}
        env.update(TICKETBLITZ_ADMIN_TOKEN=TOKEN, TICKETBLITZ_PORT=str(port), TICKETBLITZ_DATA_DIR=data)
        server = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve"], env=env,  # noqa: ASYNC220 - once
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                with trio.fail_after(30):
                    while True:
                        try:
                            if (await client.get("/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await trio.sleep(0.1)
                rows = max(1, args.seats // 1000)
                body = {"name": "stall", "sections": [{"name": "A", "rows": rows, "seats_per_row": args.seats // rows}]}
                r = await client.post("/api/events", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
                r.raise_for_status()
                event_id = r.json()["id"]
                seat_times: list[float] = []
                probe_times: list[float] = []
                stop = trio.current_time() + args.seconds

                async def reader() -> None:
                    async with httpx.AsyncClient(base_url=url, timeout=60) as own:
                        while trio.current_time() < stop:
                            t = time.perf_counter()
                            (await own.get(f"/api/events/{event_id}/seats")).raise_for_status()
                            seat_times.append(time.perf_counter() - t)

                async def probe() -> None:
                    async with httpx.AsyncClient(base_url=url, timeout=60) as own:
                        while trio.current_time() < stop:
                            t = time.perf_counter()
                            (await own.get("/healthz")).raise_for_status()
                            probe_times.append(time.perf_counter() - t)
                            await trio.sleep(0.02)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(probe)
                    for _ in range(args.readers):
                        nursery.start_soon(reader)
                t = time.perf_counter()
                naive = await client.post("/api/book-naive", json={"userId": "u", "seatNumber": args.seats // 2,
                                                                   "eventId": event_id})
                naive_s = time.perf_counter() - t
                assert naive.status_code == 200, naive.text
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print(f"seats {args.seats}, readers {args.readers}, {args.seconds:g} s")
    print(f"  seat map answers: {len(seat_times)}, median {statistics.median(seat_times) * 1000:.0f} ms")
    print(f"  /healthz beside them: {len(probe_times)} probes, p50 {pct(probe_times, 0.5):.1f} ms, "
          f"p99 {pct(probe_times, 0.99):.1f} ms, max {max(probe_times) * 1000:.1f} ms")
    print(f"  one /api/book-naive: {naive_s * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seats", type=int, default=200_000)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
