"""A WHIP client no one here wrote: ``whip-whep`` (npm, pinned in package.json; Medooze's
``WHIPClient``, trickle ICE over PATCH) in headless Chromium, on a page served from ANOTHER
origin, publishing a fake microphone that plays a 660 Hz tone to a real node with the host key as
its bearer token. The tone is then heard in the program (ffmpeg decodes the live HLS), and the
client's ``stop()`` (its DELETE of the session) hangs up: the tone is gone. No mocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from tests.audio import SR, ffmpeg_decode, tone, write_wav
from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, FAKE_MEDIA_ARGS, wait_for
from tests.web.lab import OtherOrigin

WHIP_JS = Path(__file__).resolve().parents[2] / "node_modules" / "whip-whep" / "whip.js"
TONE_HZ = 660.0
LIVE_LAG_S = 7.5  # ffmpeg starts at the live playlist's last whole segment: up to two segments back
HEARD_S = 3.0

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Speak with a WHIP client</title></head>
<body><h1>WHIP from another origin</h1>
<script type="module">
import { WHIPClient } from "./whip.js";
window.whip = {state: "new", error: null, deletes: []};
window.startWhip = async (endpoint, token) => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({audio: {echoCancellation: false,
        noiseSuppression: false, autoGainControl: false}, video: false});
    const pc = new RTCPeerConnection();
    pc.addEventListener("connectionstatechange", () => { window.whip.state = pc.connectionState; });
    for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: "sendonly", streams: [stream]});
    const client = new WHIPClient();
    window.whip.client = client;
    await client.publish(pc, endpoint, token);
    window.whip.resource = String(client.resourceURL);
    window.whip.etag = client.etag;
  } catch (e) {
    window.whip.error = String(e);
  }
};
window.stopWhip = async () => {
  try { await window.whip.client.stop(); window.whip.stopped = true; }
  catch (e) { window.whip.error = String(e); }
};
window.ready = true;
</script></body></html>"""


def band(x: np.ndarray, hz: float) -> float:
    """Amplitude of the strongest component within 10 Hz of ``hz`` (a sine of amplitude a gives a/2)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / len(x) * 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[np.abs(freqs - hz) < 10].max())


def program(node: AmphiServer, space: str) -> np.ndarray:
    """``HEARD_S`` seconds of what a listener hears, all of it produced after this call."""
    return ffmpeg_decode(node.join(space), seconds=HEARD_S + LIVE_LAG_S, live_edge=True)[-int(HEARD_S * SR):]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[AmphiServer]:
    server = AmphiServer(tmp_path / "data").start()
    yield server
    server.stop()


@pytest.mark.serial
def test_an_npm_whip_client_on_another_origin_is_heard_and_its_delete_hangs_up(node: AmphiServer,
                                                                                 tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM}: run `make setup`")
    if not WHIP_JS.is_file():
        pytest.fail(f"{WHIP_JS} is missing: run `make setup` (npm ci)")
    microphone = tmp_path / "tone.wav"
    write_wav(microphone, tone(TONE_HZ, 10.0, level=0.5))  # Chromium loops it
    space, key = node.create("WHIP from elsewhere")
    node.start_space(space, key)
    endpoint = f"{node.url}/api/spaces/{space}/speak"

    errors: list[str] = []
    deletes: list[int] = []
    patches: list[int] = []  # the client's trickled candidates
    with OtherOrigin({"/speak.html": ("text/html; charset=utf-8", PAGE.encode()),
                      "/whip.js": ("text/javascript", WHIP_JS.read_bytes()),
                      "/favicon.ico": ("image/x-icon", b"")}) as site:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
                *CHROMIUM_ARGS, *FAKE_MEDIA_ARGS, f"--use-file-for-fake-audio-capture={microphone}"])
            try:
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: print(f"[page] {m.type}: {m.text}"))
                page.on("response", lambda r: {"DELETE": deletes, "PATCH": patches}.get(r.request.method, []).append(r.status))
                page.goto(f"{site.origin}/speak.html")
                page.wait_for_function("window.ready === true")
                assert page.evaluate("location.origin") != node.url  # the page is on another origin

                page.evaluate("([url, token]) => startWhip(url, token)", [endpoint, key])
                whip = page.evaluate("({error: whip.error, resource: whip.resource, etag: whip.etag})")
                assert whip["error"] is None, whip  # e.g. "Response missing location header", or CORS
                assert whip["resource"].startswith(f"{node.url}/api/spaces/{space}/speak/"), whip
                assert whip["etag"], whip  # read cross-origin: exposed
                page.wait_for_function("whip.state === 'connected'", timeout=20_000)
                wait_for("the host talking on the stage", lambda: (h := node.member(space, "host")) and h["talking"], 20)

                # ICE may connect on the node's candidates before the client's trickled ones are answered;
                # playwright hands its events (the responses) over only while it is called: pumped here
                wait_for("the client's trickled candidates answered", lambda: page.wait_for_timeout(50) or patches, 10)
                assert set(patches) == {204}, patches  # trickle ICE taken
                heard = program(node, space)
                assert band(heard, TONE_HZ) > 0.05, band(heard, TONE_HZ)

                page.evaluate("stopWhip()")
                assert page.evaluate("({error: whip.error, stopped: whip.stopped})") == {"error": None, "stopped": True}
                wait_for("the client's DELETE answered", lambda: page.wait_for_timeout(50) or deletes, 10)
                assert deletes == [204], deletes
            finally:
                browser.close()
    assert not errors, errors

    logged = [line for line in node.log.read_text(errors="replace").splitlines() if "hung up WHIP session" in line]
    assert logged, "the node did not hang up by the client's DELETE"
    wait_for("the host no longer connected", lambda: not node.member(space, "host")["connected"], 10)
    after = program(node, space)
    assert band(after, TONE_HZ) < 0.01, band(after, TONE_HZ)
