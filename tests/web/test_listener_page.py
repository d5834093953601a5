"""The listener page and the index, end to end: a real node (``amphi serve --demo``) in a
subprocess, driven by a real browser (Debian's chromium through playwright). No mocks."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import wait_for

START_TIMEOUT_S = 15  # for the node to answer /api/spaces and have its demo Space live
PLAY_TIMEOUT_S = 20  # for the audio clock to advance by ADVANCE_S
ADVANCE_S = 2.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Node:
    base: str
    demo_id: str
    log: Path
    api_key: str  # the demo key `amphi serve --demo` prints (docs/keys.md)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    server = AmphiServer(tmp_path_factory.mktemp("amphi-node") / "data", None, "--demo").start()
    try:
        def demo_live() -> str | None:
            spaces = server.http.get("/api/spaces").json()
            return next((s["id"] for s in spaces if s["state"] == "live"), None)

        demo_id = wait_for("a live demo Space", demo_live, START_TIMEOUT_S)
        api_key = wait_for("the demo API key", lambda: re.search(r"API key to create Spaces .*: (amphi_\S+)",
                                                                    server.log.read_text()), START_TIMEOUT_S).group(1)
        yield Node(server.url, demo_id, server.log, api_key)
    finally:
        server.stop()


def audio_state(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => {
        const a = document.querySelector("audio");
        const p = window.amphiPlayer;
        return {time: a.currentTime, paused: a.paused, engine: p.engine, state: p.state, fatal: p.fatal};
    }""")


def assert_plays(page: Page) -> dict[str, Any]:
    """The page joins and plays by itself (the browser allows autoplay); the audio clock must
    advance by ADVANCE_S with no fatal player error."""
    deadline = time.monotonic() + PLAY_TIMEOUT_S
    started = wait_for("playback to start", lambda: (s := audio_state(page))["time"] > 0 and not s["paused"] and s,
                       PLAY_TIMEOUT_S, 0.2)
    remaining = max(0.5, deadline - time.monotonic())
    now = wait_for(f"currentTime to advance {ADVANCE_S} s past {started['time']:.3f}",
                   lambda: (s := audio_state(page))["time"] >= started["time"] + ADVANCE_S and s,
                   remaining, 0.2)
    assert now["paused"] is False
    assert now["engine"] == "shaka"
    assert now["fatal"] == [], f"the player reported fatal errors: {now['fatal']}"
    return now


def test_demo_space_plays_live(node: Node, page: Page, tmp_path: Path) -> None:
    page.goto(f"{node.base}/s/{node.demo_id}")
    page.wait_for_selector("#state.live")
    assert page.text_content("#title") == "Amphi demo: a tune on a loop"
    assert re.fullmatch(r"\d+ listening · peak \d+", page.text_content("#meta") or "")

    assert_plays(page)
    assert page.text_content("#play-label") == "Stop"
    page.wait_for_function("document.getElementById('playback').textContent.startsWith('Live')")

    shot = tmp_path / "listener.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_scheduled_space_counts_down_and_plays_hold_music(node: Node, page: Page) -> None:
    starts = (datetime.now(UTC) + timedelta(minutes=10)).isoformat(timespec="seconds").replace("+00:00", "Z")
    r = httpx.post(f"{node.base}/api/spaces", json={"title": "Later today", "starts_at": starts},
                   headers={"authorization": f"Bearer {node.api_key}"}, timeout=5)
    assert r.status_code == 201, r.text
    space = r.json()

    page.goto(f"{node.base}/s/{space['id']}")
    page.wait_for_selector("#state.scheduled")
    countdown = page.locator("#countdown")
    countdown.wait_for(state="visible")
    assert re.fullmatch(r"Starts in (10:00|9:[0-5]\d) — hold music until then", countdown.text_content() or "")

    assert_plays(page)
    page.wait_for_function("document.getElementById('playback').textContent === 'Playing hold music'")


def test_unknown_space_shows_not_found(node: Node, page: Page) -> None:
    response = page.goto(f"{node.base}/s/no-such-space")
    assert response is not None
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith("text/html"), (
        f"GET /s/<unknown id> answered {response.status} {ctype} {response.text()[:100]!r}: the server must "
        "serve listener.html (status 404 is fine) so that the page can tell the listener the Space does not exist")
    heading = page.locator("#notfound h1")
    heading.wait_for(state="visible", timeout=5000)
    assert heading.text_content() == "Space not found"


def test_index_lists_the_demo_space(node: Node, page: Page) -> None:
    page.goto(f"{node.base}/")
    row = page.locator("#spaces li", has=page.locator(f'a[href="/s/{node.demo_id}"]'))
    row.wait_for(state="visible", timeout=5000)
    assert row.locator("a.title").text_content() == "Amphi demo: a tune on a loop"
    assert row.locator(".badge.live").text_content() == "Live"


def test_index_creates_a_space_and_shows_the_key_once(node: Node, page: Page) -> None:
    page.goto(f"{node.base}/")
    page.fill("#create-title", "Made from the index")
    page.fill("#create-key", node.api_key)  # the demo's key (docs/keys.md; tests/web/test_index_keys.py)
    page.click("form#create button[type=submit]")
    page.locator("#created").wait_for(state="visible", timeout=5000)
    key = page.text_content("#created-key") or ""
    space_id = (page.get_attribute("#created-link", "href") or "").rsplit("/", 1)[-1]
    assert len(key) >= 20 and space_id
    assert f"Authorization: Bearer {key}" in (page.text_content("#curl-start") or "")
    assert (page.text_content("#curl-end") or "").endswith(f"/api/spaces/{space_id}/end")
    assert "shown only once" in (page.text_content("#created .warning") or "")

    started = httpx.post(f"{node.base}/api/spaces/{space_id}/start", headers={"authorization": f"Bearer {key}"},
                         timeout=5)
    assert started.status_code == 200 and started.json()["state"] == "live"

    page.click("#created-done")
    assert page.locator("#created").is_hidden()
    assert page.text_content("#created-key") == ""
