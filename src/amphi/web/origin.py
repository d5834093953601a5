"""The origin: what listeners fetch. A raw ASGI app, because these are the hot paths.

    GET /media/<space>/t/<token>/index.m3u8                             multivariant playlist (CODECS, BANDWIDTH)
    GET /media/<space>/t/<token>/live.m3u8[?_HLS_msn=M[&_HLS_part=P]]   live playlist (blocking reload)
    GET /media/<space>/t/<token>/init.mp4                               init segment
    GET /media/<space>/t/<token>/<msn>.<part>.m4s                       part (waits if it is the hinted one)
    GET /media/<space>/t/<token>/<msn>.m4s                              segment (streamed while it is made)
    GET /media/<space>/edge/...   (any of the above five)               for edge caches: header x-amphi-edge
    GET /media/<space>/vod.m3u8                                         replay, once ended (no token)
    GET /media/<space>/download.m4a                                     the whole recording, one file

While a Space is scheduled or live, every request needs the admission token from join in
its path (the playlist's relative URIs inherit it). The token is checked first, with one
HMAC and no state: missing or expired -> 401, forged or another Space's -> 403. Once the
Space has ended, its replay is public: init, segments, vod.m3u8 and the download need no
token. A live playlist fetched with a token past half its life is redirected
(307) to the same playlist under a renewed token, so players that only follow URLs stay admitted (see
``Listeners.verify_token`` for the one case an expired token still passes). The paths are the
``media.*``, ``edge.*`` and ``bare.*`` routes of ``amphi.web.routes``.

An edge cache (docs/edge.md) checks its listeners' tokens itself and fetches one copy for
all of them under ``/edge/``, proving itself with the credential in ``x-amphi-edge``.

Init, parts and segments never change once served: they are immutable to caches. Playlists
are short-lived. A blocking reload holds a slot until the playlist moves, it times out,
or the client goes away (then the slot is freed at once).

A segment still being made is streamed (docs/streaming.md): the answer to ``<msn>.m4s`` for
the open segment, or for the next one (held until its first part exists), is a 200 without a
length (HTTP/1.1 chunked) that carries the bytes made so far at once and then each part (one
``moof``+``mdat``) the moment the segmenter closes it, and ends with the segment. The
playlist lists the parts as byte ranges of it, so a player (or an edge) that reads the
segment has every part as soon as a part request would have. Ranges (RFC 9110): served
exactly on a complete segment (206, 416); on a segment still being made an open range from
byte 0 (``0-``, or Shaka Player's ``0-9007199254740991``) is the streamed whole, a range
``a-b`` waits until byte ``b`` exists (206 ``a-b/*``: what hls.js asks for each part), and an
open range ``a-`` until the segment is complete. A stream that cannot be completed (the
program failed) is cut off, never ended cleanly: an edge must not keep a truncated segment.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

from amphi.control.tokens import Token
from amphi.core.config import MediaConfig
from amphi.core.errors import AmphiError, BadRequest, MethodNotAllowed, NotFound, TooBusy, Unauthorized
from amphi.media.pipeline import Pipeline
from amphi.media.playlist import render_live, render_multivariant
from amphi.media.recorder import Recording
from amphi.media.segmenter import Segment
from amphi.web.asgi import CORS, EXPOSE, Receive, Scope, Send, header, respond, send_error
from amphi.web.routes import MEDIA_FILES
from amphi.web.routes import Match, Route

log = logging.getLogger(__name__)
T = TypeVar("T")

IMMUTABLE = b"public, max-age=31536000, immutable"
PLAYLIST_LIVE = b"public, max-age=1"
PLAYLIST_BLOCKING = b"public, max-age=6"  # a blocking response's URL names a point in time
PLAYLIST_ENDED = b"public, max-age=3600"
PLAYLIST_INDEX = b"public, max-age=60"
M3U8 = b"application/vnd.apple.mpegurl"
MP4 = b"audio/mp4"
OPEN_END = 1 << 32  # a range's last byte this far out means "to the end": no segment is that long
RANGE = re.compile(r"bytes=([0-9]{1,12})-([0-9]{0,16})")  # one range; anything else is ignored (RFC 9110)


class MediaSource(Protocol):
    """What the origin serves (``amphi.services.spaces.Spaces``)."""

    async def media(self, space_id: str) -> tuple[Pipeline | None, Recording]: ...  # raises NotFound

    def ended(self, space_id: str) -> bool: ...  # raises NotFound

    def optional_work_allowed(self) -> None: ...  # raises Unavailable under pressure

    def check_publishing(self, space_id: str) -> None: ...  # raises Misdirected once another node hosts it

    def may_publish(self, space_id: str) -> bool: ...  # this node holds the Space's lease (docs/cluster.md)


class MediaAccess(Protocol):
    """Who may fetch it (``amphi.control.listeners.Listeners``)."""

    async def verify_token(self, space_id: str, token: str | None, *, playlist: bool = False) -> Token: ...  # 401/403

    def verify_edge(self, credential: str | None) -> str: ...  # 403

    async def renewal(self, space_id: str, token: Token) -> str | None: ...


@dataclass
class OriginStats:
    requests: int = 0
    blocking_waiting: int = 0
    blocking_timeouts: int = 0
    blocking_disconnects: int = 0
    renewals: int = 0  # playlist requests redirected to a renewed token
    streams: int = 0  # streamed segment answers begun (a segment still being made)
    streams_open: int = 0  # of those, still sending
    streams_cut: int = 0  # cut off: the program failed, or the client went away, mid-segment


class Origin:
    def __init__(self, source: MediaSource, access: MediaAccess, cfg: MediaConfig) -> None:
        self._source = source
        self._access = access
        self._cfg = cfg
        self.stats = OriginStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, m: Match | None) -> None:
        """One media request; ``m`` is its route (``amphi.web.routes``), None if no route."""
        self.stats.requests += 1
        head = scope["method"] == "HEAD"
        try:
            if m is None:
                raise NotFound(f"no such media path {scope['path']!r}")
            if not m.allowed:
                raise MethodNotAllowed("media is read with GET or HEAD")
            await self._route(m.route, m.params, scope, receive, send, head)
        except AmphiError as err:
            await send_error(send, err, head_only=head)

    async def _route(self, route: Route, params: dict[str, Any], scope: Scope, receive: Receive, send: Send,
                     head: bool) -> None:
        space_id, name = params["id"], route.file
        source = self._source
        token = None
        if route.access == "token":  # first, before any other work
            token = await self._access.verify_token(space_id, params["token"], playlist=name == "live")
        elif route.access == "edge":
            credential = header(scope, b"x-amphi-edge")
            self._access.verify_edge(credential.decode("latin-1") if credential is not None else None)
        elif route.public_once_ended:
            if not source.ended(space_id):
                raise Unauthorized("an admission token is required while the Space is on: POST /api/spaces/{id}/join")
            source.optional_work_allowed()
        else:
            raise Unauthorized("an admission token is required: POST /api/spaces/{id}/join")
        pipeline, recording = await source.media(space_id)  # 421 if another node hosts it now
        if name == "index":
            await self._ok(send, M3U8, PLAYLIST_INDEX, self._multivariant(pipeline).encode(), head)
        elif name == "live":
            if token is not None and pipeline is not None and (renewed := await self._access.renewal(space_id, token)):
                await self._redirect(send, space_id, renewed, scope)
                return
            await self._live_playlist(space_id, pipeline, recording, scope, receive, send, head)
        elif name == "init":
            if pipeline is not None:
                init = pipeline.init
            elif recording.started:
                init = await asyncio.to_thread(recording.init_bytes)
            else:
                raise NotFound("this Space has no audio")
            await self._ok(send, MP4, IMMUTABLE, init, head)
        elif name == "vod":
            if not recording.finalized:
                raise NotFound("the replay exists once the Space has ended")
            await self._ok(send, M3U8, PLAYLIST_ENDED, recording.vod_playlist().encode(), head)
        elif name == "download":
            await self._download(recording, send, head)
        elif name == "part":
            await self._part(pipeline, params["msn"], params["part"], scope, receive, send, head)
        else:
            await self._segment(pipeline, recording, params["msn"], scope, receive, send, head)

    async def _ok(self, send: Send, ctype: bytes, cache: bytes, body: bytes, head: bool) -> None:
        headers = [(b"content-type", ctype), (b"cache-control", cache), CORS, EXPOSE]
        await respond(send, 200, headers, b"" if head else body, len(body))

    def _multivariant(self, pipeline: Pipeline | None) -> str:
        """The one variant, with its bit rate measured on the segments at hand (peak and
        average), or estimated from the encoder's when there are none."""
        rates = pipeline.timeline.bit_rates() if pipeline is not None else []
        estimate = self._cfg.bitrate * 1.1  # AAC plus the fragments' boxes
        peak, average = (max(rates), sum(rates) / len(rates)) if rates else (estimate, estimate)
        return render_multivariant(MEDIA_FILES["live"], peak_bps=_kbps(peak), average_bps=_kbps(average))

    async def _redirect(self, send: Send, space_id: str, token: str, scope: Scope) -> None:
        self.stats.renewals += 1
        query = scope["query_string"]
        location = f"/media/{space_id}/t/{token}/live.m3u8".encode() + (b"?" + query if query else b"")
        await respond(send, 307, [(b"location", location), (b"cache-control", b"no-store"), CORS], b"")

    # -- playlists ------------------------------------------------------------------------

    async def _live_playlist(self, space_id: str, pipeline: Pipeline | None, recording: Recording,
                             scope: Scope, receive: Receive, send: Send, head: bool) -> None:
        query = parse_qs(scope["query_string"].decode("latin-1"))
        msn, part = _int_param(query, "_HLS_msn"), _int_param(query, "_HLS_part")
        if pipeline is None:  # ended (or never had audio): the last window, closed
            entries = recording.entries[-self._cfg.window_segments:]
            if not entries:
                raise NotFound("this Space has no audio")
            gone = recording.entries[:len(recording.entries) - len(entries)]  # left the window: counted
            text = render_live(self._cfg, entries, hint=None, ended=True,
                               discontinuity_sequence=sum(e.discontinuity for e in gone))
            await self._ok(send, M3U8, PLAYLIST_ENDED, text.encode(), head)
            return
        timeline = pipeline.timeline
        timeline.check_reload(msn, part)
        def ready() -> bool:
            return timeline.has_segments and timeline.satisfies(msn, part)

        if not ready():  # a blocking reload, or a pipeline younger than its first segment
            ok = await self._hold(pipeline, ready, receive)
            if ok is None:
                return  # client went away
            if not ok:
                raise TooBusy("the playlist did not advance in time", retry_after_s=1)
            self._source.check_publishing(space_id)  # the lease may have gone while it waited
        cache = PLAYLIST_BLOCKING if msn is not None else PLAYLIST_LIVE
        await self._ok(send, M3U8, cache, timeline.render().encode(), head)

    async def _hold(self, pipeline: Pipeline, predicate: Callable[[], bool], receive: Receive,
                    timeout: float | None = None) -> bool | None:
        """Waits for ``predicate`` (at most ``timeout``, by default ``MediaConfig.hold_s``); None
        when the client disconnected first."""
        if self.stats.blocking_waiting + self.stats.streams_open >= self._cfg.max_blocking_waiters:
            raise TooBusy("too many listeners waiting on this node", retry_after_s=1)
        self.stats.blocking_waiting += 1
        try:
            ok = await _unless_gone(receive, pipeline.wait_for(predicate, timeout or self._cfg.hold_s))
        finally:
            self.stats.blocking_waiting -= 1
        if ok is None:
            self.stats.blocking_disconnects += 1
        elif not ok:
            self.stats.blocking_timeouts += 1
        return ok

    # -- media ----------------------------------------------------------------------------

    async def _part(self, pipeline: Pipeline | None, msn: int, index: int,
                    scope: Scope, receive: Receive, send: Send, head: bool) -> None:
        if pipeline is None:
            raise NotFound("parts are only served while the Space is on air; use the segments")
        timeline = pipeline.timeline
        found = timeline.part(msn, index)
        if found is None and timeline.is_hinted(msn, index):
            ok = await self._hold(pipeline, lambda: timeline.part(msn, index) is not None, receive)
            if ok is None:
                return
            self._source.check_publishing(pipeline.space_id)
            found = timeline.part(msn, index)
        if found is None:
            raise NotFound(f"no part {msn}.{index}")
        await self._ok(send, MP4, IMMUTABLE, found.data, head)

    async def _segment(self, pipeline: Pipeline | None, recording: Recording, msn: int,
                       scope: Scope, receive: Receive, send: Send, head: bool) -> None:
        wanted = _byte_range(header(scope, b"range"))
        if pipeline is not None:
            timeline = pipeline.timeline
            seg = timeline.growing(msn)
            if seg is None and timeline.awaited(msn):  # the next segment: from its first part on
                ok = await self._hold(pipeline, lambda: timeline.growing(msn) is not None, receive, self._wait_s)
                if ok is None:
                    return
                self._source.check_publishing(pipeline.space_id)
                seg = timeline.growing(msn)
            if seg is not None:
                if seg.closed:
                    await self._bytes(send, seg.data, wanted, head)
                else:
                    await self._growing(pipeline, seg, wanted, receive, send, head)
                return
        path = recording.segment_path(msn)
        if path is None:
            raise NotFound(f"no segment {msn}")
        data = await asyncio.to_thread(path.read_bytes)
        await self._bytes(send, data, wanted, head)

    @property
    def _wait_s(self) -> float:
        """The longest a segment request waits for bytes that will come: a whole segment (the
        next one is asked for as the open one begins) and then the usual hold."""
        return self._cfg.segment_s + self._cfg.hold_s

    async def _bytes(self, send: Send, data: bytes, wanted: tuple[int, int | None] | None, head: bool) -> None:
        """A complete segment, or the range of it asked for."""
        if wanted is None:
            await self._ok(send, MP4, IMMUTABLE, data, head)
            return
        first, last = wanted
        size = len(data)
        if first >= size:
            await respond(send, 416, [(b"content-range", f"bytes */{size}".encode()), CORS, EXPOSE], b"")
            return
        last = size - 1 if last is None or last >= size else last
        await self._partial(send, data, first, last, str(size), head)

    async def _partial(self, send: Send, data: bytes, first: int, last: int, size: str, head: bool) -> None:
        """206 with bytes ``first``-``last`` of ``data``, whose whole length is ``size`` ("*":
        not known yet)."""
        body = data[first:last + 1]
        headers = [(b"content-type", MP4), (b"cache-control", IMMUTABLE), CORS, EXPOSE,
                   (b"content-range", f"bytes {first}-{last}/{size}".encode())]
        await respond(send, 206, headers, b"" if head else body, len(body))

    async def _growing(self, pipeline: Pipeline, seg: Segment, wanted: tuple[int, int | None] | None,
                       receive: Receive, send: Send, head: bool) -> None:
        """A segment still being made: streamed whole, or a range of it once it exists."""
        if wanted is not None and wanted != (0, None):
            first, last = wanted
            ok = await self._hold(pipeline, lambda: seg.closed or (last is not None and seg.size > last),
                                  receive, self._wait_s)
            if ok is None:
                return
            if not ok:
                raise TooBusy("the segment did not grow in time", retry_after_s=1)
            self._source.check_publishing(pipeline.space_id)
            if seg.closed or last is None:
                await self._bytes(send, seg.data, wanted, head)
                return
            await self._partial(send, seg.data, first, last, "*", head)
            return
        headers = [(b"content-type", MP4), (b"cache-control", IMMUTABLE), CORS, EXPOSE]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        self.stats.streams += 1
        self.stats.streams_open += 1
        try:
            done = await _unless_gone(receive, self._stream(pipeline, seg, send))
        finally:
            self.stats.streams_open -= 1
        if not done:
            self.stats.streams_cut += 1
            if done is False:  # the program failed mid-segment: cut off, so nobody keeps a truncated segment
                raise StreamCut(f"segment {seg.msn} could not be completed")

    async def _stream(self, pipeline: Pipeline, seg: Segment, send: Send) -> bool:
        """Sends each part of ``seg`` as it comes; True once the whole segment was sent,
        False if it stopped growing (the program failed, or stalled past a segment's time)
        or this node stopped hosting the Space (its lease: the new host makes its own)."""
        sent = 0
        while True:
            if not self._source.may_publish(pipeline.space_id):
                return False
            if len(seg.parts) > sent:
                body, sent = seg.since(sent), len(seg.parts)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if seg.closed:
                await send({"type": "http.response.body", "body": b""})
                return True
            if not await pipeline.wait_for(lambda n=sent: seg.closed or len(seg.parts) > n, self._wait_s):
                return False

    async def _download(self, recording: Recording, send: Send, head: bool) -> None:
        if not recording.finalized:
            raise NotFound("the download exists once the Space has ended")
        init = await asyncio.to_thread(recording.download_init)
        size = await asyncio.to_thread(recording.download_size, init)
        headers = [
            (b"content-type", MP4),
            (b"cache-control", PLAYLIST_ENDED),
            (b"content-disposition", b'attachment; filename="space.m4a"'),
            CORS,
            (b"content-length", str(size).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if not head:
            iterator = recording.iter_download(init)
            while (chunk := await asyncio.to_thread(next, iterator, None)) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class StreamCut(Exception):
    """Raised out of the app to make the server drop a streamed answer it cannot complete:
    a chunked body that just ended would pass for a whole segment."""


async def _unless_gone(receive: Receive, work: Awaitable[T]) -> T | None:
    """Awaits ``work``, or None if the client disconnects first (``work`` is then cancelled).
    It runs in this task (no task per request): a watcher reads ``receive`` and cancels us."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        me.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            me.uncancel()
            return None
        raise
    finally:
        watcher.cancel()


def _byte_range(value: bytes | None) -> tuple[int, int | None] | None:
    """(first, last or None) of a single ``bytes=`` range; None for none, or for what a
    server may ignore (several ranges, suffix ranges, nonsense): then the whole is sent."""
    if value is None:
        return None
    m = RANGE.fullmatch(value.decode("latin-1").strip())
    if m is None:
        return None
    first, last = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    if last is not None and last >= OPEN_END:
        last = None  # "to the end, whatever it is": Shaka Player asks 0-9007199254740991 for a growing segment
    return None if last is not None and last < first else (first, last)


def _kbps(bps: float) -> int:
    """Bits per second, rounded up to a whole kilobit."""
    return -(-int(bps) // 1000) * 1000


def _int_param(query: dict[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit() or len(values[0]) > 9:
        raise BadRequest(f"{name} must be one whole number from 0 to 999999999")
    return int(values[0])
