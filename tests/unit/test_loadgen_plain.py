"""The flash driver's plain-URL mode (bench/flash.py plain): its pure parts."""

from __future__ import annotations

import orjson
import pytest

from ticketblitz.loadgen.burst import BurstRun, ClientResult, summarize_burst
from ticketblitz.loadgen.plain import PlainReport, PlainRequests, judge_plain, parse_plain_url


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:15102/hello", (15102, "/hello")),
    ("http://localhost:3000", (3000, "/")),
    ("http://127.0.0.1:8080/a/b?x=1", (8080, "/a/b?x=1")),
    ("http://127.0.0.1/", (80, "/")),
])
def test_parse_plain_url_keeps_the_path(url: str, expected: tuple[int, str]) -> None:
    assert parse_plain_url(url) == expected


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:3000/hello",  # only http
    "http://example.com:3000/hello",  # only this machine
    "http://10.0.0.1:3000/",
    "http://user:pw@127.0.0.1:3000/",
    "http://127.0.0.1:99999/",
])
def test_parse_plain_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_plain_url(url)


def test_each_fan_posts_once_with_its_own_user_and_closes() -> None:
    requests = PlainRequests("/hello", clients=3)
    raw = requests.request_for(2, "", 15102)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hello HTTP/1.1"
    assert "Connection: close" in lines and "Host: 127.0.0.1:15102" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert orjson.loads(body) == {"user_id": "fan-2", "quantity": 1}
    assert requests.request_for(0, "", 15102) != requests.request_for(1, "", 15102)


def test_get_sends_no_body() -> None:
    raw = PlainRequests("/hello", clients=1, method="GET").request_for(0, "", 1)
    assert raw.startswith(b"GET /hello HTTP/1.1\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: 0" in raw


def _report(results: list[ClientResult]) -> PlainReport:
    run = BurstRun(results, connect_seconds=0.1, released_at=0.0, ended_at=0.5, cpu_seconds=0.01)
    burst, bookings = summarize_burst(run)
    assert bookings == []
    return PlainReport("plain", "http://127.0.0.1:1/hello", "POST", burst, 0.1)


def test_judge_passes_only_all_2xx_without_socket_errors() -> None:
    ok = [ClientResult(status=200, body=b'{"hello":"world"}', latency=0.1 * i, sent_at=0.01) for i in range(1, 5)]
    report = _report(ok)
    judge_plain(report)
    assert report.passed and report.burst.latency_ms["p99"] == 400.0

    report = _report([*ok, ClientResult(status=503, body=b"", latency=0.2, sent_at=0.01)])
    judge_plain(report)
    assert not report.passed and "1 answers were not 2xx" in report.exit_reasons

    failed = [*ok, ClientResult(error="connect_refused")]
    report = _report(failed)
    judge_plain(report)
    assert not report.passed
    report = _report(failed)
    judge_plain(report, allow_socket_errors=True)
    assert report.passed
