"""Chaos: `serve --workers 2` on a private PostgreSQL/Redis/Kafka, a burst of thousands of booking requests,
one fault injected mid-burst per scenario, then the invariants of API.md:

- every booking answered 202/200 is final (not pending) within 30 s of recovery;
- no seat in two held/confirmed bookings, counts agree with the seat map (tests/invariants.py);
- the Redis edge counters agree with the store once everything is final;
- no Idempotency-Key with two bookings (and no booking for a request refused or given up);
- /readyz back to 200.

Short mode (this file under `make test`): 2,400 requests per scenario, each fault once. Long mode
(`make chaos`, TB_CHAOS_MODE=long): more requests, each fault three times. Results:
bench/results/chaos-<UTC date>.md (a table per fault), also printed at the end of the session.

Everything is bounded (each scenario has a hard budget), 127.0.0.1 only, and stopped by PID in the
fixtures' finalizers, also when a test fails. The default services (`make services`) are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from chaos_harness import (
    FINAL,
    ROOT,
    Connection,
    Outcome,
    PrivateServices,
    Run,
    booking_statuses,
    client_ports,
    current_mode,
    log,
    partition_of,
    partition_pids,
    pg_rows,
    port_open,
    redis_call,
    seat_number,
    table,
    write_report,
)

MODE = current_mode()
STARTED = time.time()
RUNS = ROOT / ".services" / "chaos" / "runs"  # server and proxy logs, kept for the last KEEP_RUNS sessions
KEEP_RUNS = 5
OUTCOMES: list[Outcome] = []
LOCK_TTL_MS = 1000  # scenario (g): the lease a paused worker outlives
PAUSE = 3.0  # scenario (g): how long the worker stays stopped
PAUSES = 3  # scenario (g): pauses tried until a probe took a contested seat during one
CATCH_TRIES = 25  # scenario (g): short SIGSTOPs per pause to catch the worker holding leases on unwritten seats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chaos_services(request: pytest.FixtureRequest) -> Iterator[PrivateServices]:
    """The private set, started once (module scope: all scenarios live here, and it is stopped as soon as
    the last one is done, not at the end of a whole `make test`), stopped by PID whatever happens; the report."""
    services = PrivateServices()
    try:
        services.up()
        yield services
    finally:
        services.down()
        if OUTCOMES:
            path = write_report(OUTCOMES, STARTED, MODE, services, selected(request))
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            text = f"\n\nchaos results ({MODE.name} mode), written to {path}:\n{table(OUTCOMES)}"
            if reporter is not None and capture is not None:
                with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
                    reporter.write_line(text)
            else:
                print(text)


def selected(request: pytest.FixtureRequest) -> str:
    """'' when this session runs every scenario, else the letters of those it runs (names the report)."""
    chosen = {item.callspec.params["scenario"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_chaos" and hasattr(item, "callspec")}
    return "" if chosen >= set(SCENARIOS) else "".join(sorted(chosen))


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """This session's log folder (git-ignored, outside pytest's rotating tmp dirs, so that the logs a report
    cites still exist later); older sessions' folders beyond KEEP_RUNS are removed."""
    path = RUNS / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(STARTED))
    path.mkdir(parents=True, exist_ok=True)
    for old in sorted(p for p in RUNS.iterdir() if p.is_dir())[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return path


# ====================================================================== the faults
# Each takes the run and the injection's number and returns (when the fault ended, trio clock; notes).


async def kill_one_worker(run: Run, n: int) -> tuple[float, str]:
    servers = run.servers
    assert servers is not None
    with trio.fail_after(60):  # a repeated kill waits for the supervisor to have restarted the last victim
        while len(servers.worker_pids()) < servers.workers:  # noqa: ASYNC110 - polling /proc and the log
            await trio.sleep(0.1)
    index, pid = sorted(servers.worker_pids().items())[n % servers.workers]
    os.kill(pid, signal.SIGKILL)
    end = trio.current_time()

    def restarted() -> str:
        lines = servers.worker_lines()
        after = lines[lines.index((index, pid)) + 1:] if (index, pid) in lines else []
        later = [p for i, p in after if i == index][:1]  # the first start of that worker after the victim's
        died = f"worker {index} (pid {pid}) died with -9; restarting" in servers.log_text()
        return (f"(a) fault {n + 1}: SIGKILL worker {index} pid {pid}; supervisor noticed: {died}; "
                f"restarted as pid {later[0] if later else 'NONE'}")

    run.late_notes.append(restarted)
    return end, f"SIGKILL worker {index} (pid {pid})"


async def kill_all_servers(run: Run, n: int) -> tuple[float, str]:
    servers = run.servers
    assert servers is not None
    victims = await servers.kill_all()
    await trio.sleep(0.5)
    await servers.spawn()
    return trio.current_time(), f"SIGKILL supervisor + workers {victims}, `serve --workers 2` started again 0.5 s later"


async def kill_redis(run: Run, n: int) -> tuple[float, str]:
    pid = run.services.record_pids().get("redis")
    await run.services.run("kill", "redis")
    await trio.sleep(1.0)
    await run.services.run("start", "redis")
    keys = await redis_call(run.services.redis_url, lambda r: r.dbsize())
    return trio.current_time(), f"SIGKILL redis pid {pid}, restarted 1 s later empty ({keys} keys at restart)"


async def stall_redis(run: Run, n: int) -> tuple[float, str]:
    assert run.proxy is not None
    answer = await run.proxy.command("freeze 3 replies")
    await trio.sleep(3.0)
    status = await run.proxy.command("status")
    return trio.current_time(), f"proxy: replies frozen 3 s ({answer}); after: {status}"


async def kill_kafka(run: Run, n: int) -> tuple[float, str]:
    services = run.services
    previous: trio.Event | None = run.fault_state.get("kafka_started")
    if previous is not None:
        await previous.wait()
    pid = services.record_pids().get("kafka")
    await services.run("kill", "kafka")
    await trio.sleep(3.0)
    started = trio.Event()
    run.fault_state["kafka_started"] = started
    t_start = trio.current_time()
    script_took: dict[str, float] = {}

    async def start() -> None:
        try:
            await services.run("start", "kafka", within=120)
        finally:
            script_took["s"] = trio.current_time() - t_start
            started.set()

    assert run.bg is not None
    run.bg.start_soon(start)
    if n == 0:
        run.after_checks.append(lambda: broker_takes_writes(run))
    with trio.fail_after(120):
        while not await trio.to_thread.run_sync(port_open, services.ports["kafka"]):  # noqa: ASYNC110 - a port
            await trio.sleep(0.1)
    end = trio.current_time()
    run.late_notes.append(lambda: f"(e) fault {n + 1}: broker listening {end - t_start:.1f}s after the restart "
                                  f"began; services.sh start kafka took {script_took.get('s', -1):.1f}s")
    return end, f"SIGKILL kafka pid {pid}, restarted 3 s later; listening after {end - t_start:.1f}s"


async def broker_takes_writes(run: Run) -> None:
    """Evidence for (e): does the restarted broker take a write from a fresh producer (acks=all)? One record
    to the scenario's dead-letter topic, marked as a probe, so that no consumer ever sees it."""
    started: trio.Event | None = run.fault_state.get("kafka_started")
    if started is not None:
        await started.wait()

    def produce() -> str:
        from kafka import KafkaProducer

        t0 = time.monotonic()
        producer = KafkaProducer(bootstrap_servers=run.services.kafka_bootstrap, acks="all", client_id="tb-chaos-probe",
                                 request_timeout_ms=5000, max_block_ms=5000)
        try:
            meta = producer.send(f"{run.topic}-dlq", b"chaos probe", headers=[("reason", b"chaos-probe")]).get(10)
            return f"offset {meta.offset} in {time.monotonic() - t0:.2f}s"
        finally:
            producer.close(2)

    try:
        result = await trio.to_thread.run_sync(produce)
    except Exception as exc:
        result = f"failed: {exc!r}"
    run.out.evidence.append(f"(e) after the restart a fresh producer of the suite wrote to the broker: {result}")


async def restart_pg(run: Run, n: int) -> tuple[float, str]:
    pid = run.services.record_pids().get("pg")
    t0 = trio.current_time()
    await run.services.run("restart-pg-immediate")
    end = trio.current_time()
    return end, f"pg_ctl stop -m immediate (postmaster {pid}) + start: {end - t0:.1f}s"


async def pause_worker(run: Run, n: int) -> tuple[float, str]:
    """SIGSTOP a worker caught in the window where fencing matters: it holds seat leases (still in Redis
    after the stop) on seats it has not written yet (still available in the store; how many store
    transactions it has open is recorded: one that holds those rows serializes the others anyway). Keep it
    stopped PAUSE s (> the 1 s lease); once the leases lapsed, ask for those seats through the original's
    /api/book-async (no edge refusal), on partitions that the running worker consumes, so that it takes them
    with newer fencing numbers; then SIGCONT: the stopped worker's writes under its lapsed leases must be
    refused. Up to PAUSES attempts until a probe was decided during a pause."""
    servers, burst = run.servers, run.burst
    assert servers is not None and burst is not None and run.bg is not None
    pattern = f"lock:seat:{run.event_id}:*"
    pg_port = run.services.ports["pg"]

    async def leases() -> dict[str, str]:
        return await redis_call(run.services.redis_url,  # type: ignore[no-any-return]
                                lambda r: {k: r.get(k) for k in r.scan_iter(pattern, count=1000)})

    async def in_transaction(pid: int) -> int:
        ports = await trio.to_thread.run_sync(client_ports, pid, pg_port)
        rows = await pg_rows(run.db_url, "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                             "AND xact_start IS NOT NULL", (sorted(ports),))
        return int(rows[0][0])

    notes, end, total_tries = [], trio.current_time(), 0
    for attempt in range(1, PAUSES + 1):
        stuck: dict[str, str] = {}
        usable: list[str] = []
        pid = index = open_tx = 0
        t_stop = wall_stop = 0.0
        # which worker consumes which partition: a probe for seat S (key "<event>:<S>") must land on a
        # partition of the worker that keeps running, or nobody decides it during the pause
        owners = await partition_pids(run.services.kafka_bootstrap, run.topic, f"{run.topic}-group")
        for _ in range(CATCH_TRIES):
            total_tries += 1
            workers = sorted(servers.worker_pids().items())
            index, pid = workers[total_tries % len(workers)]
            os.kill(pid, signal.SIGSTOP)
            t_stop, wall_stop = trio.current_time(), time.time()
            await trio.sleep(0.1)
            first = await leases()
            await trio.sleep(0.1)
            second = await leases()
            stuck = {k: v for k, v in second.items() if v and first.get(k) == v}
            usable = sorted(seat for seat in (k.rsplit(":", 1)[1] for k in stuck)
                            if owners.get(partition_of(f"{run.event_id}:{seat}")) not in (None, pid))
            if usable:  # not yet written by the stopped worker (it may be past its commit, before unlocking)
                free = await pg_rows(run.db_url, "SELECT id FROM seats WHERE event_id = %s AND id = ANY(%s) "
                                     "AND status = 'available'", (run.event_id, usable))
                usable = sorted(r[0] for r in free)
            open_tx = await in_transaction(pid) if usable else 0
            if usable:  # (an open transaction may hold those rows already: then it is the row lock that wins)
                break
            os.kill(pid, signal.SIGCONT)
            await trio.sleep(burst.rng.uniform(0.02, 0.25))
        else:
            os.kill(pid, signal.SIGSTOP)  # never caught in the window: pause anyway, as the scenario says
            t_stop, wall_stop = trio.current_time(), time.time()
        others = sorted(k.rsplit(":", 1)[1] for k in stuck if k.rsplit(":", 1)[1] not in usable)
        seats = (usable + others)[:64]
        probes = [burst.async_req(100_000 + 100 * attempt + i, f"{burst.tag}-probe{n}.{attempt}-{seat}",
                                  f"{burst.tag}-probe{n}.{attempt}-{i}", seat_number(seat), kind="probe")
                  for i, seat in enumerate(seats)]
        burst.extra.extend(probes)
        run.bg.start_soon(send_probes, run, probes, t_stop + LOCK_TTL_MS / 1000 + 0.2)
        await trio.sleep_until(t_stop + PAUSE - 0.1)
        ids = [b for r in probes for b in r.booking_ids]
        decided = await booking_statuses(run.db_url, ids) if ids else {}
        os.kill(pid, signal.SIGCONT)
        end, wall_cont = trio.current_time(), time.time()
        run.fault_state.setdefault("pauses", []).append(
            {"pid": pid, "index": index, "fault": n + 1, "attempt": attempt, "tries": total_tries, "stuck": stuck,
             "seats": seats, "open_tx": open_tx,
             "usable": usable, "probes": probes, "wall_stop": wall_stop, "wall_cont": wall_cont,
             "decided_in_pause": {i: st for i, st in decided.items() if st in FINAL}})
        held = sum(1 for st in decided.values() if st in ("held", "confirmed"))
        notes.append(f"pause {attempt}: SIGSTOP worker {index} (pid {pid}) {end - t_stop:.1f}s, {len(stuck)} "
                     f"leases ({len(usable)} probe-able), {len(probes)} probes, {held} held during the pause")
        if held:
            break
        await trio.sleep(0.3)
    if n == 0:
        run.after_checks.append(lambda: fencing_evidence(run))
    return end, f"lock TTL {LOCK_TTL_MS} ms, {total_tries} SIGSTOP tries; " + "; ".join(notes)


async def send_probes(run: Run, probes: list[Any], at: float) -> None:
    """The probes of one pause, concurrently, from `at` (trio clock) on, each with the burst's retries."""
    burst = run.burst
    assert burst is not None
    await trio.sleep_until(at)

    async def one(req: Any) -> None:
        conn = Connection(run.port)
        try:
            await burst.send(req, conn)
        finally:
            await conn.close()

    async with trio.open_nursery() as nursery:
        for req in probes:
            nursery.start_soon(one, req)


async def fencing_evidence(run: Run) -> None:
    """Did the stopped worker try to write under a lapsed lease, and was it refused? Evidence from the store
    (who got each contested seat, when; what became of the stopped worker's bookings for it) and from
    pg_stat_statements (the consumer reads the store's fence floor again only after a stale refusal)."""
    out = run.out
    assert run.servers is not None
    for p in run.fault_state.get("pauses", []):
        refused, winners, undecided = [], 0, 0
        for seat in p["seats"]:
            rows = await pg_rows(run.db_url, "SELECT id, status, reason, created_at, updated_at, idem_key, "
                                 "%s = ANY(seat_ids) FROM bookings WHERE event_id = %s AND %s = ANY(requested) "
                                 "ORDER BY created_at", (seat, run.event_id, seat))
            owner = next((r for r in rows if r[1] in ("held", "confirmed") and r[6]), None)
            during = owner is not None and p["wall_stop"] <= owner[4] <= p["wall_cont"]
            if during:
                winners += 1
            for r in rows:
                if r is owner or r[3] >= p["wall_stop"]:
                    continue  # asked for after the stop: not the stopped worker's
                if r[1] == "rejected" and r[4] >= p["wall_cont"] and during:
                    refused.append(f"{seat}: {r[0]} (key {r[5]}, queued {p['wall_stop'] - r[3]:.2f}s before the "
                                   f"stop) rejected/{r[2]} {r[4] - p['wall_cont']:.2f}s after SIGCONT; the seat went "
                                   f"to {owner[0]} (key {owner[5]}) {owner[4] - p['wall_stop']:.2f}s into the pause")
                elif r[1] not in FINAL:
                    undecided += 1
        probes = p["probes"]
        decided = [r for r in probes if r.booking_ids]
        out.evidence.append(
            f"(g) fencing, fault {p['fault']} pause {p['attempt']}: worker {p['index']} pid {p['pid']} stopped "
            f"with {len(p['stuck'])} "
            f"seat leases in Redis and {p['open_tx']} store transactions open (after {p['tries']} SIGSTOP tries): "
            f"{sorted(p['stuck'])[:4]}, probe-able (a partition of the running worker) {p['usable'][:6]}; "
            f"{len(p['decided_in_pause'])} probes decided during the pause "
            f"{dict(Counter(p['decided_in_pause'].values()))}; {len(probes)} probes "
            f"({len(decided)} accepted); {winners} contested seats went to another booking during the pause; "
            f"{len(refused)} bookings of the stopped worker refused after SIGCONT"
            + ("".join(f"\n    - {line}" for line in refused[:8]) if refused else ""))
    try:
        rows = await pg_rows(run.services.admin_url(), "SELECT s.query, s.calls FROM pg_stat_statements s JOIN "
                             "pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND (s.query LIKE %s "
                             "OR s.query LIKE %s)",
                             (run.db_url.rsplit("/", 1)[1], "%max(fence)%", "%id, fence FROM seats%"))
    except Exception as exc:
        out.evidence.append(f"(g) pg_stat_statements unreadable: {exc!r}")
        return
    opens = len(run.servers.seen_workers)
    floor_calls = sum(c for q, c in rows if "max(fence)" in q)
    stale_checks = sum(c for q, c in rows if "id, fence FROM seats" in q)
    out.evidence.append(
        f"(g) pg_stat_statements: fence-floor reads {floor_calls} for {opens} worker starts -> "
        f"{max(0, floor_calls - opens)} stale-lease refusals by the store's fence check (each makes the consumer "
        f"re-read the floor); fenced-claim checks run: {stale_checks}")


SCENARIOS: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "a": ("kill -9 of one worker", kill_one_worker, {}),
    "b": ("kill -9 of all server processes, then restart", kill_all_servers, {}),
    "c": ("Redis kill -9, restarted empty", kill_redis, {}),
    "d": ("Redis stalls its replies 3 s (proxy)", stall_redis, {"use_proxy": True}),
    "e": ("Kafka broker kill -9, restarted 3 s later", kill_kafka, {}),
    "f": ("PostgreSQL restart -m immediate", restart_pg, {}),
    "g": (f"worker SIGSTOP {PAUSE:g} s past its {LOCK_TTL_MS} ms lock TTL, SIGCONT", pause_worker,
          {"server_env": {"TICKETBLITZ_LOCK_TTL_MS": str(LOCK_TTL_MS)}, "rate_factor": 0.6,
           "requests_factor": 1.5, "rows_factor": 2.0}),  # 10 s of named requests that the edge lets through
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_chaos(scenario: str, chaos_services: PrivateServices, run_dir: Path,
                     request: pytest.FixtureRequest) -> None:
    title, fault, options = SCENARIOS[scenario]
    logs = run_dir / scenario
    logs.mkdir(parents=True, exist_ok=True)
    log(f"=== ({scenario}) {title}, {MODE.name} mode, logs in {logs}")
    run = Run(scenario, title, chaos_services, logs, MODE, fault, **options)
    outcome = await run.execute()
    OUTCOMES.append(outcome)
    write_report(OUTCOMES, STARTED, MODE, chaos_services, selected(request))
    print(table([outcome]))
    for line in outcome.evidence:
        print(line)
    assert not outcome.failures, f"({scenario}) {title}:\n- " + "\n- ".join(outcome.failures)
