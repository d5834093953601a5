"""Groups AAC access units into LL-HLS parts and segments. Pure: no I/O, no clock.

Every access unit is ``AAC_FRAME`` samples long and is tagged live or not (hold audio before
the Space starts). A segment is all hold or all live: a change of tag closes the open part
and segment early, so the recording (the live segments) starts and ends exactly where the
Space did. Timestamps run on without a gap across that cut: one program, one timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amphi.core.config import AAC_FRAME, SAMPLE_RATE, MediaConfig
from amphi.media import fmp4

# Media sequence numbers start at 1, not 0. hls.js (1.7.4 and earlier) tests the sequence
# number of an appended part for truthiness (``appendedPart?.fragment.sn || -1`` in its
# fragment tracker), so every part of a segment numbered 0 makes it drop that segment from
# its tracker: the first listener of a new program then reloads the segment's last part in a
# loop and stalls until segment 0 leaves the playlist. RFC 8216bis allows any first number.
FIRST_MSN = 1


@dataclass(frozen=True)
class Part:
    msn: int  # media sequence number of the segment it belongs to
    index: int  # position within that segment
    data: bytes  # one moof+mdat fragment
    first_sample: int  # decode time of its first sample
    samples: int
    offset: int  # where its bytes start in its segment's (the part is a byte range of it)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def uri(self) -> str:
        return f"{self.msn}.{self.index}.m4s"


@dataclass
class Segment:
    msn: int
    first_sample: int
    pdt: float  # wall-clock time (epoch seconds) at which its first sample was mixed
    live: bool  # recorded: produced while the Space was live
    parts: list[Part] = field(default_factory=list)
    # the program restarts here (a take-over after a crash: a new encoder, and a jump in wall
    # time): EXT-X-DISCONTINUITY before it, live and in the replay (RFC 8216bis 4.4.4.3)
    discontinuity: bool = False
    closed: bool = False
    size: int = 0  # bytes so far: the parts' lengths added up
    _data: bytes | None = field(default=None, repr=False)  # the whole segment, joined once closed

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.parts)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def data(self) -> bytes:
        """Its bytes so far (all of them once closed: then joined once and kept)."""
        if self._data is not None:
            return self._data
        data = b"".join(p.data for p in self.parts)
        if self.closed:
            self._data = data
        return data

    def since(self, part: int) -> bytes:
        """The bytes of its parts from index ``part`` on: what a streamed response still owes."""
        return b"".join(p.data for p in self.parts[part:])

    @property
    def uri(self) -> str:
        return f"{self.msn}.m4s"


@dataclass(frozen=True)
class PartReady:
    part: Part
    segment: Segment


@dataclass(frozen=True)
class SegmentClosed:
    segment: Segment


Event = PartReady | SegmentClosed


class Segmenter:
    """Lifecycle: open -> finished. ``push`` after ``finish`` raises."""

    def __init__(self, cfg: MediaConfig, *, epoch: float, encoder_delay: int, first_msn: int = FIRST_MSN,
                 first_sample: int = 0, first_sequence: int = 1, discontinuity: bool = False) -> None:
        """A program resumed on another node (``amphi.media.replica.Resume``) starts at the
        counters after the last segment made before it: ``first_msn``, ``first_sample`` (decode
        time) and ``first_sequence`` (moof sequence number), so numbers and decode times run on;
        ``discontinuity`` marks its first segment. ``epoch`` is then the wall time at which
        decode time ``encoder_delay`` would have been mixed: the first segment's
        PROGRAM-DATE-TIME is ``epoch + (first_sample - encoder_delay) / SAMPLE_RATE``."""
        self._cfg = cfg
        self._epoch = epoch  # wall time at which program (input) sample 0 was mixed
        self._delay = encoder_delay
        self._next_msn = first_msn
        self._next_sample = first_sample  # decode time of the next access unit
        self._sequence = first_sequence - 1  # moof sequence number, global to the stream: the last used
        self._discontinuity = discontinuity  # owed to the next segment begun
        self._segment: Segment | None = None
        self._units: list[bytes] = []
        self.finished = False

    @property
    def next_position(self) -> tuple[int, int]:
        """(msn, part index) of the next part to come: the preload hint."""
        if self._segment is None:
            return self._next_msn, 0
        return self._segment.msn, len(self._segment.parts)

    @property
    def next_sample(self) -> int:
        """Decode time of the next access unit."""
        return self._next_sample

    @property
    def next_sequence(self) -> int:
        """moof sequence number of the next part."""
        return self._sequence + 1

    @property
    def units_to_part_end(self) -> int:
        """Access units still to come before the open part is full."""
        return self._cfg.part_packets - len(self._units)

    def push(self, unit: bytes, *, live: bool) -> list[Event]:
        if self.finished:
            raise RuntimeError("segmenter is finished")
        events: list[Event] = []
        if self._segment is not None and self._segment.live != live:
            events += self._close_segment()
        if self._segment is None:
            self._segment = Segment(
                msn=self._next_msn,
                first_sample=self._next_sample,
                pdt=self._epoch + (self._next_sample - self._delay) / SAMPLE_RATE,
                live=live,
                discontinuity=self._discontinuity,
            )
            self._discontinuity = False
            self._next_msn += 1
        self._units.append(unit)
        self._next_sample += AAC_FRAME
        if len(self._units) == self._cfg.part_packets:
            events += self._close_part()
            if len(self._segment.parts) == self._cfg.parts_per_segment:
                events += self._close_segment()
        return events

    def finish(self) -> list[Event]:
        """Closes the open part and segment: the end of the program."""
        events = self._close_segment() if self._segment is not None else []
        self.finished = True
        return events

    def _close_part(self) -> list[Event]:
        segment = self._segment
        assert segment is not None
        if not self._units:
            return []
        self._sequence += 1
        samples = len(self._units) * AAC_FRAME
        first = self._next_sample - samples
        data = fmp4.fragment(self._sequence, first, self._units)
        part = Part(segment.msn, len(segment.parts), data, first, samples, segment.size)
        self._units = []
        segment.parts.append(part)
        segment.size += len(data)
        return [PartReady(part, segment)]

    def _close_segment(self) -> list[Event]:
        events = self._close_part()
        segment = self._segment
        assert segment is not None
        self._segment = None
        if not segment.parts:  # nothing was produced: give the number back (and the discontinuity)
            self._next_msn -= 1
            self._discontinuity = segment.discontinuity
            return events
        segment.closed = True
        return [*events, SegmentClosed(segment)]


@dataclass(frozen=True)
class Resume:
    """Where a Space's program continues on another node: what the standby's copy
    (``amphi.media.replica.Replica.resume_point``) hands to ``Pipeline(resume=...)``.

    The counters are those after the newest segment copied, so media sequence numbers,
    decode times and moof sequence numbers run on. ``gap``: the host died (its program
    stopped at an unknown point after ``end_wall``), so the first new segment starts with a
    discontinuity and PROGRAM-DATE-TIME jumps to the wall time of the new program; a planned
    hand-over (``gap=False``) continues the wall times exactly, with no discontinuity.
    """

    next_msn: int
    next_sample: int  # decode time after the newest segment
    next_sequence: int  # moof sequence number after the newest segment's last part
    segments: tuple[Segment, ...]  # the kept window, oldest first, complete
    discontinuity_sequence: int  # discontinuities that had left ``segments`` (EXT-X-DISCONTINUITY-SEQUENCE)
    gap: bool
    end_wall: float  # wall time at which the newest segment ended: its pdt + duration
    # of ``segments``, those the recording does not have yet: the open segment the copy closed
    # at a crash (live); the resumed program's recorder writes them before its own
    unrecorded: tuple[Segment, ...] = ()
