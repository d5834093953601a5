"""HLS playlists (RFC 8216bis), rendered from plain values. Pure.

``render_live`` lists the last complete segments, the parts of the newest ones, the open
segment's parts and a preload hint for the next part; ``render_vod`` lists a whole
recording and ends it; ``render_multivariant`` names the one audio rendition with its codec
and bandwidth. URIs are relative to the playlist.

Parts are byte ranges of their segment (``BYTERANGE="<length>@<offset>"`` on the segment's
URI) and the hint names the next part's first byte in it (``BYTERANGE-START``): the origin
streams a segment that is still being made as one response, part by part
(``amphi.web.origin``), so a player that merges a segment's parts into one request (Shaka
Player) makes one request a segment and still has each part the moment it exists, and an
edge fetches it once for all its listeners (docs/streaming.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from amphi.core.config import MediaConfig

INIT_URI = "init.mp4"
LIVE_FROM = "#AMPHI-LIVE-FROM:"  # a comment to players: the first live segment's msn (render_live)


CODECS = "mp4a.40.2"  # AAC-LC (RFC 6381)


@dataclass(frozen=True)
class PartEntry:
    uri: str  # its segment's: a part is a byte range of it
    duration: float
    offset: int
    length: int


@dataclass(frozen=True)
class SegmentEntry:
    msn: int
    uri: str
    duration: float
    pdt: float
    parts: tuple[PartEntry, ...] = ()  # listed only for the newest segments
    closed: bool = True
    discontinuity: bool = False  # the program restarts here: EXT-X-DISCONTINUITY before it


def _pdt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(cfg: MediaConfig, first_msn: int, discontinuity_sequence: int) -> list[str]:
    """``discontinuity_sequence``: the discontinuities that have left the playlist (RFC 8216bis
    4.4.3.3); written only when there were some (absent, it is 0), so a Space that never
    restarted has the playlists it always had."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{cfg.target_duration_s}",
        f"#EXT-X-MEDIA-SEQUENCE:{first_msn}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if discontinuity_sequence:
        lines.insert(4, f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    return lines


def render_live(
    cfg: MediaConfig,
    segments: Sequence[SegmentEntry],
    *,
    hint: tuple[int, int] | None,
    ended: bool,
    discontinuity_sequence: int = 0,
    live_from: int | None = None,
) -> str:
    """``segments`` in order, the last one possibly open (closed=False, parts only).
    ``hint`` is (msn, first byte) of the part still to come, hinted unless ended.
    ``live_from``: the first live (recorded) segment's msn, once the Space is live; written as
    the comment ``#AMPHI-LIVE-FROM:<msn>`` (a line that starts with ``#`` but not ``#EXT`` is a
    comment that players skip, RFC 8216bis 4.1) for a standby that copies the recording as an
    edge would (``amphi.media.replica``): the playlist says which segments are the Space's and
    which are hold music."""
    first_msn = segments[0].msn if segments else (hint[0] if hint else 0)
    lines = _header(cfg, first_msn, discontinuity_sequence)
    if live_from is not None:
        lines.append(f"{LIVE_FROM}{live_from}")
    if not ended:
        lines.append(
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * cfg.part_s:.3f}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={cfg.part_s:.3f}")
    lines.append(f'#EXT-X-MAP:URI="{INIT_URI}"')
    for seg in segments:
        if seg.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt)}")
        if not ended:
            for part in seg.parts:
                lines.append(f'#EXT-X-PART:DURATION={part.duration:.3f},URI="{part.uri}",'
                             f'BYTERANGE="{part.length}@{part.offset}",INDEPENDENT=YES')
        if seg.closed:
            lines.append(f"#EXTINF:{seg.duration:.3f},")
            lines.append(seg.uri)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    elif hint is not None:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint[0]}.m4s",BYTERANGE-START={hint[1]}')
    return "\n".join(lines) + "\n"


def render_multivariant(media_uri: str, *, peak_bps: int, average_bps: int) -> str:
    """The one variant: an audio-only stream. Apple's HLS Authoring Specification wants
    CODECS and BANDWIDTH (the peak segment bit rate) on every variant; players other than
    hls.js refuse, or guess wrong about, a bare media playlist."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        f'#EXT-X-STREAM-INF:BANDWIDTH={peak_bps},AVERAGE-BANDWIDTH={average_bps},CODECS="{CODECS}"\n'
        f"{media_uri}\n"
    )


def render_vod(cfg: MediaConfig, segments: Sequence[SegmentEntry]) -> str:
    """The whole recording: every discontinuity is in it, so its sequence starts at 0."""
    first_msn = segments[0].msn if segments else 0
    lines = _header(cfg, first_msn, 0)
    lines.insert(4, "#EXT-X-PLAYLIST-TYPE:VOD")
    lines.append(f'#EXT-X-MAP:URI="{INIT_URI}"')
    for seg in segments:
        if seg.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt)}")
        lines.append(f"#EXTINF:{seg.duration:.3f},")
        lines.append(seg.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
