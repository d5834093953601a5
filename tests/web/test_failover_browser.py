"""The listener page across the death of the Space's host (issue 19, docs/cluster.md): headless
Chromium on /s/<space> through a real edge in front of two `amphi serve --redis` nodes; the host
is killed (-9) and the page must play on without a click. The page's audio is metered in the page
(the element's captured stream into an AnalyserNode): the speaker's tone, not just a clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.integration.test_failover import TONE_HZ, cluster, failover, live_space, stop_speaker  # noqa: F401
from tests.web.browser import wait_for
from tests.web.test_listener_page import PNG_MAGIC, assert_plays

AFTER_TAKEOVER_S = 10.0  # the page must play on this long after b took over

# Every 100 ms: the audio element's clock, the page's playback line and error line, and the
# dominant frequency and level of what the element plays (its captured stream, metered).
METER = """() => {
    const audio = document.querySelector("audio");
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    ctx.createMediaStreamSource(audio.captureStream()).connect(analyser);
    const bins = new Float32Array(analyser.frequencyBinCount);
    const wave = new Float32Array(analyser.fftSize);
    window.__samples = [];
    setInterval(() => {
        analyser.getFloatFrequencyData(bins);
        analyser.getFloatTimeDomainData(wave);
        let top = 0;
        for (let i = 1; i < bins.length; i++) if (bins[i] > bins[top]) top = i;
        const rms = Math.sqrt(wave.reduce((s, x) => s + x * x, 0) / wave.length);
        const error = document.getElementById("error");
        window.__samples.push({at: performance.now(), time: audio.currentTime, paused: audio.paused,
            hz: top * ctx.sampleRate / analyser.fftSize, rms, playback: document.getElementById("playback").textContent,
            error: error.hidden ? "" : error.textContent, behind: window.amphiPlayer.behindLive(),
            fatal: window.amphiPlayer.fatal.length, ctx: ctx.state});
    }, 100);
}"""


def samples(page: Page) -> list[dict]:
    return page.evaluate("() => window.__samples")


def tone(s: dict) -> bool:
    return abs(s["hz"] - TONE_HZ) <= 10 and s["rms"] > 0.02


def longest_stall_s(run: list[dict]) -> float:
    """The longest stretch (page time) over which the audio element's clock did not advance."""
    longest, since = 0.0, run[0]
    for prev, s in zip(run, run[1:]):
        if s["time"] > prev["time"]:
            since = s
        longest = max(longest, (s["at"] - since["at"]) / 1000)
    return longest


@pytest.mark.serial
def test_the_listener_page_plays_on_across_kill_9_of_the_host_without_a_click(cluster, page: Page,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    c = cluster
    space, key, speaker = live_space(c)
    try:
        page.goto(f"{c.edge.url}/s/{space}")
        page.wait_for_selector("#state.live")
        assert_plays(page)
        page.evaluate(METER)
        wait_for("the tone in the page", lambda: sum(tone(s) for s in samples(page)) >= 10, 10, 0.2)
        c.a.kill9()
        killed = time.monotonic()
        wait_for("node b to take the Space over", lambda: failover(c.b)["takeovers"] == 1, 10)
        took_s = time.monotonic() - killed
        at_takeover = len(samples(page))
        start = samples(page)[-1]["time"]
        wait_for(f"the page's clock to advance {AFTER_TAKEOVER_S} s past the take-over",
                 lambda: samples(page)[-1]["time"] >= start + AFTER_TAKEOVER_S, AFTER_TAKEOVER_S + 6, 0.2)
        run = samples(page)
        after = run[at_takeover:]
        shot = tmp_path / "after-takeover.png"
        page.screenshot(path=str(shot), full_page=True)

        assert not any(s["paused"] for s in run), [s for s in run if s["paused"]][:3]
        assert not any(s["fatal"] for s in run) and not any(s["error"] for s in run), \
            {s["error"] for s in run if s["error"]}
        tail = after[-30:]  # the last 3 s: the speaker is heard again, from the new host
        assert sum(tone(s) for s in tail) >= 25, [(round(s["hz"]), round(s["rms"], 3)) for s in tail]
        assert tail[-1]["playback"].startswith("Live"), tail[-1]
        assert tail[-1]["behind"] is not None and tail[-1]["behind"] < 10, tail[-1]
        stall = longest_stall_s(run)
        assert stall <= 5.0, stall
        assert not page.locator("#error").is_visible() and not page.locator("#notfound").is_visible()
        assert page.text_content("#state") and "live" in (page.get_attribute("#state", "class") or "")
        assert shot.read_bytes().startswith(PNG_MAGIC)
        print(f"take-over {took_s:.2f} s after the kill; longest stall of the page's clock {stall:.2f} s; "
              f"{AFTER_TAKEOVER_S} s played in {(after[-1]['at'] - after[0]['at']) / 1000:.1f} s after it; "
              f"behind live at the end {tail[-1]['behind']:.1f} s")
    finally:
        stop_speaker(speaker)
