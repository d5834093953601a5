"""What a player reads from an HLS playlist (RFC 8216bis). Pure.

Media playlists: only the tags a live player acts on: the media sequence, segments with their
durations and program date-times, LL-HLS parts (whole files or byte ranges of their segment),
the preload hint, server control (blocking reload, part hold-back), the map (init) and the end
list. Multivariant playlists: each variant's URI, bandwidth and codecs. Anything else is
ignored, as players do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Part:
    msn: int
    index: int
    uri: str
    duration: float
    pdt: float | None  # Unix time of its first sample, if the playlist gives a date-time
    byterange: tuple[int, int] | None = None  # (length, offset) in ``uri``: a byte range of its segment


@dataclass(frozen=True, slots=True)
class Segment:
    msn: int
    uri: str | None  # None while the segment is still open (parts only)
    duration: float
    pdt: float | None
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """Immutable: every listener that got the same playlist body shares one (``parse_body``)."""

    media_sequence: int = 0
    target_duration: float = 0.0
    segments: tuple[Segment, ...] = ()
    map_uri: str | None = None
    can_block_reload: bool = False
    part_hold_back: float | None = None
    part_target: float | None = None
    preload_hint: str | None = None
    preload_hint_start: int | None = None  # BYTERANGE-START of the hint: bytes of its segment already made
    ended: bool = False

    @property
    def parts(self) -> list[Part]:
        return [p for s in self.segments for p in s.parts]

    @property
    def last_part(self) -> Part | None:
        for seg in reversed(self.segments):
            if seg.parts:
                return seg.parts[-1]
        return None

    @property
    def complete_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.uri is not None]


_PDT_CACHE: dict[str, float] = {}  # the same date-times come back in every reload
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_DURATION = re.compile(r'(?:^|,)DURATION=([0-9.]+)')
_URI = re.compile(r'(?:^|,)URI="([^"]*)"')
_BYTERANGE = re.compile(r'(?:^|,)BYTERANGE="?([0-9]+)(?:@([0-9]+))?')


def parse_pdt(text: str) -> float:
    t = _PDT_CACHE.get(text)
    if t is None:
        if len(_PDT_CACHE) > 4096:
            _PDT_CACHE.clear()
        t = _PDT_CACHE[text] = datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    return t


def _attributes(text: str) -> dict[str, str]:
    """``KEY=VALUE,KEY="a,b"`` -> dict, honouring quotes."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR.findall(text)}


@lru_cache(maxsize=32)
def parse_body(body: bytes) -> MediaPlaylist:
    """``parse`` of an HTTP body, remembered: at any moment thousands of listeners hold the same
    few playlists (the edge answers them all with the same bytes), so each is parsed once."""
    return parse(body.decode())


def parse(text: str) -> MediaPlaylist:
    """Parses a media playlist. Raises ValueError if it is not one."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise ValueError("not an M3U8 playlist")
    media_sequence, target_duration, map_uri, ended = 0, 0.0, None, False
    can_block_reload, part_hold_back, part_target, preload_hint, hint_start = False, None, None, None, None
    next_offset = 0  # a part's byte range without an offset starts where the previous one ended
    segments: list[Segment] = []
    msn = None
    pdt: float | None = None
    duration: float | None = None
    parts: list[Part] = []
    part_pdt: float | None = None
    for raw in lines[1:]:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            tag, _, value = line.partition(":")
            if tag == "#EXT-X-MEDIA-SEQUENCE":
                media_sequence = int(value)
            elif tag == "#EXT-X-TARGETDURATION":
                target_duration = float(value)
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = part_pdt = parse_pdt(value)
            elif tag == "#EXTINF":
                duration = float(value.split(",", 1)[0])
            elif tag == "#EXT-X-MAP":
                map_uri = _attributes(value).get("URI")
            elif tag == "#EXT-X-SERVER-CONTROL":
                attrs = _attributes(value)
                can_block_reload = attrs.get("CAN-BLOCK-RELOAD") == "YES"
                if "PART-HOLD-BACK" in attrs:
                    part_hold_back = float(attrs["PART-HOLD-BACK"])
            elif tag == "#EXT-X-PART-INF":
                part_target = float(_attributes(value).get("PART-TARGET", "0")) or None
            elif tag == "#EXT-X-PART":  # the most frequent tag: two searches, not a full attribute parse
                dm, um = _DURATION.search(value), _URI.search(value)
                if dm is None or um is None:
                    raise ValueError(f"EXT-X-PART without DURATION or URI: {line!r}")
                if msn is None:
                    msn = media_sequence
                d = float(dm.group(1))
                br = None
                if "BYTERANGE" in value and (bm := _BYTERANGE.search(value)) is not None:
                    length = int(bm.group(1))
                    offset = int(bm.group(2)) if bm.group(2) is not None else next_offset
                    br, next_offset = (length, offset), offset + length
                parts.append(Part(msn, len(parts), um.group(1), d, part_pdt, br))
                part_pdt = None if part_pdt is None else part_pdt + d
            elif tag == "#EXT-X-PRELOAD-HINT":
                attrs = _attributes(value)
                if attrs.get("TYPE") == "PART":
                    preload_hint = attrs.get("URI")
                    if "BYTERANGE-START" in attrs:
                        hint_start = int(attrs["BYTERANGE-START"])
            elif tag == "#EXT-X-ENDLIST":
                ended = True
            continue
        # a URI line closes a segment
        if msn is None:
            msn = media_sequence
        segments.append(Segment(msn, line, duration or 0.0, pdt, tuple(parts)))
        msn += 1
        pdt = None if pdt is None else pdt + (duration or 0.0)
        part_pdt, duration, parts, next_offset = pdt, None, [], 0
    if parts:  # the open segment: parts only
        assert msn is not None
        segments.append(Segment(msn, None, sum(p.duration for p in parts), parts[0].pdt, tuple(parts)))
    return MediaPlaylist(media_sequence, target_duration, tuple(segments), map_uri, can_block_reload,
                         part_hold_back, part_target, preload_hint, hint_start, ended)


# -- multivariant playlists --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    uri: str
    bandwidth: int  # peak bits per second
    average_bandwidth: int | None
    codecs: str | None


def is_multivariant(body: bytes) -> bool:
    """A multivariant playlist lists variants (EXT-X-STREAM-INF); a media playlist, media."""
    return b"#EXT-X-STREAM-INF:" in body


def parse_multivariant(text: str) -> list[Variant]:
    """The variants of a multivariant playlist, in order. Raises ValueError if it lists none."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise ValueError("not an M3U8 playlist")
    variants: list[Variant] = []
    attrs: dict[str, str] | None = None
    for raw in lines[1:]:
        line = raw.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = _attributes(line.partition(":")[2])
        elif line and not line.startswith("#") and attrs is not None:
            if "BANDWIDTH" not in attrs:
                raise ValueError(f"EXT-X-STREAM-INF without BANDWIDTH before {line!r}")
            avg = attrs.get("AVERAGE-BANDWIDTH")
            variants.append(Variant(line, int(attrs["BANDWIDTH"]), int(avg) if avg else None, attrs.get("CODECS")))
            attrs = None
    if not variants:
        raise ValueError("a multivariant playlist without variants")
    return variants
