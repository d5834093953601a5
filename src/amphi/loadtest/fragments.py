"""A streamed segment, read as its bytes arrive: each complete ``moof`` + ``mdat`` is one part
of audio. Pure: bytes in, parts out; no I/O, no clock.

``FragmentReader`` walks the boxes of a fragmented-MP4 byte stream fed in arbitrary pieces
(however TCP and chunked encoding cut it). It keeps only a ``moof`` until it is whole (about
100 bytes) and counts its way through the ``mdat`` payload without keeping it, so a listener
holds a few hundred bytes whatever the segment's length. A fragment is complete when the last
byte of its ``mdat`` has arrived: only then could a player decode it.

    Fragment(samples, decode_time, duration_s, size, end)

The duration is the fragment's sample count times its sample duration (``tfhd``'s default,
or each sample's own from ``trun``; 1024 for AAC-LC when neither says) over the timescale
(48,000 for Amphi's audio; the init segment's ``mdhd`` says it).

``SegmentRead`` is what a listener makes of one segment's response: which of its parts it plays
(a listener joining mid-segment skips the older ones and starts near the live edge), and the
program date-time of each, from the segment's ``EXT-X-PROGRAM-DATE-TIME`` and the parts'
decode times (``tfdt``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from amphi.media.fmp4 import MalformedMp4

AAC_SAMPLES = 1024  # samples per AAC-LC access unit: a sample's duration when no box says
DEFAULT_TIMESCALE = 48_000  # Amphi's program clock
_HEADER = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Fragment:
    samples: int  # audio access units in its mdat
    decode_time: int  # tfdt, in timescale units (0 when the moof has none)
    duration_s: float
    size: int  # bytes of moof + mdat
    end: int  # offset in the stream fed just after its last byte: its bytes are [end - size, end)


class FragmentReader:
    """Feeds on a byte stream of boxes; returns each fragment once its ``mdat`` is complete.

    Boxes other than ``moof`` and ``mdat`` (``styp``, ``sidx``, ``prft``, ...) are skipped. An
    ``mdat`` with no ``moof`` before it is skipped too (it is not a fragment we can time).
    Raises ``MalformedMp4`` on a box that cannot be walked (a size below 8, a 64-bit size or a
    ``moof`` without ``trun``)."""

    __slots__ = ("timescale", "_buf", "_skip", "_pending", "_size", "bytes")

    MAX_MOOF = 1 << 16  # a moof this large is not one of ours: refuse rather than buffer it

    def __init__(self, timescale: int = DEFAULT_TIMESCALE) -> None:
        self.timescale = timescale
        self._buf = bytearray()  # the current box's header, or the whole moof while it arrives
        self._skip = 0  # bytes of the current box still to pass over (an mdat's payload, ...)
        self._pending: tuple[int, int, int, int] | None = None  # a moof's (samples, tfdt, ticks, size), its mdat awaited
        self._size = 0  # the box being skipped is an mdat of this total size (0: not an mdat)
        self.bytes = 0  # fed in all

    def feed(self, data: bytes | bytearray | memoryview) -> list[Fragment]:
        out: list[Fragment] = []
        n = len(data)
        self.bytes += n
        pos = 0
        buf = self._buf
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip and self._size:
                    self._complete(out, self.bytes - n + pos)
                continue
            if len(buf) < 8:
                take = min(8 - len(buf), n - pos)
                buf += data[pos:pos + take]
                pos += take
                if len(buf) < 8:
                    break
            size, kind = _HEADER.unpack_from(buf)
            if size < 8:  # 0 ("to the end") and 1 (a 64-bit size) are not written by a live packager
                raise MalformedMp4(f"box {kind!r} with size field {size}")
            if kind == b"moof":
                if size > self.MAX_MOOF:
                    raise MalformedMp4(f"moof of {size} bytes")
                take = min(size - len(buf), n - pos)
                buf += data[pos:pos + take]
                pos += take
                if len(buf) < size:
                    break
                self._pending = (*_read_moof(bytes(buf)), size)
            elif kind == b"mdat":
                self._size = size
                self._skip = size - 8
                if not self._skip:
                    self._complete(out, self.bytes - n + pos)
            else:
                self._skip = size - 8
            buf.clear()
        return out

    def _complete(self, out: list[Fragment], end: int) -> None:
        mdat, self._size = self._size, 0
        pending, self._pending = self._pending, None
        if pending is None:
            return
        samples, tfdt, ticks, moof = pending
        out.append(Fragment(samples, tfdt, ticks / self.timescale, moof + mdat, end))

    @property
    def idle(self) -> bool:
        """True between boxes: everything fed so far made whole boxes (a segment's body ends so)."""
        return not self._buf and not self._skip and self._pending is None


@lru_cache(maxsize=256)
def _read_moof(moof: bytes) -> tuple[int, int, int]:
    """(sample count, tfdt, duration in timescale units) of a whole ``moof`` box (one track).
    Remembered: every listener of a process reads the same parts' moofs."""
    samples = tfdt = ticks = 0
    default_duration = AAC_SAMPLES
    found_trun = False
    for kind, start, end in _children(moof, 8, len(moof)):
        if kind != b"traf":
            continue
        for k, s, e in _children(moof, start, end):
            if e - s < 4:
                raise MalformedMp4(f"{k!r} too short")
            flags = _U32.unpack_from(moof, s)[0] & 0xFFFFFF
            version = moof[s]
            if k == b"tfhd":
                pos = s + 8  # version/flags, track id
                pos += 8 if flags & 0x01 else 0  # base data offset
                pos += 4 if flags & 0x02 else 0  # sample description index
                if flags & 0x08:
                    default_duration = _U32.unpack_from(moof, pos)[0]
            elif k == b"tfdt":
                tfdt = (_U64 if version else _U32).unpack_from(moof, s + 4)[0]
            elif k == b"trun":
                found_trun = True
                count = _U32.unpack_from(moof, s + 4)[0]
                samples += count
                if flags & 0x100:  # each sample carries its duration
                    pos = s + 8 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
                    stride = 4 * bin(flags & 0xF00).count("1")
                    if pos + count * stride > e:
                        raise MalformedMp4("trun shorter than its samples")
                    ticks += sum(_U32.unpack_from(moof, pos + i * stride)[0] for i in range(count))
                else:
                    ticks += count * default_duration
    if not found_trun:
        raise MalformedMp4("moof without trun")
    return samples, tfdt, ticks


def _children(data: bytes, start: int, end: int):  # type: ignore[no-untyped-def]
    pos = start
    while pos + 8 <= end:
        size, kind = _HEADER.unpack_from(data, pos)
        if size < 8 or pos + size > end:
            raise MalformedMp4(f"box {kind!r} at {pos} has bad size {size}")
        yield kind, pos + 8, pos + size
        pos += size


def init_timescale(init: bytes) -> int:
    """The audio track's timescale from an init segment's ``moov/trak/mdia/mdhd``; the default
    (48,000) when there is none to read."""
    start, end = 0, len(init)
    try:
        for kind in (b"moov", b"trak", b"mdia", b"mdhd"):
            start, end = next((s, e) for k, s, e in _children(init, start, end) if k == kind)
        version = init[start]
        return _U32.unpack_from(init, start + (20 if version else 12))[0] or DEFAULT_TIMESCALE
    except (StopIteration, MalformedMp4, struct.error, IndexError):
        return DEFAULT_TIMESCALE


@dataclass(frozen=True, slots=True)
class Heard:
    """A part a listener plays: its seconds of audio and the program date-time of its first sample."""

    duration_s: float
    pdt: float | None


class SegmentRead:
    """One segment's response as a listener plays it. The first ``skip`` fragments are passed
    over (they were in the segment before the listener joined: it starts near the live edge);
    every later one is heard. ``pdt``: the segment's program date-time (its first sample's wall
    time), if known; each part's is that plus its decode time's distance from the segment's
    first part."""

    __slots__ = ("msn", "pdt", "skip", "reader", "parts", "duration_s", "_first_tfdt")

    def __init__(self, msn: int, pdt: float | None, skip: int = 0, timescale: int = DEFAULT_TIMESCALE) -> None:
        self.msn = msn
        self.pdt = pdt
        self.skip = skip
        self.reader = FragmentReader(timescale)
        self.parts = 0  # fragments read, skipped ones included
        self.duration_s = 0.0  # their seconds
        self._first_tfdt: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Heard]:
        out: list[Heard] = []
        for f in self.reader.feed(data):
            if self._first_tfdt is None:
                self._first_tfdt = f.decode_time
            self.parts += 1
            self.duration_s += f.duration_s
            if self.parts <= self.skip:
                continue
            pdt = None if self.pdt is None else self.pdt + (f.decode_time - self._first_tfdt) / self.reader.timescale
            out.append(Heard(f.duration_s, pdt))
        return out

    @property
    def end_pdt(self) -> float | None:
        """The program date-time just after this segment's last part read: the next segment's."""
        return None if self.pdt is None else self.pdt + self.duration_s


def start_skip(parts_listed: int, start_parts: int) -> int:
    """How many of a segment's first parts a joining listener skips: it keeps the newest
    ``start_parts`` of the ``parts_listed`` the playlist showed (all of them if fewer)."""
    return max(0, parts_listed - start_parts)
