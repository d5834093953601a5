"""The edge's door and fan-out: a live audience's media from one event loop.

Varnish delivers each response on a thread of its own. A listener reading a segment that is
still being made holds its thread until the segment ends, and every part wakes every one of
those threads, which then writes its piece: 40-65 us of CPU a listener a part, so 10,000
listeners of 0.512 s parts were a core for the parts alone. Put behind nginx, a fan-out still
paid a second hop a part a listener. So this server takes the edge's port itself and answers,
from memory, the requests a live audience makes again and again: a segment (streamed while it
is made), a part, the live playlist and its blocking reloads, the multivariant playlist and
``init.mp4``, each with an admission token it checks (the same HMAC and expiry as the VCL). It reads each
file once from Varnish and writes each piece, framed once, to every listener: one ``write`` a
listener a part. No library does that fan-out (an HTTP server frames and schedules each
response on its own); it is written here because it is the edge's hot path (docs/edge.md, "The
door and the fan-out", has the measurement).

A live playlist asked with a token past half its life is answered with a 307 to the same URL
under a new token for the same seat, and the seats renewed are reported to an API node every few
seconds (``edge/renewals.py``): listeners keep their seats without a request to a node each.
Joins (``POST /api/spaces/<id>/join``) are read here too and sent to a node a batch at a time
(``edge/joins.py``, ``take_join``): a surge's joins cost the nodes one request a batch.

Every other request (the rest of the API, pages, replays, a part's byte range, a token that does not check
out or has expired, anything malformed or unusual) is nginx's, unchanged: the connection is handed to
nginx's http server over a Unix socket with the PROXY protocol (the client's address) and, from
that request on, its bytes are passed both ways untouched. Segments asked on such a connection
come back here through nginx (the internal socket).

    client ──▶ [firewall cap] ──▶ Fanout (the edge's port) ──── its own: from memory ◀── one GET a file ── Varnish
                                      └─ anything else: the connection, to nginx ──▶ Varnish / its cache
    with nginx's stream cap: client ──▶ nginx stream ──PROXY──▶ Fanout (as above)

A file's ``Feed``:

* waiting: asked for, Varnish's answer not begun (the origin holds the next segment until its
  first part exists), or begun without a body byte yet. Askers wait.
* streaming (segments): a 200 of no length. Each asker gets ``200`` chunked: its header and the
  bytes so far at once (one write), then each piece as it arrives, then the last chunk when the
  segment closes (with the last piece, when they come together).
* whole: answered with a ``Content-Length`` (a segment: ``206`` for a ``Range`` from 0, as
  Varnish answers a whole object); kept ``keep_s`` (segments, parts, init), ``fresh_s`` (the
  playlists: Varnish keeps the live playlist 0.1 s, so a new listener starts at the live edge)
  or ``RELOAD_S`` (a blocking reload, whose URL names a point in time). A playlist's fetch
  still unanswered after ``RETRY_S`` is left to its askers and the next asker fetches again
  (Varnish answers a stale copy at once, and only to a new request, while the origin fails).
* an answer other than 200 (401/403/404/503...) goes to every waiting asker and is not kept.
* a fetch that breaks off (the origin cut the segment: its program died) cuts every listener's
  connection without the last chunk, as Varnish would, and is forgotten.

Bounds: a listener that stops reading is cut once ``max_buffer`` bytes wait for it, or after
``send_timeout_s`` with its socket full; a request's header must come within ``idle_s`` of the
connection's last answer (slowloris; idle keep-alive connections too); ``media_rate`` requests
per second per address (429, and the connection closed, as nginx's ``limit_req``); a connection
with no request is kept ``KEEPALIVE_S`` (a player's playlist connection is used once a segment); a
token whose seat a node said is released is refused (401). Counters:
``Fanout.stats`` (``GET /_fanout`` on the internal socket, read by ``Edge.stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import re
import socket
import ssl
import struct
import time
from collections import OrderedDict
from http import HTTPStatus
from pathlib import Path

import httpx
import orjson

from amphi.control.tokens import Signer, Token
from amphi.core.config import AdmissionConfig
from amphi.core.files import raise_open_files
from amphi.core.gcra import GcraTable
from amphi.core.tls import server_context
from amphi.edge.joins import Join, JoinBatcher
from amphi.edge.renewals import REPORT_S, Renewals, SharedRefusals
from amphi.edge.upstream import Upstream, UpstreamError
from amphi.edge.vcl import WHOLE_RANGE
from amphi.web.routes import JOIN_BODY_LIMIT, ROUTES

log = logging.getLogger("amphi.edge.fanout")

_MEDIA = ROUTES.edge_regex(("media.segment", "media.part", "media.live", "media.index", "media.init"), "vcl",
                           node=True)
_PATH = re.compile(_MEDIA.text)
_TOKEN, _SPACE, _FILE = _MEDIA.group("token"), _MEDIA.group("id"), _MEDIA.group("file")
_WHOLE = re.compile(WHOLE_RANGE.encode())  # a Range from byte 0 to the end (the origin's rule, as the VCL)

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
SKF_NET_OFF = -0x100000  # linux/filter.h: a load relative to the network (IP) header
BPF_LD_W_ABS, BPF_ALU_MOD_K, BPF_RET_A = 0x20, 0x94, 0x16  # ld [k]; A %= k; ret A
MAX_HEAD = 16 * 1024  # a request header longer than this is nginx's to refuse
MAX_BUFFER = 1 << 20  # bytes waiting for one listener before it is cut: some twenty segments
HIGH_WATER = 64 * 1024  # a listener's socket is "full" (its send timeout runs) above this
MAX_VERIFIED = 100_000  # tokens remembered as checked (then forgotten all at once: a few ms to check again)
MAX_FEEDS = 512  # files kept in memory (whole or being made)
KEEP_S = 30.0  # a whole segment or init is kept this long for late askers (Varnish has it longer)
FRESH_S = 0.1  # a playlist's copy is answered this long (Varnish's live_playlist_ttl_s)
RELOAD_S = 4.0  # a blocking reload's answer (its URL names a point in time), as the front's cache keeps it
RETRY_S = 1.0  # a playlist's fetch unanswered this long is left to its askers; the next asker fetches again
# (Varnish answers a stale copy at once when the origin fails its probes, not to a fetch already waiting)
IDLE_S = 5.0  # a request's header must be whole this long after the last answer (slowloris), as the
# front's client_header_timeout and Varnish's timeout_idle
KEEPALIVE_S = 20.0  # a connection with no request at all is kept this long: a player asks for the
# playlist once a segment (6.144 s), and a connection made again each time costs both ends more
SEND_TIMEOUT_S = 15.0  # as the front's send_timeout
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"content-range",
       b"x-amphi-content-range"}  # Varnish's header lines not passed on as they are (framing, this hop)
LAST_CHUNK = b"0\r\n\r\n"
_SLOW_DOWN = b'{"error": "too_many_requests", "message": "slow down"}'  # the front's and the VCL's answer
TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"cache-control: no-store\r\naccess-control-allow-origin: *\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(_SLOW_DOWN), _SLOW_DOWN))
_GONE = b'{"error": "seat_released", "message": "this seat has been released: join again"}'
RELEASED = (b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
            b"access-control-allow-origin: *\r\ncontent-length: %d\r\n\r\n%b" % (len(_GONE), _GONE))
RENEWED = (b"HTTP/1.1 307 Temporary Redirect\r\nlocation: %b\r\ncache-control: no-store\r\n"
           b"access-control-allow-origin: *\r\ncontent-length: 0\r\n\r\n")  # the live playlist, renewed


_JSON_HEADERS = (b"content-type: application/json\r\ncache-control: no-store\r\naccess-control-allow-origin: *\r\n"
                 b"access-control-expose-headers: content-length, content-range, location, retry-after\r\n")


def _json_answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with a JSON body, as the node's raw endpoints answer (``extra``:
    more header lines, each ending in CRLF)."""
    reason = HTTPStatus(status).phrase.encode() if status in _STATUSES else b"Unknown"
    return b"HTTP/1.1 %d %b\r\n%b%bcontent-length: %d\r\n\r\n%b" % (status, reason, _JSON_HEADERS, extra, len(body), body)


