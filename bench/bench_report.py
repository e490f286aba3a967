"""The benchmark's outputs: the markdown report (machine, versions, results table, targets with PASS/MISS,
exact commands, server log problems, profile) and the PNG chart (matplotlib, Agg backend)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_baselines import (
    FASTIFY,
    KAFKAJS,
    AdmitOutcome,
    HelloOutcome,
    OriginalOutcome,
    PgbenchOutcome,
    PlainFlashOutcome,
    kafka_version,
    pgbench_path,
)
from bench_common import COMMANDS, WrkResult
from bench_cpu import CEILING_BUSY, COMPONENTS, CpuBreakdown
from bench_profile import Profile
from bench_scenarios import BookAsyncOutcome, BrowseOutcome, FastifyReads, FlashOutcome, IntakeOutcome, Sizes
from bench_servers import ServerSpec

# The targets (see bench/README.md).
EMBEDDED_VS_FASTIFY = 1.0
DISTRIBUTED2_VS_FASTIFY = 0.6
DISTRIBUTED2_MIN_RPS = 5_000
FLASH_DECIDED_S = 3.0
FLASH_P99_MS = 250.0
DECISIONS_VS_PGBENCH = 0.5
RSS_LIMIT_MB = 200.0
BOOK_ASYNC_VS_ORIGINAL = 1.0  # issue 10: ours on the original's queued route >= 1.0 x the original as written
INTAKE_ONLY_VS_ORIGINAL = 1.5  # issue 10: the same, intake only (TICKETBLITZ_CONSUMERS=0), distributed
FLASH_P99_VS_FASTIFY = 1.0  # issue 10: flash p99 <= 1.0 x the Fastify hello's p99 under the same driver
FLASH_DECIDED_AFTER_ANSWER_S = 1.0  # issue 10: all decided <= 1 s after the last answer
BOOKINGS_VS_FASTIFY = 0.5  # issue 10: POST /api/events/{id}/bookings quantity 1, embedded, vs Fastify hello POST
READS_VS_FASTIFY = 0.5  # issue 10: GET event / booking vs Fastify hello GET; seat map vs Fastify's same bytes
DOOR_VS_FASTIFY = 1.0  # issue 10: the door's hello world vs Fastify's


@dataclass
class ServerResult:
    spec: ServerSpec
    command: str = ""
    flash: FlashOutcome | None = None
    hot: FlashOutcome | None = None
    intake: IntakeOutcome | None = None
    browse: BrowseOutcome | None = None
    book_async: BookAsyncOutcome | None = None
    profile: Profile | None = None
    profile_intake: IntakeOutcome | None = None
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)
    cleanup_problems: list[str] = field(default_factory=list)
    error: str | None = None

    def failures(self) -> list[str]:
        """Everything that makes the run FAIL (correctness, not speed)."""
        out = []
        if self.error:
            out.append(f"{self.spec.name}: {self.error.splitlines()[0]}")
        if self.exit_code != 0:
            out.append(f"{self.spec.name}: server exit status {self.exit_code} after SIGTERM (0 expected)")
        for f in (self.flash, self.hot):
            if f is not None and not f.passed:
                out.append(f"{self.spec.name}: flash.py {f.kind} failed: {'; '.join(f.report.get('exit_reasons', []))}")
        for label, i in (("(c) intake", self.intake), ("profile intake", self.profile_intake)):
            if i is not None and not i.passed:
                failed = [name for name, ok in i.checks.items() if not ok]
                out.append(f"{self.spec.name}: {label} checks failed: {', '.join(failed)}")
        if self.browse is not None and not self.browse.passed:
            out.append(f"{self.spec.name}: (d) reads had socket errors or unexpected statuses")
        if self.book_async is not None and not self.book_async.passed:
            failed = [name for name, ok in self.book_async.checks.items() if not ok]
            out.append(f"{self.spec.name}: (e) book-async checks failed: {', '.join(failed)}")
        out += [f"{self.spec.name}: cleanup: {p}" for p in self.cleanup_problems]
        return out

    def peak_decisions(self) -> int | None:
        rates = [o.timeline.peak_decisions for o in (self.flash, self.intake) if o is not None and o.timeline]
        return max(rates) if rates else None


@dataclass
class Baselines:
    fastify: HelloOutcome | None = None
    quart: HelloOutcome | None = None
    door: HelloOutcome | None = None
    original: OriginalOutcome | None = None
    fastify_flash: PlainFlashOutcome | None = None
    fastify_reads: FastifyReads | None = None  # measured during the first server's (d)
    admission: list[AdmitOutcome] = field(default_factory=list)
    pgbench: PgbenchOutcome | None = None
    errors: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out = [f"baseline: {e}" for e in self.errors]
        out += [f"baseline {h.name}: socket errors, non-200 answers or exit {h.exit_code}"
                for h in (self.fastify, self.quart, self.door) if h is not None and not h.passed]
        if self.original is not None and not self.original.passed:
            out.append(f"baseline fastify-original: socket errors, non-202 answers or exit {self.original.exit_code}")
        if self.fastify_flash is not None and not self.fastify_flash.passed:
            out.append(f"baseline fastify-flash: flash.py plain exit {self.fastify_flash.exit_code}, server exit "
                       f"{self.fastify_flash.server_exit_code}")
        if self.fastify_reads is not None and not self.fastify_reads.passed:
            out.append("baseline fastify reads: socket errors, non-200 answers or exit "
                       f"{self.fastify_reads.exit_codes}")
        out += [f"baseline redis admission batch {a.batch}: admitted {a.admitted} of {a.expected}"
                for a in self.admission if not a.passed]
        return out


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    ratio: str
    ok: bool | None  # None: could not be measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")


# ---------------------------------------------------------------------- machine and versions


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    return {"nproc": str(os.cpu_count()), "memory": f"{total_kb / 1024 / 1024:.1f} GiB",
            "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
            "kernel": platform.release()}


def _output(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def versions(urls: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for dist in ("trio", "hypercorn", "quart", "quart-trio", "httptools", "orjson", "psycopg", "redis",
                 "kafka-python", "matplotlib", "py-spy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["node"] = _output(["node", "--version"])
    try:
        out["fastify"] = json.loads((FASTIFY / "package.json").read_text())["version"]
    except OSError:
        out["fastify"] = "not installed"
    try:
        out["kafkajs"] = json.loads((KAFKAJS / "package.json").read_text())["version"]
    except OSError:
        out["kafkajs"] = "not installed"
    out["wrk"] = _output(["wrk", "-v"])
    out["redis-benchmark"] = _output(["redis-benchmark", "--version"])
    out["pgbench"] = _output([pgbench_path() or "pgbench", "--version"])
    if urls:
        try:
            import redis

            with redis.Redis.from_url(urls["TICKETBLITZ_REDIS_URL"], socket_timeout=5) as client:
                out["redis server"] = str(client.info("server")["redis_version"])
        except Exception as exc:
            out["redis server"] = f"unavailable ({exc.__class__.__name__})"
        try:
            import psycopg

            with psycopg.connect(urls["TICKETBLITZ_DATABASE_URL"], connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                out["postgres"] = str(row[0]) if row else "?"
        except Exception as exc:
            out["postgres"] = f"unavailable ({exc.__class__.__name__})"
        out["kafka"] = kafka_version()
    return out


# ---------------------------------------------------------------------- targets


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "—"


def _at_least(name: str, value: float | None, base: float | None, factor: float, unit: str, base_name: str,
              ) -> Target:
    """A `value >= factor x base` target (n/a when either was not measured)."""
    goal = f"≥ {_num(base * factor, unit)} ({factor:g} x {base_name})" if base else f"{base_name} not measured"
    return Target(name, _num(value, unit), goal, _ratio(value, base),
                  None if value is None or not base else value >= factor * base)


def issue10_targets(servers: dict[str, ServerResult], base: Baselines) -> list[Target]:
    """Issue 10's targets, every one a ratio to a baseline measured in the same run."""
    out: list[Target] = []
    fastify = base.fastify.wrk.rps if base.fastify else None
    orig = base.original.wrk.rps if base.original else None
    plain_p99 = base.fastify_flash.p99_ms if base.fastify_flash else None
    reads = base.fastify_reads
    for name in ("distributed1", "embedded", "distributed1-intake", "distributed2"):
        r = servers.get(name)
        if r is None or r.book_async is None:
            continue
        factor = INTAKE_ONLY_VS_ORIGINAL if r.spec.consumers == 0 else BOOK_ASYNC_VS_ORIGINAL
        out.append(_at_least(f"{name}: (e) /api/book-async, named seats ≥ {factor:g} x the original's route",
                             r.book_async.wrk.rps, orig, factor, " req/s", "original"))
    embedded = servers.get("embedded")
    if embedded is not None and embedded.intake is not None:
        out.append(_at_least("embedded: (c) POST /api/events/{id}/bookings quantity 1 ≥ 0.5 x Fastify hello POST",
                             embedded.intake.wrk.rps, fastify, BOOKINGS_VS_FASTIFY, " req/s", "Fastify POST"))
    for name, r in servers.items():
        if r.browse is None:
            continue
        got = r.browse.reads
        hello_get = reads.hello_get.rps if reads else None
        for what in ("event", "booking"):
            if what in got:
                out.append(_at_least(f"{name}: (d) GET {what} ≥ 0.5 x Fastify hello GET", got[what].rps, hello_get,
                                     READS_VS_FASTIFY, " req/s", "Fastify GET"))
        for what, theirs in (("seats", reads.seats if reads else None),
                             ("seats gzip", reads.seats_gzip if reads else None)):
            if what in got:
                out.append(_at_least(f"{name}: (d) GET 10,000-seat map{' (gzip)' if 'gzip' in what else ''} ≥ 0.5 x "
                                     "Fastify serving the same bytes", got[what].rps, theirs.rps if theirs else None,
                                     READS_VS_FASTIFY, " req/s", "Fastify bytes"))
    for name, r in servers.items():
        f = r.flash
        if f is None:
            continue
        p99 = f.report["burst"]["latency_ms"]["p99"]
        out.append(Target(f"{name}: (a) flash p99 ≤ 1.0 x Fastify hello p99 under the same driver",
                          _num(p99, " ms"), f"≤ {_num(plain_p99, ' ms')}" if plain_p99 else "Fastify not measured",
                          _ratio(p99, plain_p99),
                          None if p99 is None or plain_p99 is None else p99 <= FLASH_P99_VS_FASTIFY * plain_p99))
        lag, v = f.decided_after_last_answer, f.report["verification"]
        out.append(Target(f"{name}: (a) flash all decided ≤ 1 s after the last answer", _num(lag, " s", 3), "≤ 1 s",
                          _ratio(None if lag is None else max(lag, 0.0), FLASH_DECIDED_AFTER_ANSWER_S),
                          None if lag is None else (lag <= FLASH_DECIDED_AFTER_ANSWER_S and v["still_pending"] == 0)))
        out.append(Target(f"{name}: (a) flash oversold 0", str(v["oversold"]), "0", "—", v["oversold"] == 0))
    pg = base.pgbench.tps if base.pgbench else None
    for name, r in servers.items():
        if r.spec.consumers == 0:
            continue
        out.append(_at_least(f"{name}: decisions/s ≥ 0.5 x pgbench tps", r.peak_decisions(), pg,
                             DECISIONS_VS_PGBENCH, "/s", "pgbench"))
    door = base.door.wrk.rps if base.door else None
    if base.door is not None:
        out.append(_at_least("door hello world ≥ 1.0 x Fastify hello (POST)", door, fastify, DOOR_VS_FASTIFY,
                             " req/s", "Fastify POST"))
    return out


