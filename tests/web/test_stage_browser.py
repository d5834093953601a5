"""The stage in real browsers: the host console and the listener page against a real node,
headless Chromium with its fake microphone (a ~400 Hz beep of about 60 ms, twice a second),
and ffmpeg as an independent listener of the program. No mocks."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import open_console, wait_for

SR = 48_000
BEEP_HZ = 400  # Chromium's fake audio capture device (measured: the peak sits at 396-404 Hz)
BEEP_BAND = (370, 430)
WINDOW_S = 0.5  # the fake device beeps once per half second: one beep per window
PROGRAM_S = 3.5  # seconds of the live program decoded per check: within one segment (3.584 s)
ON_STAGE_TIMEOUT_S = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- fixtures ----------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    server = AmphiServer(tmp_path_factory.mktemp("stage-node") / "data", None).start()
    yield server
    server.stop()


def live_space(node: AmphiServer, title: str) -> tuple[str, str]:
    space, key = node.create(title)
    node.start_space(space, key)
    return space, key




def stage_state(page: Page) -> dict:
    return page.evaluate("""() => {
        const s = window.amphiStage;
        return {you: s.you, speaking: s.speaking, events: s.events, onStage: s.onStage ?? null,
                removed: s.removed ?? null, player: window.amphiPlayer ? window.amphiPlayer.state : null};
    }""")


def member(page: Page, pid: str) -> str:
    return f'#members li.member[data-id="{pid}"]'


# -- the program, decoded ------------------------------------------------------------------------


def newest_segment(playlist: str) -> int:
    """The media sequence number of the newest complete segment in the live playlist."""
    text = httpx.get(playlist, timeout=10).text
    m = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", text, re.M)
    assert m is not None and "#EXTINF" in text, text
    return int(m.group(1)) + text.count("#EXTINF") - 1


def program_from_now(node: AmphiServer, space: str) -> np.ndarray:
    """The live program as ffmpeg hears it, from the first segment that starts after this
    call: whatever was heard before cannot leak in. (ffmpeg starts a live playlist at its
    newest complete segment: we wait until that is one that began after now.)"""
    playlist = node.join(space)
    first = newest_segment(playlist) + 2  # the one in progress now began before: the next one
    wait_for(f"segment {first} of the program", lambda: newest_segment(playlist) >= first, 15, 0.2)
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-live_start_index", "-1", "-i", playlist, "-t", str(PROGRAM_S),
         "-f", "s16le", "-ac", "1", "-ar", str(SR), "-"],
        capture_output=True, timeout=60, check=True,
    ).stdout
    audio = np.frombuffer(out, dtype=np.int16).astype(np.float64) / 32768
    assert len(audio) >= (PROGRAM_S - 0.1) * SR, f"only {len(audio) / SR:.2f} s of program decoded"
    return audio


def beeps(audio: np.ndarray) -> list[bool]:
    """Per half second: does it hold the fake microphone's beep? (audible, and most of its
    energy within BEEP_BAND)"""
    n = int(WINDOW_S * SR)
    out = []
    for i in range(0, len(audio) - n + 1, n):
        w = audio[i : i + n]
        power = np.abs(np.fft.rfft(w * np.hanning(n))) ** 2
        hz = np.fft.rfftfreq(n, 1 / SR)
        total = float(power.sum())
        in_band = float(power[(hz >= BEEP_BAND[0]) & (hz <= BEEP_BAND[1])].sum())
        peak = float(hz[np.argmax(power)])
        loud = float(np.max(np.abs(w))) > 0.02
        out.append(loud and total > 0 and in_band / total > 0.3 and abs(peak - BEEP_HZ) <= 20)
    return out


# -- tests -------------------------------------------------------------------------------------


def test_listener_requests_goes_on_stage_is_heard_and_host_mutes_them(
    node: AmphiServer, pages: Callable[..., Page], tmp_path: Path
) -> None:
    space, key = live_space(node, "stage: request, accept, mute")
    host = open_console(pages, node, space, key)
    host.wait_for_selector("#requests-empty:not([hidden])")

    # A listener asks to speak, from the listener page.
    listener = pages(f"{node.url}/s/{space}", {"width": 390, "height": 844})  # a phone
    listener.wait_for_function("window.amphiPlayer.state === 'playing'", timeout=20_000)
    listener.click("#ask-open")
    listener.fill("#ask-name", "Ada Lovelace")
    listener.click("#ask-form button[type=submit]")
    listener.wait_for_selector("#requested:not([hidden])")
    assert "Waiting for the host" in listener.inner_text("#requested")
    pid = stage_state(listener)["you"]["id"]

    # The console hears of it by push (its only channel is the open event stream).
    request = host.wait_for_selector(f'#requests li[data-id="{pid}"]')
    assert "Ada Lovelace" in request.inner_text()
    assert stage_state(host)["events"]["state"] == "open"
    request.query_selector("button[data-action=accept]").click()

    # Accepted: the listener's browser takes the microphone and goes on stage; the program
    # (HLS) stops and the return feed plays from the WebRTC connection instead.
    listener.wait_for_function(
        "window.amphiStage.onStage && window.amphiStage.speaking.state === 'connected'",
        timeout=ON_STAGE_TIMEOUT_S * 1000)
    listener.wait_for_selector("#onstage:not([hidden])")
    state = stage_state(listener)
    assert state["you"]["state"] == "on_stage"
    assert state["player"] == "idle", "the program should stop while on stage"
    assert listener.evaluate("document.getElementById('audio').getAttribute('src')") is None
    assert listener.evaluate("""() => {
        const s = document.getElementById('return-feed').srcObject;
        return Boolean(s) && s.getAudioTracks().some((t) => t.readyState === 'live');
    }""")
    assert listener.is_hidden("#play")
    assert listener.inner_text("#mute") == "Mute"
    host.wait_for_selector(f'{member(host, pid)}[data-connected="true"]', timeout=ON_STAGE_TIMEOUT_S * 1000)
    assert host.is_hidden("#requests li")

    # Its fake microphone is heard in the program: a beep in (nearly) every half second.
    # (from the first segment after the server hears it: the console's talking indicator)
    host.wait_for_selector(f'{member(host, pid)}[data-talking="true"]', timeout=10_000)
    heard = beeps(program_from_now(node, space))
    assert sum(heard) >= 5, f"the browser's beep is missing from the program: {heard}"

    # The host mutes them from the console.
    host.click(f'{member(host, pid)} button[data-action=mute]')
    host.wait_for_selector(f'{member(host, pid)}[data-host-muted="true"]')
    listener.wait_for_selector("#mute-note:not([hidden])")
    assert listener.is_disabled("#mute")
    assert listener.inner_text("#mute") == "Unmute"
    assert "host muted you" in listener.inner_text("#mute-note")
    for name, page in (("listener-host-muted.png", listener), ("console-one-speaker.png", host)):
        page.screenshot(path=str(tmp_path / name), full_page=True)
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    # ... and their own unmute is refused by the server, whatever the button says.
    refused = listener.evaluate("""async () => {
        try {
            await AmphiStage.call(location.pathname.split('/')[2],
                                  'POST', '/stage/me/unmute', {auth: window.amphiStage.grant});
            return null;
        } catch (err) { return {status: err.status, code: err.code, text: AmphiStage.plainError(err)}; }
    }""")
    assert refused is not None and refused["status"] == 403 and refused["code"] == "host_muted", refused
    assert refused["text"].startswith("Not allowed: ")

    # The beep is gone from the program.
    after = beeps(program_from_now(node, space))
    assert not any(after), f"the muted browser is still heard: {after}"
    assert stage_state(listener)["speaking"]["state"] == "connected"  # muted, not hung up

    # The host lifts the mute; the speaker may unmute again, then leaves the stage: back to
    # the program.
    host.click(f'{member(host, pid)} button[data-action=unmute]')
    listener.wait_for_selector("#mute:not([disabled])")
    assert listener.is_hidden("#mute-note") and listener.inner_text("#mute") == "Mute"
    listener.click("#leave-stage")
    listener.wait_for_selector("#ask:not([hidden])")
    listener.wait_for_function("window.amphiPlayer.state === 'playing'", timeout=20_000)
    state = stage_state(listener)
    assert state["onStage"] is False and state["speaking"]["state"] == "stopped"
    assert listener.inner_text("#speak-status") == ""  # our own doing: no note
    assert listener.is_visible("#play")
    host.wait_for_selector(member(host, pid), state="detached")


def test_host_console_counts_shows_talking_and_invites(
    node: AmphiServer, pages: Callable[..., Page], tmp_path: Path
) -> None:
    space, key = live_space(node, "stage: console and invites")
    # A wrong key is refused in plain words, and not kept.
    host = pages(f"{node.url}/s/{space}/host")
    host.fill("#key", "not-the-key")
    host.click("#key-submit")
    host.wait_for_selector("#key-error:not([hidden])")
    assert host.inner_text("#key-error") == "That is not the host key of this Space."
    assert host.evaluate("sessionStorage.length") == 0
    host.fill("#key", key)
    host.click("#key-submit")
    host.wait_for_selector("#console:not([hidden])")
    host.wait_for_function("window.amphiStage.view && window.amphiStage.view.state === 'live'")
    assert host.inner_text("#state") == "LIVE"

    # The listener count comes by push.
    audience = pages(f"{node.url}/s/{space}")
    wait_for("the console to count one listener",
             lambda: "1 listening" in host.inner_text("#counts"), 20)

    # The host speaks from the browser; the talking indicator moves with the fake beep.
    host.click("#speak")
    host.wait_for_function("window.amphiStage.speaking.state === 'connected'", timeout=ON_STAGE_TIMEOUT_S * 1000)
    me = member(host, "host")
    host.wait_for_selector(f'{me}[data-connected="true"][data-talking="true"]', timeout=10_000)
    # the level is the loudest 0.2 s: between two 60 ms beeps it may read 0 while talking holds
    host.wait_for_function(f"""() => {{
        const v = parseFloat(document.querySelector('{me}').style.getPropertyValue('--level'));
        return v > 0 && v <= 1;
    }}""", timeout=10_000)
    assert host.eval_on_selector(me, "li => li.querySelector('.talk-status').textContent") == "talking"
    shot = tmp_path / "host-console.png"
    host.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == PNG_MAGIC

    # Self-mute: the track goes silent and the stage shows it.
    host.click("#self-mute")
    host.wait_for_selector(f'{me}[data-muted="true"][data-talking="false"]')
    host.wait_for_function("""() => {
        const m = window.amphiStage.view.members.find((m) => m.id === 'host');
        return m && m.muted && !m.talking;
    }""", timeout=10_000)
    assert host.inner_text("#self-mute") == "Unmute me"

    # An invite: the console shows a link; the link works in another browser.
    host.fill("#invite-name", "Grace Hopper")
    host.click("#invite-form button[type=submit]")
    link = host.wait_for_selector("#invite-result:not([hidden]) #invite-link").inner_text()
    assert link.startswith(f"{node.url}/s/{space}?grant=p"), link
    host.wait_for_selector('#invited li:has-text("Grace Hopper")')

    guest = pages(link)
    guest.wait_for_selector("#invited:not([hidden])")
    assert "You’re invited to speak" in guest.inner_text("#invited")
    assert "grant=" not in guest.url, "the grant should leave the address bar"
    guest.click("#invite-accept")
    guest.wait_for_function("window.amphiStage.onStage && window.amphiStage.speaking.state === 'connected'",
                            timeout=ON_STAGE_TIMEOUT_S * 1000)
    pid = stage_state(guest)["you"]["id"]
    host.wait_for_selector(f'{member(host, pid)}[data-connected="true"]')
    assert "Grace Hopper" in host.inner_text(member(host, pid))
    assert host.is_hidden("#invited li")
    # every listener sees who is on stage, from the public stream
    guest.wait_for_selector(f'{member(guest, "host")}[data-muted="true"]')

    # Made co-host: their page gets the moderator's view (the requests to answer).
    host.click(f'{member(host, pid)} button[data-action=cohost]')
    host.wait_for_selector(f'{member(host, pid)}[data-role="cohost"]')
    guest.wait_for_selector("#moderate:not([hidden])")
    assert guest.evaluate("window.amphiStage.view.moderator") is True
    assert guest.inner_text("#mod-empty") == "No requests right now."

    # Removed from the Space: the guest's page says so and stops.
    host.click(f'{member(host, pid)} button[data-action=remove-space]')
    guest.wait_for_selector("#removed:not([hidden])")
    state = stage_state(guest)
    assert state["removed"] is True and state["onStage"] is False
    assert state["speaking"]["state"] == "stopped"
    assert state["player"] == "idle"
    assert guest.is_hidden("#play")
    host.wait_for_selector(member(host, pid), state="detached")

    # The host stops speaking: the page DELETEs its WHIP session (RFC 9725), and the node hangs
    # it up (whether the DELETE or the closed connection reaches it first).
    host.click("#speak")
    host.wait_for_function("window.amphiStage.speaking.state === 'stopped'")
    wait_for("the node to hang up the host's WHIP session by its DELETE",
             lambda: any("host hung up WHIP session" in line for line in node.log.read_text(errors="replace").splitlines()),
             10)
    host.wait_for_selector(f'{member(host, "host")}[data-connected="false"]')

    # The host ends the Space: the console and the listener pages follow.
    host.click("#end")
    host.wait_for_selector("#state.ended")
    assert host.is_hidden("#speak") and host.is_hidden("#end")
    host.wait_for_function("window.amphiStage.speaking.state === 'stopped'")
    audience.wait_for_selector("#state.ended")
    audience.wait_for_selector("#room #speak-box", state="hidden")


def test_a_browser_speaker_dropped_by_the_server_reconnects_by_itself(
    pages: Callable[..., Page], tmp_path: Path
) -> None:
    server = AmphiServer(tmp_path / "data", None, "--speaker-timeout", "2").start()
    try:
        space, key = live_space(server, "stage: reconnect")
        pid, grant = server.on_stage(space, key, "Bob")
        # Accepted already: the page goes on stage as soon as it opens with Bob's grant.
        bob = pages(f"{server.url}/s/{space}?grant={grant}")
        bob.wait_for_function("window.amphiStage.speaking && window.amphiStage.speaking.state === 'connected'",
                              timeout=ON_STAGE_TIMEOUT_S * 1000)
        wait_for("the server to hear Bob", lambda: (m := server.member(space, pid)) and m["talking"], 10)

        # Bob's browser stops sending: the server hangs up after 2 s of silence.
        bob.evaluate("window.amphiStage.speaker.pc.getSenders()[0].replaceTrack(null)")
        wait_for("the server to drop Bob", lambda: (m := server.member(space, pid)) and not m["connected"], 10)

        # The page offers again by itself, with a fresh peer connection that sends the microphone.
        back = wait_for("Bob back on stage, heard",
                        lambda: (m := server.member(space, pid)) and m["connected"] and m["talking"] and m, 20)
        assert back["muted"] is False
        speaking = stage_state(bob)["speaking"]
        assert speaking["state"] == "connected" and speaking["reconnects"] >= 1 and speaking["connects"] >= 2, speaking
        assert server.stage(space, grant)["you"]["reconnects"] >= 1
        assert stage_state(bob)["onStage"] is True
    finally:
        server.stop()
