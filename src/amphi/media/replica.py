"""The standby's copy of a live Space hosted on another node, and the point its program
resumes from when this node takes the Space over (docs/streaming.md, "Continuing on another
node").

A ``Replica`` follows the host as an edge cache does: blocking reloads of the live playlist
under ``/media/<space>/edge/`` (the ``edge.*`` routes of ``amphi.web.routes``) with the
credential in ``x-amphi-edge``, and one GET of each segment once it is complete. It keeps

* the recording: every live segment is written into ``recording`` (this node's own
  ``Recording``, on this node's disk), so the replay survives the host's disk. Which
  segments are live (the Space's, not hold music) the host's playlist says in the comment
  ``#AMPHI-LIVE-FROM:<msn>`` (``amphi.media.playlist.render_live``): segments from that msn
  on are recorded, none before it, none while the playlist has no such line;
* the newest ``window_segments + 4`` segments (hold or live, as the host's timeline keeps
  them), their parts rebuilt from their fragments, so a resumed timeline serves them.

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
    segments: int = 0  # segments copied (fetched whole)
    recorded: int = 0  # of those, written into the recording (live ones)
    bytes: int = 0  # bytes of the segments copied
    last_copy: float | None = None  # wall time of the newest copy
    behind: int = 0  # complete segments the host listed that are not copied yet
    missed: int = 0  # segments that left the host's window before they were copied
    errors: int = 0  # failed requests (the origin down, refusing, or slow past its hold)


@dataclass(frozen=True)
class _Listed:
    msn: int
    pdt: float
    discontinuity: bool


@dataclass(frozen=True)
class _Playlist:
    segments: list[_Listed]  # complete segments, in order
    discontinuity_sequence: int
    live_from: int | None
    ended: bool


def parse_live(text: str) -> _Playlist:
    """The parts of a live playlist a copy needs: its complete segments (msn, wall time,
    discontinuity), the discontinuity sequence, the first live msn and whether it ended."""
    msn = sequence = 0
    live_from: int | None = None
    pdt = 0.0
    pending = ended = False
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
        elif line.startswith(LIVE_FROM):
            live_from = int(line[len(LIVE_FROM):])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#"):
            out.append(_Listed(msn, pdt, pending))
            msn += 1
            pending = False
    return _Playlist(out, sequence, live_from, ended)


def rebuild(msn: int, data: bytes, *, pdt: float, live: bool, discontinuity: bool) -> Segment:
    """A complete ``Segment`` from its bytes: its parts are its fragments."""
    parts = [Part(msn, i, data[a:b], info.base_decode_time, info.sample_count * AAC_FRAME, a)
             for i, (info, a, b) in enumerate(fmp4.split_fragments(data))]
    return Segment(msn, parts[0].first_sample, pdt, live, parts, closed=True, size=len(data),
                   discontinuity=discontinuity)


def resume_from(segments: Iterable[Segment], *, gap: bool, discontinuity_sequence: int = 0) -> Resume:
    """The resume point after ``segments`` (complete, contiguous, oldest first; at least one):
    the counters after the newest one, read from its last fragment."""
    kept = tuple(segments)
    newest = kept[-1]
    last = fmp4.read_fragments(newest.parts[-1].data)[-1]
    return Resume(next_msn=newest.msn + 1, next_sample=last.end_decode_time, next_sequence=last.sequence + 1,
                  segments=kept, discontinuity_sequence=discontinuity_sequence, gap=gap,
                  end_wall=newest.pdt + newest.duration)


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
        self._epoch: float | None = None  # wall time = epoch + (decode time - DELAY) / rate, this program's
        self._writing: asyncio.Future[None] | None = None
        self.ended = False  # the host ended the Space: the copy is complete
        self.stats = ReplicaStats()
        self._copied = asyncio.Event()  # set and replaced at each copy

    # -- the take-over ---------------------------------------------------------------------

    def resume_point(self, *, gap: bool) -> Resume | None:
        """Where the program continues, or None before init and one segment are held."""
        if self._init is None or not self._kept:
            return None
        return resume_from(self._kept, gap=gap, discontinuity_sequence=self._dropped_discontinuities)

    async def copied(self, msn: int, timeout: float) -> bool:
        """Waits until segment ``msn`` (or a later one) is copied, at most ``timeout`` s. A
        planned hand-over waits for the last segment the host made (``Pipeline.hand_off``
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
        finally:
            if self._writing is not None:  # a file is whole or absent; nothing writes after we return
                await asyncio.wait([self._writing])
            if self._client is None:
                await client.aclose()
        log.info("replica %s: the host ended the Space; %d segments copied", self.space_id, self.stats.segments)

    async def _step(self, client: httpx.AsyncClient) -> None:
        """One blocking reload, then a copy of each complete segment it lists that is new."""
        params = {} if self._newest is None else {"_HLS_msn": str(self._newest + 1)}
        timeout = self._cfg.hold_s + self._cfg.segment_s + 5
        answer = await client.get(f"{self._base}/live.m3u8", params=params, headers=self._headers, timeout=timeout)
        answer.raise_for_status()
        playlist = parse_live(answer.text)
        if self._init is None:
            init = await client.get(f"{self._base}/init.mp4", headers=self._headers, timeout=10)
            init.raise_for_status()
            self._init = init.content
        listed = playlist.segments
        if self._newest is None:  # the first playlist: what it no longer lists is gone
            self._dropped_discontinuities = playlist.discontinuity_sequence
        for item in listed:
            if self._newest is not None and item.msn <= self._newest:
                continue
            if self._newest is not None and item.msn > self._newest + 1:  # left the window unseen
                self._lose(self._newest + 1, item.msn)
            answer = await client.get(f"{self._base}/{item.msn}.m4s", headers=self._headers, timeout=timeout)
            if answer.status_code == 404:
                self._lose(item.msn, item.msn + 1, discontinuity=item.discontinuity)
                continue
            answer.raise_for_status()
            await self._copy(item, answer.content, playlist.live_from)
            self.stats.behind = listed[-1].msn - item.msn
        self.stats.behind = 0 if not listed or self._newest is None else max(0, listed[-1].msn - self._newest)
        self.ended = playlist.ended

    def _lose(self, first: int, end: int, *, discontinuity: bool = False) -> None:
        """Segments ``first``..``end - 1`` will never be copied: the window kept must be
        contiguous (a playlist numbers its segments by position), so it starts after them."""
        self.stats.missed += end - first
        log.warning("replica %s: segments %d-%d left the host's window before they were copied",
                    self.space_id, first, end - 1)
        self._dropped_discontinuities += sum(s.discontinuity for s in self._kept) + discontinuity
        self._kept.clear()
        self._newest = end - 1

    async def _copy(self, item: _Listed, data: bytes, live_from: int | None) -> None:
        first = fmp4.read_fragments(data)[0].base_decode_time
        if self._epoch is None or item.discontinuity:  # the wall times of this program
            self._epoch = item.pdt - (first - DELAY) / SAMPLE_RATE
        live = live_from is not None and item.msn >= live_from
        seg = rebuild(item.msn, data, pdt=self._epoch + (first - DELAY) / SAMPLE_RATE, live=live,
                      discontinuity=item.discontinuity)
        if live:
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

    async def _write(self, seg: Segment) -> None:
        """Into the recording, in a worker thread; finished even if we are cancelled."""
        rec, init = self.recording, self._init
        assert init is not None and self._epoch is not None
        epoch = self._epoch

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
