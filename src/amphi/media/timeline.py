"""What a live Space's origin can serve right now: a sliding window of segments and parts.
Pure: fed with segmenter events, asked by the origin. The async shell that wakes waiting
listeners lives in ``amphi.media.pipeline``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from amphi.core.config import MediaConfig
from amphi.core.errors import BadRequest, BeyondLiveEdge
from amphi.media.playlist import PartEntry, SegmentEntry, render_live
from amphi.media.segmenter import FIRST_MSN, Event, Part, PartReady, Segment, SegmentClosed

ADVANCE_PART_LIMIT = 3  # RFC 8216bis: requests further ahead than this get 400 at once


def entry(seg: Segment, *, with_parts: bool) -> SegmentEntry:
    parts = tuple(PartEntry(seg.uri, p.duration, p.offset, len(p.data)) for p in seg.parts) if with_parts else ()
    return SegmentEntry(seg.msn, seg.uri, seg.duration, seg.pdt, parts, seg.closed, seg.discontinuity)


class MediaTimeline:
    def __init__(self, cfg: MediaConfig, *, first_msn: int = FIRST_MSN, segments: Iterable[Segment] = (),
                 discontinuity_sequence: int = 0) -> None:
        """A timeline resumed on another node (``amphi.media.replica.Resume``) is seeded with
        the complete ``segments`` the previous host made (oldest first; served, listed and
        fetchable as if made here) and ``discontinuity_sequence``, the discontinuities that
        had left the kept segments before them; ``first_msn`` is then the next to make."""
        self._cfg = cfg
        # Segments kept in memory: the playlist window plus a few that just left it, so a
        # listener who read an older playlist can still fetch what it listed.
        self._keep = cfg.window_segments + 4
        self._segments: OrderedDict[int, Segment] = OrderedDict()
        self._open: Segment | None = None
        self._next: tuple[int, int] = (first_msn, 0)  # the preload hint before the first part
        self._dropped_discontinuities = discontinuity_sequence  # of segments no longer kept
        self._live_from: int | None = None  # msn of the first live segment (the Space's start)
        self.ended = False
        for seg in segments:
            self._add(seg)

    # -- fed by the pipeline ---------------------------------------------------------------

    def apply(self, event: Event, next_position: tuple[int, int]) -> None:
        if isinstance(event, PartReady):
            self._open = event.segment
            self._saw(event.segment)
        elif isinstance(event, SegmentClosed):
            seg = event.segment
            self._add(seg)
            if self._open is seg:
                self._open = None
        self._next = next_position

    def _add(self, seg: Segment) -> None:
        self._segments[seg.msn] = seg
        self._saw(seg)
        while len(self._segments) > self._keep:
            _, gone = self._segments.popitem(last=False)
            self._dropped_discontinuities += gone.discontinuity

    def _saw(self, seg: Segment) -> None:
        if seg.live and self._live_from is None:
            self._live_from = seg.msn

    def end(self) -> None:
        self.ended = True

    # -- asked by the origin ---------------------------------------------------------------

    @property
    def last_position(self) -> tuple[int, int] | None:
        """(msn, index) of the newest part, or None before the first."""
        if self._open is not None and self._open.parts:
            return self._open.msn, len(self._open.parts) - 1
        if self._segments:
            seg = next(reversed(self._segments.values()))
            return seg.msn, len(seg.parts) - 1
        return None

    @property
    def media_end_wall(self) -> float | None:
        """Wall time at which the newest published sample was mixed (None before the first
        part): wall time minus this is how far production lags (amphi.obs.metrics)."""
        seg = self._open if self._open is not None and self._open.parts else (
            next(reversed(self._segments.values())) if self._segments else None)
        return None if seg is None else seg.pdt + seg.duration

    @property
    def segments(self) -> list[Segment]:
        """The complete segments kept, oldest first."""
        return list(self._segments.values())

    @property
    def live_from(self) -> int | None:
        """msn of the first live (recorded) segment: None while the Space is on hold."""
        return self._live_from

    @property
    def has_segments(self) -> bool:
        """A playlist is worth serving once it lists a whole segment: players that ignore
        parts (ffmpeg, VLC, older players) find no media in a playlist of parts alone."""
        return bool(self._segments)

    @property
    def next_position(self) -> tuple[int, int]:
        return self._next

    def part(self, msn: int, index: int) -> Part | None:
        seg = self.growing(msn)
        if seg is None or index >= len(seg.parts):
            return None
        return seg.parts[index]

    def segment(self, msn: int) -> Segment | None:
        """Segment ``msn`` if it is complete and still kept."""
        return self._segments.get(msn)

    def growing(self, msn: int) -> Segment | None:
        """Segment ``msn`` if it is complete and kept, or the open one: what a streamed
        response serves from (its parts so far, then each new one)."""
        seg = self._segments.get(msn)
        if seg is None and self._open is not None and self._open.msn == msn:
            return self._open
        return seg

    def bit_rates(self) -> list[float]:
        """Bits per second of each complete segment kept (the multivariant's BANDWIDTH)."""
        return [8 * s.size / s.duration for s in self._segments.values() if s.duration > 0]

    def awaited(self, msn: int) -> bool:
        """Segment ``msn`` has not begun but will soon: the hinted one, or the one after the
        open one. A request for it is held until its first part rather than refused."""
        if self.ended or self.growing(msn) is not None:
            return False
        newest = self._next[0] if self._open is None else self._open.msn + 1
        return self._next[0] <= msn <= newest

    def is_hinted(self, msn: int, index: int) -> bool:
        """The part named by the preload hint: worth waiting for rather than a 404."""
        return not self.ended and (msn, index) == self._next

    def check_reload(self, msn: int | None, part: int | None) -> None:
        """Validates blocking-reload query values: 400 for nonsense or for a point so far
        past the live edge that waiting would only hold a connection."""
        if msn is None:
            if part is not None:
                raise BadRequest("_HLS_part requires _HLS_msn")
            return
        if msn < 0 or (part is not None and part < 0):
            raise BadRequest("_HLS_msn and _HLS_part must be non-negative")
        last_msn, last_part = self.last_position or (self._next[0], -1)
        beyond = msn > last_msn + 2 or (part is not None and (
            part > self._cfg.parts_per_segment or (msn == last_msn and part > last_part + ADVANCE_PART_LIMIT)))
        if beyond:
            raise BeyondLiveEdge(
                f"_HLS_msn={msn} _HLS_part={part} is beyond the live edge ({last_msn}.{last_part})"
            )

    def satisfies(self, msn: int | None, part: int | None) -> bool:
        """True once the playlist contains segment ``msn`` (complete) or part ``msn.part``."""
        if msn is None or self.ended:
            return True
        if part is None:
            return any(m >= msn for m in self._segments) or (self._open is not None and self._open.msn > msn)
        last = self.last_position
        return last is not None and last >= (msn, part)

    def render(self) -> str:
        kept = list(self._segments.values())
        window = kept[-self._cfg.window_segments:]
        gone = kept[:len(kept) - len(window)]  # kept for late fetches, no longer listed
        sequence = self._dropped_discontinuities + sum(s.discontinuity for s in gone)
        with_parts = {s.msn for s in window[-self._cfg.part_segments:]}
        entries = [entry(s, with_parts=s.msn in with_parts) for s in window]
        if self._open is not None and not self.ended:
            entries.append(entry(self._open, with_parts=True))
        # the next part is hinted only inside a segment that has begun: a hint at byte 0 names a
        # segment no part of which is listed, which Shaka Player fetches whole, not streamed (its
        # byte-range merge needs an end: none at 0, "to the end" past it); a player that blocks
        # on the playlist learns of the new segment with its first part instead
        hint = None
        if self._open is not None and self._open.msn == self._next[0]:
            hint = (self._open.msn, self._open.size)
        return render_live(self._cfg, entries, hint=hint, ended=self.ended, discontinuity_sequence=sequence,
                           live_from=self._live_from)
