from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., AmphiServer]]:
    """Starts a node with the given ``amphi serve`` flags; every node stops after the test.
    Seats are node-wide, so a test about admission gets nodes of its own."""
    started: list[AmphiServer] = []

    def start(*flags: str) -> AmphiServer:
        server = AmphiServer(tmp_path / f"data{len(started)}", None, *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        hint = shutil.which("chromium") or "not on PATH either"
        pytest.fail(f"chromium is not installed at {CHROMIUM} ({hint}): run `make setup`, "
                    "which installs the Debian package")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real, empty ``redis-server`` on a free loopback port, stopped after the test."""
    from tests.integration.redis_proc import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