_STATUSES = {s.value for s in HTTPStatus}
JOINS_TOO_MANY = _json_answer(429, b'{"error": "too_many_requests", "message": "too many joins from this address"}',
                              b"retry-after: 1\r\nconnection: close\r\n")  # the VCL's
JOINS_BUSY = _json_answer(503, b'{"error": "unavailable", "message": "this edge has too many joins waiting: try again"}',
                          b"retry-after: 1\r\n")
JOINS_UNANSWERED = _json_answer(503, b'{"error": "unavailable", "message": "no API node answered: try again"}',
                                b"retry-after: 1\r\n")


def _join_response(answer: object, edge: bytes) -> bytes:
    """A client's answer from its row of a node's batch answer, ``[status, retry-after, body]``."""
    if (not isinstance(answer, list) or len(answer) != 3 or not isinstance(answer[0], int)
            or not isinstance(answer[2], dict)):
        return JOINS_UNANSWERED
    status, retry, doc = answer
    extra = b"retry-after: %b\r\n" % str(retry).encode() if retry is not None else b""
    return _json_answer(status, orjson.dumps(doc), b"%bx-edge: %b\r\nx-edge-batch: 1\r\n" % (extra, edge))


def _headers(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """A request's header lines (after the request line) by lower-case name; None if one is
    not a header line (the request is nginx's to refuse)."""
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return headers


def frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Ask:
    """A request this server answers itself."""

    __slots__ = ("key", "target", "streamed", "keep_s", "ranged", "close", "headers")

    def __init__(self, key: str, target: str, streamed: bool, keep_s: float, ranged: bool, close: bool,
                 headers: dict[str, str]) -> None:
        self.key, self.target, self.ranged, self.close = key, target, ranged, close
        self.streamed = streamed  # a segment: streamed to its askers while it is made
        self.keep_s = keep_s  # how long a whole copy is answered
        self.headers = headers  # for Varnish, should this one fetch the file


class Client(asyncio.Protocol):
    """One connection: at the edge's port (``public``) or from nginx (the internal socket)."""

    __slots__ = ("fanout", "transport", "buf", "feed", "addr", "public", "proxied", "tunnel", "since",
                 "full_since", "close_after", "closed", "missed", "counted", "joining", "tls")

    def __init__(self, fanout: Fanout, *, public: bool, proxied: bool) -> None:
        self.fanout = fanout
        self.public, self.proxied = public, proxied  # proxied: a PROXY protocol line comes first
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.feed: Feed | None = None  # the file this connection is being answered from
        self.addr = ""
        self.tunnel: Tunnel | None = None  # once handed to nginx
        self.since = time.monotonic()  # of the last answer (or the connection): idle_s runs from it
        self.full_since: float | None = None  # the socket is full since
        self.close_after = False
        self.closed = False
        self.missed = False  # the request being answered made its file's fetch (x-fanout: MISS)
        self.counted = False  # one of its address's connections (the per-address cap)
        self.joining = False  # its join is in a batch, not answered yet (edge/joins.py)
        self.tls = False  # over TLS (which cannot be half-closed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.addr = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        if self.public and not self.proxied and self.fanout.max_connections:
            if not self.fanout.connected(self.addr):
                self.closed = True
                transport.abort()  # a reset, as the firewall's cap answers
                return
            self.counted = True
        self.fanout.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            return self.tunnel.send(data)
        self.buf += data
        if self.proxied:
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > 108:  # the PROXY v1 line's longest
                    self.abort()
                return
            fields = self.buf[:end].split(b" ")
            if len(fields) < 3 or fields[0] != b"PROXY":
                return self.abort()
            self.addr, self.buf, self.proxied = fields[2].decode("latin-1"), self.buf[end + 2:], False
        self._next()

    def _next(self) -> None:
        """Answers the requests in the buffer, one at a time."""
        while self.feed is None and self.tunnel is None and not self.joining and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._not_mine()
                return
            if self.buf.startswith(b"POST ") and self.fanout.batch_joins:
                took = self.fanout.take_join(self.buf, end, self)
                if took is None:
                    return self._not_mine()
                if took:
                    self.buf = self.buf[took:]
                return  # answered with its batch (or the rest of its body is to come)
            ask = self.fanout.route(self.buf[:end], self)
            if ask is None:
                return self._not_mine()
            self.buf = self.buf[end + 4:]
            self.close_after = ask.close
            self.fanout.answer(self, ask)

    def _not_mine(self) -> None:
        if self.public:
            self.tunnel = Tunnel(self)
        else:  # from nginx, which sends only what route() takes
            self.fanout.refused += 1
            self.abort()

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
        self.joining = False
        self.since = time.monotonic()
        if self.close_after:
            return self.close()
        if self.buf:
            self._next()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Closes the connection at once, an answer unfinished (the client sees it cut short)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.full_since = time.monotonic()
        if self.tunnel is not None:
            self.tunnel.pause()

    def resume_writing(self) -> None:
        self.full_since = None
        if self.tunnel is not None:
            self.tunnel.resume()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.eof()
            return None if self.tls else True  # half-closed: nginx's answer may still come (not over TLS)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fanout.clients.discard(self)
        if self.counted:
            self.counted = False
            self.fanout.disconnected(self.addr)
        if self.feed is not None:
            self.feed.leave(self)
            self.feed = None
        if self.tunnel is not None:
            self.tunnel.close()


class Tunnel(asyncio.Protocol):
    """A client's connection handed to nginx: a PROXY protocol line, then every byte both ways."""

    __slots__ = ("client", "transport", "pending")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.pending = [client.buf]  # what the client sent that is not answered yet
        client.buf = b""
        client.fanout.tunnels += 1
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: self, str(self.client.fanout.front))
        except OSError:
            self.client.abort()  # nginx is not there: the edge is going down

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        family = b"TCP6" if ":" in self.client.addr else b"TCP4"
        here = b"::1" if family == b"TCP6" else b"127.0.0.1"
        transport.write(b"PROXY %b %b %b 1 1\r\n%b" % (family, self.client.addr.encode(), here,  # type: ignore[attr-defined]
                                                        b"".join(self.pending)))
        self.pending = []
        if self.client.closed:
            transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None and not self.client.closed:
            self.client.transport.write(data)

    def eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()  # once what nginx sent is written