def targets(servers: dict[str, ServerResult], base: Baselines, sizes: Sizes) -> list[Target]:
    """Issue 10's targets first, then the earlier issues' ones that still hold."""
    out = issue10_targets(servers, base)
    fastify = base.fastify.wrk.rps if base.fastify else None
    d2 = servers.get("distributed2")
    if d2 is not None and d2.intake is not None:
        rps = d2.intake.wrk.rps
        out.append(Target("earlier: distributed 2-proc intake (c) ≥ 0.6 x Fastify POST", _num(rps, " req/s"),
                          f"≥ {_num(fastify and fastify * DISTRIBUTED2_VS_FASTIFY, ' req/s')}",
                          _ratio(rps, fastify),
                          None if fastify is None else rps >= DISTRIBUTED2_VS_FASTIFY * fastify))
        out.append(Target("earlier: distributed 2-proc intake (c) ≥ 5,000 req/s", _num(rps, " req/s"), "≥ 5,000 req/s",
                          _ratio(rps, DISTRIBUTED2_MIN_RPS), rps >= DISTRIBUTED2_MIN_RPS))
    for name, r in servers.items():
        f = r.flash
        if f is None:
            continue
        b = f.report["burst"]
        clean = b["answered"] == sizes.flash_clients and not b["socket_errors"]
        out.append(Target(f"earlier: {name}: flash — {sizes.flash_clients:,} answered, no socket errors",
                          f"{b['answered']:,} answered, socket errors {b['socket_errors'] or 'none'}",
                          f"{sizes.flash_clients:,}, none", "—", clean))
        p99 = b["latency_ms"]["p99"]
        out.append(Target(f"earlier: {name}: flash — p99 ≤ 250 ms", _num(p99, " ms"), "≤ 250 ms",
                          _ratio(p99, FLASH_P99_MS), None if p99 is None else p99 <= FLASH_P99_MS))
        if f.rss:
            worst = max(f.rss, key=lambda p: p["peak_rss_mb"])
            each = ", ".join(f"{p['role']} {p['peak_rss_mb']:.0f}" for p in f.rss)
            out.append(Target(f"earlier: {name}: ≤ 200 MB RSS per process at {sizes.flash_clients:,} connections",
                              f"{each} MB", "≤ 200 MB", _ratio(worst["peak_rss_mb"], RSS_LIMIT_MB),
                              worst["peak_rss_mb"] <= RSS_LIMIT_MB))
    return out


