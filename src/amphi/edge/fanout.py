"""The edge's fan-out: every streamed segment to every listener, from one event loop.

Varnish delivers each response on a thread of its own. A listener reading a segment that is
still being made holds its thread until the segment ends, and every part wakes every one of
those threads, which then writes its piece: 40-65 us of CPU a listener a part, so 10,000
listeners of 0.512 s parts were a core for the parts alone (docs/edge.md, "Streamed
segments"). This server holds those listeners in one event loop instead: it reads each segment
once from Varnish and writes each piece, framed once, to every listener with one ``write``.
No library does that fan-out (an HTTP server library would frame and schedule each listener's
copy on its own); it is written here because it is the edge's hot path (docs/edge.md,
"The fan-out", has the measurement).

Where it sits: the front (nginx) sends it the requests it can answer, and only those: a GET of
a segment whose admission token the front has checked, with no ``Range`` or one from byte 0
to the end (Shaka Player's ``bytes=0-9007199254740991``). It listens on a Unix socket only its
user may open, so the requests are well-formed HTTP/1.1 from nginx (kept-alive, one at a
time); anything else is answered 400 and the connection closed.

    front ──GET <segment>──▶ Fanout ──one GET a segment (httpx, the first asker's URL)──▶ Varnish

A segment's ``Feed``:

* waiting: asked for, Varnish's answer not begun (the origin holds the next segment until its
  first part exists). Askers wait.
* streaming: a 200 of no length arrived. Each asker gets ``200`` chunked: the bytes so far at
  once, then each piece as it arrives, then the last chunk when the segment closes.
* whole: kept ``keep_s`` (at most ``MAX_FEEDS`` segments) for late askers, answered with a
  ``Content-Length`` (``206`` for a ``Range`` from 0, as Varnish answers a whole object).
* an answer other than 200 (401/403/404/503...) is passed to every waiting asker and not kept
  (Varnish keeps errors 0.5 s).
* a fetch that breaks off (the origin cut the segment: its program died) cuts every listener's
  connection without the last chunk, as Varnish would, and is forgotten: the next asker fetches
  again.

A listener that stops reading is cut once ``max_buffer`` bytes wait for it (a segment is about
50 KB): it never holds up the others (the front also cuts a client that takes more than 15 s).
Counters: ``Fanout.stats`` (``GET /_fanout`` on the socket, read by ``Edge.stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections import OrderedDict
from pathlib import Path

import httpx

from amphi.web.routes import ROUTES

SEGMENT = ROUTES.edge_regex(("media.segment",), "vcl", node=True)
_SEGMENT = re.compile(SEGMENT.text)
_TOKEN = SEGMENT.group("token")
_WHOLE = re.compile(rb"^bytes=0-(?:[0-9]{11,})?$")  # a Range from byte 0 to the end (the origin's rule)

MAX_HEAD = 16 * 1024  # a request's header: nginx sends a few hundred bytes
MAX_BUFFER = 1 << 20  # bytes waiting for one listener before it is cut: some twenty segments
MAX_FEEDS = 256  # segments kept in memory (whole or being made)
KEEP_S = 30.0  # a whole segment is kept this long for late askers (Varnish has it for longer)
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"content-range", b"x-amphi-content-range",
       b"date", b"age", b"x-varnish", b"via"}
LAST_CHUNK = b"0\r\n\r\n"


def frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Listener(asyncio.Protocol):
    """One connection from the front: a request at a time."""

    __slots__ = ("fanout", "transport", "buf", "feed", "closed")

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.feed: Feed | None = None  # the segment this connection is being answered from
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.feed is not None:  # a second request while the first is answered: not nginx's way
            return self.refuse(b"one request at a time")
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.refuse(b"request header too large")
            return
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        self.fanout.request(self, head)

    def send(self, data: bytes) -> bool:
        """Writes ``data`` unless too much already waits for this listener (then it is cut)."""
        t = self.transport
        if self.closed or t is None:
            return False
        if t.get_write_buffer_size() > self.fanout.max_buffer:
            self.fanout.cut += 1
            self.abort()
            return False
        t.write(data)
        return True

    def finish(self) -> None:
        """The answer is complete: the connection takes the next request."""
        self.feed = None
        if self.buf:
            self.data_received(b"")

    def refuse(self, why: bytes, status: bytes = b"400 Bad Request") -> None:
        self.fanout.refused += 1
        body = b'{"error": "bad_request", "message": "' + why + b'"}'
        if self.transport is not None and not self.closed:
            self.transport.write(b"HTTP/1.1 %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%b" % (status, len(body), body))
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        """Closes the connection at once, an answer unfinished (the front sees it cut short)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.feed is not None:
            self.feed.leave(self)
            self.feed = None


