"""The `ticketblitz` command as a new user meets it: `--version`, flags that name their variables, one
clear line and exit code 2 for a busy port (one process or `--workers N`), `seed --seats`, and `serve`
announcing its page and admin token, with `--admin-token`, `--log-level` and a sized demo event."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ticketblitz import __version__, cli
from ticketblitz.config import Settings

SERVICE_VARS = ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ticketblitz", *args], capture_output=True, text=True,
                          timeout=timeout, env=env if env is not None else embedded_env())


def embedded_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}
    env.update(extra)
    return env


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ticketblitz {__version__}"


def test_every_flag_names_its_environment_variable() -> None:
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    settings = {f"TICKETBLITZ_{name.upper()}" for name in Settings.__dataclass_fields__}
    seen = 0
    for name in ("serve", "seed"):  # the server's commands (flash-sale is a client: its flags are not settings)
        sub = subparsers.choices[name]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            variable = f"TICKETBLITZ_{action.dest.upper()}"
            assert variable in settings, (name, action.option_strings)
            assert f"env {variable}" in (action.help or ""), (name, action.option_strings, action.help)
            seen += 1
    assert {"--admin-token", "--log-level", "--demo-seats"} <= set(subparsers.choices["serve"]._option_string_actions)
    assert "--seats" in subparsers.choices["seed"]._option_string_actions
    assert seen >= 10
    shown = run("serve", "--help").stdout
    assert "env TICKETBLITZ_PORT, default 8000" in " ".join(shown.split())


def expect_busy(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"ticketblitz: port {port} on 127.0.0.1 is in use (set TICKETBLITZ_PORT or --port)"], done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("door", ["true", "false"])
def test_a_busy_port_is_one_line_and_exit_code_2(busy_port: int, door: str, tmp_path: Path) -> None:
    expect_busy(run("serve", "--port", str(busy_port), "--data-dir", str(tmp_path),
                    env=embedded_env(TICKETBLITZ_INTAKE_DOOR=door)), busy_port)


def test_a_busy_port_with_workers_is_one_line_and_exit_code_2(busy_port: int) -> None:
    env = embedded_env(**{name: os.environ[name] for name in SERVICE_VARS if name in os.environ})
    env.setdefault("TICKETBLITZ_DATABASE_URL", "postgresql://ticketblitz@127.0.0.1:55432/ticketblitz")
    env.setdefault("TICKETBLITZ_REDIS_URL", "redis://127.0.0.1:56379/0")
    env.setdefault("TICKETBLITZ_KAFKA_BOOTSTRAP", "127.0.0.1:59092")
    expect_busy(run("serve", "--workers", "2", "--port", str(busy_port), env=env), busy_port)


def test_seed_sizes_the_demo_event(tmp_path: Path) -> None:
    done = run("seed", "--data-dir", str(tmp_path), "--seats", "300")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "created: evt_demo 'The Eras Tour', 300 seats"
    again = run("seed", "--data-dir", str(tmp_path))
    assert again.stdout.strip() == "already present: evt_demo 'The Eras Tour', 300 seats"
    refused = run("seed", "--data-dir", str(tmp_path / "other"), "--seats", "150")
    assert refused.returncode == 2 and refused.stderr.startswith("ticketblitz: demo_seats: 150 seats")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_serve_announces_the_page_and_takes_token_level_and_demo_size(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = (tmp_path / "out.log").open("w+")
    err = (tmp_path / "err.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ticketblitz", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path),
         "--admin-token", "from-the-flag", "--log-level", "warning"],
        env=embedded_env(TICKETBLITZ_DEMO_SEATS="200"), stdout=out, stderr=err, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while "is serving" not in Path(out.name).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, Path(err.name).read_text()
            time.sleep(0.1)
        announced = next(line for line in Path(out.name).read_text().splitlines() if "is serving" in line)
        assert announced.startswith(f"TicketBlitz {__version__} is serving {url}/ (API docs: {url}/docs)")
        assert "from-the-flag" not in Path(out.name).read_text()  # a token the user chose is not printed
        assert httpx.get(f"{url}/api/events/evt_demo").json()["capacity"] == 200
        event = {"name": "n", "venue": "v", "starts_at": "2027-06-01T19:00:00Z",
                 "sections": [{"name": "A", "rows": 1, "seats_per_row": 2, "price_cents": 1}]}
        assert httpx.post(f"{url}/api/events", json=event,
                          headers={"Authorization": "Bearer from-the-flag"}).status_code == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert " INFO " not in Path(err.name).read_text()  # --log-level warning


def test_a_generated_token_is_printed_on_the_announcement_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path)], env=embedded_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while "is serving" not in line:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline
        token = line.split("admin token: ", 1)[1].split(" ", 1)[0]
        assert len(token) >= 24
        answer = httpx.post(f"http://127.0.0.1:{port}/api/events", json={},
                            headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 422  # past the token check: the body is what is wrong
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
