"""What /ws telemetry costs the booking intake: wrk POST bookings with 20 websocket subscribers vs none,
in ONE run against one embedded server (rounds alternate none / 20 / 20 / none ... so that drift cancels),
then the frames dropped while 20 subscribers watch a 10,000-fan burst (bench/flash.py flash).

    .venv/bin/python bench/ws_cost.py [--rounds 4] [--seconds 6] [--subscribers 20] [--out bench/results/…md]

127.0.0.1 only, bounded in time (about rounds x 2 x (seconds + 10) s + the burst). The subscribers are a
child process (this file with --subscribers-child) reading every message as a page would.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import PYTHON, REPO, log, run, run_wrk
from bench_scenarios import create_event
from bench_servers import SPECS, Server

DROPPED = re.compile(r"^ticketblitz_ws_frames_dropped_total (\S+)$", re.MULTILINE)


# ---------------------------------------------------------------------- the subscribers (child process)
def subscribers_child(count: int, url: str, out: str) -> None:
    import trio
    from trio_websocket import open_websocket_url

    seen = {"messages": 0, "frames": 0, "max_dropped": 0, "connected": 0}

    async def one() -> None:
        async with open_websocket_url(url.replace("http://", "ws://") + "/ws") as ws:
            seen["connected"] += 1
            while True:
                message = json.loads(await ws.get_message())
                seen["messages"] += 1
                seen["frames"] += len(message["frames"]) if message["type"] == "batch" else 1
                if message["type"] == "stats":
                    seen["max_dropped"] = max(seen["max_dropped"], message["dropped"])

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    trio.run(main)
    Path(out).write_text(json.dumps(seen))


class Subscribers:
    def __init__(self, count: int, url: str, workdir: Path) -> None:
        self.count, self.url, self.out = count, url, workdir / f"subs-{time.monotonic_ns()}.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, int] = {}

    def __enter__(self) -> Subscribers:
        self.proc = subprocess.Popen([PYTHON, __file__, "--subscribers-child", str(self.count), self.url,
                                      str(self.out)], cwd=REPO)
        time.sleep(1.5)  # connected, snapshot read
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.result = json.loads(self.out.read_text()) if self.out.exists() else {}


def dropped_total(server: Server) -> float:
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    match = DROPPED.search(text)
    return float(match.group(1)) if match else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="pairs of rounds (none, 20) (default 4)")
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk seconds per round (default 6)")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--burst", type=int, default=10_000, help="fans of the burst (default 10000)")
    parser.add_argument("--out", type=Path, help="write the markdown result here")
    parser.add_argument("--subscribers-child", nargs=3, metavar=("N", "URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribers_child:
        n, url, out = args.subscribers_child
        subscribers_child(int(n), url, out)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="tb-ws-cost-"))
    server = Server(SPECS["embedded"], None, workdir)
    server.start()
    rows: list[dict[str, Any]] = []
    burst: dict[str, Any] = {}
    try:
        order = [n for i in range(args.rounds) for n in ((0, args.subscribers) if i % 2 == 0
                                                         else (args.subscribers, 0))]
        for index, subs in enumerate(order):
            event = create_event(server, f"ws cost {index}", 1000, 200)
            time.sleep(1.0)  # the decider settles the previous round's backlog
            cpu_before = server.cpu()
            label = f"round {index} ({subs} subscribers)"
            if subs:
                with Subscribers(subs, server.url, workdir) as watchers:
                    cpu_before = server.cpu()
                    result = run_wrk(label, server.url, "intake.lua", [event["id"]], threads=1,
                                     connections=args.connections, duration=args.seconds)
                    cpu = sum(c["cpu_s"] for c in server.cpu_since(cpu_before))
                seen = watchers.result
            else:
                result = run_wrk(label, server.url, "intake.lua", [event["id"]], threads=1,
                                 connections=args.connections, duration=args.seconds)
                cpu = sum(c["cpu_s"] for c in server.cpu_since(cpu_before))
                seen = {}
            rows.append({"subscribers": subs, "rps": round(result.rps, 1), "p99_ms": result.latency_ms["p99"],
                         "statuses": result.statuses, "server_cpu_s": round(cpu, 2),
                         "cpu_ms_per_1000": round(1000 * 1000 * cpu / max(result.requests, 1), 1),
                         "seen": seen})
            log(f"{label}: {result.rps:.0f} req/s, p99 {result.latency_ms['p99']} ms, server CPU {cpu:.1f} s, {seen}")
        # the burst: 10,000 fans at once with the subscribers watching
        before = dropped_total(server)
        with Subscribers(args.subscribers, server.url, workdir) as watchers:
            out = workdir / "burst.json"
            done = run("burst", [PYTHON, "bench/flash.py", "--url", server.url, "--admin-token", server.token,
                                 "flash", "--clients", str(args.burst), "--seats", "1000", "--json", str(out)],
                       timeout=300, check=False)
            time.sleep(1.5)  # the last ticks and a stats frame reach the subscribers
        report = json.loads(out.read_text()) if out.exists() else {}
        burst = {"flash_exit": done.returncode, "frames_dropped": dropped_total(server) - before,
                 "seen": watchers.result, "answers": report.get("statuses") or report.get("answers"),
                 "summary": done.stdout.strip().splitlines()[-3:]}
    finally:
        server.stop()

    none = [r for r in rows if r["subscribers"] == 0]
    some = [r for r in rows if r["subscribers"]]
    rps0 = sum(r["rps"] for r in none) / len(none)
    rps1 = sum(r["rps"] for r in some) / len(some)
    cpu0 = sum(r["cpu_ms_per_1000"] for r in none) / len(none)
    cpu1 = sum(r["cpu_ms_per_1000"] for r in some) / len(some)
    lines = [
        f"# /ws cost on booking intake — {time.strftime('%Y-%m-%d %H:%M')} (embedded server, 127.0.0.1)",
        "",
        f"Command: `.venv/bin/python bench/ws_cost.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--subscribers {args.subscribers} --connections {args.connections} --burst {args.burst}`",
        "",
        f"wrk `-t1 -c{args.connections} -d{args.seconds:g}s bench/intake.lua` (POST /api/events/{{id}}/bookings), "
        f"rounds alternating none / {args.subscribers} subscribers, a fresh 200,000-seat event each;"
        " subscribers read every message (a child process).",
        "",
        "| round | subscribers | req/s | p99 ms | server CPU ms / 1000 req | messages / frames seen |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        seen = r["seen"]
        lines.append(f"| {i} | {r['subscribers']} | {r['rps']:.0f} | {r['p99_ms']} | {r['cpu_ms_per_1000']} | "
                     f"{seen.get('messages', '-')} / {seen.get('frames', '-')} |")
    lines += [
        "",
        f"**Intake with {args.subscribers} subscribers / without: {rps1 / rps0:.3f}** "
        f"({rps1:.0f} vs {rps0:.0f} req/s; cost {100 * (1 - rps1 / rps0):+.1f} %); server CPU per 1000 requests "
        f"{cpu1:.1f} vs {cpu0:.1f} ms ({100 * (cpu1 / cpu0 - 1):+.1f} %). Goal: ≤ 5 % cost.",
        "",
        f"Burst: `bench/flash.py flash --clients {args.burst} --seats 1000` with {args.subscribers} subscribers: "
        f"flash.py exit {burst.get('flash_exit')}; frames dropped (process counter "
        f"`ticketblitz_ws_frames_dropped_total`, per-tick cap + full buffers): {burst.get('frames_dropped'):.0f}; "
        f"most dropped for one subscriber: {burst.get('seen', {}).get('max_dropped')}; "
        f"messages / frames each subscriber process saw: {burst.get('seen', {}).get('messages')} / "
        f"{burst.get('seen', {}).get('frames')}.",
        "",
        "flash.py summary: " + " / ".join(burst.get("summary", [])),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
