"""Plain-URL mode: the flash burst against any HTTP server on this machine (a baseline such as the
Fastify hello world), so that the burst's p99 has a reference under the same driver on the same cores.

Each fan opens its connection, waits for the release, sends ONE request to the URL's path and reads the
whole answer; nothing else: no event, no decisions, no verification. The burst code is `burst.run_burst`,
unchanged; only the request differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .burst import BurstSummary, Tally, cpu_seconds, run_burst, summarize_burst
from .client import build_request, loopback_url, url_port

METHODS = ("POST", "GET")


def parse_plain_url(url: str, flag: str = "--url") -> tuple[int, str]:
    """(port, path) of `http://127.0.0.1:PORT/path` (or localhost); any other host is refused, as for
    every run of this driver. The path defaults to `/`; a query string is kept."""
    parts = loopback_url(url, flag)
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"{flag} {url!r}: no credentials or fragment")
    port = url_port(parts, url, flag)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return port, path


def plain_body(fan: int) -> dict[str, Any]:
    """Fan `fan`'s POST body: the shape of the hello-world baselines' wrk body, with a unique user."""
    return {"user_id": f"fan-{fan}", "quantity": 1}


@dataclass(slots=True)
class PlainRequests:
    """What every fan sends in plain mode (`burst.run_burst` asks it for each fan's bytes)."""

    path: str
    clients: int
    method: str = "POST"

    def request_for(self, fan: int, event_id: str, port: int) -> bytes:
        body = plain_body(fan) if self.method == "POST" else None
        return build_request(self.method, self.path, port, body, keep_alive=False)


@dataclass(slots=True)
class PlainReport:
    scenario: str  # "plain"
    url: str
    method: str
    burst: BurstSummary
    driver_cpu_total_seconds: float
    passed: bool = False
    exit_reasons: list[str] = field(default_factory=list)


async def run_plain(url: str, clients: int, method: str = "POST", connect_timeout: float = 10.0,
                    answer_timeout: float = 60.0, tally: Tally | None = None) -> PlainReport:
    """The burst against `url`: every fan one request, all released at once."""
    port, path = parse_plain_url(url)
    requests = PlainRequests(path, clients, method)
    run = await run_burst(requests, port, "", connect_timeout, answer_timeout, tally)
    burst, _ = summarize_burst(run)
    return PlainReport("plain", url, method, burst, round(cpu_seconds(), 3))


def judge_plain(report: PlainReport, allow_socket_errors: bool = False) -> None:
    """Pass when every fan got a 2xx answer (socket errors only when allowed)."""
    b = report.burst
    not_2xx = sum(n for status, n in b.statuses.items() if not status.startswith("2"))
    if not_2xx:
        report.exit_reasons.append(f"{not_2xx} answers were not 2xx")
    if b.socket_errors and not allow_socket_errors:
        report.exit_reasons.append("socket errors (use --allow-socket-errors to accept them)")
    report.passed = not report.exit_reasons


def render_plain(report: PlainReport) -> str:
    b = report.burst
    lat = b.latency_ms
    counts = ", ".join(f"{k}: {v}" for k, v in b.statuses.items()) or "none"
    errors = ", ".join(f"{k}: {v}" for k, v in b.socket_errors.items()) or "none"
    return "\n".join([
        f"plain burst: {report.method} {report.url}, {b.clients} clients",
        f"connect       {b.connected}/{b.clients} connected in {b.connect_seconds:.2f} s",
        f"burst         {b.burst_seconds:.2f} s, {b.answered} answered, {b.requests_per_second:.0f} req/s"
        + (f"; all sent within {b.send_spread_ms} ms of the release" if b.send_spread_ms is not None else ""),
        f"statuses      {counts}",
        f"latency ms    p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"socket errors {errors}",
        f"driver CPU    {report.driver_cpu_total_seconds:.2f} s total, {b.driver_cpu_burst_seconds:.2f} s "
        f"during the burst ({b.driver_cpu_per_request_us} us/request)",
        f"result        {'PASS' if report.passed else 'FAIL: ' + '; '.join(report.exit_reasons)}",
    ])


def write_plain_json(report: PlainReport, path: str) -> None:
    with open(path, "wb") as out:
        out.write(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2) + b"\n")
