"""The standby's copy of a live Space hosted on another node, and the point its program
resumes from when this node takes the Space over (docs/streaming.md, "Continuing on another
node").

A ``Replica`` follows the host as an edge cache does: under ``/media/<space>/edge/`` (the
``edge.*`` routes of ``amphi.web.routes``), with the credential in ``x-amphi-edge``, one
streamed GET a segment, begun as the segment is (the origin answers with the bytes so far,
then each part as it is made), and a blocking reload of the live playlist once a segment
(``_HLS_msn=<msn>&_HLS_part=0``: it answers once that segment's first part exists) for what
the bytes do not say: its PROGRAM-DATE-TIME, its discontinuity, whether it is live. It keeps

* the recording: every live segment is written into ``recording`` (this node's own
  ``Recording``, on this node's disk), so the replay survives the host's disk. Which
  segments are live (the Space's, not hold music) the host's playlist says in the comment
  ``#AMPHI-LIVE-FROM:<msn>`` (``amphi.media.playlist.render_live``): segments from that msn
  on are recorded, none before it, none while the playlist has no such line. A copy begun
  after the Space went live also **backfills** the live segments that had left the host's
  window (``_backfill``: one request at a time, from the host's recording through its edge
  route), written oldest first before the window's, so the replay starts where the Space did;
* the newest ``window_segments + 4`` segments (hold or live, as the host's timeline keeps
  them), their parts rebuilt from their fragments, so a resumed timeline serves them;
* the open segment, part by part as the host makes it (in memory only): after a crash the
  program resumes after the parts copied of it (``resume_point(gap=True)`` closes it there),
  so what is lost is the host's last part at most, plus how late the copy is.

Lifecycle: new -> following (``run``) -> done (cancelled: the take-over; the playlist ended;
never on errors: an origin that stops answering is asked again after a short backoff until
the task is cancelled). ``resume_point`` may be read at any time. Segment writes run in a
worker thread and are finished before ``run`` returns, even when it is cancelled: once it
returns, the recording is the new program's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import httpx

from amphi.core.config import AAC_FRAME, SAMPLE_RATE, MediaConfig
from amphi.media import fmp4
from amphi.media.encoder import DELAY
from amphi.media.playlist import LIVE_FROM
from amphi.media.recorder import Recording
from amphi.media.segmenter import Part, Resume, Segment

__all__ = ["Replica", "ReplicaStats", "Resume", "resume_from"]

log = logging.getLogger(__name__)

EDGE_HEADER = "x-amphi-edge"
BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.5)  # then 0.5 s: a take-over starts 1.5 s after the host's last renewal


@dataclass
class ReplicaStats:
    segments: int = 0  # segments copied (whole)
    recorded: int = 0  # of those, written into the recording (live ones)
    bytes: int = 0  # bytes of the segments copied
    last_copy: float | None = None  # wall time of the newest copy (a segment, or a part of the open one)
    behind: int = 0  # complete segments the host listed that are not copied yet
    missed: int = 0  # segments that left the host's window before they were copied
    errors: int = 0  # failed requests (the origin down, refusing, or slow past its hold)
    parts: int = 0  # parts copied as they were made (of every segment streamed)
    open_msn: int | None = None  # the segment being copied part by part (None between segments)
    open_parts: int = 0  # its parts copied so far: a crash now loses what comes after them
    lag_s: float | None = None  # at the newest part's arrival, how long before it its audio ended (the host's
    # encoding and publishing, then the network: how far the copy is behind the host's newest part)
    backfill_left: int = 0  # live segments older than the first window still to fetch from the host's recording
    backfilled: int = 0  # of those, recorded
    backfill_missing: int = 0  # of those, the host's recording did not have (404): a hole in the replay
    backfill_s: float | None = None  # how long the backfill took, once done


@dataclass(frozen=True)
class _Listed:
    msn: int
    pdt: float
    discontinuity: bool
    complete: bool = True  # False: the open segment (its parts listed, not its URI)


@dataclass(frozen=True)
class _Playlist:
    segments: list[_Listed]  # in order; the last one may be open
    discontinuity_sequence: int
    live_from: int | None
    ended: bool

    def find(self, msn: int) -> _Listed | None:
        first = self.segments[0].msn if self.segments else msn + 1
        return self.segments[msn - first] if first <= msn < first + len(self.segments) else None

    @property
    def newest_complete(self) -> int | None:
        done = [s.msn for s in self.segments if s.complete]
        return done[-1] if done else None


def parse_live(text: str) -> _Playlist:
    """The parts of a live playlist a copy needs: its segments (msn, wall time, discontinuity;
    the open one too, listed by its PROGRAM-DATE-TIME and parts without a URI), the
    discontinuity sequence, the first live msn and whether it ended."""
    msn = sequence = 0
    live_from: int | None = None
    pdt = 0.0
    pending = ended = begun = False
    out: list[_Listed] = []
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line == "#EXT-X-DISCONTINUITY":
            pending = True
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
            begun = True
        elif line.startswith(LIVE_FROM):
            live_from = int(line[len(LIVE_FROM):])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#"):
            out.append(_Listed(msn, pdt, pending))
            msn += 1
            pending = begun = False
    if begun and not ended:  # a PROGRAM-DATE-TIME with parts and no URI yet: the open segment
        out.append(_Listed(msn, pdt, pending, complete=False))
    return _Playlist(out, sequence, live_from, ended)


def rebuild(msn: int, data: bytes, *, pdt: float, live: bool, discontinuity: bool) -> Segment:
    """A complete ``Segment`` from its bytes: its parts are its fragments."""
    parts = [Part(msn, i, data[a:b], info.base_decode_time, info.sample_count * AAC_FRAME, a)
             for i, (info, a, b) in enumerate(fmp4.split_fragments(data))]
    return Segment(msn, parts[0].first_sample, pdt, live, parts, closed=True, size=len(data),
                   discontinuity=discontinuity)


def resume_from(segments: Iterable[Segment], *, gap: bool, discontinuity_sequence: int = 0,
                unrecorded: Iterable[Segment] = ()) -> Resume:
    """The resume point after ``segments`` (complete, contiguous, oldest first; at least one):
    the counters after the newest one, read from its last fragment. ``unrecorded``: those of
    them the recording does not have yet (the resumed program's recorder writes them)."""
    kept = tuple(segments)
    newest = kept[-1]
    last = fmp4.read_fragments(newest.parts[-1].data)[-1]
    return Resume(next_msn=newest.msn + 1, next_sample=last.end_decode_time, next_sequence=last.sequence + 1,
                  segments=kept, discontinuity_sequence=discontinuity_sequence, gap=gap,
                  end_wall=newest.pdt + newest.duration, unrecorded=tuple(unrecorded))


class _Parts:
    """Cuts a segment's bytes, as they arrive, into its fragments (``moof`` + ``mdat``): each
    is a part once its ``mdat`` is whole."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.done = 0  # end of the last whole part

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """The parts completed by ``chunk``: (offset in the segment, bytes)."""
        self.buf += chunk
        out: list[tuple[int, bytes]] = []
        pos = self.done
        while pos + 8 <= len(self.buf):
            size = int.from_bytes(self.buf[pos:pos + 4], "big")
            kind = bytes(self.buf[pos + 4:pos + 8])
            if size < 8:
                raise fmp4.MalformedMp4(f"box {kind!r} at {pos} has bad size {size}")
            if pos == self.done and kind != b"moof":
                raise fmp4.MalformedMp4(f"a part begins with a moof, not {kind!r} (at {pos})")
            if pos + size > len(self.buf):
                break
            pos += size
            if kind == b"mdat":
                out.append((self.done, bytes(self.buf[self.done:pos])))
                self.done = pos
        return out

    @property
    def whole(self) -> bool:
        """Every byte received belongs to a whole part."""
        return self.done == len(self.buf)


class Replica:
    def __init__(self, space_id: str, cfg: MediaConfig, recording: Recording, origin: str, credential: str, *,
                 client: httpx.AsyncClient | None = None) -> None:
        """``origin``: the hosting node's base URL; ``credential``: this node's edge
        credential (``Signer.edge_credential``); ``client``: shared, else one of its own."""
        self.space_id = space_id
        self._cfg = cfg
        self.recording = recording
        self._base = f"{origin.rstrip('/')}/media/{space_id}/edge"
        self._headers = {EDGE_HEADER: credential}
        self._client = client
        self._keep = cfg.window_segments + 4
        self._kept: deque[Segment] = deque()
        self._dropped_discontinuities = 0  # of segments no longer kept (or never copied)
        self._init: bytes | None = None
        self._newest: int | None = None  # msn of the newest segment copied (or given up)
        self._playlist: _Playlist | None = None  # the newest read
        self._open: Segment | None = None  # the segment being copied, its parts so far (not closed)
        self._epoch: float | None = None  # wall time = epoch + (decode time - DELAY) / rate, this program's
        self._writing: asyncio.Future[None] | None = None
        self.ended = False  # the host ended the Space: the copy is complete
        self._window_epoch: float | None = None  # the epoch of the first segment copied (its program's)
        self._epoch_known = asyncio.Event()  # set once it is
        self._backfill: asyncio.Task[None] | None = None
        self._deferred: deque[Segment] = deque()  # live segments copied, waiting for the backfill to be written
        self._backfilling = False  # live copies are deferred, not written (the recording is in msn order)
        self.stats = ReplicaStats()
        self._copied = asyncio.Event()  # set and replaced at each copy

    # -- the take-over ---------------------------------------------------------------------

    def resume_point(self, *, gap: bool) -> Resume | None:
        """Where the program continues, or None before init and one part are held.

        After a crash (``gap=True``) the open segment's parts copied so far are its end: it
        is closed there (shorter; its bytes are exactly those the host served first under
        its URI, so an edge that kept the host's copy holds the same bytes, or more) and is
        the newest of the window; the program goes on after it, and its recorder writes it
        first (``Resume.unrecorded``; only if live). A planned hand-over (``gap=False``)
        resumes after the last complete segment (the host closed it as it stopped)."""
        if self._init is None:
            return None
        kept = list(self._kept)
        partial = self._open if gap and self._open is not None and self._open.parts else None
        if partial is not None:
            kept.append(rebuild(partial.msn, partial.data, pdt=partial.pdt, live=partial.live,
                                discontinuity=partial.discontinuity))
            dropped = self._dropped_discontinuities + sum(s.discontinuity for s in kept[:-self._keep])
            kept = kept[-self._keep:]
        else:
            dropped = self._dropped_discontinuities
        if not kept:
            return None
        unrecorded = tuple(self._deferred) + ((kept[-1],) if partial is not None and partial.live else ())
        return resume_from(kept, gap=gap, discontinuity_sequence=dropped, unrecorded=unrecorded)

    async def copied(self, msn: int, timeout: float) -> bool:
        """Waits until segment ``msn`` (or a later one) is copied whole, at most ``timeout``
        s. A planned hand-over waits for the last segment the host made (``Pipeline.hand_off``
        returns its msn) before it takes ``resume_point(gap=False)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._kept or self._kept[-1].msn < msn:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._copied.wait()
            except TimeoutError:
                pass
        return True

    # -- following -------------------------------------------------------------------------

    async def run(self) -> None:
        client = self._client or httpx.AsyncClient()
        failures = 0
        try:
            while not self.ended:
                try:
                    await self._step(client)
                    failures = 0
                except (httpx.HTTPError, fmp4.MalformedMp4, ValueError) as exc:
                    self.stats.errors += 1
                    if failures == 0:
                        log.warning("replica %s: %s (retrying)", self.space_id, exc)
                    await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                    failures += 1
            if self._backfill is not None:  # the Space ended: the host's recording is all there
                await self._backfill
        finally:
            if self._backfill is not None:
                self._backfill.cancel()
                await asyncio.gather(self._backfill, return_exceptions=True)
            if self._writing is not None:  # a file is whole or absent; nothing writes after we return
                await asyncio.wait([self._writing])
            if self._client is None:
                await client.aclose()
        log.info("replica %s: the host ended the Space; %d segments copied", self.space_id, self.stats.segments)

    async def _step(self, client: httpx.AsyncClient) -> None:
        """The next segment: what the playlist says of it (reloaded if the last one read does
        not list it), then its bytes, streamed part by part until it is complete."""
        want = None if self._newest is None else self._newest + 1
        playlist = self._playlist
        if playlist is None or want is None or playlist.find(want) is None:
            playlist = await self._reload(client, want)
        if not playlist.segments:
            return
        first = playlist.segments[0].msn
        if want is None:  # the first playlist: what it no longer lists is gone
            self._dropped_discontinuities = playlist.discontinuity_sequence
            want = first
            live_from = playlist.live_from
            if live_from is not None and live_from < first and not self.recording.started and self._backfill is None:
                self._start_backfill(client, live_from, first, playlist)
        elif want < first:  # left the window unseen
            self._lose(want, first)
            want = first
        item = playlist.find(want)
        newest = playlist.newest_complete
        self.stats.behind = 0 if newest is None else max(0, newest - want + 1)
        if item is None:
            self.ended = playlist.ended
            self._playlist = None  # not listed yet: ask again
            return
        await self._stream(client, item, playlist.live_from)

    async def _reload(self, client: httpx.AsyncClient, msn: int | None) -> _Playlist:
        """The live playlist; with ``msn``, once that segment's first part exists."""
        params = {} if msn is None else {"_HLS_msn": str(msn), "_HLS_part": "0"}
        answer = await client.get(f"{self._base}/live.m3u8", params=params, headers=self._headers,
                                  timeout=self._timeout)
        answer.raise_for_status()
        playlist = self._playlist = parse_live(answer.text)
        if self._init is None:
            init = await client.get(f"{self._base}/init.mp4", headers=self._headers, timeout=10)
            init.raise_for_status()
            self._init = init.content
        return playlist

    @property
    def _timeout(self) -> float:
        return self._cfg.hold_s + self._cfg.segment_s + 5

    async def _stream(self, client: httpx.AsyncClient, item: _Listed, live_from: int | None) -> None:
        """One GET of segment ``item.msn``, its parts kept as they arrive; once it is whole, it
        is copied. A segment asked again after a failure keeps the parts it had."""
        live = live_from is not None and item.msn >= live_from
        seg = self._open
        if seg is None or seg.msn != item.msn:
            seg = self._open = Segment(item.msn, 0, item.pdt, live, discontinuity=item.discontinuity)
        self.stats.open_msn, self.stats.open_parts = seg.msn, len(seg.parts)
        cutter = _Parts()
        async with client.stream("GET", f"{self._base}/{item.msn}.m4s", headers=self._headers,
                                 timeout=self._timeout) as answer:
            if answer.status_code == 404:
                self._open = None
                self.stats.open_msn, self.stats.open_parts = None, 0
                self._lose(item.msn, item.msn + 1, discontinuity=item.discontinuity)
                return
            answer.raise_for_status()
            index = 0
            async for chunk in answer.aiter_raw():
                for offset, data in cutter.feed(chunk):
                    if index >= len(seg.parts):
                        self._part(seg, index, offset, data)
                    index += 1
        if not cutter.whole or not seg.parts:
            raise fmp4.MalformedMp4(f"segment {item.msn} ended inside a part")
        self._open = None
        self.stats.open_msn, self.stats.open_parts = None, 0
        await self._copy(item, bytes(cutter.buf), live)

    def _part(self, seg: Segment, index: int, offset: int, data: bytes) -> None:
        info = fmp4.read_fragments(data)[0]
        if not seg.parts:
            if self._epoch is None or seg.discontinuity:  # the wall times of this program
                self._epoch = seg.pdt - (info.base_decode_time - DELAY) / SAMPLE_RATE
                self._know_epoch()
            seg.first_sample = info.base_decode_time
            seg.pdt = self._epoch + (info.base_decode_time - DELAY) / SAMPLE_RATE
        part = Part(seg.msn, index, data, info.base_decode_time, info.sample_count * AAC_FRAME, offset)
        seg.parts.append(part)
        seg.size += len(data)
        now = time.time()
        self.stats.parts += 1
        self.stats.open_parts = len(seg.parts)
        self.stats.lag_s = round(now - (self._epoch + (info.end_decode_time - DELAY) / SAMPLE_RATE), 3)
        self.stats.last_copy = now

    def _lose(self, first: int, end: int, *, discontinuity: bool = False) -> None:
        """Segments ``first``..``end - 1`` will never be copied: the window kept must be
        contiguous (a playlist numbers its segments by position), so it starts after them."""
        self.stats.missed += end - first
        log.warning("replica %s: segments %d-%d left the host's window before they were copied",
                    self.space_id, first, end - 1)
        self._dropped_discontinuities += sum(s.discontinuity for s in self._kept) + discontinuity
        self._kept.clear()
        self._newest = end - 1

    async def _copy(self, item: _Listed, data: bytes, live: bool) -> None:
        first = fmp4.read_fragments(data)[0].base_decode_time
        if self._epoch is None or item.discontinuity:  # the wall times of this program
            self._epoch = item.pdt - (first - DELAY) / SAMPLE_RATE
            self._know_epoch()
        seg = rebuild(item.msn, data, pdt=self._epoch + (first - DELAY) / SAMPLE_RATE, live=live,
                      discontinuity=item.discontinuity)
        if live and (self._backfilling or self._deferred):
            self._deferred.append(seg)  # the backfill's task writes it after the older ones
        elif live:
            await self._write(seg)
            self.stats.recorded += 1
        self._kept.append(seg)
        while len(self._kept) > self._keep:
            self._dropped_discontinuities += self._kept.popleft().discontinuity
        self._newest = item.msn
        self.stats.segments += 1
        self.stats.bytes += len(data)
        self.stats.last_copy = time.time()
        self._copied.set()
        self._copied = asyncio.Event()

    def _know_epoch(self) -> None:
        if self._window_epoch is None:
            self._window_epoch = self._epoch
            self._epoch_known.set()

    # -- the backfill ----------------------------------------------------------------------

    def _start_backfill(self, client: httpx.AsyncClient, live_from: int, first: int, playlist: _Playlist) -> None:
        """The copy begins after the Space went live: segments ``live_from``..``first - 1``
        are no longer in the host's window, only in its recording (the edge route serves them
        from there). They are fetched by a task of their own, so following the window never
        waits for them; live copies are held back (``_deferred``) until they are written."""
        if playlist.discontinuity_sequence or playlist.segments[0].discontinuity:
            log.warning("replica %s: the program restarted before the host's window: the wall times of the "
                        "backfilled segments %d-%d are reckoned as if it had not", self.space_id, live_from, first - 1)
        self._backfilling = True
        self.stats.backfill_left = first - live_from
        self._backfill = asyncio.create_task(self._backfill_run(client, live_from, first),
                                             name=f"replica-backfill:{self.space_id}")

    async def _backfill_run(self, client: httpx.AsyncClient, live_from: int, first: int) -> None:
        """One GET at a time, oldest first, each written before the next is asked for; then
        the live segments copied meanwhile. Their wall times: the first copied segment's
        program epoch and their own decode times (the host's recording has their wall times but
        its edge route serves bytes only: exact if the program ran unbroken from ``live_from``)."""
        started = time.monotonic()
        await self._epoch_known.wait()
        epoch = self._window_epoch
        assert epoch is not None
        failures = 0
        msn = live_from
        while msn < first:
            try:
                answer = await client.get(f"{self._base}/{msn}.m4s", headers=self._headers, timeout=self._timeout)
                if answer.status_code == 404:
                    self.stats.backfill_missing += 1
                    log.warning("replica %s: live segment %d is not in the host's recording", self.space_id, msn)
                else:
                    answer.raise_for_status()
                    data = answer.content
                    decode = fmp4.read_fragments(data)[0].base_decode_time
                    seg = rebuild(msn, data, pdt=epoch + (decode - DELAY) / SAMPLE_RATE, live=True,
                                  discontinuity=False)
                    await self._write(seg, epoch=epoch)
                    self.stats.backfilled += 1
                    self.stats.recorded += 1
                    self.stats.bytes += len(data)
                failures = 0
                msn += 1
                self.stats.backfill_left = first - msn
            except (httpx.HTTPError, fmp4.MalformedMp4, ValueError) as exc:
                self.stats.errors += 1
                if failures == 0:
                    log.warning("replica %s: backfill of segment %d: %s (retrying)", self.space_id, msn, exc)
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
        while self._deferred:  # taken off first: a write cancelled midway still completes (``run`` waits)
            await self._write(self._deferred.popleft())
            self.stats.recorded += 1
        self._backfilling = False
        self.stats.backfill_s = round(time.monotonic() - started, 3)
        log.info("replica %s: backfilled %d live segments (%d-%d) in %.2f s", self.space_id,
                 self.stats.backfilled, live_from, first - 1, self.stats.backfill_s)

    async def _write(self, seg: Segment, *, epoch: float | None = None) -> None:
        """Into the recording, in a worker thread; finished even if we are cancelled.
        ``epoch``: the recording's, if this write begins it (else this program's)."""
        rec, init = self.recording, self._init
        epoch = epoch if epoch is not None else self._epoch
        assert init is not None and epoch is not None

        def write() -> None:
            if not rec.started:
                rec.begin(epoch=epoch, delay=DELAY, asc=fmp4.read_audio_specific_config(init))
            rec.write_segment(seg)

        self._writing = asyncio.ensure_future(asyncio.to_thread(write))
        try:
            await asyncio.shield(self._writing)
        finally:
            if self._writing.done():
                self._writing = None