class Feed:
    """One file: read once from Varnish, written to every asker (see the module)."""

    __slots__ = ("fanout", "key", "streamed", "keep_s", "status", "head", "body", "waiting", "listeners", "whole",
                 "done_at", "task", "started")

    def __init__(self, fanout: Fanout, key: str, streamed: bool, keep_s: float) -> None:
        self.fanout = fanout
        self.key = key
        self.streamed = streamed  # a segment: streamed to its askers while it arrives
        self.keep_s = keep_s  # a whole copy is answered this long
        self.status = 0
        self.head = b""  # the answer's header lines (no status line, no framing)
        self.body = bytearray()
        self.waiting: dict[Client, bool] = {}  # askers before the answer could be given -> asked a Range from 0
        self.listeners: set[Client] = set()  # streaming
        self.whole = False
        self.done_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    def _mine(self, who: Client) -> bytes:
        """The header lines of ``who``'s answer that are not Varnish's."""
        return ((b"x-fanout: MISS\r\n" if who.missed else b"x-fanout: HIT\r\n")
                + (b"connection: close\r\n" if who.close_after else b""))

    def fresh(self, now: float) -> bool:
        """Whether a new asker may be answered from this feed."""
        if self.whole:
            return now - self.done_at <= self.keep_s  # type: ignore[operator]
        return self.streamed or now - self.started <= RETRY_S

    def join(self, who: Client, ranged: bool) -> None:
        who.feed = self
        if self.whole:
            return self._answer_whole(who, ranged)
        if self.status != 200 or not self.streamed or not self.body:
            self.waiting[who] = ranged  # streamed: its header goes with the first piece, in one write
            return
        self._stream(who, frame(bytes(self.body)))

    def _stream(self, who: Client, so_far: bytes) -> None:
        """Starts ``who``'s chunked answer: its header and ``so_far`` (the body until now, framed), one write."""
        if who.send(b"HTTP/1.1 200 OK\r\n%btransfer-encoding: chunked\r\n%b\r\n%b" % (self.head, self._mine(who), so_far)):
            self.listeners.add(who)

    def leave(self, who: Client) -> None:
        self.waiting.pop(who, None)
        self.listeners.discard(who)

    def _answer_whole(self, who: Client, ranged: bool) -> None:
        n = len(self.body)
        if self.status != 200:
            status = b"%d %b" % (self.status, httpx.codes.get_reason_phrase(self.status).encode() or b"Error")
        elif ranged and n:
            status = b"206 Partial Content\r\ncontent-range: bytes 0-%d/%d" % (n - 1, n)
        else:
            status = b"200 OK"
        if who.send(b"HTTP/1.1 %b\r\n%b%bcontent-length: %d\r\n\r\n%b"
                    % (status, self.head, self._mine(who), n, self.body)):
            self.fanout.served += 1
            who.finish()

    def began(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.head = b"".join(b"%b: %b\r\n" % (k, v) for k, v in headers if k.lower() not in HOP)
        if not any(k.lower() == b"transfer-encoding" for k, _ in headers):
            self.streamed = False  # Varnish has it whole (a length): answered whole, a Range from 0 with a 206

    def piece(self, data: bytes) -> None:
        self.body += data
        if self.listeners:
            chunk = frame(data)
            for who in tuple(self.listeners):
                if not who.send(chunk):
                    self.listeners.discard(who)
        if self.waiting and self.status == 200 and self.streamed:  # the first piece: askers so far start
            waiting, self.waiting = self.waiting, {}
            so_far = frame(bytes(self.body))  # once for all of them (a segment's askers wait for its start)
            for who in waiting:
                self._stream(who, so_far)

    def ended(self, last: bytes = b"") -> None:
        """The answer is whole; ``last``: its last piece, which came with its end (written to the
        listeners with the last chunk, one write each: a segment's last part and its end)."""
        self.body += last
        self.whole, self.done_at = True, time.monotonic()
        if self.status != 200:
            self.fanout.forget(self)  # errors are not kept
        waiting, self.waiting = self.waiting, {}
        for who, ranged in waiting.items():
            self._answer_whole(who, ranged)
        listeners, self.listeners = self.listeners, set()
        end = frame(last) + LAST_CHUNK if last else LAST_CHUNK
        for who in listeners:
            if who.send(end):
                self.fanout.served += 1
                who.finish()

    def broke(self) -> None:
        """The fetch broke off: every asker is cut (none may take a short segment as whole)."""
        self.fanout.forget(self)
        self.fanout.broken += 1
        for who in (*self.waiting, *self.listeners):
            who.abort()
        self.waiting.clear()
        self.listeners.clear()


class Fanout:
    def __init__(self, upstream: Path, front: Path | None, secret: str, *, name: str = "edge1",
                 released: Path | None = None, max_connections: int = 0, workers: int = 1,
                 token_ttl_s: float = AdmissionConfig.token_ttl_s, media_rate: int = 0,
                 max_buffer: int = MAX_BUFFER, keep_s: float = KEEP_S, fresh_s: float = FRESH_S,
                 max_feeds: int = MAX_FEEDS, timeout_s: float = 30.0, join_rate: int = 0,
                 batch_joins: bool = True) -> None:
        self.upstream = upstream  # Varnish's Unix socket
        self.front = front  # nginx's http server (PROXY protocol): where connections go that are not ours
        self.signer = Signer(secret.encode())
        self.name = name.encode()  # the edge's, as Varnish's x-edge says
        self.credential = self.signer.edge_credential(name)  # shown to the API nodes with the renewed seats
        self.renewals = Renewals(self.signer, token_ttl_s)
        self.shared = SharedRefusals(released) if released is not None else None  # with this edge's other workers
        self.media_rate = media_rate
        self.rates = GcraTable(100_000)
        self.join_rate = join_rate  # joins per address per second (0: none), as the VCL's throttle
        self.join_rates = GcraTable(100_000)
        self.joins = JoinBatcher()
        self.batch_joins = batch_joins  # off: joins are nginx's, as any request with a body
        self._join_timer: asyncio.TimerHandle | None = None
        self._join_tasks: set[asyncio.Task[None]] = set()  # batches on their way to a node
        self.max_connections = max_connections  # per client address at the edge's port (0: none)
        self.workers = workers  # the fan-out's processes on the port: an address's connections all go to one
        self.per_address: dict[str, int] = {}
        self.max_buffer, self.keep_s, self.fresh_s, self.max_feeds = max_buffer, keep_s, fresh_s, max_feeds
        self.timeout_s = timeout_s  # for Varnish's first byte, and between pieces
        self.feeds: OrderedDict[str, Feed] = OrderedDict()
        self.clients: set[Client] = set()
        self.client: httpx.AsyncClient | None = None  # the POSTs to the nodes (joins, renewals), through Varnish
        self.varnish = Upstream(upstream, timeout_s)  # the files' GETs (edge/upstream.py)
        self.verified: dict[str, Token] = {}  # tokens whose MAC checked out (their expiry is checked each time)
        self.requests = self.served = self.fetches = self.cut = self.broken = self.refused = 0
        self.tunnels = self.timeouts = self.limited = self.report_errors = self.capped = self.join_errors = 0

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "served": self.served, "fetches": self.fetches, "cut": self.cut,
                "broken": self.broken, "refused": self.refused, "tunnels": self.tunnels, "timeouts": self.timeouts,
                "limited": self.limited, "capped": self.capped, "connections": len(self.clients), "feeds": len(self.feeds),
                "streaming": sum(len(f.listeners) for f in self.feeds.values()),
                "waiting": sum(len(f.waiting) for f in self.feeds.values()), "report_errors": self.report_errors,
                "join_errors": self.join_errors, **self.renewals.stats(), **self.joins.stats()}

    def connected(self, addr: str) -> bool:
        """A connection from ``addr``: counted, or False once the address holds its cap."""
        n = self.per_address.get(addr, 0)
        if n >= self.max_connections:
            self.capped += 1
            return False
        self.per_address[addr] = n + 1
        return True

    def disconnected(self, addr: str) -> None:
        n = self.per_address[addr] - 1
        if n:
            self.per_address[addr] = n
        else:
            del self.per_address[addr]

    def route(self, head: bytes, who: Client) -> Ask | None:
        """The request in ``head`` if this server answers it, else None (nginx's)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
            return None
        if parts[1] == b"/_fanout" and not who.public:
            body = json.dumps(self.stats()).encode()
            who.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
            return Ask("", "", False, 0.0, False, False, {})
        target = parts[1].decode("latin-1")
        path, _, query = target.partition("?")
        m = _PATH.match(path)
        if m is None:
            return None
        headers = _headers(lines)
        if headers is None:
            return None
        if b"content-length" in headers or b"transfer-encoding" in headers:
            return None
        file = m.group(_FILE)
        streamed = file.endswith(".m4s") and file.count(".") == 1  # a segment, not a part ("13.2.m4s")
        rng = headers.get(b"range")
        if rng is not None and not (streamed and _WHOLE.match(rng)):
            return None  # a part's bytes (hls.js): Varnish keeps each range as an object
        if query and file != "live.m3u8":
            return None
        space = m.group(_SPACE)
        now = time.time()
        text = m.group(_TOKEN)
        t = self.verified.get(text)  # a listener shows its token with each request: its MAC checked once
        if t is None or t.space_id != space:
            try:
                t = self.signer.verify_token(space, text, now)
            except Exception:  # noqa: BLE001 - missing, forged, expired: Varnish answers (401/403/307)
                return None
            if len(self.verified) >= MAX_VERIFIED:
                self.verified.clear()
            self.verified[text] = t
        elif t.expires <= now:
            return None  # expired since: Varnish answers (401)
        if not who.public:
            who.addr = headers.get(b"x-amphi-client", b"").decode("latin-1") or who.addr
        elif self.media_rate and self.rates.charge(who.addr, self.media_rate, self.media_rate, time.monotonic()):
            self.limited += 1
            who.send(TOO_MANY)
            who.close()  # as the front's limit_req: answered, and the connection closed
            return Ask("", "", False, 0.0, False, True, {})
        close = headers.get(b"connection", b"").lower() == b"close"
        if self.renewals.released(space, t.seat, now):
            who.send(RELEASED)
            return Ask("", "", False, 0.0, False, close, {})
        if file == "live.m3u8" and self.renewals.due(t.expires, now):  # renewed here (edge/renewals.py)
            token = self.renewals.renew(space, t.role, t.seat, t.expires, now)
            location = f"{path[:m.start(_TOKEN)]}{token}{path[m.end(_TOKEN):]}" + (f"?{query}" if query else "")
            who.send(RENEWED % location.encode("latin-1"))
            return Ask("", "", False, 0.0, False, close, {})
        self.requests += 1
        xff = headers.get(b"x-forwarded-for")
        fetch = {"host": headers.get(b"host", b"edge").decode("latin-1"), "x-amphi-client": who.addr,
                 "x-amphi-forwarded-for": f"{xff.decode('latin-1')}, {who.addr}" if xff else who.addr}
        key = f"{path[:m.start(_TOKEN)]}{path[m.end(_TOKEN):]}?{query}"  # the token is not part of what is asked
        keep = self.fresh_s if file.endswith(".m3u8") else self.keep_s
        if query:
            keep = RELOAD_S  # a blocking reload (_HLS_msn, _HLS_part): Varnish's answer once that part exists
        return Ask(key, target, streamed, keep, rng is not None, close, fetch)

    def take_join(self, buf: bytes, end: int, who: Client) -> int | None:
        """A join (``POST /api/spaces/<id>/join``) at the head of ``buf``, whose header ends at
        ``end``: taken into the next batch (edge/joins.py), its length returned; 0 while its
        body is still to come; None if it is nginx's (anything unusual: no length, a body
        over the limit, ``Expect``, chunked, HTTP/1.0). nginx sends here the joins
        asked on a connection the fan-out handed it (only those, well-formed)."""
        lines = buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            return None
        m = ROUTES.match(parts[1].partition(b"?")[0].decode("latin-1"), "POST")  # a query says nothing to a join
        if m is None or m.route.name != "join":
            return None
        headers = _headers(lines)
        if headers is None:
            return None
        length = headers.get(b"content-length", b"")
        if (not length.isdigit() or int(length) > JOIN_BODY_LIMIT or b"transfer-encoding" in headers
                or b"expect" in headers):
            return None
        took = end + 4 + int(length)
        if len(buf) < took:
            return 0
        if not who.public:  # from nginx (a join on a connection handed over): the client's address it saw
            who.addr = headers.get(b"x-amphi-client", b"").decode("latin-1") or who.addr
        who.close_after = headers.get(b"connection", b"").lower() == b"close"
        if self.join_rate and self.join_rates.charge(who.addr, self.join_rate, self.join_rate, time.monotonic()):
            self.limited += 1
            who.send(JOINS_TOO_MANY)
            who.close()  # as the VCL's throttle answers, and the connection closed as the front's limit does
            return took
        auth = headers.get(b"authorization")
        join = Join(str(m.params["id"]), who.addr, buf[end + 4:took], auth.decode("latin-1") if auth is not None else None,
                    end + 4, who)
        if not self.joins.add(join):
            who.send(JOINS_BUSY)
            who.finish()
            return took
        who.joining = True
        self._schedule_joins()
        return took

    def _schedule_joins(self) -> None:
        """Sends a batch now, or sets the timer for when the window allows (edge/joins.py)."""
        if self._join_timer is not None:
            return
        wait = self.joins.wait_s(time.monotonic())
        if wait is None:
            return
        loop = asyncio.get_running_loop()
        if wait == 0:
            task = loop.create_task(self._send_joins(self.joins.take(time.monotonic())))
            self._join_tasks.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self._join_tasks.discard)
            if self.joins.pending:
                self._schedule_joins()
            return
        self._join_timer = loop.call_later(wait, self._joins_due)

    def _joins_due(self) -> None:
        self._join_timer = None
        self._schedule_joins()

    async def _send_joins(self, batch: list[Join]) -> None:
        """One batch to an API node (through Varnish, which picks a healthy one); each client
        gets its own answer, or a 503 if the batch got none."""
        assert self.client is not None
        answers: list[object] = []
        try:
            resp = await self.client.post("http://edge" + ROUTES["joins"].path(),
                                          content=orjson.dumps({"joins": [j.row() for j in batch]}),
                                          headers={"x-amphi-edge": self.credential, "x-amphi-client": "127.0.0.1",
                                                   "x-amphi-forwarded-for": "127.0.0.1",  # the edge itself
                                                   "content-type": "application/json"})
            if resp.status_code != 200:
                raise ValueError(f"{resp.status_code} {resp.text[:200]}")
            answers = orjson.loads(resp.content)["answers"]
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise ValueError(f"{len(batch)} joins, {len(answers) if isinstance(answers, list) else 'no'} answers")
        except Exception as e:  # noqa: BLE001 - whatever it was, each client gets a clear 503
            log.warning("a batch of %d joins got no answer (%s: %s)", len(batch), type(e).__name__, e)
            self.join_errors += 1
            answers = [None] * len(batch)
        finally:
            self.joins.answered()
        for join, answer in zip(batch, answers):
            who = join.who
            assert isinstance(who, Client)
            who.send(_join_response(answer, self.name))
            who.finish()

    def answer(self, who: Client, ask: Ask) -> None:
        if not ask.key:  # answered in route(): the counters, a 429
            return who.finish()
        feed = self.feeds.get(ask.key)
        who.missed = feed is None or not feed.fresh(time.monotonic())
        if feed is None or who.missed:
            feed = self._fetch(ask)
        feed.join(who, ask.ranged)

    def _fetch(self, ask: Ask) -> Feed:
        self._tidy()
        feed = self.feeds[ask.key] = Feed(self, ask.key, ask.streamed, ask.keep_s)
        feed.task = asyncio.get_running_loop().create_task(self._read(feed, ask.target, ask.headers))
        self.fetches += 1
        return feed

    async def _read(self, feed: Feed, target: str, headers: dict[str, str]) -> None:
        try:
            await self.varnish.fetch(target, headers, feed)
        except UpstreamError:
            feed.broke()
        except asyncio.CancelledError:
            feed.broke()
            raise

    def forget(self, feed: Feed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]

    def _tidy(self) -> None:
        """Drops whole files no longer fresh, and the oldest beyond ``max_feeds``."""
        now = time.monotonic()
        for key, feed in list(self.feeds.items()):
            if feed.whole and not feed.fresh(now):
                del self.feeds[key]
        while len(self.feeds) >= self.max_feeds:
            key, feed = next(iter(self.feeds.items()))
            del self.feeds[key]
            if not feed.whole and feed.task is not None:
                feed.task.cancel()  # its listeners are cut (broke)

    async def sweep(self) -> None:
        """Once a second: connections with half a request for ``IDLE_S``, or none for
        ``KEEPALIVE_S``, and listeners whose socket has been full for ``SEND_TIMEOUT_S`` are closed;
        the seats another worker heard are released are refused here too."""
        while True:
            await asyncio.sleep(1.0)
            if self.shared is not None and (gone := self.shared.changed()) is not None:
                self.renewals.learn(gone)
            now = time.monotonic()
            for c in tuple(self.clients):
                if c.tunnel is not None:
                    continue  # nginx's timeouts
                if c.feed is None and not c.joining and now - c.since > (IDLE_S if c.buf or c.proxied else KEEPALIVE_S):
                    self.timeouts += 1
                    c.close()  # a FIN, as nginx closes an idle keep-alive connection
                elif c.full_since is not None and now - c.full_since > SEND_TIMEOUT_S:
                    self.timeouts += 1
                    c.abort()

    async def report(self) -> None:
        """Every ``REPORT_S``: the seats renewed here, to an API node (through Varnish, which
        picks a healthy one); a report that does not get through goes with the next."""
        assert self.client is not None
        url = "http://edge" + ROUTES["renewals"].path()
        while True:
            await asyncio.sleep(REPORT_S)
            now = time.time()
            self.renewals.tidy(now)
            reports = self.renewals.batches()
            for k, report in enumerate(reports):
                try:
                    resp = await self.client.post(url, content=json.dumps({"spaces": report}).encode(),
                                                  headers={"x-amphi-edge": self.credential, "x-amphi-client": "127.0.0.1",
                                                           "x-amphi-forwarded-for": "127.0.0.1",  # the edge itself
                                                           "content-type": "application/json"})
                    if resp.status_code != 200:
                        raise ValueError(f"{resp.status_code}")
                    gone = resp.json().get("gone") or {}
                    self.renewals.answered(report, gone, time.time())
                    if gone and self.shared is not None:
                        self.shared.publish(self.renewals.gone, time.time())  # the other workers refuse them too
                except Exception as e:  # noqa: BLE001 - whatever it was, the seats go with the next report
                    log.warning("renewed seats not reported (%s: %s); they go with the next report", type(e).__name__, e)
                    self.report_errors += 1
                    for rest in reports[k:]:
                        self.renewals.failed(rest)
                    break

    async def serve(self, internal: Path, public: str | None, tls: ssl.SSLContext | None = None) -> None:
        """Serves nginx on the Unix socket ``internal`` and, if given, the edge's port:
        ``HOST:PORT`` (TCP; https with ``tls``) or a Unix socket path (behind nginx's stream cap,
        PROXY protocol, which terminates TLS itself)."""
        loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout_s, connect=5.0)
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.upstream), limits=limits),
                                     timeout=timeout) as self.client:
            servers = []
            internal.unlink(missing_ok=True)
            servers.append(await loop.create_unix_server(lambda: Client(self, public=False, proxied=False),
                                                         str(internal), backlog=4096))
            internal.chmod(0o600)  # only this user (nginx's) may connect
            if public is not None and public.startswith("/"):
                Path(public).unlink(missing_ok=True)
                servers.append(await loop.create_unix_server(lambda: Client(self, public=True, proxied=True),
                                                             public, backlog=4096))
                Path(public).chmod(0o600)
            elif public is not None:
                host, _, port = public.rpartition(":")
                sock = steered_socket(host, int(port), self.workers)  # the other workers listen there too
                servers.append(await loop.create_server(lambda: Client(self, public=True, proxied=False), sock=sock,
                                                        backlog=4096, ssl=tls,
                                                        ssl_handshake_timeout=IDLE_S if tls else None))
                # TLS ends here: the bytes a Client reads (and hands nginx) are in the clear
            tasks = [loop.create_task(self.sweep()), loop.create_task(self.report())]
            try:
                await asyncio.gather(*(s.serve_forever() for s in servers))
            finally:
                for task in tasks:
                    task.cancel()
                self.varnish.close()


def steered_socket(host: str, port: int, workers: int) -> socket.socket:
    """The edge's port, shared by the fan-out's workers (SO_REUSEPORT), with a classic BPF
    program that picks the worker from the client's address alone (its last 32 bits modulo
    ``workers``): every connection of one address reaches the same worker, whose count of them
    is then the address's whole count (the per-address cap, without the firewall's connection
    tracking). Without the program (a kernel that refuses it) the kernel spreads connections by
    their 4-tuple and the cap holds per worker; a warning says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)  # in the port's group first: a program attached before would make a group of its own
    # A = the source address's last 32 bits (IPv4: offset 12 of its header; IPv6: 20); A %= workers; return A
    src = SKF_NET_OFF + (20 if family == socket.AF_INET6 else 12)
    program = b"".join(struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)
                       for code, k in ((BPF_LD_W_ABS, src), (BPF_ALU_MOD_K, max(1, workers)), (BPF_RET_A, 0)))
    buf = ctypes.create_string_buffer(program)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        struct.pack("HL", len(program) // 8, ctypes.addressof(buf)))
    except OSError as e:
        log.warning("connections are not steered by client address (%s): the per-address cap holds per worker", e)
    sock.setblocking(False)
    return sock


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m amphi.edge.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--internal", type=Path, required=True, help="the Unix socket nginx sends segments to")
    p.add_argument("--public", help="the edge's port, HOST:PORT, or a Unix socket behind nginx's stream cap")
    p.add_argument("--upstream", type=Path, required=True, help="Varnish's Unix socket")
    p.add_argument("--front", type=Path, help="nginx's http socket, for the requests that are not ours")
    p.add_argument("--secret-file", type=Path, required=True, help="the nodes' token secret")
    p.add_argument("--media-rate", type=int, default=0, help="media requests per address per second (0: none)")
    p.add_argument("--join-rate", type=int, default=0, help="joins per address per second (0: none)")
    p.add_argument("--no-batch-joins", dest="batch_joins", action="store_false",
                   help="joins go to nginx as any other request, each on its own (default: in batches)")
    p.add_argument("--name", default="edge1", help="the edge's name, in its credential")
    p.add_argument("--released", type=Path, help="the file this edge's workers share released seats in")
    p.add_argument("--max-connections", type=int, default=0, help="connections per client address at --public (0: none)")
    p.add_argument("--workers", type=int, default=1, help="the fan-out's processes sharing --public")
    p.add_argument("--tls-cert", type=Path, help="serve https at --public (HOST:PORT): the PEM certificate chain")
    p.add_argument("--tls-key", type=Path, help="... and its PEM private key")
    p.add_argument("--token-ttl", type=float, default=AdmissionConfig.token_ttl_s,
                   help="the tokens' life, as the nodes sign them (--token-ttl): renewed here at half of it")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="fanout %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line a fetch
    import uvloop

    raise_open_files()  # two sockets a listener (the segment streaming, the next one asked ahead)
    fanout = Fanout(args.upstream, args.front, args.secret_file.read_text().strip(), name=args.name,
                    released=args.released, max_connections=args.max_connections, workers=args.workers, token_ttl_s=args.token_ttl, media_rate=args.media_rate,
                    join_rate=args.join_rate, batch_joins=args.batch_joins)
    tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    uvloop.run(fanout.serve(args.internal, args.public, tls))


if __name__ == "__main__":
    main()
