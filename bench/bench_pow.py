"""What the waiting room's proof of work costs (docs/API.md, "Waiting room"): the time to solve one
challenge on one core in Python (hashlib, `ticketblitz.loadgen.pow.solve`, the load generator's own
solver) at 8, 12, 16 and 20 bits, the server's cost to check one proof, and what a farm pays: N users =
N proofs, so the cost grows linearly with the accounts a scalper runs, while an honest fan pays once.

    .venv/bin/python bench/bench_pow.py [--bits 8 12 16 20] [--samples 500 200 60 12] [--farm 1000]

Each sample solves a fresh random challenge for a fresh user (the number of tries is geometric with mean
2^bits, so the median is about ln 2 x 2^bits tries; fewer samples at high bits). Runs in this one process on
one core; bounded by --max-seconds (default 240). Writes bench/results/<UTC date>-pow.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ticketblitz.loadgen.pow import solve, verify  # noqa: E402

DEFAULT_BITS = [8, 12, 16, 20]
DEFAULT_SAMPLES = [500, 200, 60, 12]


def measure(bits: int, samples: int, budget: float) -> dict[str, Any]:
    """Solve `samples` fresh challenges at `bits` (fewer if `budget` seconds run out)."""
    times: list[float] = []
    tries: list[int] = []
    started = time.perf_counter()
    while len(times) < samples and (time.perf_counter() - started < budget or not times):
        challenge = secrets.token_urlsafe(24)
        user = f"fan-{secrets.randbelow(10**9)}"
        t = time.process_time()
        solution = solve(challenge, user, bits)
        times.append(time.process_time() - t)
        tries.append(solution.tries)
        assert verify(challenge, user, solution.proof, bits)
    total_tries = sum(tries)
    seconds = sum(times)
    return {"bits": bits, "samples": len(times), "median_ms": round(statistics.median(times) * 1000, 3),
            "mean_ms": round(statistics.fmean(times) * 1000, 3),
            "p90_ms": round(sorted(times)[max(0, math.ceil(0.9 * len(times)) - 1)] * 1000, 3),
            "max_ms": round(max(times) * 1000, 3), "median_tries": int(statistics.median(tries)),
            "expected_tries": 2**bits, "hashes_per_s": round(total_tries / seconds) if seconds else None,
            # the mean of the geometric number of tries is 2^bits: at the measured rate, the expected time
            "expected_ms": round(2**bits / (total_tries / seconds) * 1000, 3) if seconds else None}


def verify_cost(rounds: int = 20000) -> float:
    """Microseconds the server-side check of one proof costs (one SHA-256 and a bit test)."""
    challenge, user = secrets.token_urlsafe(24), "fan-1"
    proof = solve(challenge, user, 8).proof
    t = time.process_time()
    for _ in range(rounds):
        verify(challenge, user, proof, 8)
    return (time.process_time() - t) / rounds * 1e6


def markdown(doc: dict[str, Any]) -> str:
    farm = doc["farm"]
    lines = [
        f"# Proof of work cost — {doc['date']} ({doc['machine']})",
        "",
        f"Command: `{doc['command']}`",
        "",
        "One core, Python `hashlib` (`ticketblitz/loadgen/pow.py`: the prefix `challenge:user_id:` hashed once, "
        "then `copy()` + `update(str(n))` + `digest()` per try). Each sample is a fresh challenge and user; the "
        "tries are geometric with mean 2^bits (median ≈ 0.69 x 2^bits). CPU time of this process.",
        "",
        f"| bits | samples | median ms | mean ms | p90 ms | max ms | median tries | 2^bits | hashes/s | "
        f"expected ms (2^bits / rate) | farm of {farm:,} users: core-seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        lines.append(f"| {r['bits']} | {r['samples']} | {r['median_ms']:,} | {r['mean_ms']:,} | {r['p90_ms']:,} | "
                     f"{r['max_ms']:,} | {r['median_tries']:,} | {r['expected_tries']:,} | {r['hashes_per_s']:,} | "
                     f"{r['expected_ms']:,} | {r['farm_core_seconds']:,} |")
    lines += [
        "",
        f"Checking one proof (the server's side): {doc['verify_us']:.2f} µs (one SHA-256), so solving costs "
        "about 2^bits times as much as checking.",
        "",
        "The farm: one proof per user (a challenge serves any number of users, but each needs its own proof), "
        f"so N users cost N x the mean: a farm of {farm:,} accounts pays {farm:,} x one fan's cost "
        "(ratio N : 1 to an honest fan, who pays once). With C cores it is N x mean / C of wall time. "
        "The farm column is N x the expected time (2^bits tries at the measured rate): the mean, not the median, "
        "is what a farm pays on average per proof; the sample median and mean scatter around it (few samples at "
        "high bits).",
        "",
        "What it means: at 16 bits an honest fan waits about the median above once; a farm of "
        f"{farm:,} needs about {next((r['farm_core_seconds'] for r in doc['results'] if r['bits'] == 16), '—')} "
        "core-seconds, i.e. it still gets in, but no longer for free: the cost grows linearly with the accounts, "
        "and each +1 bit doubles it for every fan, honest ones included (a slower device pays more).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=DEFAULT_BITS)
    parser.add_argument("--samples", type=int, nargs="+", default=DEFAULT_SAMPLES,
                        help="samples per --bits value (the last one repeats)")
    parser.add_argument("--farm", type=int, default=1000, help="users of the farm (default 1000)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time bound of the whole run")
    parser.add_argument("--out", type=Path, default=None, help="markdown path (default bench/results/<date>-pow.md)")
    args = parser.parse_args()
    if any(not 0 <= b <= 24 for b in args.bits):
        parser.error("--bits: 0..24 (the API's range)")
    started = time.perf_counter()
    results = []
    for i, bits in enumerate(args.bits):
        samples = args.samples[min(i, len(args.samples) - 1)]
        left = args.max_seconds - (time.perf_counter() - started)
        budget = max(1.0, left / (len(args.bits) - i))
        r = measure(bits, samples, budget)
        r["farm_core_seconds"] = round(r["expected_ms"] / 1000 * args.farm, 1)
        results.append(r)
        print(f"bits {bits:2d}: {r['samples']} samples, median {r['median_ms']} ms, mean {r['mean_ms']} ms, "
              f"{r['hashes_per_s']:,} hashes/s", file=sys.stderr, flush=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = args.out or REPO / "bench" / "results" / f"{date}-pow.md"
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                      f"{platform.python_version()}",
           "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_pow.py", *sys.argv[1:]]),
           "farm": args.farm, "verify_us": round(verify_cost(), 3), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(doc))
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
