"""Profiling a running server with py-spy while sustained intake (c) loads it.

Two py-spy samplers attach to the same pid for the same window, both `--nonblocking` (the server is never
paused): one writes the flame graph (SVG), the other the collapsed stacks ("raw", with `--threads`), from
which the functions with the most own time (the innermost Python frame of each sample, so time in C code
such as sqlite3 or socket calls counts for the Python function that called it) and the busiest threads
are counted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import COMMANDS, REPO, BenchError, log

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\): (?P<name>.*)$")


@dataclass
class Profile:
    svg: Path
    raw: Path
    commands: list[str]
    samples: int = 0
    top: list[tuple[str, int, float]] = field(default_factory=list)  # (function (file), samples, % of samples)
    top_inclusive: list[tuple[str, int, float]] = field(default_factory=list)
    threads: list[tuple[str, int, float]] = field(default_factory=list)  # thread name (digits as N), samples, %
    top_by_thread: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)  # top 5 own, per thread
    errors: list[str] = field(default_factory=list)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(REPO / ".venv" / "bin" / "py-spy"))
    if not Path(found).exists():
        raise BenchError("py-spy is missing: .venv/bin/pip install py-spy (the `bench` extra)")
    return found


class Recorder:
    """Start both samplers (`start`), then `finish` waits for them and reads the stacks."""

    def __init__(self, pid: int, seconds: int, svg: Path, raw: Path) -> None:
        self.pid, self.seconds, self.svg, self.raw = pid, seconds, svg, raw
        self.procs: list[subprocess.Popen[str]] = []
        self.commands: list[str] = []

    def start(self) -> None:
        binary = py_spy()
        for fmt, out, extra in (("flamegraph", self.svg, []), ("raw", self.raw, ["--threads"])):
            cmd = [binary, "record", "--pid", str(self.pid), "--duration", str(self.seconds), "--rate", "100",
                   "--nonblocking", *extra, "--format", fmt, "-o", str(out)]
            COMMANDS.add(f"profile ({fmt})", cmd)
            self.commands.append(COMMANDS.entries[-1][1])
            self.procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, start_new_session=True))
        log(f"py-spy recording pid {self.pid} for {self.seconds} s")

    def finish(self) -> Profile:
        profile = Profile(self.svg, self.raw, self.commands)
        for proc in self.procs:
            try:
                output, _ = proc.communicate(timeout=self.seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if proc.returncode != 0:
                profile.errors.append(f"py-spy exited {proc.returncode}: {output[-500:]}")
        if self.raw.exists():
            (profile.samples, profile.top, profile.top_inclusive, profile.threads,
             profile.top_by_thread) = top_functions(self.raw)
        return profile


def _function(frame: str) -> str:
    """`func (/path/to/file.py:123)` -> `func (ticketblitz/adapters/file.py)`: own time summed over the
    function's lines; paths shortened to the package (ours, or site-packages), else the last two parts."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    if "site-packages/" in path:
        short = path.split("site-packages/")[-1]
    elif "/ticketblitz/" in path or path.startswith("ticketblitz/"):
        short = "ticketblitz/" + path.split("ticketblitz/", 1)[-1]
    else:
        short = "/".join(path.split("/")[-2:])
    return f"{match.group('func')} ({short})"


Ranked = list[tuple[str, int, float]]


def top_functions(raw: Path, n: int = 10) -> tuple[int, Ranked, Ranked, Ranked, dict[str, Ranked]]:
    """From collapsed stacks (`[thread (tid): name;]frame;frame;... count` per line): total samples, the top
    `n` functions by own samples, the top `n` TicketBlitz functions by inclusive samples, samples per thread
    name, and each thread's top 5 functions by own samples (each with its % of all samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    own_by_thread: dict[str, Counter[str]] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        parts = stack.split(";")
        thread = THREAD.match(parts[0])
        thread_name = re.sub(r"\d+", "N", thread.group("name")) if thread else "?"
        if thread:
            threads[thread_name] += count
            parts = parts[1:]
        frames = [_function(f) for f in parts if f]
        if frames:
            own[frames[-1]] += count
            own_by_thread.setdefault(thread_name, Counter())[frames[-1]] += count
            for name in set(frames):
                if "(ticketblitz/" in name:  # inclusive time: only our functions say where to look
                    inclusive[name] += count

    def ranked(counter: Counter[str], limit: int | None = n) -> Ranked:
        return [(name, c, round(100 * c / total, 1)) for name, c in counter.most_common(limit)] if total else []

    by_thread = {name: ranked(counter, 5) for name, counter in own_by_thread.items()}
    return total, ranked(own), ranked(inclusive), ranked(threads, None), by_thread