def analysis_notes(servers: dict[str, ServerResult], base: Baselines) -> list[str]:
    """Facts that explain the numbers, computed from them."""
    notes = []
    for name, r in servers.items():
        f = r.flash
        if f is not None:
            b = f.report["burst"]
            if b["requests_per_second"]:
                notes.append(
                    f"{name} (a): the {b['clients']:,} answers took {b['burst_seconds']:.2f} s "
                    f"({b['requests_per_second']:,.0f} req/s); the driver wrote its last request "
                    f"{b['send_spread_ms']} ms after the release. At a steady rate p99 is close to the whole "
                    f"burst, so p99 ≤ 250 ms needs about {b['clients'] / 0.25:,.0f} req/s for the burst.")
        for label, o in (("(a)", r.flash), ("(b)", r.hot)):
            d = o.report.get("decisions") if o is not None else None
            if d and d.get("server_last_decision") is not None and d["server_last_decision"] > FLASH_DECIDED_S:
                notes.append(f"{name} {label}: the last 202 was decided {d['server_last_decision']:.1f} s after the "
                             "burst (see the server log below).")
    if "embedded" in servers and base.pgbench is not None:
        notes.append("embedded decides in SQLite; its decisions/s are compared with PostgreSQL's pgbench tps only "
                     "because that is the target as written.")
    return notes


