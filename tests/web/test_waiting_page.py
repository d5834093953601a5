"""The listener page as a waiting room, end to end: a real node (``amphi serve`` with small
admission limits) in a subprocess, Debian's chromium through playwright. No mocks: the page
talks to the real admission API; an init script only records the page's join requests
(when each was sent and answered, and what the answer said) so that tests can check that
the page never polls sooner than the server asked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Response

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, wait_for

PHASE_TIMEOUT_S = 20  # for the page to reach a phase: the next poll may be 12.5 s (+20 % jitter) away
PLAY_TIMEOUT_S = 20  # for the audio clock to start and advance by ADVANCE_S
ADVANCE_S = 2.0
TOKEN_TTL_S = 4  # the renewal test's token lifetime: renewals every ~2 s
WATCH_TTLS = 3.5  # the renewal test watches playback for this many token lifetimes
MAX_STALL_S = 1.5  # the most the audio clock may lag wall time over the renewal watch

RECORD_JOINS = """(() => {
    const fetch0 = window.fetch;
    window.__joins = [];
    window.fetch = async function (input, init) {
        const url = typeof input === "string" ? input : input.url;
        if (!url.endsWith("/join")) return fetch0.apply(this, arguments);
        const entry = {sent: performance.now(), body: init && init.body ? JSON.parse(init.body) : {}};
        window.__joins.push(entry);
        const res = await fetch0.apply(this, arguments);
        entry.answered = performance.now();
        entry.status = res.status;
        entry.retryAfterHeader = res.headers.get("retry-after");
        try { entry.answer = await res.clone().json(); } catch (_) { entry.answer = null; }
        return res;
    };
})();"""


def seat(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => {
        const p = window.amphiPlayer;
        const a = document.querySelector("audio");
        return {phase: p.phase, position: p.position, waiting: p.waiting, estimate: p.estimate, order: p.order,
                ticket: p.ticket, token: p.token, renewals: p.renewals, rejoins: p.rejoins, polls: p.polls,
                blocked: p.blocked, state: p.state, mode: p.mode, engine: p.engine, fatal: p.fatal,
                time: a.currentTime, paused: a.paused};
    }""")


def wait_seat(page: Page, what: str, predicate: Callable[[dict[str, Any]], bool],
              timeout_s: float = PHASE_TIMEOUT_S, every_s: float = 0.1) -> dict[str, Any]:
    """Waits until ``predicate`` holds for the page's state; fails with the last state seen."""
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = seat(page)
        return last if predicate(last) else None

    try:
        return wait_for(what, check, timeout_s, every_s)
    except pytest.fail.Exception:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}; the page's state: {last}\n"
                    f"its join requests: {joins(page)}")


