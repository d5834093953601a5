"""Headless Chromium for the page tests: Debian's chromium, driven by playwright."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# Speaking from the browser: a fake microphone (a short beep twice a second), no permission
# prompt, and ICE over 127.0.0.1 (the node offers only loopback candidates in tests).
FAKE_MEDIA_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> Any:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


# The pages ask for echo cancellation, noise suppression and gain control, as they should for
# people. Chromium's voice processing adapts to the fake device's steady beep and, on a busy
# machine, sometimes turns it down to nothing; these tests check Amphi's path, not Chromium's
# processing, so the microphone is taken raw here (the only change to the pages' behaviour).
RAW_MICROPHONE = """(() => {
    const md = navigator.mediaDevices;
    if (!md || !md.getUserMedia) return;
    const gum = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => gum(c && c.audio ? {...c, audio: {echoCancellation: false,
        noiseSuppression: false, autoGainControl: false}} : c);
})();"""


def open_console(pages: Callable[..., Any], node: Any, space: str, key: str, state: str = "live",
                 viewport: dict[str, int] | None = None) -> Any:
    """The host console, signed in with the key (never in the URL), once its view says ``state``."""
    host = pages(f"{node.url}/s/{space}/host", viewport)
    host.fill("#key", key)
    host.click("#key-submit")
    host.wait_for_selector("#console:not([hidden])")
    host.wait_for_function(f"window.amphiStage.view && window.amphiStage.view.state === '{state}'")
    assert key not in host.url
    return host