# ---------------------------------------------------------------------- markdown


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())) or "—"


def _wrk_errors(w: WrkResult) -> str:
    sock = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v) or "0"
    return f"{w.unexpected} / {w.server_errors} / {sock}"


def _rss(rss: list[dict[str, Any]]) -> str:
    return "<br>".join(f"{p['role']} {p['pid']}: {p['peak_rss_mb']:.0f} MB (peak {p['peak_fds']:,} fds)"
                       for p in rss) or "—"


def _cpu(cpu: list[dict[str, Any]], client: tuple[str, float | None] | None = None) -> str:
    parts = [f"{p['role']} {p['pid']}: {p['cpu_s']:.1f} s" for p in cpu]
    if client is not None and client[1] is not None:
        parts.append(f"({client[0]}: {client[1]:.1f} s)")
    return "<br>".join(parts) or "—"


def _check(ok: bool) -> str:
    return "OK" if ok else "**FAIL**"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _lat(w: WrkResult) -> tuple[str, str, str]:
    return _num(w.latency_ms["p50"], "", 1), _num(w.latency_ms["p99"], "", 1), _num(w.latency_ms["max"], "", 1)


def results_table(servers: dict[str, ServerResult], base: Baselines) -> list[str]:
    head = [_row("server", "scenario", "req/s", "p50 ms", "p99 ms", "max ms", "answers",
                 "non-2xx/409 · 5xx · socket errors", "time to all decided", "decisions/s (peak 1 s · mean)",
                 "RSS per process at peak", "server CPU during the run", "checks"),
            "|---|---|---:|---:|---:|---:|---|---|---|---|---|---|---|"]
    rows = []
    for name, r in servers.items():
        if r.error and not (r.flash or r.intake):
            rows.append(_row(name, "—", *[""] * 10, f"**FAIL**: {r.error.splitlines()[0]}"))
            continue
        for f in (r.flash, r.hot):
            if f is None:
                continue
            b, v, d = f.report["burst"], f.report["verification"], f.report.get("decisions")
            lat = b["latency_ms"]
            driver = f" (driver saw {d['time_to_all_decided']} s)" if d and d.get("time_to_all_decided") else ""
            tl = f.timeline
            rows.append(_row(
                name, f"({'a' if f.kind == 'flash' else 'b'}) {f.kind} {b['clients']:,} clients, "
                f"{f.report['seats']:,} seats", f"{b['requests_per_second']:,.0f}", _num(lat["p50"], "", 1),
                _num(lat["p99"], "", 1), _num(lat["max"], "", 1),
                f"{_statuses(b['statuses'])}; held {v['held']:,}, oversold {v['oversold']}", _socket_summary(b),
                f"{_num(f.decided_after_last_request, ' s', 3)} after the last request{driver}",
                f"{tl.peak_decisions if tl else '—'} · {_num(tl.mean_decisions if tl else None)}",
                _rss(f.rss) if f.kind == "flash" else "—",
                _cpu(f.cpu, ("flash.py", b.get("driver_cpu_burst_seconds"))), _check(f.passed)))
        if r.intake is not None:
            i, w = r.intake, r.intake.wrk
            rows.append(_row(
                name, f"(c) intake {w.seconds:.0f} s, 200,000 seats", f"{w.rps:,.0f}", *_lat(w),
                f"{_statuses(w.statuses)}; held+sold {i.counts['held'] + i.counts['sold']:,}", _wrk_errors(w),
                f"{_num(i.time_to_covered, ' s', 2)} after wrk ended",
                f"{i.timeline.peak_decisions:,} · {_num(i.timeline.mean_decisions)}", "—",
                _cpu(i.cpu, ("wrk", w.client_cpu_s)), _check(i.passed)))
        if r.book_async is not None:
            ba, w = r.book_async, r.book_async.wrk
            ratio = f" ({_ratio(w.rps, base.original.wrk.rps)} the original)" if base.original else ""
            rows.append(_row(
                name, f"(e) POST /api/book-async, named seats, {w.seconds:.0f} s, 200,000 seats",
                f"{w.rps:,.0f}{ratio}", *_lat(w), f"{_statuses(w.statuses)}; {ba.timeline.bookings:,} bookings",
                _wrk_errors(w), f"{_num(ba.time_to_decided, ' s', 1)} after wrk ended",
                f"{ba.timeline.peak_decisions:,} · {_num(ba.timeline.mean_decisions)}", "—",
                _cpu(ba.cpu, ("wrk", w.client_cpu_s)), _check(ba.passed)))
        if r.browse is not None:
            for what, w in r.browse.reads.items():
                size = r.browse.sizes.get(what)
                rows.append(_row(name, f"(d) GET {what}, 10,000-seat event" + (f" ({size:,} B)" if size else ""),
                                 f"{w.rps:,.0f}", *_lat(w), _statuses(w.statuses), _wrk_errors(w), "—", "—", "—", "—",
                                 _check(r.browse.passed)))
    for h in (base.fastify, base.quart, base.door):
        if h is not None:
            w = h.wrk
            rows.append(_row("baseline", f"{h.name} hello world, POST /hello", f"{w.rps:,.0f}", *_lat(w),
                             _statuses(w.statuses), _wrk_errors(w), "—", "—", "—", "—", _check(h.passed)))
    if base.fastify_reads is not None:
        fr = base.fastify_reads
        for what, w in (("hello world, GET /hello", fr.hello_get), ("the seat map's bytes from memory, GET /bytes",
                                                                    fr.seats),
                        ("the seat map's gzip bytes from memory, GET /bytes", fr.seats_gzip)):
            rows.append(_row("baseline", f"fastify {what}", f"{w.rps:,.0f}", *_lat(w), _statuses(w.statuses),
                             _wrk_errors(w), "—", "—", "—", "—", _check(fr.passed)))
    if base.original is not None:
        o, w = base.original, base.original.wrk
        rows.append(_row("baseline", "the original's route: Fastify 5 + kafkajs, POST /api/book-async, one "
                         "producer.send (acks = all), 202", f"{w.rps:,.0f}", *_lat(w), _statuses(w.statuses),
                         _wrk_errors(w), "—", "—", "—", "—", _check(o.passed)))
    if base.fastify_flash is not None:
        ff = base.fastify_flash
        b = ff.report["burst"]
        lat = b["latency_ms"]
        rows.append(_row("baseline", f"flash.py plain: {b['clients']:,} fans, one POST /hello each to the Fastify "
                         "hello world", f"{b['requests_per_second']:,.0f}", _num(lat["p50"], "", 1),
                         _num(lat["p99"], "", 1), _num(lat["max"], "", 1), _statuses(b["statuses"]),
                         _socket_summary(b), "—", "—", "—", f"(flash.py: {b['driver_cpu_burst_seconds']:.1f} s)",
                         _check(ff.passed)))
    for a in base.admission:
        rows.append(_row("baseline", f"redis-benchmark EVALSHA edge_admit, batch {a.batch}",
                         f"{a.calls_per_second:,.0f} calls/s = {a.admits_per_second:,.0f} admits/s",
                         f"{a.p50_ms:.2f}", f"{a.p99_ms:.2f}", "—", f"{a.admitted:,} admitted of {a.expected:,}",
                         "—", "—", "—", "—", "—", _check(a.passed)))
    if base.pgbench is not None:
        p = base.pgbench
        rows.append(_row("baseline", f"pgbench conditional seat claim, {p.rows:,} rows, -c 8 -j 2", f"{p.tps:,.0f} tps",
                         f"{_num(p.latency_ms, '', 2)} (avg)", "—", "—",
                         f"{p.transactions:,} transactions, {p.claimed:,} seats claimed", "—", "—", "—", "—", "—",
                         "OK"))
    return head + rows


