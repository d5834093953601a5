"""Proof of work in a real browser: with the PoW switched on, the listener page gets a
challenge, solves it in a Web Worker (WebCrypto SHA-256) and is admitted and plays."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page

from tests.integration.amphi_proc import AmphiServer
from tests.web.test_waiting_page import RECORD_JOINS, assert_advances, joins, wait_phase


def test_the_page_solves_the_challenge_and_is_admitted(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--pow", "on", "--pow-bits", "14")
    space, key = server.create("Under attack")
    server.start_space(space, key)

    page.add_init_script(RECORD_JOINS)
    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "playing")
    log = joins(page)
    assert log[0]["status"] == 429 and log[0]["answer"]["error"] == "challenge_required"
    challenge = log[0]["answer"]["challenge"]
    assert challenge["bits"] == 14 and challenge["bound_to"] == "nonce"
    assert log[1]["body"]["challenge"] == challenge["challenge"] and log[1]["body"]["solution"].isdigit()
    assert log[1]["status"] == 200 and log[1]["answer"]["status"] == "admitted"
    solved = page.evaluate("window.amphiPlayer.challenges")
    assert len(solved) == 1 and solved[0]["hashes"] >= 1
    assert_advances(page)
    # the solution was single use: sending it again is refused
    r = server.http.post(f"/api/spaces/{space}/join", json=log[1]["body"])
    assert r.status_code == 403 and r.json()["error"] == "challenge_reused"
