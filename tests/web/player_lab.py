"""Shaka Player against hls.js on the same live Space, in headless Chromium (docs/player.md).

    PYTHONPATH=$PWD/src .venv/bin/python -m tests.web.player_lab [--seconds 60] [--edge]

A real node (``amphi serve --demo``), optionally behind a real Varnish edge (``amphi edge
run``); each player in turn: the listener page (Shaka, as player.js configures it), then a page
on another origin with hls.js 1.7.4 (lowLatencyMode, as the page had it) and with Shaka's
defaults. For each: media requests a second (playlists and segments or parts, from the page's
resource timing), behind live (wall clock minus EXT-X-PROGRAM-DATE-TIME of the sample playing)
p50 and max after the first 10 s, stalls (``waiting`` after playback started) and time to
first audio (from the join answer, or the page's start for the embedded players).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

from tests.integration.amphi_proc import AmphiServer
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS
from tests.web.lab import WATCH, OtherOrigin, embed_page, media_requests, sample

SETTLE_S = 10.0  # behind-live is read after this much playback (the start is its own figure)


def watch(page: Page, behind: str, seconds: float) -> dict[str, Any]:
    samples = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        samples.append(sample(page, behind))
        time.sleep(0.25)
    last = samples[-1]
    started = last["playing"][0] if last["playing"] else None
    reqs = media_requests(page)
    t0 = last["joined"][0] if last["joined"] else page.evaluate("lab.t0")
    window = [r for r in reqs if started is not None and r["start"] >= started + SETTLE_S]
    span_s = (last["now"] - (started + SETTLE_S)) / 1000 if started is not None else 0
    settled = [s["behind"] for s in samples if started is not None and s["now"] >= started + SETTLE_S
               and s["behind"] is not None]
    return {
        "first_audio_s": round((started - t0) / 1000, 2) if started is not None else None,
        "stalls": sum(1 for w in last["waiting"] if started is not None and w > started),
        "requests_per_s": round(len(window) / span_s, 2) if span_s > 0 else None,
        "playlists_per_s": round(sum(".m3u8" in r["url"] for r in window) / span_s, 2) if span_s > 0 else None,
        "behind_p50_s": round(statistics.median(settled), 2) if settled else None,
        "behind_max_s": round(max(settled), 2) if settled else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="each player's run")
    ap.add_argument("--edge", action="store_true", help="through a Varnish edge (amphi edge run)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="player-lab-"))
    edge = None
    extra: list[str] = ["--demo", "--pow", "off"]
    if args.edge:
        from tests.edge.edges import EdgeProc
        from tests.integration.amphi_proc import free_port

        port = free_port()
        (tmp / "secret").write_text("e" * 64)
        extra += ["--edge", f"http://127.0.0.1:{port}"]
    (tmp / "data").mkdir()
    if args.edge:
        (tmp / "data" / "secret").write_text("e" * 64)
    node = AmphiServer(tmp / "data", None, *extra).start()
    try:
        if args.edge:
            edge = EdgeProc(tmp / "edge", "edge1", node.url, tmp / "secret", port=port).start()
        deadline = time.monotonic() + 15
        while not (live := [s["id"] for s in node.http.get("/api/spaces").json() if s["state"] == "live"]):
            assert time.monotonic() < deadline, "no live demo Space"
            time.sleep(0.2)
        space = live[0]
        # a steady stream first: a fresh pipeline's first segments are no measure of a player
        playlist = httpx.post(f"{node.url}/api/spaces/{space}/join", json={}, timeout=10).json()["media_playlist"]
        while httpx.get(playlist, timeout=10, follow_redirects=True).text.count("#EXTINF") < 3:
            assert time.monotonic() < deadline + 30, "the demo Space makes no segments"
            time.sleep(0.5)
        results = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.add_init_script(WATCH)
            page.goto(f"{node.url}/s/{space}")
            results["listener page (Shaka, low latency)"] = watch(page, "amphiPlayer.behindLive()", args.seconds)
            page.close()
            for engine in ("hls.js", "shaka"):
                playlist = httpx.post(f"{node.url}/api/spaces/{space}/join", json={}, timeout=10).json()["playlist"]
                with OtherOrigin(embed_page(node.url, engine)) as other:
                    page = browser.new_page()
                    page.add_init_script(WATCH)
                    page.goto(f"{other.url}?src={playlist}")
                    results[f"{engine}, defaults + lowLatencyMode"] = watch(page, "behindLive()", args.seconds)
                    page.close()
            browser.close()
    finally:
        if edge is not None:
            edge.stop()
        node.stop()
    cols = ["first_audio_s", "stalls", "requests_per_s", "playlists_per_s", "behind_p50_s", "behind_max_s"]
    print(f"| player ({args.seconds:.0f} s{', through an edge' if args.edge else ''}) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
