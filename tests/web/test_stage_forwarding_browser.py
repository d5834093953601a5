"""The speaking browser when the Space's host is another node, or changing: headless Chromium
with its fake microphone on a page served by a node that does not host the Space (its calls
forwarded to the host: docs/cluster.md), and on a page whose node refuses an offer with
503 Retry-After or stops answering. Real nodes, Redis, ffmpeg; no mocks."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.integration.amphi_proc import AmphiServer
from tests.integration.test_forwarding import RefusingFront
from tests.web.browser import wait_for
from tests.web.test_stage_browser import ON_STAGE_TIMEOUT_S, beeps, live_space, program_from_now

CONNECTED = "window.amphiStage.speaking && window.amphiStage.speaking.state === 'connected'"


def speaking(page: Page) -> dict:
    return page.evaluate("() => window.amphiStage.speaking")


def test_a_browser_on_stage_through_the_other_node_is_heard_in_the_hosts_program(
        pages: Callable[..., Page], node_pair) -> None:
    a, b = node_pair()
    space, key = live_space(a, "hosted on a, spoken to through b")
    pid, grant = b.on_stage(space, key, "Bob")
    # Bob's page is b's: its event stream, ICE servers and WHIP offer all reach a through b
    bob = pages(f"{b.url}/s/{space}?grant={grant}")
    bob.wait_for_function(CONNECTED, timeout=ON_STAGE_TIMEOUT_S * 1000)
    wait_for("a to hear Bob", lambda: (m := a.member(space, pid)) and m["connected"] and m["talking"], 10)
    assert a.node()["speakers"] == 1 and b.node()["speakers"] == 0
    heard = beeps(program_from_now(a, space))
    assert sum(heard) >= len(heard) - 1, heard

    # the host mutes Bob through b: Bob's page learns it from the stream b relays
    r = b.stage_call(space, f"/{pid}/mute", key)
    assert r.status_code == 200, r.text
    bob.wait_for_selector("#mute-note", state="visible", timeout=5000)


@pytest.mark.serial
def test_a_browser_speaker_honours_retry_after_and_notices_a_silent_host_within_a_second(
        pages: Callable[..., Page], tmp_path: Path) -> None:
    server = AmphiServer(tmp_path / "data", None).start()
    front = RefusingFront(server, refusals=1)
    try:
        space, key = live_space(server, "stage: changing host")
        pid, grant = server.on_stage(space, key, "Bob")
        bob = pages(f"{front.url}/s/{space}?grant={grant}")
        bob.wait_for_function(CONNECTED, timeout=ON_STAGE_TIMEOUT_S * 1000)
        assert len(front.offers) == 2, front.offers
        gap = front.offers[1] - front.offers[0]
        assert 1.0 <= gap < 1.5, gap  # the Retry-After (1 s, +0-15 %) and the offer's making; no back-off ladder
        wait_for("the server to hear Bob", lambda: (m := server.member(space, pid)) and m["talking"], 10)

        # the node stops (as a host that died): no return audio, the page notices within ~1 s
        os.killpg(server.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            bob.wait_for_function("window.amphiStage.speaking.losses >= 1", timeout=3000)
            noticed = time.monotonic() - stopped
            assert noticed < 1.8, noticed
            assert "reconnecting" in bob.inner_text("#speak-status")
            assert speaking(bob)["state"] == "reconnecting"
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        # the new offer (made at once, held by the stopped node) is answered: Bob is back, heard
        bob.wait_for_function(CONNECTED, timeout=15000)
        assert len(front.offers) >= 3 and front.offers[2] - stopped < 2.0, [t - stopped for t in front.offers]
        wait_for("Bob heard again", lambda: (m := server.member(space, pid)) and m["connected"] and m["talking"], 10)
        assert speaking(bob)["losses"] == 1
    finally:
        front.close()
        server.stop()
