"""The recording is the live segments, on disk as they are produced.

Files of one Space, under ``<data_dir>/spaces/<id>/``:
    rec.json        program epoch and encoder delay, written when the program starts
    init.mp4        the init segment
    <msn>.m4s       one file per live segment: written to a temporary name, fsynced,
                    renamed into place, directory fsynced. A file that exists is complete.
    vod.m3u8        the replay playlist, written when the Space ends (atomically; writing
                    it again gives the same bytes)

After a crash, ``Recording.open`` rebuilds the segment list from the segment files
themselves (their fragment headers hold decode times and sample counts).
Blocking file I/O: the pipeline calls these methods in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from amphi.core.config import SAMPLE_RATE, MediaConfig
from amphi.core.files import write_atomic
from amphi.media import fmp4
from amphi.media.playlist import SegmentEntry, render_vod
from amphi.media.segmenter import Segment

CHUNK = 256 * 1024


class Recording:
    def __init__(self, directory: Path, cfg: MediaConfig) -> None:
        self.dir = directory
        self._cfg = cfg
        self._seg_dir = directory
        self.entries: list[SegmentEntry] = []
        self.epoch: float | None = None
        self.delay = 0
        self.asc = b""  # AudioSpecificConfig, to write the download's init
        self.bytes_written = 0

    # -- writing ---------------------------------------------------------------------------

    def begin(self, *, epoch: float, delay: int, asc: bytes) -> None:
        self._seg_dir.mkdir(parents=True, exist_ok=True)
        self.epoch, self.delay, self.asc = epoch, delay, asc
        meta = {"epoch": epoch, "delay": delay, "asc": asc.hex()}
        write_atomic(self.dir / "rec.json", json.dumps(meta).encode())
        write_atomic(self.dir / "init.mp4", fmp4.init_segment(asc, bitrate=self._cfg.bitrate))

    def write_segment(self, seg: Segment) -> None:
        data = seg.data
        write_atomic(self._seg_dir / seg.uri, data)
        self.bytes_written += len(data)
        self.entries.append(SegmentEntry(seg.msn, seg.uri, seg.duration, seg.pdt))

    def finalize(self) -> None:
        """Writes the replay playlist. Idempotent."""
        write_atomic(self.dir / "vod.m3u8", self.vod_playlist().encode())

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, cfg: MediaConfig) -> Recording:
        """Loads what is on disk: every complete segment, in order. Stray temporaries of a
        crash are removed."""
        rec = cls(directory, cfg)
        meta = directory / "rec.json"
        if not meta.exists():
            return rec
        info = json.loads(meta.read_text())
        rec.epoch, rec.delay, rec.asc = info["epoch"], info["delay"], bytes.fromhex(info["asc"])
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
            first = frags[0].base_decode_time
            samples = frags[-1].end_decode_time - first
            pdt = rec.epoch + (first - rec.delay) / SAMPLE_RATE
            rec.entries.append(SegmentEntry(int(path.stem), path.name, samples / SAMPLE_RATE, pdt))
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

