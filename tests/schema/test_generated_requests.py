"""Schemathesis against a live server's /openapi.json: generated requests (valid and invalid, every
documented operation, with and without the admin token, both HTTP doors, both adapter sets) never get
a 5xx, and every answer conforms to the document: a documented status, the documented content type,
headers and body; what the document calls invalid is refused; a declared credential is enforced.

`schemathesis run` (its CLI: the documented interface, and its own process, so that generating and
answering use both cores) runs deterministically, so a failure reproduces; its report prints a `curl`
for each failure. The requests sent are counted from its HAR report and checked against the server's
own count of answers (/metrics).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from conftest import scratch_services
from live_server import ADMIN_TOKEN, ServerProcess, World, seed_world

HERE = Path(__file__).parent
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # what the document calls invalid is refused with a 4xx
    "unsupported_method",  # a method the path does not serve: 405 with Allow
])
# without a credential: an operation that declares one never answers 2xx (schemathesis forges some too)
ANONYMOUS_CHECKS = CHECKS + ",ignored_auth"
# with the admin token: without it 401, with another booking's secret 404 (API 1.1; see schema_hooks)
ADMIN_CHECKS = CHECKS + ",booking_needs_its_secret"
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]
"""
# fuzzed examples per operation: the bulk on the embedded adapters behind the intake door; a smaller run
# on the distributed adapters (PostgreSQL, Redis, Kafka) with Hypercorn answering every route
BULK_EXAMPLES = int(os.environ.get("TICKETBLITZ_SCHEMA_EXAMPLES", "300"))
SMALL_EXAMPLES = max(1, BULK_EXAMPLES // 6)


@dataclass
class RunResult:
    name: str
    sent: int
    by_status: dict[int, int]
    operations: int
    seconds: float


RESULTS: list[RunResult] = []


def schemathesis_command(server: ServerProcess, workdir: Path, name: str, *, examples: int,
                         admin: bool) -> list[str]:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [*SCHEMATHESIS, "--config-file", str(config), "run", server.url + "/openapi.json",
               "--checks", ADMIN_CHECKS if admin else ANONYMOUS_CHECKS,
               "--phases", "examples,coverage,fuzzing", "--max-examples", str(examples),
               # one worker: schemathesis's threads trip over CPython 3.11's AST (hypothesis reads lambdas)
               "--generation-deterministic", "--suppress-health-check", "all", "--workers", "1",
               "--request-timeout", "30", "--report", "har,json", "--report-dir", str(workdir / f"report-{name}"),
               "--no-color", "--warnings", "off"]
    if admin:
        # not the flash-sale button: a valid body starts up to 20,000 fans against this server, which would
        # load the machine and break the count of answers below (tests/e2e/test_flash_sale.py covers it)
        command += ["--header", f"Authorization: Bearer {ADMIN_TOKEN}",
                    "--exclude-operation-id", "post_start_flash_sale"]
    return command


def run_schemathesis(server: ServerProcess, world: World, workdir: Path, *, examples: int) -> list[RunResult]:
    """`schemathesis run` against `server`, without and with the admin token at once (one process each, so
    that generation uses both cores); fails the test with schemathesis's report on any failure."""
    before = server.answers_by_code()
    runs = {}
    for admin in (False, True):
        name = f"{workdir.name.removeprefix('schema-').rstrip('0123456789')}-{'admin' if admin else 'anonymous'}"
        env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schema_hooks.py"),
               "TICKETBLITZ_SCHEMA_WORLD": json.dumps(asdict(world)),
               "TICKETBLITZ_SCHEMA_ADMIN": "1" if admin else ""}
        log = (workdir / f"schemathesis-{name}.txt").open("w")
        command = schemathesis_command(server, workdir, name, examples=examples, admin=admin)
        runs[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir), log)
    results, failed = [], []
    for name, (process, log) in runs.items():
        try:
            process.wait(timeout=600)
        finally:
            log.close()
        output = (workdir / f"schemathesis-{name}.txt").read_text()
        assert server.alive(), f"the server died during {name}:\n{server.log_tail()}\n{output[-3000:]}"
        reports = workdir / f"report-{name}"
        assert list(reports.glob("har-*.json")), f"schemathesis {name} did not run:\n{output[-5000:]}"
        results.append(_result(name, reports))
        if process.returncode != 0:
            failed.append(f"schemathesis {name} found failures (full report: {workdir}):\n{output[-8000:]}")
    RESULTS.extend(results)
    after = server.answers_by_code()
    server_answers = sum((after - before).values()) - 1  # less the /metrics read of `before`
    assert not failed, "\n\n".join(failed)
    sent = sum(r.sent for r in results)
    assert sent > 0 and server_answers >= sent, (results, server_answers)
    assert not [code for code in after - before if code >= 500], after - before
    return results


def _result(name: str, reports: Path) -> RunResult:
    har = json.loads(next(reports.glob("har-*.json")).read_text())
    entries = har["log"]["entries"]
    statuses = Counter(int(e["response"]["status"]) for e in entries)
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    operations = _operations_tested(report)
    seconds = sum(float(e.get("time", 0)) for e in entries) / 1000
    return RunResult(name, len(entries), dict(sorted(statuses.items())), operations, round(seconds, 1))


def _operations_tested(report: dict[str, object]) -> int:
    for key in ("operations", "statistic", "summary"):
        value = report.get(key)
        if isinstance(value, dict):
            for inner in ("tested", "total", "selected"):
                if isinstance(value.get(inner), int):
                    return int(value[inner])
    return -1


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, World, Path]]:
    base = tmp_path_factory.mktemp("schema-embedded")
    server = ServerProcess(base / "data", base / "server.log")
    server.start()
    try:
        yield server, seed_world(server.url), base
    finally:
        server.stop()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, World, Path]]:
    base = tmp_path_factory.mktemp("schema-distributed")
    with scratch_services() as services:
        server = ServerProcess(base / "data", base / "server.log", services, intake_door=False)
        server.start()
        try:
            yield server, seed_world(server.url), base
        finally:
            server.stop()


def test_embedded(embedded: tuple[ServerProcess, World, Path]) -> None:
    """The bulk: SQLite, the in-process queue and locks, the intake door in front; without a credential
    (organizer routes refuse, bookings need their secret) and with the admin token (events are created,
    every booking can be read, confirmed and cancelled)."""
    run_schemathesis(*embedded, examples=BULK_EXAMPLES)


def test_distributed(distributed: tuple[ServerProcess, World, Path]) -> None:
    """PostgreSQL, Redis and Kafka, with Hypercorn answering every route (the intake routes too)."""
    run_schemathesis(*distributed, examples=SMALL_EXAMPLES)


def test_generated_requests_total() -> None:
    """The schema suite's count: at least 10,000 generated requests, none answered 5xx."""
    if not RESULTS:
        pytest.skip("no schemathesis run in this session (the runs above were deselected)")
    total = sum(r.sent for r in RESULTS)
    summary = "\n".join(f"  {r.name}: {r.sent} requests, {r.operations} operations, answers {r.by_status}"
                        for r in RESULTS)
    print(f"\nschemathesis: {total} requests in total\n{summary}")
    assert total >= 10_000, summary
    assert not [code for r in RESULTS for code in r.by_status if code >= 500], summary
