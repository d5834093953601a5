"""The recording is the live segments, on disk as they are produced.

Files of one Space, under ``<data_dir>/spaces/<id>/``:
    rec.json        program epoch and encoder delay, written when the program starts; and
                    the program's restarts ("breaks": the msn of each segment that begins with
                    a discontinuity and the epoch of the program from it on), rewritten when
                    one is recorded, before that segment's file
    init.mp4        the init segment
    <msn>.m4s       one file per live segment: written to a temporary name, fsynced,
                    renamed into place, directory fsynced. A file that exists is complete.
    vod.m3u8        the replay playlist, written when the Space ends (atomically; writing
                    it again gives the same bytes)

After a crash, ``Recording.open`` rebuilds the segment list from the segment files
themselves (their fragment headers hold decode times and sample counts).

``Recording`` does blocking file I/O. On the live path it is driven by a ``Recorder``: the
pipeline hands it each live segment without waiting (a bounded queue), and its consumer task
writes them in a worker thread, so a slow disk (a 300 ms fsync) never delays a part.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from amphi.core.config import SAMPLE_RATE, MediaConfig
from amphi.core.files import write_atomic
from amphi.media import fmp4
from amphi.media.playlist import SegmentEntry, render_vod
from amphi.media.segmenter import Segment

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# Live segments waiting for the disk, at most: 32 segments are ~2 min of audio and ~1 MB at
# 64 kb/s. Beyond it the disk is not slow but stuck; segments are then dropped from the
# recording (still served live) and counted. Listeners fetch a segment that left the live
# timeline (its last 12) from disk, so a backlog past 12 makes such a segment 404 until written.
RECORDER_QUEUE_SEGMENTS = 32

Writer: TypeAlias = Callable[[Path, bytes], None]


class Recording:
    def __init__(self, directory: Path, cfg: MediaConfig, *, write: Writer = write_atomic) -> None:
        """``write(path, data)`` stores a file durably (``write_atomic``; tests inject a slow disk)."""
        self.dir = directory
        self._cfg = cfg
        self._write = write
        self._seg_dir = directory
        self.entries: list[SegmentEntry] = []
        self.epoch: float | None = None
        self.delay = 0
        self.asc = b""  # AudioSpecificConfig, to write the download's init
        self.bytes_written = 0
        self.breaks: list[tuple[int, float]] = []  # (msn, epoch): the program restarted there

    # -- writing ---------------------------------------------------------------------------

    def begin(self, *, epoch: float, delay: int, asc: bytes) -> None:
        self._seg_dir.mkdir(parents=True, exist_ok=True)
        self.epoch, self.delay, self.asc = epoch, delay, asc
        self._write_meta()
        self._write(self.dir / "init.mp4", fmp4.init_segment(asc, bitrate=self._cfg.bitrate))

    def _write_meta(self) -> None:
        meta = {"epoch": self.epoch, "delay": self.delay, "asc": self.asc.hex(),
                "breaks": [[msn, epoch] for msn, epoch in self.breaks]}
        self._write(self.dir / "rec.json", json.dumps(meta).encode())

    def write_segment(self, seg: Segment) -> None:
        """A segment that begins with a discontinuity is written in the metadata first (with
        the new program's epoch, which its own decode time and wall time give), so a restart
        reads back both the flag and the wall times after the break."""
        data = seg.data
        if seg.discontinuity:
            self.breaks.append((seg.msn, seg.pdt - (seg.first_sample - self.delay) / SAMPLE_RATE))
            self._write_meta()
        self._write(self._seg_dir / seg.uri, data)
        self.bytes_written += len(data)
        self.entries.append(SegmentEntry(seg.msn, seg.uri, seg.duration, seg.pdt, discontinuity=seg.discontinuity))

    def finalize(self) -> None:
        """Writes the replay playlist. Idempotent."""
        self._write(self.dir / "vod.m3u8", self.vod_playlist().encode())

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, cfg: MediaConfig, *, write: Writer = write_atomic) -> Recording:
        """Loads what is on disk: every complete segment, in order. Stray temporaries of a
        crash are removed. Blocking: reads every segment's headers."""
        rec = cls(directory, cfg, write=write)
        meta = directory / "rec.json"
        if not meta.exists():
            return rec
        info = json.loads(meta.read_text())
        rec.epoch, rec.delay, rec.asc = info["epoch"], info["delay"], bytes.fromhex(info["asc"])
        rec.breaks = [(int(msn), float(epoch)) for msn, epoch in info.get("breaks", [])]
        breaks = dict(rec.breaks)
        if not rec._seg_dir.exists():
            return rec
        for stray in rec._seg_dir.glob("*.tmp"):
            stray.unlink()
        files = sorted(rec._seg_dir.glob("*.m4s"), key=lambda p: int(p.stem))
        for path in files:
            data = path.read_bytes()
            try:
                frags = fmp4.read_fragments(data)
            except fmp4.MalformedMp4:
                break  # cannot happen with atomic renames; stop at the first damaged file
            if not frags:
                break
            msn = int(path.stem)
            first = frags[0].base_decode_time
            samples = frags[-1].end_decode_time - first
            epoch = max(((m, e) for m, e in rec.breaks if m <= msn), default=(0, rec.epoch))[1]
            pdt = epoch + (first - rec.delay) / SAMPLE_RATE
            rec.entries.append(SegmentEntry(msn, path.name, samples / SAMPLE_RATE, pdt, discontinuity=msn in breaks))
            rec.bytes_written += len(data)
        return rec

    @property
    def started(self) -> bool:
        return self.epoch is not None

    @property
    def duration(self) -> float:
        return sum(e.duration for e in self.entries)

    @property
    def finalized(self) -> bool:
        return (self.dir / "vod.m3u8").exists()

    def vod_playlist(self) -> str:
        return render_vod(self._cfg, self.entries)

    def init_bytes(self) -> bytes:
        return (self.dir / "init.mp4").read_bytes()

    def segment_path(self, msn: int) -> Path | None:
        path = self._seg_dir / f"{msn}.m4s"
        return path if path.exists() else None

    def download_init(self) -> bytes:
        """The init segment with the recording's total duration written in."""
        samples = round(self.duration * SAMPLE_RATE)
        return fmp4.init_segment(self.asc, bitrate=self._cfg.bitrate, duration_samples=samples)

    def download_size(self, init: bytes) -> int:
        return len(init) + sum((self._seg_dir / e.uri).stat().st_size for e in self.entries)

    def iter_download(self, init: bytes) -> Iterator[bytes]:
        """A single .m4a: the init then every segment, streamed in chunks."""
        yield init
        for e in self.entries:
            with open(self._seg_dir / e.uri, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk



@dataclass
class RecorderStats:
    queued: int = 0  # live segments waiting for the disk now
    peak: int = 0  # the most that ever waited
    written: int = 0  # segments on disk
    dropped: int = 0  # live segments left out of the recording: queue full, or the writer died
    write_max_s: float = 0.0  # slowest write of one segment (fsyncs included)


class Recorder:
    """Writes a live recording off the publication path: ``put`` never waits; ``run`` (a
    task) writes what was put, in order, in a worker thread; ``close`` waits until every
    segment put is on disk, then writes the replay playlist.

    The queue holds at most ``bound`` segments. When it is full the segment being put is
    dropped (it is still served live), counted in ``stats.dropped`` and logged once per
    run of drops: the recording keeps a gap rather than memory growing without bound.

    Lifecycle: new -> running -> closed (with the replay playlist; or, handed over, without
    it) or abandoned (what is queued is dropped, no replay playlist: another node carries the
    Space on). ``put`` after any of them drops.
    """

    def __init__(self, recording: Recording, *, bound: int = RECORDER_QUEUE_SEGMENTS,
                 stats: RecorderStats | None = None) -> None:
        self.recording = recording
        self.stats = stats if stats is not None else RecorderStats()
        self._bound = bound
        self._queue: deque[tuple[Callable[[], None], bool]] = deque()  # (blocking write, is a segment)
        self._wake = asyncio.Event()
        self._began = recording.started
        self._running = False
        self._closing = False
        self._done = asyncio.Event()  # run() returned or died
        self._closed = False
        self._replay = True  # close() writes the replay playlist (not after a hand-over)
        self._abandoned = False
        self._dropping = False  # in a run of drops (logged once)

    def begin(self, *, epoch: float, delay: int, asc: bytes) -> None:
        """Writes the recording's metadata and init first. Once; never dropped."""
        if self._began or self._closing:
            return
        self._began = True
        self._queue.append((lambda: self.recording.begin(epoch=epoch, delay=delay, asc=asc), False))
        self._wake.set()

    def put(self, segment: Segment) -> bool:
        """Queues a live segment for the disk; False if it was dropped. Never waits."""
        if self._closing or self._done.is_set():
            self._drop(segment, "the recorder is closed" if self._closing else "the recorder has stopped")
            return False
        if self.stats.queued >= self._bound:
            self._drop(segment, f"{self.stats.queued} segments are waiting for the disk")
            return False
        self._dropping = False
        self._queue.append((lambda: self._write(segment), True))
        self.stats.queued += 1
        self.stats.peak = max(self.stats.peak, self.stats.queued)
        self._wake.set()
        return True

    def _drop(self, segment: Segment, why: str) -> None:
        self.stats.dropped += 1
        if not self._dropping:
            self._dropping = True
            log.error("recording %s: segment %d left out of the recording: %s", self.recording.dir.name,
                      segment.msn, why)

    def _write(self, segment: Segment) -> None:
        """In a worker thread."""
        t = time.perf_counter()
        self.recording.write_segment(segment)
        self.stats.write_max_s = max(self.stats.write_max_s, time.perf_counter() - t)

    async def run(self) -> None:
        """The consumer: writes until closed and drained, then writes the replay playlist.
        A write that raises ends it (the supervisor logs it); later segments are dropped."""
        if self._running:
            raise RuntimeError("recorder already running")
        self._running = True
        try:
            while True:
                while not self._queue or self._abandoned:
                    if self._abandoned:
                        return
                    if self._closing:
                        if self._replay:
                            await asyncio.to_thread(self.recording.finalize)
                        self._closed = True
                        return
                    self._wake.clear()
                    await self._wake.wait()
                write, is_segment = self._queue[0]
                await asyncio.to_thread(write)
                self._queue.popleft()
                if is_segment:
                    self.stats.queued -= 1
                    self.stats.written += 1
        finally:
            self._done.set()

    async def close(self, *, replay: bool = True) -> None:
        """Waits until every segment put is on disk and the replay playlist is written. If
        ``run`` was never started, runs it here; if it died, writes the playlist of what
        reached the disk. Idempotent. ``replay=False`` (a planned hand-over: another node
        goes on recording the Space) writes every segment put but no replay playlist."""
        if not self._closing:
            self._replay = replay
        self._closing = True
        self._wake.set()
        if not self._running:
            await self.run()
        await self._done.wait()
        if not self._closed:
            lost = self.stats.queued
            self._queue.clear()
            self.stats.dropped += lost
            self.stats.queued = 0
            if self._replay:
                await asyncio.to_thread(self.recording.finalize)
            self._closed = True
            log.error("recording %s closed after its writer died: %d segments kept, %d lost",
                      self.recording.dir.name, len(self.recording.entries), lost)

    async def abandon(self) -> None:
        """Stops writing without finishing the replay (no vod.m3u8): this node lost the Space
        to another, which goes on recording it. A write in progress completes (a segment file
        is whole or absent); what is still queued is left out, counted in ``dropped``."""
        self._closing = True
        self._abandoned = True
        self._wake.set()
        if self._running:
            await self._done.wait()
        self._done.set()
        lost = sum(1 for _, is_segment in self._queue if is_segment)
        self._queue.clear()
        self.stats.dropped += lost
        self.stats.queued = 0
        if lost:
            log.warning("recording %s abandoned: %d queued segments left to the node that carries on",
                        self.recording.dir.name, lost)

    @property
    def closed(self) -> bool:
        return self._closed
