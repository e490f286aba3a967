"""The README's "Try it" block, pasted into bash in order, against a real server started as the README
says (`TICKETBLITZ_ADMIN_TOKEN=dev`, the demo event): every command exits 0 and answers what the
comments promise. The block is the one after `<!-- readme-test: shell … -->`; only `localhost:8000` is
replaced by the test server's address."""

from __future__ import annotations

import json
import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ticketblitz.config import Settings
from ticketblitz.server import Running, serve

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- readme-test: shell"


def readme_block() -> str:
    text = README.read_text()
    assert text.count(MARKER) == 1
    after = text[text.index(MARKER):]
    match = re.search(r"-->\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert match is not None
    return match.group(1)


def commands(block: str) -> list[str]:
    """The block's commands in order: comment lines dropped, a command's continuation lines (a trailing
    backslash, or a quote still open) kept with it — complete when `bash -n` accepts it."""
    found: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        text = "\n".join(current)
        if line.endswith("\\"):
            continue
        if subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0:
            found.append(text)
            current = []
    assert not current, current
    return found


def answer(output: str) -> Any:
    return json.loads(output.strip())


async def test_the_readme_examples_work_pasted_in_order(tmp_path: Path, nursery: trio.Nursery) -> None:
    cmds = commands(readme_block())
    assert len(cmds) == 10, cmds
    settings = Settings(port=0, data_dir=str(tmp_path / "data"), admin_token="dev", demo=True)
    running: Running = await nursery.start(partial(serve, settings))
    address = running.url.removeprefix("http://")
    script = []
    for i, cmd in enumerate(cmds):
        script.append(cmd.replace("localhost:8000", address))
        script.append(f'__rc=$?; printf "\\n@@end {i} rc=%s\\n" "$__rc"')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}  # no TICKETBLITZ_* of ours
    done = await trio.run_process(["bash", "-c", "\n".join(script)], capture_stdout=True, capture_stderr=True,
                                  cwd=tmp_path, env=env, check=False)
    running.stop.set()
    stdout = done.stdout.decode()
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
    outputs = re.split(r"\n@@end \d+ rc=\d+\n", stdout)[:-1]
    codes = re.findall(r"@@end (\d+) rc=(\d+)", stdout)
    assert codes == [(str(i), "0") for i in range(len(cmds))], stdout
    (export, field, book, ids, poll, confirm, named, compat, seats, create) = outputs

    assert export == field == ids == ""
    booking = answer(book)
    assert booking["status"] == "pending" and booking["quantity"] == 2 and booking["secret"]
    held = answer(poll)
    assert held["id"] == booking["id"] and held["status"] == "held"
    assert held["seat_ids"] == ["A-1-1", "A-1-2"]  # what the named-seat comment says
    assert answer(confirm)["status"] == "confirmed"
    seat = answer(named)
    assert seat["status"] == "pending" and seat["seat_ids"] == ["A-50-50"]
    queued = answer(compat)
    assert queued["status"] == "Pending" and queued["message"] == "Request queued"
    assert seats.startswith('{"eventId":"evt_demo","seats":[{"number":1,"id":"A-1-1","status":"BOOKED"}')
    event = answer(create)
    assert event["name"] == "Eras Tour — Night 1" and event["capacity"] == 200
    # and what they did, as the API tells it afterwards
    decided = await running.service.booking(seat["id"], "dev", 5.0)
    assert decided.status.value == "held" and decided.seat_ids == ("A-50-50",)