class Feed:
    """One segment: read once from Varnish, written to every listener (see the module)."""

    __slots__ = ("fanout", "key", "status", "head", "body", "waiting", "listeners", "whole", "done_at", "task")

    def __init__(self, fanout: Fanout, key: str) -> None:
        self.fanout = fanout
        self.key = key
        self.status = 0
        self.head = b""  # the answer's header lines (no status line, no framing)
        self.body = bytearray()
        self.waiting: dict[Listener, bool] = {}  # askers before Varnish answered -> asked a Range from 0
        self.listeners: set[Listener] = set()  # streaming
        self.whole = False
        self.done_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    def join(self, who: Listener, ranged: bool) -> None:
        who.feed = self
        if self.whole:
            return self._answer_whole(who, ranged)
        if not self.status:
            self.waiting[who] = ranged
            return
        if who.send(b"HTTP/1.1 200 OK\r\n%btransfer-encoding: chunked\r\n\r\n%b"
                    % (self.head, frame(bytes(self.body)) if self.body else b"")):
            self.listeners.add(who)

    def leave(self, who: Listener) -> None:
        self.waiting.pop(who, None)
        self.listeners.discard(who)

    def _answer_whole(self, who: Listener, ranged: bool) -> None:
        n = len(self.body)
        if ranged and n:
            status = b"206 Partial Content\r\ncontent-range: bytes 0-%d/%d" % (n - 1, n)
        else:
            status = b"200 OK"
        if who.send(b"HTTP/1.1 %b\r\n%bcontent-length: %d\r\n\r\n" % (status, self.head, n)) and n:
            who.send(bytes(self.body))
        self.fanout.served += 1
        who.finish()

    def began(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.head = b"".join(b"%b: %b\r\n" % (k, v) for k, v in headers if k.lower() not in HOP)
        if status != 200:
            return
        waiting, self.waiting = self.waiting, {}
        for who in waiting:
            self.join(who, False)

    def piece(self, data: bytes) -> None:
        self.body += data
        if self.status != 200:
            return  # an error's body: passed on whole, at the end
        chunk = frame(data)
        for who in tuple(self.listeners):
            if not who.send(chunk):
                self.listeners.discard(who)

    def ended(self) -> None:
        self.whole, self.done_at = True, time.monotonic()
        if self.status != 200:
            self.fanout.forget(self)  # errors are not kept
            waiting, self.waiting = self.waiting, {}
            for who in waiting:
                self._error(who)
            return
        for who in tuple(self.listeners):
            if who.send(LAST_CHUNK):
                self.fanout.served += 1
                who.finish()
        self.listeners.clear()

    def _error(self, who: Listener) -> None:
        reason = httpx.codes.get_reason_phrase(self.status).encode() or b"Error"
        if who.send(b"HTTP/1.1 %d %b\r\n%bcontent-length: %d\r\n\r\n%b"
                    % (self.status, reason, self.head, len(self.body), bytes(self.body))):
            who.finish()

    def broke(self) -> None:
        """The fetch broke off: every listener is cut (none may take a short segment as whole)."""
        self.fanout.forget(self)
        self.fanout.broken += 1
        for who in (*self.waiting, *self.listeners):
            who.abort()
        self.waiting.clear()
        self.listeners.clear()


class Fanout:
    def __init__(self, upstream: str, *, max_buffer: int = MAX_BUFFER, keep_s: float = KEEP_S,
                 max_feeds: int = MAX_FEEDS, timeout_s: float = 30.0) -> None:
        self.upstream = upstream  # Varnish's Unix socket
        self.max_buffer, self.keep_s, self.max_feeds = max_buffer, keep_s, max_feeds
        self.timeout_s = timeout_s  # for Varnish's first byte, and between pieces
        self.feeds: OrderedDict[str, Feed] = OrderedDict()
        self.client: httpx.AsyncClient | None = None
        self.requests = self.served = self.fetches = self.cut = self.broken = self.refused = 0

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "served": self.served, "fetches": self.fetches, "cut": self.cut,
                "broken": self.broken, "refused": self.refused, "feeds": len(self.feeds),
                "streaming": sum(len(f.listeners) for f in self.feeds.values()),
                "waiting": sum(len(f.waiting) for f in self.feeds.values())}

    def request(self, who: Listener, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return who.refuse(b"not an HTTP/1.1 request line")
        method, target = parts[0], parts[1].decode("latin-1")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return who.refuse(b"malformed header line")
            headers[name.strip().lower()] = value.strip()
        if method == b"GET" and target == "/_fanout":
            body = json.dumps(self.stats()).encode()
            who.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(body), body))
            return who.finish()
        path, _, query = target.partition("?")
        m = _SEGMENT.match(path)
        rng = headers.get(b"range")
        if method != b"GET" or m is None or (rng is not None and not _WHOLE.match(rng)) or b"content-length" in headers:
            return who.refuse(b"only a GET of a whole segment comes here")
        self.requests += 1
        key = f"{path[:m.start(_TOKEN)]}{path[m.end(_TOKEN):]}?{query}"  # the token is not part of what is asked
        feed = self.feeds.get(key)
        if feed is None:
            feed = self._fetch(key, target, headers)
        feed.join(who, rng is not None)

    def _fetch(self, key: str, target: str, headers: dict[bytes, bytes]) -> Feed:
        self._tidy()
        feed = self.feeds[key] = Feed(self, key)
        send = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()
                if k in (b"host", b"x-amphi-client", b"x-amphi-forwarded-for", b"user-agent", b"origin")}
        feed.task = asyncio.get_running_loop().create_task(self._read(feed, target, send))
        self.fetches += 1
        return feed

    async def _read(self, feed: Feed, target: str, headers: dict[str, str]) -> None:
        assert self.client is not None
        try:
            async with self.client.stream("GET", f"http://edge{target}", headers=headers) as resp:
                feed.began(resp.status_code, [(k, v) for k, v in resp.headers.raw])
                async for data in resp.aiter_raw():
                    if data:
                        feed.piece(data)
            feed.ended()
        except (httpx.HTTPError, OSError):
            feed.broke()
        except asyncio.CancelledError:
            feed.broke()
            raise

    def forget(self, feed: Feed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]

    def _tidy(self) -> None:
        """Drops whole segments older than ``keep_s``, and the oldest beyond ``max_feeds``."""
        now = time.monotonic()
        for key, feed in list(self.feeds.items()):
            if feed.done_at is not None and now - feed.done_at > self.keep_s:
                del self.feeds[key]
        while len(self.feeds) >= self.max_feeds:
            key, feed = next(iter(self.feeds.items()))
            del self.feeds[key]
            if not feed.whole and feed.task is not None:
                feed.task.cancel()  # its listeners are cut (broke)

    async def serve(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout_s, connect=5.0)
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.upstream), limits=limits),
                                     timeout=timeout) as self.client:
            path.unlink(missing_ok=True)
            server = await loop.create_unix_server(lambda: Listener(self), str(path), backlog=4096)
            os.chmod(path, 0o600)  # only this user (the front's) may connect
            async with server:
                await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m amphi.edge.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=Path, required=True, help="the Unix socket the front sends segments to")
    p.add_argument("--upstream", required=True, help="Varnish's Unix socket")
    args = p.parse_args()
    import uvloop

    uvloop.run(Fanout(args.upstream).serve(args.listen))


if __name__ == "__main__":
    main()
