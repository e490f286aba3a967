"""A non-editable install serves the page: `static/` is package data (`ticketblitz.static`), every file of
the tree whatever its type, and the server finds it without TICKETBLITZ_STATIC_DIR; building the wheel
prints no setuptools warnings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_wheel(out: Path) -> tuple[Path, str]:
    """`pip wheel .` of the checkout, as `pip install .` builds it; (wheel, the build's output)."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300, cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next(out.glob("ticketblitz-*.whl")), done.stdout + done.stderr


def test_the_wheel_holds_every_static_file_and_builds_without_warnings(tmp_path: Path) -> None:
    wheel, output = build_wheel(tmp_path)
    warnings = [line for line in output.splitlines()
                if "warn" in line.lower() and "byte-compiling is disabled" not in line]
    assert warnings == []
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {p.relative_to(ROOT / "static").as_posix() for p in (ROOT / "static").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert "index.html" in static
    assert {f"ticketblitz/static/{name}" for name in static} <= names
    assert "ticketblitz/web/docs_ui/swagger-ui-bundle.js" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_an_installed_copy_serves_the_page_and_the_docs(tmp_path: Path) -> None:
    wheel, _ = build_wheel(tmp_path)
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETBLITZ_")}
    # the installed copy first on the path (the dependencies come from this environment); run outside the
    # checkout, so that nothing of it can be found
    env.update(PYTHONPATH=str(target), TICKETBLITZ_PORT=str(port), TICKETBLITZ_DATA_DIR=str(tmp_path / "data"),
               TICKETBLITZ_ADMIN_TOKEN="installed", TICKETBLITZ_LOG_LEVEL="warning")
    where = subprocess.run([sys.executable, "-c", "import ticketblitz.config as c; print(c.__file__); "
                            "print(c.Settings().static_dir)"], capture_output=True, text=True, env=env, cwd=tmp_path)
    module, static_dir = where.stdout.split()
    assert module.startswith(str(target)) and static_dir == str(target / "ticketblitz" / "static")
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == (ROOT / "static" / "index.html").read_text()
        docs = httpx.get(url + "/docs/swagger-ui-bundle.js", timeout=5)
        assert docs.status_code == 200 and len(docs.content) > 100_000
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        log.close()
