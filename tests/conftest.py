from __future__ import annotations

import os
import shutil
import signal
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


PAIR_SECRET = "cluster-test-secret-0123456789abcdef"  # the nodes' shared token key (AMPHI_SECRET)


@pytest.fixture
def node_pair(tmp_path, redis_server, monkeypatch):
    """start(*flags) -> two nodes on the same Redis and secret."""
    monkeypatch.setenv("AMPHI_SECRET", PAIR_SECRET)
    started: list[AmphiServer] = []

    def start(*flags: str) -> tuple[AmphiServer, AmphiServer]:
        # the tests' hundreds of joins from one address that never fetch media look like a flood to the
        # defense (docs/defense.md): it is about admission here, so no proof of work
        for name in ("a", "b"):
            started.append(AmphiServer(tmp_path / f"data-{name}", None, "--redis", redis_server.url,
                                       "--node-id", name, "--pow", "off", *flags).start())
        return started[-2], started[-1]

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)  # a test that stopped it (SIGSTOP) and failed
        server.stop()
