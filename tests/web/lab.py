"""What a browser test of playback watches, shared by the player tests and the comparison
(``python -m tests.web.player_lab``, docs/player.md).

- ``WATCH``: an init script that records, in the page's own clock, every ``waiting`` and
  ``playing`` event of any media element, when a join was answered (the page's fetch is
  wrapped: listener.js looks ``window.fetch`` up at each call), and every request the page
  made (resource timing, which counts a streamed segment when its response ends).
- ``embed_page``: a page for ANOTHER origin that plays a playlist with hls.js or Shaka Player,
  the libraries loaded from the node (a script tag needs no CORS; the playlist and media
  requests do). It reports behind-live the way the listener page does: the wall clock minus
  the EXT-X-PROGRAM-DATE-TIME of the sample playing.
- ``OtherOrigin``: serves such pages on another 127.0.0.1 port.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from playwright.sync_api import Page

WATCH = """
window.lab = {waiting: [], playing: [], joined: [], t0: performance.now()};
document.addEventListener("waiting", () => lab.waiting.push(performance.now()), true);
document.addEventListener("playing", () => lab.playing.push(performance.now()), true);
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const reply = await pageFetch(...args);
  const url = String(args[0] && args[0].url ? args[0].url : args[0]);
  if (url.endsWith("/join") && reply.status === 200) lab.joined.push(performance.now());
  return reply;
};
window.lab.requests = () => performance.getEntriesByType("resource")
  .filter((e) => e.name.includes("/media/"))
  .map((e) => ({url: e.name, start: e.startTime, end: e.responseEnd}));
"""


def embed_page(origin: str, engine: str) -> str:
    """HTML for another origin: ``?src=<playlist>`` plays with ``engine`` ("hls.js" or "shaka")."""
    lib = "/vendor/hls.min.js" if engine == "hls.js" else "/vendor/shaka-player.js"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Embedded Space ({engine})</title>
<script src="{origin}{lib}"></script></head>
<body><h1>An Amphi Space, embedded ({engine})</h1><audio id="audio" controls></audio>
<script>
const audio = document.getElementById("audio");
const src = new URLSearchParams(location.search).get("src");
window.errors = [];
if ({'true' if engine == 'hls.js' else 'false'}) {{
  const hls = new Hls({{lowLatencyMode: true}});
  hls.on(Hls.Events.ERROR, (_e, d) => {{ if (d.fatal) errors.push(d.details); }});
  hls.attachMedia(audio);
  hls.loadSource(src);
  window.playingDate = () => hls.playingDate;
}} else {{
  shaka.polyfill.installAll();
  const sp = new shaka.Player();
  sp.configure({{streaming: {{lowLatencyMode: true}}}});
  sp.addEventListener("error", (e) => errors.push(e.detail.code));
  sp.attach(audio).then(() => sp.load(src)).catch((e) => errors.push(e.code));
  window.playingDate = () => (audio.currentTime ? sp.getPlayheadTimeAsDate() : null);
}}
window.behindLive = () => {{
  const at = window.playingDate();
  return at ? (Date.now() - at.getTime()) / 1000 : null;
}};
audio.play().catch(() => {{}});
audio.addEventListener("canplay", () => audio.play().catch(() => {{}}));
</script></body></html>"""


class OtherOrigin:
    """Pages on a port of their own: another origin than the node's. ``files``: one HTML page
    (served as ``/embed.html``, ``url``), or path -> (content type, body); any other path is
    404. A query does not change what a path serves."""

    def __init__(self, files: str | dict[str, tuple[str, bytes]]) -> None:
        if isinstance(files, str):
            files = {"/embed.html": ("text/html; charset=utf-8", files.encode())}
        served = files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.partition("?")[0]  # a page's query (?src=...) is for its script
                kind, body = served.get(path, ("text/plain", b"not here"))
                self.send_response(200 if path in served else 404)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.origin}/embed.html"
        self.thread = threading.Thread(target=self.server.serve_forever, name="other-origin", daemon=True)

    def __enter__(self) -> OtherOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def sample(page: Page, behind: str) -> dict[str, Any]:
    """The page's playback now: ``behind`` is the JS expression for its behind-live (s)."""
    return page.evaluate(f"""() => {{
        const a = document.querySelector("audio");
        return {{now: performance.now(), time: a.currentTime, paused: a.paused, behind: {behind},
                waiting: lab.waiting.slice(), playing: lab.playing.slice(), joined: lab.joined.slice()}};
    }}""")


def media_requests(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("lab.requests()")