def joins(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("window.__joins || null")


def wait_phase(page: Page, phase: str, timeout_s: float = PHASE_TIMEOUT_S) -> dict[str, Any]:
    return wait_seat(page, f"phase {phase!r}", lambda s: s["phase"] == phase, timeout_s)


def assert_advances(page: Page, by_s: float = ADVANCE_S, timeout_s: float = PLAY_TIMEOUT_S) -> dict[str, Any]:
    """The audio clock runs and advances by ``by_s``, with no fatal player error."""
    start = wait_seat(page, "playback to start", lambda s: s["time"] > 0 and not s["paused"], timeout_s)
    now = wait_seat(page, f"currentTime to advance {by_s} s past {start['time']:.3f}",
                    lambda s: s["time"] >= start["time"] + by_s, timeout_s)
    assert now["paused"] is False and now["engine"] == "shaka"
    assert now["fatal"] == [], f"the player reported fatal errors: {now['fatal']}"
    return now


def admit_one(server: AmphiServer, space: str) -> dict[str, Any]:
    r = server.http.post(f"/api/spaces/{space}/join", json={})
    assert r.status_code == 200 and r.json()["status"] == "admitted", r.text
    return r.json()


def assert_polls_respect_retry_after(page: Page) -> None:
    """Every request that followed a "waiting" (202) or "come back later" (429/503) answer
    was sent at least retry_after_s after that answer arrived."""
    log = joins(page)
    for prev, nxt in zip(log, log[1:]):
        answer = prev.get("answer") or {}
        if prev.get("status") in (202, 429, 503) and "retry_after_s" in answer:
            gap_s = (nxt["sent"] - prev["answered"]) / 1000
            assert gap_s >= answer["retry_after_s"], (
                f"polled {gap_s:.3f} s after an answer that said retry_after_s={answer['retry_after_s']}: {log}")


def test_waiting_page_plays_by_itself_when_a_seat_frees(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--max-listeners", "1")
    space, key = server.create("Full house")
    server.start_space(space, key)
    first = admit_one(server, space)  # takes the node's only seat

    page.add_init_script(RECORD_JOINS)
    page.goto(f"{server.url}/s/{space}")
    waiting = wait_phase(page, "waiting")
    assert waiting["position"] == 1 and waiting["waiting"] == 1 and waiting["order"] == "fifo"
    assert waiting["ticket"] and waiting["token"] is None
    assert page.locator("#line").is_visible()
    assert page.locator("#play").is_hidden()
    assert page.text_content("#line-place") == "You’re 1st in line"
    detail = page.text_content("#line-detail") or ""
    estimate = "waiting for a seat to free up" if waiting["estimate"] is None else r"(about \d+ (s|min)|any moment now)"
    assert re.fullmatch(rf"1 person waiting · {estimate}", detail), detail
    assert "starts playing by itself" in (page.text_content("#line-note") or "")
    assert page.title().startswith("1st in line · Full house")

    left = server.http.post(f"/api/spaces/{space}/leave", json={"token": first["token"]})
    assert left.status_code == 200 and left.json()["status"] == "left", left.text

    admitted = wait_phase(page, "playing")
    assert admitted["token"] and admitted["ticket"] is None and admitted["position"] is None
    now = assert_advances(page)
    assert now["state"] == "playing" and not now["blocked"]
    assert page.locator("#line").is_hidden()
    assert page.text_content("#play-label") == "Stop"
    assert_polls_respect_retry_after(page)
    assert server.status(space)["listeners"] == 1
    # it waited by the line document, and sent its ticket once: when its turn had come
    tickets = [j for j in joins(page) if "ticket" in j["body"]]
    assert len(tickets) == 1 and tickets[0]["status"] == 200, joins(page)
    assert page.evaluate("window.amphiPlayer.lineReads") >= 1


def test_waiting_before_a_scheduled_start_explains_the_draw(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--max-listeners", "1")
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    space, _ = server.create("Later", starts.isoformat().replace("+00:00", "Z"))
    admit_one(server, space)

    page.goto(f"{server.url}/s/{space}")
    waiting = wait_phase(page, "waiting")
    assert waiting["order"] == "draw_at_start" and waiting["position"] == 1
    assert page.text_content("#line-place") == "You’re in line"
    # the time alone when the start is today, else with its date (view.js localTime: near midnight
    # the start ten minutes on is tomorrow; a CI run met it)
    local = page.evaluate("""(iso) => {
        const d = new Date(iso);
        return d.toDateString() === new Date().toDateString()
          ? d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})
          : d.toLocaleString([], {dateStyle: 'medium', timeStyle: 'short'});
      }""", starts.isoformat())
    detail = page.text_content("#line-detail") or ""
    assert detail == (f"The order is drawn when the Space starts at {local}: "
                      "you will be 1st or earlier. 1 person waiting."), detail
    page.locator("#countdown").wait_for(state="visible")


def test_token_renewal_keeps_playback_going(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--token-ttl", str(TOKEN_TTL_S))
    space, key = server.create("Short tokens")
    server.start_space(space, key)

    media: list[tuple[int, str]] = []

    def on_response(response: Response) -> None:
        if "/media/" in response.url:
            media.append((response.status, response.url))

    page.on("response", on_response)
    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "playing")
    start = assert_advances(page, 0.5)
    t0 = page.evaluate("performance.now()") / 1000
    watch_s = WATCH_TTLS * TOKEN_TTL_S
    end = wait_seat(page, f"{watch_s} s of playback", lambda s: s["time"] >= start["time"] + watch_s,
                    watch_s + 10, 0.25)
    elapsed = page.evaluate("performance.now()") / 1000 - t0
    played = end["time"] - start["time"]

    assert elapsed - played <= MAX_STALL_S, f"played {played:.2f} s in {elapsed:.2f} s"
    assert end["renewals"] >= 2, end
    assert end["rejoins"] == 0 and end["phase"] == "playing" and end["fatal"] == [], end
    refused = [(code, url) for code, url in media if code in (401, 403)]
    assert not refused, f"media requests refused: {refused}"
    tokens = {m.group(1) for _, url in media if (m := re.search(r"/t/([^/]+)/", url))}
    assert len(tokens) >= 3, f"media requests did not follow the renewed tokens: {tokens}"


def test_a_refused_token_joins_afresh_and_plays_on(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve()
    space, key = server.create("Forged")
    server.start_space(space, key)
    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "playing")
    assert_advances(page, 0.5)

    # What a tampered or foreign token looks like to the origin: its next request gets 403.
    page.evaluate("window.amphiPlayer.token = 'x' + window.amphiPlayer.token")
    # The page keeps its phase while it joins afresh (buffered audio plays on), so wait for the
    # fresh join's answer: a new token, not the refused one.
    now = wait_seat(page, "a fresh join's token", lambda s: s["rejoins"] >= 1 and bool(s["token"]))
    assert now["phase"] == "playing" and not now["token"].startswith("x"), now
    assert_advances(page)


def test_space_ending_while_waiting_offers_the_replay(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--max-listeners", "1")
    space, key = server.create("Over before your turn")
    server.start_space(space, key)
    wait_for("a recorded segment", lambda: server.status(space)["recorded_s"] >= 4, 20, 0.25)
    admit_one(server, space)

    page.add_init_script(RECORD_JOINS)
    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "waiting")
    server.end_space(space, key)

    ended = wait_phase(page, "ended")
    assert ended["ticket"] is None and ended["token"] is None
    links = page.locator("#ended-links")
    links.wait_for(state="visible", timeout=10_000)
    assert page.locator("#line").is_hidden()
    assert "ended while you were in line" in (page.text_content("#ended-text") or "")
    assert (page.get_attribute("#download", "href") or "").endswith(f"/media/{space}/download.m4a")
    polls_at_end = len(joins(page))

    page.click("#replay")
    now = assert_advances(page, 1.5)
    assert now["mode"] == "replay"
    assert page.evaluate("window.amphiPlayer.url").endswith(f"/media/{space}/vod.m3u8")
    assert len(joins(page)) == polls_at_end, "the page went on polling after the end"
    assert_polls_respect_retry_after(page)


def test_leaving_the_page_gives_the_seat_and_the_place_up(serve: Callable[..., AmphiServer], page: Page) -> None:
    server = serve("--max-listeners", "1")
    space, key = server.create("Coming and going")
    server.start_space(space, key)

    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "playing")  # the page has the only seat
    r = server.http.post(f"/api/spaces/{space}/join", json={})
    assert r.status_code == 202, r.text
    ticket = r.json()["ticket"]

    page.goto("about:blank")  # pagehide: the page's beacon gives the seat up
    wait_for("the seat to be given to the one in line", lambda: server.status(space)["listeners"] == 0, 5)

    def poll_ticket() -> bool:
        r = server.http.post(f"/api/spaces/{space}/join", json={"ticket": ticket})
        return r.status_code == 200 and r.json()["status"] == "admitted"

    wait_for("the ticket to be admitted", poll_ticket, 10, 1.0)

    page.goto(f"{server.url}/s/{space}")
    wait_phase(page, "waiting")
    assert server.status(space)["waiting"] == 1
    page.goto("about:blank")  # the beacon gives the place in line up
    wait_for("the line to be empty", lambda: server.status(space)["waiting"] == 0, 5)


def test_blocked_autoplay_shows_tap_to_listen(serve: Callable[..., AmphiServer], browser: Browser) -> None:
    server = serve()
    space, key = server.create("Needs a tap")
    server.start_space(space, key)

    args = [a for a in CHROMIUM_ARGS if not a.startswith("--autoplay-policy")]
    strict = browser.browser_type.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=[*args, "--autoplay-policy=user-gesture-required"])
    try:
        page = strict.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Wait on the console only: playwright's page.evaluate runs as a user gesture, which
        # would let the page play before it ever asked for a tap.
        asked = "amphi: the browser blocked playback until a tap"
        with page.expect_console_message(lambda m: m.text == asked, timeout=PHASE_TIMEOUT_S * 1000):
            page.goto(f"{server.url}/s/{space}")
        blocked = seat(page)
        assert blocked["blocked"] and blocked["phase"] == "playing" and blocked["token"], blocked
        assert blocked["state"] == "idle" and blocked["paused"], blocked
        button = page.locator("#play")
        assert button.is_visible() and button.is_enabled()
        assert page.text_content("#play-label") == "Tap to listen"
        assert button.get_attribute("data-attention") is not None
        assert page.evaluate("document.activeElement.id") == "play"
        assert page.title().startswith("▶ Your turn")

        button.click()
        now = assert_advances(page)
        assert not now["blocked"] and now["phase"] == "playing"
        assert page.text_content("#play-label") == "Stop"
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        strict.close()