# ---------------------------------------------------------------------- 1 -> 2 processes


SHARED_OTHER = 0.2  # cores of "other" (processes outside the run) worth a word in the ceiling line
SCALING_RUNS = (("(c) intake", "intake"), ("(e) book-async", "book_async"))


def _sustained(r: ServerResult, attr: str) -> tuple[float, CpuBreakdown | None] | None:
    """(req/s, CPU breakdown) of one sustained run of a server, None when it did not run."""
    outcome: IntakeOutcome | BookAsyncOutcome | None = getattr(r, attr)
    return None if outcome is None else (outcome.wrk.rps, outcome.cpu_window)


def scaling(servers: dict[str, ServerResult]) -> list[dict[str, Any]]:
    """For (c) and (e): distributed1 and distributed2 req/s, their ratio and each one's CPU breakdown in
    cores (the JSON's `scaling`); empty when neither distributed server ran those scenarios."""
    out = []
    for label, attr in SCALING_RUNS:
        row: dict[str, Any] = {"scenario": label}
        for name in ("distributed1", "distributed2"):
            r = servers.get(name)
            got = _sustained(r, attr) if r is not None else None
            row[name] = None if got is None else {
                "rps": round(got[0], 1),
                "cores": None if got[1] is None else {
                    **{k: _round(got[1].cores(v)) for k, v in got[1].cpu_s.items()},
                    "other": _round(got[1].cores(got[1].other_s)), "idle": round(got[1].idle_cores, 2),
                    "postgres_this_database": _round(got[1].cores(got[1].postgres_ours_s)),
                    "busy": round(got[1].busy_cores, 2), "of": got[1].ncpu},
                "at_ceiling": None if got[1] is None else got[1].at_ceiling}
        one, two = row["distributed1"], row["distributed2"]
        if one is None and two is None:
            continue
        row["ratio"] = round(two["rps"] / one["rps"], 2) if one and two and one["rps"] else None
        out.append(row)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def scaling_section(servers: dict[str, ServerResult]) -> list[str]:
    """The report's "Scaling 1 -> 2 processes" section: req/s and ratio, the cores each component used, and
    per run whether the machine's CPUs were the ceiling."""
    rows = scaling(servers)
    if not rows:
        return []
    lines = ["## Scaling 1 → 2 processes", "",
             "| scenario | distributed1 req/s | distributed2 req/s | 2 / 1 | distributed1 CPU (cores) | "
             "distributed2 CPU (cores) |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        cells = []
        for name in ("distributed1", "distributed2"):
            r = servers.get(name)
            got = _sustained(r, _attr(row["scenario"])) if r is not None else None
            cells.append((_num(got[0]) if got else "—", got[1].summary() if got and got[1] else "—"))
        lines.append(_row(row["scenario"], cells[0][0], cells[1][0],
                          "—" if row["ratio"] is None else f"{row['ratio']:.2f}x", cells[0][1], cells[1][1]))
    lines += ["", "| server | scenario | req/s | " + " | ".join(COMPONENTS)
              + " | other | idle | busy of cores | postgres: this run's database | busiest in other |",
              "|---|---|---:|" + "---:|" * (len(COMPONENTS) + 4) + "---|"]
    ceilings = []
    for name, r in servers.items():
        for label, attr in SCALING_RUNS:
            got = _sustained(r, attr)
            if got is None:
                continue
            rps, b = got
            if b is None:
                continue
            lines.append(_row(name, label, _num(rps), *[_num(b.cores(b.cpu_s.get(c)), "", 2) if c in b.cpu_s
                                                           else "—" for c in COMPONENTS],
                              _num(b.cores(b.other_s), "", 2), _num(b.idle_cores, "", 2),
                              f"{b.busy_cores:.2f} of {b.ncpu}", _num(b.cores(b.postgres_ours_s), "", 2),
                              _other(b)))
            server = b.cores(b.cpu_s.get("server")) or 0.0
            other = b.cores(b.other_s) or 0.0
            shared = (f"; {other:.2f} of them went to other processes: the machine is shared, the run is noisy"
                      if other >= SHARED_OTHER else "")
            if b.at_ceiling:
                ceilings.append(f"{name} {label}: {b.busy_cores:.2f} of {b.ncpu} cores busy (≥ {CEILING_BUSY:.0%}"
                                f"{shared}), the server itself {server:.2f}: the machine is the limit, not the server; "
                                "more server processes can only take CPU from wrk and the services.")
            else:
                bound = [f"{p['role']} {p['pid']} {p['cpu_s'] / b.wall_s:.2f}" for p in b.server_processes
                         if b.wall_s > 0 and p["cpu_s"] / b.wall_s >= CEILING_BUSY]
                why = (f"a server process is CPU-bound ({', '.join(bound)} cores)" if bound else
                       "no server process is CPU-bound either: the server waits (the services' round trips, "
                       "the queue, wrk's connections)")
                ceilings.append(f"{name} {label}: {b.idle_cores:.2f} of {b.ncpu} cores idle (busy {b.busy_cores:.2f}"
                                f" < {CEILING_BUSY:.0%}{shared}), the server itself {server:.2f}: the machine's CPUs "
                                f"are not the limit of this run; {why}.")
    lines += ["", *[f"- {c}" for c in ceilings], "",
              "Cores = CPU seconds / wall seconds of the wrk window, sampled from /proc at its start and end "
              "(bench/README.md): server = the server's whole process tree (supervisor and workers with "
              "`--workers 2`); wrk = its own CPU (getrusage of the finished child); postgres = the postmaster, "
              "every backend and the backends that ended in the window (in brackets and in its own column: the "
              "backends connected to this server's database); kafka = the broker's JVM; redis = redis-server; "
              "bench = run.py itself (with the (c) probe); other = the machine's busy time that none of them used "
              "(other processes on a shared machine, kernel threads; the busiest are named); idle = idle + iowait "
              "of /proc/stat. PostgreSQL, Redis and Kafka are shared: their share includes whatever else used them "
              "meanwhile.", ""]
    return lines


def _other(b: CpuBreakdown) -> str:
    """The busiest processes within "other", and how much of it no live process accounts for."""
    named = ", ".join(f"{o['name']} {o['pid']}: {b.cores(o['cpu_s']) or 0:.2f}" for o in b.other_top) or "—"
    if b.other_live_s is None:
        return named
    gone = b.cores(b.other_s - b.other_live_s) or 0.0
    return f"{named}; {gone:.2f} in processes that ended within the window or in no process" if gone >= 0.01 \
        else named


def _attr(label: str) -> str:
    return dict(SCALING_RUNS)[label]


def _socket_summary(burst: dict[str, Any]) -> str:
    statuses = burst["statuses"]
    odd = sum(n for s, n in statuses.items() if not (s.startswith("2") or s == "409"))
    five = sum(n for s, n in statuses.items() if s.startswith("5"))
    sock = ", ".join(f"{k} {v}" for k, v in burst["socket_errors"].items()) or "0"
    return f"{odd} / {five} / {sock}"


def markdown(*, title: str, started: str, finished: str, commit: str, dirty: list[str], argv: list[str],
             sizes: Sizes, machine_info: dict[str, str], version_info: dict[str, str],
             servers: dict[str, ServerResult], base: Baselines, goals: list[Target], failures: list[str],
             chart: str | None, profile: Profile | None, notes: list[str]) -> str:
    lines = [f"# {title}", "",
             f"Run `{' '.join(argv)}` from {started} to {finished} (UTC) at commit `{commit}`"
             + (f" with uncommitted changes in {', '.join(f'`{d}`' for d in dirty)}" if dirty else "") + ".", "",
             f"**Verification: {'PASS' if not failures else 'FAIL'}**"
             + ("" if not failures else "\n\n" + "\n".join(f"- {f}" for f in failures)), "",
             "## Machine", "",
             "| nproc | memory | CPU | kernel |", "|---|---|---|---|",
             _row(machine_info["nproc"], machine_info["memory"], machine_info["cpu"], machine_info["kernel"]),
             "", "## Versions", "", "| component | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in version_info.items()]
    lines += ["", "## Targets", "", "| target | measured | goal | ratio | result |", "|---|---|---|---|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.goal} | {t.ratio} | **{t.verdict}** |" for t in goals]
    lines += ["", "## Results", "", *results_table(servers, base), ""]
    lines += ["Latencies: flash/hot from the release of all fans to each complete answer (bench/flash.py, which shares "
              "the machine's CPUs with the server); wrk from each request to its answer. \"non-2xx/409 · 5xx · socket "
              "errors\": answers other than 2xx and 409, 5xx answers, wrk/flash socket errors. Decisions/s: from the "
              "bookings' `updated_at` in the store (one timestamp per decided batch), busiest wall-clock second and "
              "mean between first and last decision; during (c) they cannot exceed the intake rate. "
              "RSS: peak VmRSS of each server process during the flash sale (a), with the most descriptors it had "
              "open (its share of the fans' connections). Server CPU: user + system seconds each server process "
              "used while the driver ran, and in brackets the driver's own (flash.py: during the burst only); the "
              "machine has 2 cores for everything.", ""]
    lines += scaling_section(servers)
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if chart:
        lines += ["## Chart", "", f"![throughput and latency over time]({chart})", ""]
    if profile is not None:
        lines += ["## Profile: embedded server during sustained intake (c)", "",
                  f"py-spy, {profile.samples:,} samples at 100 Hz per thread (all threads, idle excluded), "
                  "taken during an extra intake run so that the measured runs are not slowed down; flame graph: "
                  f"`{profile.svg.name}`. Own time = samples whose innermost Python frame is the function; time "
                  "in C (sqlite3, sockets, orjson) counts for the Python function that called it.", "",
                  "| # | function (own time) | samples | share |", "|---:|---|---:|---:|"]
        lines += [f"| {i} | `{name}` | {n:,} | {pct}% |" for i, (name, n, pct) in enumerate(profile.top, 1)]
        lines += ["", "| thread | samples | share | its top functions by own time (share of all samples) |",
                  "|---|---:|---:|---|"]
        lines += [_row(f"`{name}`", f"{n:,}", f"{pct}%",
                       "<br>".join(f"`{f}` {p}%" for f, _, p in profile.top_by_thread.get(name, [])))
                  for name, n, pct in profile.threads]
        lines += ["", "Trio names a cached worker thread after a call it once ran, so one thread name covers every "
                  "store call that thread made (intake inserts and consumer decisions alike).", "",
                  "| # | TicketBlitz function (inclusive time) | samples | share |", "|---:|---|---:|---:|"]
        lines += [f"| {i} | `{name}` | {n:,} | {pct}% |" for i, (name, n, pct) in enumerate(profile.top_inclusive, 1)]
        lines += [f"- py-spy: {e}" for e in profile.errors]
        lines.append("")
    lines += ["## Server logs: errors and warnings", ""]
    for name, r in servers.items():
        lines.append(f"- **{name}** (exit status {r.exit_code}): "
                     + ("none" if not r.problems else f"{len(r.problems)} line(s)"))
        if r.problems:
            lines += ["", "```", *r.problems, "```", ""]
    lines += ["", "## Commands", "", "Exactly what ran, in order (secrets masked):", "", "```"]
    lines += [f"# {label}\n{cmd}" for label, cmd in COMMANDS.entries]
    lines += ["```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- chart


def chart(path: Path, servers: dict[str, ServerResult], base: Baselines) -> bool:
    """Intake throughput, decisions/s and probe latency over time during (c), one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: r.intake for name, r in servers.items() if r.intake is not None}
    if not runs:
        return False
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    for name, i in runs.items():
        t0 = i.wrk.started_at  # each per-second count is drawn at the middle of its wall-clock second
        answers = i.wrk.answers_per_second
        ax1.plot([s + 0.5 - t0 for s in answers], list(answers.values()), marker="o", ms=3,
                 label=f"{name} (mean {i.wrk.rps:,.0f} req/s)")
        decided = i.timeline.decided_per_second
        ax2.plot([s + 0.5 - t0 for s in decided], list(decided.values()), marker="o", ms=3, label=name)
        if i.probe:
            ax3.plot([t - i.wrk.started_at for t, _, _ in i.probe], [ms for _, ms, _ in i.probe], ".", ms=4,
                     label=f"{name} probe")
    for h, style in ((base.fastify, "--"), (base.door, ":")):
        if h is not None:
            ax1.axhline(h.wrk.rps, color="grey", linestyle=style, label=f"{h.name} hello POST {h.wrk.rps:,.0f} req/s")
    if base.pgbench is not None:
        ax2.axhline(base.pgbench.tps, color="grey", linestyle="--", label=f"pgbench {base.pgbench.tps:,.0f} tps")
        ax2.axhline(base.pgbench.tps * DECISIONS_VS_PGBENCH, color="grey", linestyle=":",
                    label="target: 0.5 x pgbench")
    ax1.set_ylabel("answers/s (wrk)")
    ax1.set_title("(c) sustained intake: POST /api/events/{id}/bookings, wrk -t2 -c100")
    ax1.set_yscale("log")
    ax2.set_ylabel("decisions/s (store updated_at)")
    ax2.set_yscale("log")
    ax3.set_ylabel("probe booking latency (ms)")
    ax3.set_yscale("log")
    ax3.set_xlabel("seconds since wrk started")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
