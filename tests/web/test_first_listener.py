"""The first listener of a brand-new pipeline plays steadily, close to live.

Regression: a scheduled Space's pipeline starts on the first join, so its first listener
joins in the middle of the stream's first segment. That segment used to have media sequence
number 0, which hls.js (1.7.4) takes for "no segment" when it appends one of its parts: it
dropped the segment from its fragment tracker after every part, and at the segment's end
(where Chrome's buffered end, 3.583999 s, falls just short of the next part's start, 3.584 s)
it reloaded the last part in a loop, hundreds of times, until segment 0 left the playlist:
~1.5 s of audio, a ~5 s stall, then ~7 s behind live for good.

A real node (``amphi serve``, no demo) and Debian's chromium through playwright, as in
test_listener_page.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import wait_for

START_TIMEOUT_S = 15
PLAY_TIMEOUT_S = 20  # from the page's load to the first audible sample
WATCH_S = 10.0  # how long playback is watched once it runs
SAMPLE_EVERY_S = 0.1
MAX_STALL_S = 1.0  # longest stretch of wall time without currentTime moving
MAX_BEHIND_LIVE_S = 4.0
MAX_REQUESTS_PER_PART = 2  # one, plus a possible retry; the bug made hundreds


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    server = AmphiServer(tmp_path_factory.mktemp("amphi-first-listener") / "data").start()
    yield server
    server.stop()


def playback(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => {
        const a = document.querySelector("audio");
        const b = a.buffered.length ? a.buffered.end(a.buffered.length - 1) : null;
        return {time: a.currentTime, paused: a.paused, latency: window.amphiPlayer.behindLive(), bufferEnd: b,
                fatal: window.amphiPlayer.fatal};
    }""")


def test_first_listener_of_a_fresh_scheduled_space_plays_steadily_near_live(node: AmphiServer, page: Page) -> None:
    base = node.url
    starts = (datetime.now(UTC) + timedelta(minutes=10)).isoformat(timespec="seconds").replace("+00:00", "Z")
    r = httpx.post(f"{base}/api/spaces", json={"title": "First listener", "starts_at": starts},
                   headers=node.api_headers, timeout=5)
    assert r.status_code == 201, r.text
    space_id = r.json()["id"]

    parts: Counter[str] = Counter()
    # a part is a byte range of its segment: a request is its file and range
    page.on("request", lambda req: parts.update([f'{req.url.rsplit("/", 1)[-1]} {req.headers.get("range", "")}'])
            if "/media/" in req.url and req.url.endswith(".m4s") else None)
    page.goto(f"{base}/s/{space_id}")  # the page's join is the first: it starts the Space's pipeline
    page.wait_for_selector("#state.scheduled")
    wait_for("playback to start", lambda: (s := playback(page))["time"] > 0 and not s["paused"], PLAY_TIMEOUT_S, 0.1)

    samples: list[tuple[float, dict[str, Any]]] = []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < WATCH_S:
        samples.append((now, playback(page)))
        time.sleep(SAMPLE_EVERY_S)

    trace = "\n".join(f"  {t - t0:5.2f} s: currentTime {s['time']:.3f} buffered to {s['bufferEnd']} "
                      f"latency {s['latency']}" for t, s in samples[::5])
    stall, longest = samples[0][0], 0.0
    for (_, a), (t, b) in zip(samples, samples[1:]):
        if b["time"] > a["time"]:
            stall = t
        longest = max(longest, t - stall)
    assert longest <= MAX_STALL_S, (
        f"currentTime stood still for {longest:.2f} s (parts requested: {parts.most_common(3)})\n{trace}")
    advanced = samples[-1][1]["time"] - samples[0][1]["time"]
    elapsed = samples[-1][0] - samples[0][0]
    assert advanced >= elapsed - MAX_STALL_S, f"played {advanced:.2f} s in {elapsed:.2f} s\n{trace}"
    behind = samples[-1][1]["latency"]
    assert behind is not None and behind <= MAX_BEHIND_LIVE_S, f"{behind} s behind live at the end\n{trace}"
    reloaded = {uri: n for uri, n in parts.items() if n > MAX_REQUESTS_PER_PART}
    assert not reloaded, f"parts requested again and again: {reloaded}"
    assert samples[-1][1]["fatal"] == []
