"""`/docs` works without internet: the page and every asset it references come from this server, with
their content types, under the page's Content-Security-Policy (no inline script or style), and nothing
in them points at another origin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from conftest import make_settings

from ticketblitz.policy import PAGE_HEADERS
from ticketblitz.server import Running, serve

EXTERNAL = re.compile(r"https?://", re.IGNORECASE)
REFERENCE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""")
TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}


@pytest.fixture(params=["door", "hypercorn"])
async def client(request: pytest.FixtureRequest, tmp_path: Any,
                 nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, intake_door=request.param == "door")
    running: Running = await nursery.start(partial(serve, settings))
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
        yield client
    running.stop.set()


async def test_docs_and_every_asset_are_served_here(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    html = page.text
    assert not EXTERNAL.search(html), html
    # no inline script or style: the CSP (script-src 'self'; style-src 'self') would block them
    assert re.findall(r"<script\b[^>]*>([^<]*)</script>", html) == ["", ""]
    assert "<style" not in html and " style=" not in html and " on" not in re.sub(r"<noscript>.*?</noscript>", "", html)
    references = REFERENCE.findall(html)
    assets = [r for r in references if not r.startswith("/openapi.json")]
    assert sorted(assets) == ["/docs/docs.js", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"]
    for path in assets:
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].split(";")[0] == TYPES[path[path.rindex("."):]], path
        assert answer.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"], path
        assert answer.headers["x-content-type-options"] == "nosniff"
        text = answer.text
        if path.endswith(".css"):
            # every url() is an inline image (img-src 'self' data:) or this origin's
            for url in CSS_URL.findall(text):
                assert url.startswith(("data:", "/")) or not EXTERNAL.match(url), url
            assert "sourceMappingURL" not in text
        elif path == "/docs/docs.js":
            assert not EXTERNAL.search(text), text
            assert '"/openapi.json"' in text and "validatorUrl: null" in text  # no call-out to a validator
        else:  # the vendored bundle: namespace URIs and link texts inside, but it loads nothing by itself
            assert "sourceMappingURL" not in text and len(text) > 1_000_000
    document = await client.get("/openapi.json")
    assert document.status_code == 200 and document.headers["content-type"] == "application/json"
    assert document.json()["openapi"] == "3.1.0"  # Swagger UI 5 renders 3.1 (4.x, as PyPI's bundles ship, does not)


async def test_only_the_explorer_s_files_are_served(client: httpx.AsyncClient) -> None:
    for path in ("/docs/LICENSE", "/docs/README.md", "/docs/index.html", "/docs/../config.py", "/docs/nothing.js"):
        answer = await client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"] == "application/problem+json"
