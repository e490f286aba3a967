"""The benchmark's CPU accounting (bench/bench_common.py, bench/bench_cpu.py): its pure parts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/'s modules import each other by their bare names (run.py runs from bench/); appended, so that
# nothing of bench/ shadows an installed module
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

import bench_cpu
from bench_common import ProcTimes, parse_machine_stat, parse_pid_stat
from bench_cpu import CpuBreakdown, tree_ticks

# /proc/<pid>/stat of a Python process; the command name holds a space and a bracket of its own
STAT = ("4242 (tb worker) 1) S 4241 4241 4241 0 -1 4194560 81234 0 12 0 1234 567 89 10 20 0 9 0 "
        "123456 987654321 12345 18446744073709551615 1 1 0 0 0 0 0 16781312 134234626 0 0 0 17 1 0 0 0 0 0")


def test_parse_pid_stat_counts_fields_after_the_last_bracket() -> None:
    times = parse_pid_stat(STAT)
    assert times == ProcTimes(utime=1234, stime=567, cutime=89, cstime=10)
    assert times.own == 1801
    assert times.reaped == 99


def test_parse_pid_stat_refuses_a_truncated_line() -> None:
    with pytest.raises(IndexError):
        parse_pid_stat("4242 (python) S 1 2 3")


def test_parse_machine_stat_reads_the_aggregate_line() -> None:
    text = ("cpu  1337741 861 345213 3180889 15129 0 50377 876 0 0\n"
            "cpu0 668870 430 172606 1590444 7564 0 25188 438 0 0\n"
            "intr 1 2 3\n")
    assert parse_machine_stat(text) == {"user": 1337741, "nice": 861, "system": 345213, "idle": 3180889,
                                        "iowait": 15129, "irq": 0, "softirq": 50377, "steal": 876}


def test_parse_machine_stat_without_the_cpu_line() -> None:
    with pytest.raises(ValueError):
        parse_machine_stat("cpu0 1 2 3 4\n")


def test_breakdown_in_cores() -> None:
    b = CpuBreakdown(wall_s=10.0, ncpu=2, cpu_s={"server": 9.2, "wrk": 3.5, "postgres": None},
                     pids={"server": 1}, machine_busy_s=19.0, machine_idle_s=1.0, machine_steal_s=0.0, other_s=6.3)
    assert b.cores(9.2) == pytest.approx(0.92)
    assert b.busy_cores == pytest.approx(1.9)
    assert b.at_ceiling
    assert b.summary() == "server 0.92, wrk 0.35, postgres ?, other 0.63, idle 0.10 of 2 cores"


def test_tree_ticks_sums_the_live_descendants_and_the_reaped_children(monkeypatch: pytest.MonkeyPatch) -> None:
    # postmaster 10 (with 7 ticks of backends that ended) -> backends 11, 12; 12 -> 13; 14 went away
    tree = {10: [11, 12, 14], 11: [], 12: [13], 13: [], 14: []}
    times = {10: ProcTimes(5, 5, 4, 3), 11: ProcTimes(100, 20, 0, 0), 12: ProcTimes(30, 10, 0, 0),
             13: ProcTimes(1, 1, 0, 0)}
    monkeypatch.setattr(bench_cpu, "children", lambda pid: tree[pid])
    monkeypatch.setattr(bench_cpu, "pid_times", times.get)
    assert tree_ticks(10) == 10 + 7 + 120 + 40 + 2
    assert tree_ticks(14) is None
