"""One simulated listener: what a real player does, over one keep-alive connection.

    new -> joining -> (waiting ->)* playing -> done        (left, run over, or the Space ended)
                 \\-> failed                                (gave up: errors, refused, no answer)

Protocols:

* ``amphi``: ``POST /api/spaces/<id>/join`` (202: wait ``retry_after_s`` plus jitter, then
  read the line document until it says the place's turn has come, and only then send the
  ticket, as the listener page does; the ticket is polled if the document cannot be read),
  then the playlist from the answer: LL-HLS with blocking reload and
  parts (``ll``, like hls.js in low-latency mode: a request per part), whole segments
  (``segments``, like a player that ignores parts), or streamed segments (``stream``: the
  multivariant playlist, then one GET per segment whose body arrives part by part while the
  segment is made, and one playlist request per segment); the token is renewed at
  ``renew_after_s``; at the end it POSTs leave.
* ``hls``: a plain HLS playlist URL (no admission), e.g. nginx serving files: segments,
  reloading the playlist every target duration unless the server can block.
* ``icecast``: one GET of a mount; bytes arriving are seconds of audio at the stream rate.

Every download feeds the ``PlaybackBuffer``: it knows when this listener would have
stalled and how far behind live it hears.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from typing import Protocol

import orjson

from amphi.loadtest import playlist as m3u8
from amphi.loadtest.buffer import PlaybackBuffer
from amphi.loadtest.config import LoadConfig
from amphi.loadtest.fragments import DEFAULT_TIMESCALE, SegmentRead, init_timescale, start_skip
from amphi.control.tokens import TOKEN
from amphi.web.answers import parse_line
from amphi.defense.pow import solve
from amphi.media.fmp4 import MalformedMp4
from amphi.loadtest.http import Connection, HttpError, Response, Tls, absolute, is_loopback, loopback_source, split_url
from amphi.loadtest.profiles import Session, backoff_s, header_retry_s, line_retry_s, retry_delay_s
from amphi.loadtest.stats import Histogram

_TOKEN_IN_PATH = re.compile(r"/t/([^/]+)/")
MAX_ATTEMPTS = 6  # consecutive failed requests (with backoff) before a listener gives up
LL_START_PARTS = 3  # without PART-HOLD-BACK: start this many parts behind live
SEGMENTS_BEHIND = 3  # a segment player starts this many segments behind live (hls.js default)
STREAM_START_PARTS = 2  # a stream player keeps the newest two parts of the segment it joins: one to play, one in hand


class Rejoin(Exception):
    """The token was refused (401/403): join again."""


class Ended(Exception):
    """The Space (or the stream) has ended."""


POLLS_RENEW_SHARE = 0.4  # --admission polls: API renewals this far into a token's life (the playlist's come at half)


class GiveUp(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Swarm(Protocol):
    """What a listener needs from the crowd it belongs to (``amphi.loadtest.swarm.Swarm`` is
    one): the run's settings, its clock, and the tallies a listener adds to. A protocol, so
    this module does not import the swarm that imports it."""

    cfg: LoadConfig
    tls: Tls
    renewals: int
    playlist_renewals: int
    line_reads: int
    edge_switches: int
    pow_solved: int
    pow_s: float
    latency: Histogram
    edge_recovery: Histogram
    part_gap: Histogram
    segment_gap: Histogram

    def loop_time(self, at_s: float) -> float: ...

    def wall_time(self, at_s: float) -> float: ...

    def error(self, kind: str) -> None: ...

    def join_answer(self, seconds: float) -> None: ...

    def first_audio(self, seconds: float) -> None: ...

    def admitted(self, listener: Listener, now: float) -> None: ...


class Listener:
    __slots__ = ("swarm", "session", "rng", "conn", "source", "media", "edges", "edge_lost", "edge_lost_at", "state", "buffer", "arrived", "answered", "admitted_at",
                 "first_audio", "waited", "token", "ticket", "renew_at", "path", "failures", "outcome", "dropped",
                 "timescale", "last_part_at", "ends_at", "side", "renew_share", "place")

    def __init__(self, swarm: Swarm, session: Session, rng: random.Random) -> None:
        self.swarm = swarm
        self.session = session
        self.rng = rng
        host, port, _ = swarm.tls.split(swarm.cfg.server)
        source = loopback_source(rng) if swarm.cfg.spread_sources and is_loopback(host) else None
        self.source = source  # this listener's own 127.x.y.z: the API and the edges see one client address
        self.conn = Connection(host, port, source=source, tls=swarm.tls.context(host, port))  # the API (joins, renewals) and, unless sent to an edge, media
        self.media = self.conn  # where the playlist, parts and segments come from
        self.edges: list[tuple[str, int]] = []  # edge caches the node named for media (docs/edge.md)
        self.edge_lost_at: float | None = None  # when the current edge stopped answering
        self.edge_lost: tuple[str, int] | None = None  # the edge that failed last
        self.state = "new"
        self.buffer: PlaybackBuffer | None = None
        self.arrived = 0.0
        self.answered: float | None = None  # first answer (admitted or waiting) to this listener
        self.admitted_at: float | None = None
        self.first_audio: float | None = None
        self.waited = False
        self.token: str | None = None
        self.ticket: str | None = None
        self.renew_at = float("inf")
        self.path = ""  # the playlist's path on the server (carries the token)
        self.failures = 0
        self.outcome = ""
        self.dropped = False
        self.timescale = DEFAULT_TIMESCALE  # of the audio track, from the init segment
        self.last_part_at: float | None = None  # stream: when the last part arrived
        self.ends_at = float("inf")  # wall time the session ends: its buffer is not played past it
        self.side: Connection | None = None  # stream: a second connection to the media's host, for playlists
        self.renew_share = 0.5  # how far into a token's life the API renewal comes (the join's renew_after_s)
        self.place: int | None = None  # while waiting: the place's number in the Space's line

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        sw = self.swarm
        s = self.session
        await sw.sleep_until(s.arrive_s)
        self.arrived = time.time()
        self.state = "joining"
        end = sw.cfg.duration_s if s.leave_s is None else min(s.leave_s, sw.cfg.duration_s)
        self.ends_at = sw.wall_time(end)
        try:
            if s.drop_s is not None and s.drop_s < end:
                if await self._until(s.drop_s):
                    return
                self._close()  # the network drops: no leave, the seat is kept by its token
                self.dropped = True
                sw.drops += 1
                await asyncio.sleep(backoff_s(0, self.rng))
            await self._until(end)
        finally:
            if self.buffer is not None:
                # to the session's end at most: when a whole crowd's sessions end at once, the loop
                # comes round to each late, and a buffer run dry in that delay is no listener's stall
                self.buffer.advance(min(time.time(), self.ends_at))
            if not self.outcome:
                self.outcome = self.state
            await self._leave()
            self._close()

    def _close(self) -> None:
        self.conn.close()
        if self.media is not self.conn:
            self.media.close()
        if self.side is not None:
            self.side.close()

    async def _until(self, at_s: float) -> bool:
        """Runs the listener until ``at_s`` (seconds from T0); True if it finished by itself."""
        try:
            async with asyncio.timeout_at(self.swarm.loop_time(at_s)):
                await self._listen()
            return True
        except TimeoutError:
            return False

    async def _listen(self) -> None:
        proto = self.swarm.cfg.protocol
        while True:
            try:
                if proto == "icecast":
                    await self._icecast()
                    return
                if proto == "amphi":
                    await self._admission()
                else:
                    self.path = split_url(self.swarm.cfg.server)[2]
                    self._admitted(time.time())
                await self._play()
                return
            except Rejoin:
                self.token = None
                self.swarm.error("token_refused")
            except Ended:
                self.state = "done"
                self.outcome = "ended"
                return
            except GiveUp as e:
                self.state = "failed"
                self.outcome = "failed"
                self.swarm.error(f"gave_up_{e.kind}")
                return
            except HttpError as e:
                self.swarm.error(e.kind)
                await self._backoff(e.kind)

    async def _backoff(self, kind: str) -> None:
        self.failures += 1
        if self.failures >= MAX_ATTEMPTS:
            raise GiveUp(kind)
        await asyncio.sleep(backoff_s(self.failures, self.rng))

    async def _request(self, method: str, target: str, body: object = None, timeout_s: float | None = None,
                       *, conn: Connection | None = None, on_body: Callable[[bytes], None] | None = None) -> Response:
        sw = self.swarm
        sw.requests += 1
        resp = await (conn or self.conn).request(method, target, None if body is None else orjson.dumps(body),
                                                 timeout_s=timeout_s or sw.cfg.request_timeout_s, on_body=on_body)
        self.failures = 0
        return resp

    # -- admission ----------------------------------------------------------------------------

    async def _admission(self) -> None:
        sw = self.swarm
        join = f"/api/spaces/{sw.cfg.space}/join"
        if self.token is not None:  # back after a drop: renew the seat we hold
            try:
                await self._renew()
                return
            except Rejoin:
                self.token = None
        body: dict[str, str] = {"ticket": self.ticket} if self.ticket else {}
        if self.admitted_at is not None:
            sw.rejoins += 1  # seated before, and joining for a new seat now
        while True:
            try:
                resp = await self._request("POST", join, body)
            except asyncio.CancelledError:
                sw.joins_cut_off += 1  # the session ended mid-request: the node may have seated it
                raise
            except HttpError as e:
                sw.error(e.kind)
                await self._backoff(e.kind)
                continue
            now = time.time()
            if self.answered is None and resp.status in (200, 202):
                self.answered = now
                sw.join_answer(now - self.arrived)
            if resp.status == 200:
                answer = orjson.loads(resp.body)
                if answer.get("status") == "ended":
                    raise Ended()
                self._take_token(answer)
                self.ticket = None
                self._admitted(now)
                return
            if resp.status == 202:
                answer = orjson.loads(resp.body)
                self.ticket = answer["ticket"]
                self.place = answer.get("place") if isinstance(answer.get("place"), int) else None
                body = {"ticket": self.ticket}
                if self.state != "waiting":
                    self.waited = True
                    self.state = "waiting"
                await asyncio.sleep(retry_delay_s(float(answer.get("retry_after_s") or 1.0), self.rng))
                if sw.cfg.admission == "line":
                    await self._watch_line(f"/api/spaces/{sw.cfg.space}/line", int(answer.get("position") or 1))
                continue
            if resp.status == 429 and (challenge := _challenge(resp)) is not None:
                body = {**body, **self._solve(challenge)}  # like the browser's worker: solve, join again
                continue
            sw.error(f"http_{resp.status}")
            if resp.status in (429, 503):
                await asyncio.sleep(retry_delay_s(_retry_after(resp), self.rng))
                continue
            if resp.status in (401, 403) and self.ticket:
                self.ticket = None  # a ticket that is not ours any more: join afresh
                body = {}
                continue
            raise GiveUp(f"http_{resp.status}")

    async def _watch_line(self, url: str, pooled_position: int) -> None:
        """Reads the line document until this place's turn has come (or the Space started, for a
        place in the pool, or ended); returns then, or at once if the document cannot be read:
        the ticket goes to the API either way."""
        sw = self.swarm
        while True:
            try:
                resp = await self._request("GET", url)
                doc = orjson.loads(resp.body) if resp.status == 200 else None
                line = parse_line(doc) if isinstance(doc, dict) else None
            except HttpError as e:
                sw.error(e.kind)
                return
            except (ValueError, KeyError, TypeError):
                line = None
            if line is None or doc is None:
                return
            sw.line_reads += 1
            if doc.get("state") == "ended" or (self.place is None and doc.get("state") != "scheduled"):
                return
            position = pooled_position if self.place is None else line.position(self.place)
            if position is None:
                return  # our turn
            await asyncio.sleep(line_retry_s(doc["poll"], position, line.eta(position), self.rng))

    def _solve(self, challenge: dict[str, object]) -> dict[str, str]:
        t = time.perf_counter()
        solution = solve(str(challenge["challenge"]), int(challenge["bits"]))  # type: ignore[call-overload]
        self.swarm.pow_solved += 1
        self.swarm.pow_s += time.perf_counter() - t
        return {"challenge": str(challenge["challenge"]), "solution": solution}

    def _take_token(self, answer: dict[str, object]) -> None:
        self.token = str(answer["token"])
        # "playlist" is the multivariant playlist (a media playlist on older nodes), "media_playlist"
        # the live one: a stream player starts from the first, as a standard player does; the others,
        # and a renewal (whose media playlist is the one being played, with the new token), from the second
        first = self.swarm.cfg.player == "stream" and self.admitted_at is None
        url = answer["playlist"] if first or not answer.get("media_playlist") else answer["media_playlist"]
        host, port, self.path = self.swarm.tls.split(str(url))
        renew_after = float(answer.get("renew_after_s") or 30.0)  # type: ignore[arg-type]
        if self.swarm.cfg.admission == "polls":  # before half its life: no playlist reload renews it
            renew_after = POLLS_RENEW_SHARE * float(answer.get("expires_in_s") or 60.0)  # type: ignore[arg-type]
        self.renew_share = renew_after / float(answer.get("expires_in_s") or 60.0)  # type: ignore[arg-type]
        self.renew_at = time.time() + renew_after
        self.edges = [self.swarm.tls.split(str(e))[:2] for e in answer.get("edges") or ()]  # type: ignore[attr-defined]
        if (self.media.host, self.media.port) in self.edges:
            return  # a renewal: stay on the edge we play from (the node names the next one in turn)
        if (host, port) != (self.media.host, self.media.port):
            self._media_at(host, port)

    def _media_at(self, host: str, port: int) -> None:
        if self.media is not self.conn:
            self.media.close()
        same = (host, port) == (self.conn.host, self.conn.port)
        self.media = self.conn if same else Connection(host, port, source=self.source if is_loopback(host) else None,
                                                       tls=self.swarm.tls.context(host, port))

    def _other_edge(self) -> None:
        """The edge stopped answering: the next attempt goes to another one, at random."""
        lost = (self.media.host, self.media.port)
        others = [e for e in self.edges if e != lost and e != self.edge_lost]
        self.edge_lost = lost  # not straight back to the one that just failed
        if others:
            self._media_at(*self.rng.choice(others))
            self.swarm.edge_switches += 1
            if self.edge_lost_at is None:
                self.edge_lost_at = time.time()

    def _admitted(self, now: float) -> None:
        if self.admitted_at is None:
            self.admitted_at = now
            self.swarm.admitted(self, now)
        self.state = "playing"

    async def _renew(self) -> None:
        resp = await self._request("POST", f"/api/spaces/{self.swarm.cfg.space}/join", {"token": self.token})
        if resp.status == 200:
            answer = orjson.loads(resp.body)
            if answer.get("status") == "ended":
                raise Ended()
            self._take_token(answer)
            self.swarm.renewals += 1
            self.state = "playing"
            return
        if resp.status in (401, 403):
            raise Rejoin()
        self.swarm.error(f"http_{resp.status}")
        self.renew_at = time.time() + 1.0  # try again shortly; the token is still good

    def _adopt(self, path: str) -> None:
        """A live playlist's redirect renewed our token (the path carries the new one, for the same
        seat): it is ours, and the API renewal moves as far into its life as the join said
        (``renew_after_s``: three quarters; docs/admission.md)."""
        m = _TOKEN_IN_PATH.search(path)
        if m is None or m.group(1) == self.token:
            return
        new, old = TOKEN.parse(m.group(1)), TOKEN.parse(self.token)
        if new is None or old is None or (new.kind, new.values[0]) != (old.kind, old.values[0]):
            return  # not a token of our seat
        now = time.time()
        self.token = m.group(1)
        self.swarm.playlist_renewals += 1
        self.renew_at = now + self.renew_share * max(0.0, int(new.values[1]) - now)

    async def _leave(self) -> None:
        if self.swarm.cfg.protocol != "amphi" or self.state == "failed":
            return
        body = {"token": self.token} if self.token else ({"ticket": self.ticket} if self.ticket else None)
        if body is None:
            return
        try:
            async with asyncio.timeout(self.swarm.cfg.request_timeout_s):
                await self._request("POST", f"/api/spaces/{self.swarm.cfg.space}/leave", body)
        except (HttpError, TimeoutError):
            pass
        self.state = "done"

    # -- media ----------------------------------------------------------------------------------

    async def _get(self, target: str, *, playlist: bool = False, on_body: Callable[[bytes], None] | None = None,
                   conn: Connection | None = None) -> Response | None:
        """A media GET (on the media connection unless ``conn``). Follows a renewal redirect (307)
        on playlists; None for a 404 (the part is gone: skip it); Rejoin on 401/403.
        ``on_body``: a 200's body as it arrives."""
        while True:
            try:
                resp = await self._request("GET", target, conn=conn or self.media, on_body=on_body)
            except HttpError:
                self._other_edge()
                raise
            if resp.status == 200:
                if self.edge_lost_at is not None:
                    self.swarm.edge_recovery.add(time.time() - self.edge_lost_at)
                    self.edge_lost_at = None
                return resp
            if resp.status in (301, 302, 307, 308) and "location" in resp.headers:
                loc = resp.headers["location"]
                target = split_url(loc)[2] if absolute(loc) else loc
                if playlist:
                    self.path = target.split("?", 1)[0]
                    self._adopt(self.path)
                continue
            self.swarm.error(f"http_{resp.status}")
            if resp.status in (401, 403) and self.swarm.cfg.protocol == "amphi":
                raise Rejoin()
            if resp.status == 404:
                return None
            if resp.status in (429, 503):
                await asyncio.sleep(min(5.0, _retry_after(resp)))
                continue
            raise GiveUp(f"http_{resp.status}")

    def _resolve(self, uri: str) -> str:
        if absolute(uri):
            return split_url(uri)[2]
        if uri.startswith("/"):
            return uri
        return self.path.rsplit("/", 1)[0] + "/" + uri

    async def _playlist(self, query: str = "", conn: Connection | None = None) -> m3u8.MediaPlaylist:
        resp = await self._get(self.path + query, playlist=True, conn=conn)
        if resp is None:
            raise GiveUp("http_404")
        if self.answered is None:  # hls: the first playlist is the answer
            self.answered = time.time()
            self.swarm.join_answer(self.answered - self.arrived)
        if m3u8.is_multivariant(resp.body):  # the join's answer: follow its (one) variant
            variant = m3u8.parse_multivariant(resp.body.decode())[0]
            if not variant.codecs:
                self.swarm.error("variant_without_codecs")  # standard players refuse or mis-guess it
            self.path = self._resolve(variant.uri).split("?", 1)[0]
            return await self._playlist(query, conn)
        return m3u8.parse_body(resp.body)

    def _got_audio(self, seconds: float, pdt: float | None) -> None:
        now = time.time()
        if now >= self.ends_at:
            return  # read after the session's end (a crowd's sessions end at once: the loop is late): not judged
        b = self.buffer
        assert b is not None
        b.add(seconds, now, pdt)
        if self.first_audio is None and b.started_at is not None:
            self.first_audio = now
            self.swarm.first_audio(now - (self.admitted_at or self.arrived))
        if (lat := b.latency(now)) is not None:
            self.swarm.latency.add(max(0.0, lat))

    async def _maybe_renew(self) -> None:
        if self.swarm.cfg.protocol == "amphi" and time.time() >= self.renew_at:
            await self._renew()

    async def _play(self) -> None:
        pl = await self._playlist()
        if pl.map_uri and self.buffer is None:
            init = await self._get(self._resolve(pl.map_uri))
            if init is not None:
                self.timescale = init_timescale(init.body)
        player = self.swarm.cfg.player
        lowlat = pl.part_target is not None and bool(pl.parts)
        if player == "stream" and lowlat:
            await self._play_stream(pl)
        elif player == "ll" and lowlat:
            await self._play_parts(pl)
        else:
            await self._play_segments(pl)

    async def _play_parts(self, pl: m3u8.MediaPlaylist) -> None:
        parts = pl.parts
        if self.buffer is None:
            assert pl.part_target is not None
            self.buffer = PlaybackBuffer(start_s=pl.part_target)
        hold = pl.part_hold_back or LL_START_PARTS * (pl.part_target or 0.5)
        start, held = len(parts), 0.0
        while start > 0 and held < hold - 1e-6:
            start -= 1
            held += parts[start].duration
        todo = parts[start:]
        last = (todo[0].msn, todo[0].index - 1) if todo else (pl.media_sequence, -1)
        while True:
            for part in todo:
                # byte-range parts (one segment file) are asked for by their own part URIs, which the
                # origin still serves: one request per part, as hls.js makes (with a Range header)
                uri = part.uri if part.byterange is None else f"{part.msn}.{part.index}.m4s"
                resp = await self._get(self._resolve(uri))
                if resp is not None:
                    self._got_audio(part.duration, part.pdt)
                last = (part.msn, part.index)
            if pl.ended:
                raise Ended()
            await self._maybe_renew()
            # the next part: in the same segment, or the first of the next once this one closed
            closed = any(s.msn == last[0] and s.uri is not None for s in pl.segments)
            nxt = (last[0] + 1, 0) if closed else (last[0], last[1] + 1)
            pl = await self._playlist(f"?_HLS_msn={nxt[0]}&_HLS_part={nxt[1]}")
            todo = [p for p in pl.parts if (p.msn, p.index) > last]
            if todo and (todo[0].msn, todo[0].index) not in (nxt, (nxt[0] + 1, 0)):
                self.swarm.error("parts_skipped")  # fell out of the window: a gap in the audio

    async def _play_segments(self, pl: m3u8.MediaPlaylist) -> None:
        segs = pl.complete_segments
        if self.buffer is None:
            self.buffer = PlaybackBuffer(start_s=segs[-1].duration if segs else 1.0)
        todo = segs[-SEGMENTS_BEHIND:]
        last = todo[0].msn - 1 if todo else pl.media_sequence - 1
        loop = asyncio.get_running_loop()
        while True:
            reloaded = loop.time()
            for seg in todo:
                assert seg.uri is not None
                resp = await self._get(self._resolve(seg.uri))
                if resp is not None:
                    self._got_audio(seg.duration, seg.pdt)
                last = seg.msn
            if pl.ended:
                raise Ended()
            await self._maybe_renew()
            if pl.can_block_reload:
                pl = await self._playlist(f"?_HLS_msn={last + 1}")
            else:  # RFC 8216: reload after the target duration, half of it if nothing changed
                wait = (pl.target_duration or 4.0) * (1.0 if todo else 0.5)
                await asyncio.sleep(max(0.0, reloaded + wait - loop.time()))
                pl = await self._playlist()
            todo = [s for s in pl.complete_segments if s.msn > last]

    async def _play_stream(self, pl: m3u8.MediaPlaylist) -> None:
        """One streaming GET per segment, from the newest: its body is read as it arrives and each
        complete part (moof + mdat) goes to the buffer the moment its last byte is in.

        The next segment is asked for ahead: at a random moment in what is left of the segment
        streaming (docs/loadtest.md, "The next segment is asked for ahead"), the
        player reads the playlist once on its second connection (a renewal's redirect, the end
        of the Space) and then, on that connection, sends the next segment's GET, which the
        edge holds until that segment begins. So at a segment boundary nothing is asked, and the
        next segment's first part comes the moment it is made; a crowd's requests spread over
        the segment instead of all coming at its end (a player acting on the playlist's preload
        hint asks so; docs/streaming.md). The connections then swap roles. A segment's
        date-time follows from the previous one's (its date-time plus its parts' durations)."""
        part_s = pl.part_target or 0.512
        if self.buffer is None:
            self.buffer = PlaybackBuffer(start_s=STREAM_START_PARTS * part_s - 1e-3)
        done = pl.complete_segments
        segment_s = done[-1].duration if done else (pl.target_duration or 4.0)
        newest = pl.segments[-1]
        skip = start_skip(len(newest.parts) or round(newest.duration / part_s), STREAM_START_PARTS)
        read = SegmentRead(newest.msn, newest.pdt, skip, self.timescale)
        self.last_part_at = None
        if self.media is self.conn:  # the API's connection (no edge) renews while a segment streams
            self.media = Connection(self.conn.host, self.conn.port, source=self.conn.source, tls=self.conn.tls)
        current = asyncio.ensure_future(self._segment(read, self.media))
        upcoming: asyncio.Future[Response | None] | None = None
        try:
            while True:
                while not current.done() and not read.parts:  # the next segment may be asked for once
                    await asyncio.wait({current}, timeout=part_s / 2)  # this one has begun (else: 404)
                # a random moment in what is left of this segment (a listener who joined near its end
                # asks before the end too, not with everyone else at the boundary)
                left = max(part_s, segment_s - read.duration_s)
                await asyncio.wait({current}, timeout=self.rng.uniform(0.1, 0.9) * left)
                await self._maybe_renew()  # when due (every renew_after_s): before the next GET, which carries the token
                side = self._side()
                pl = await self._playlist(conn=side)
                if pl.ended:
                    raise Ended()
                ahead = SegmentRead(read.msn + 1, None, 0, self.timescale)
                upcoming = asyncio.ensure_future(self._segment(ahead, side))
                resp = await current
                if resp is None:  # 404: out of the window, or the Space restarted: from the newest again
                    upcoming.cancel()
                    pl = await self._playlist()
                    if pl.ended or not pl.segments:
                        raise Ended()
                    newest = pl.segments[-1]
                    skip = start_skip(len(newest.parts) or round(newest.duration / part_s), STREAM_START_PARTS)
                    read = SegmentRead(newest.msn, newest.pdt, skip, self.timescale)
                    current = asyncio.ensure_future(self._segment(read, self.media))
                    continue
                if ahead.pdt is None:
                    ahead.pdt = read.end_pdt
                self.media, self.side = side, self.media  # the one that streamed reads the next playlist
                read, current, upcoming = ahead, upcoming, None
        finally:
            for task in (current, upcoming):
                if task is not None and not task.done():
                    task.cancel()  # the session ended, or the Space: the connection is closed
                elif task is not None and not task.cancelled():
                    task.exception()  # raised above if it mattered; retrieved either way

    async def _segment(self, read: SegmentRead, conn: Connection) -> Response | None:
        """Segment ``read.msn`` on ``conn``, streamed into ``read`` (and the buffer); None if the
        origin has it not."""
        try:
            resp = await self._get(self._resolve(f"{read.msn}.m4s"), conn=conn,
                                   on_body=lambda data: self._heard(read, data))
        except MalformedMp4 as e:
            raise GiveUp("bad_media") from e
        if resp is not None and not read.reader.idle:
            self.swarm.error("segment_cut_short")  # the body ended inside a box
        return resp

    def _side(self) -> Connection:
        """The second connection to the media's host (made again when the media moved)."""
        m = self.media
        if self.side is None or (self.side.host, self.side.port) != (m.host, m.port):
            if self.side is not None:
                self.side.close()
            self.side = Connection(m.host, m.port, source=self.source if is_loopback(m.host) else None, tls=m.tls)
        return self.side

    def _heard(self, read: SegmentRead, data: bytes) -> None:
        before = read.parts
        parts = read.feed(data)
        if not parts:
            return
        now = time.time()
        if self.last_part_at is not None:  # from the previous part to the first of these
            gap = now - self.last_part_at
            (self.swarm.segment_gap if before == 0 else self.swarm.part_gap).add(gap)
        self.last_part_at = now
        for h in parts:
            self._got_audio(h.duration_s, h.pdt)

    async def _icecast(self) -> None:
        sw = self.swarm
        byte_rate = sw.cfg.stream_kbps * 1000 / 8
        if self.buffer is None:
            self.buffer = PlaybackBuffer(start_s=sw.cfg.stream_start_s)

        def on_data(n: int) -> None:
            self._got_audio(n / byte_rate, None)

        path = split_url(sw.cfg.server)[2]
        while True:
            sw.requests += 1
            try:
                resp = await self.conn.stream(path, on_data, timeout_s=sw.cfg.request_timeout_s)
            except HttpError as e:
                sw.error(e.kind)
                await self._backoff(e.kind)
                continue
            now = time.time()
            if resp.status != 200:
                self.conn.close()
                sw.error(f"http_{resp.status}")
                await self._backoff(f"http_{resp.status}")
                continue
            self.failures = 0
            if self.answered is None:
                self.answered = now
                sw.join_answer(now - self.arrived)
            self._admitted(now)
            await self.conn.wait_closed()
            sw.error("reset")
            await self._backoff("reset")


def _retry_after(resp: Response) -> float:
    return header_retry_s(resp.headers.get("retry-after"))


def _challenge(resp: Response) -> dict[str, object] | None:
    """The proof-of-work challenge of a 429 challenge_required answer (docs/defense.md)."""
    try:
        answer = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(answer, dict) and answer.get("error") == "challenge_required" and isinstance(answer.get("challenge"), dict):
        return answer["challenge"]
    return None
