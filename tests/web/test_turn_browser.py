"""A browser speaker through TURN: Debian's coturn on 127.0.0.1 with TURN REST credentials
(use-auth-secret), ``amphi serve --turn ... --turn-secret ...``, and headless Chromium whose fake
microphone plays a tone from a WAV file, speaking from the host console with
``iceTransportPolicy: "relay"`` (the page's ?ice_transport_policy=relay): only a path relayed by
coturn may carry the audio. The tone is heard in the program (ffmpeg), the page's selected
candidate pair is a relay one, and coturn's log shows the allocation made with Amphi's
ephemeral credential."""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.audio import SR, dominant_per_window, rms, tone, write_wav
from tests.integration.amphi_proc import AmphiServer, Speaker, stop_group
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, FAKE_MEDIA_ARGS, RAW_MICROPHONE, wait_for

TONE_HZ = 523
SECRET = "amphi-turn-test-secret"
REALM = "amphi.test"
PROGRAM_S = 3.5  # within one segment (3.584 s)


@dataclass
class Turn:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def free_udp_and_tcp_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    """coturn's ``turnserver``, listening and relaying on 127.0.0.1 only, checking TURN REST
    credentials against ``SECRET``; loopback peers allowed (the node is one)."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn's turnserver is not installed: run `make setup`, which installs the Debian package")
    port = free_udp_and_tcp_port()
    low = random.randrange(49152, 65000)
    log, work = tmp_path / "turnserver.log", tmp_path / "turn"
    work.mkdir()
    cmd = [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
           f"--min-port={low}", f"--max-port={low + 400}", "--use-auth-secret", f"--static-auth-secret={SECRET}",
           f"--realm={REALM}", "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-multicast-peers",
           f"--log-file={log}", "--simple-log", f"--pidfile={work / 'turnserver.pid'}", f"--userdb={work / 'turndb'}",
           "--verbose"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=work)
    server = Turn(port, log, proc)
    try:
        wait_for("turnserver's UDP listener",
                 lambda: proc.poll() is None and log.exists() and f"UDP listener opened on: 127.0.0.1:{port}" in server.text()
                 or (proc.poll() is not None and pytest.fail(f"turnserver exited: {log.read_text() if log.exists() else ''}")),
                 15, 0.1)
        yield server
    finally:
        stop_group(proc, 5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Chromium whose fake microphone plays a steady tone (a WAV file, looped)."""
    if not CHROMIUM.exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM}: run `make setup`")
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 10.0, level=0.5))
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=CHROMIUM_ARGS + FAKE_MEDIA_ARGS + [f"--use-file-for-fake-audio-capture={wav}"])
        yield b
        b.close()


def program(node: AmphiServer, space: str) -> np.ndarray:
    """The live program as ffmpeg hears it, from a segment that began after this call."""
    playlist = node.join(space)

    def newest() -> int:
        text = node.http.get(playlist).text
        m = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", text, re.M)
        assert m is not None, text
        return int(m.group(1)) + text.count("#EXTINF") - 1

    after = newest() + 2
    wait_for(f"segment {after} of the program", lambda: newest() >= after, 20, 0.2)
    out = subprocess.run(["ffmpeg", "-v", "error", "-live_start_index", "-1", "-i", playlist, "-t", str(PROGRAM_S),
                          "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"], capture_output=True, timeout=60, check=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def test_a_browser_speaker_relayed_by_coturn_is_heard(turn: Turn, browser: Browser, tmp_path: Path) -> None:
    node = AmphiServer(tmp_path / "data", None, "--turn", turn.url, "--turn-secret", SECRET).start()
    context = browser.new_context()
    errors: list[str] = []
    try:
        space, key = node.create("through TURN")
        node.start_space(space, key)
        context.add_init_script(RAW_MICROPHONE)
        host = context.new_page()
        host.on("pageerror", lambda e: errors.append(str(e)))
        host.on("console", lambda m: print(f"[host] {m.type}: {m.text}"))  # shown when the test fails
        host.goto(f"{node.url}/s/{space}/host?ice_transport_policy=relay")
        host.fill("#key", key)
        host.click("#key-submit")
        host.wait_for_function("window.amphiStage.view && window.amphiStage.view.state === 'live'")
        host.click("#speak")
        host.wait_for_function("window.amphiStage.speaking.state === 'connected'", timeout=30_000)

        # The path the browser took: its side is a relay candidate of coturn's (on 127.0.0.1).
        route = wait_for("the selected candidate pair", lambda: host.evaluate("window.amphiStage.route()"), 10)
        assert route["local"]["type"] == "relay", route
        assert route["remote"]["type"] == "host" and route["remote"]["address"] == "127.0.0.1", route

        audio = program(node, space)
        speaking = host.evaluate("window.amphiStage.speaking")
    finally:
        context.close()
        node.stop()
    assert not errors, errors
    assert speaking["state"] == "connected" and speaking["reconnects"] == 0, speaking
    assert len(audio) >= (PROGRAM_S - 0.1) * SR, f"only {len(audio) / SR:.2f} s decoded"
    quarter = SR // 4
    windows = dominant_per_window(audio, 0.25)
    assert all(abs(hz - TONE_HZ) <= 5 for hz in windows), windows
    assert min(rms(audio[i * quarter:(i + 1) * quarter]) for i in range(len(windows))) > 0.05, "the tone dropped out"

    # coturn allocated a relay for Amphi's ephemeral user, <expiry>:host, and relayed to the node.
    log = turn.text()
    allocations = re.findall(rf"realm <{re.escape(REALM)}> user <(\d+):host>: incoming packet ALLOCATE processed, success",
                             log)
    assert allocations, log[-3000:]
    assert re.search(r"user <\d+:host>: incoming packet CREATE_PERMISSION processed, success", log), log[-3000:]


def test_amphi_speak_allocates_on_coturn_with_the_nodes_credential(turn: Turn, tmp_path: Path) -> None:
    """``amphi speak`` asks the node for its ICE servers and gathers a relay candidate on coturn
    with the ephemeral credential (aiortc offers it beside its host candidate)."""
    node = AmphiServer(tmp_path / "data", None, "--turn", turn.url, "--turn-secret", SECRET).start()
    speaker = None
    try:
        space, key = node.create("speak with TURN")
        node.start_space(space, key)
        speaker = Speaker(node, space, key, "--tone", str(TONE_HZ)).start(timeout=30)
        audio = program(node, space)
    finally:
        if speaker is not None:
            speaker.stop()
        node.stop()
    windows = dominant_per_window(audio, 0.25)
    assert windows and all(abs(hz - TONE_HZ) <= 5 for hz in windows), windows
    assert re.search(rf"realm <{re.escape(REALM)}> user <\d+:host>: incoming packet ALLOCATE processed, success",
                     turn.text()), turn.text()[-3000:]
