"""LL-HLS media playlists (RFC 8216bis), rendered from plain values. Pure.

``render_live`` lists the last complete segments, the parts of the newest ones, the open
segment's parts and a preload hint for the next part; ``render_vod`` lists a whole
recording and ends it. URIs are relative to the playlist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from amphi.core.config import MediaConfig

INIT_URI = "init.mp4"


@dataclass(frozen=True)
class PartEntry:
    uri: str
    duration: float


@dataclass(frozen=True)
class SegmentEntry:
    msn: int
    uri: str
    duration: float
    pdt: float
    parts: tuple[PartEntry, ...] = ()  # listed only for the newest segments
    closed: bool = True


def _pdt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(cfg: MediaConfig, first_msn: int) -> list[str]:
    return [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{cfg.target_duration_s}",
        f"#EXT-X-MEDIA-SEQUENCE:{first_msn}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]


def render_live(
    cfg: MediaConfig,
    segments: Sequence[SegmentEntry],
    *,
    next_part: tuple[int, int] | None,
    ended: bool,
) -> str:
    """``segments`` in order, the last one possibly open (closed=False, parts only).
    ``next_part`` is the (msn, index) of the part still to come, hinted unless ended."""
    first_msn = segments[0].msn if segments else (next_part[0] if next_part else 0)
    lines = _header(cfg, first_msn)
    if not ended:
        lines.append(
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * cfg.part_s:.3f}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={cfg.part_s:.3f}")
    lines.append(f'#EXT-X-MAP:URI="{INIT_URI}"')
    for seg in segments:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt)}")
        if not ended:
            for part in seg.parts:
                lines.append(f'#EXT-X-PART:DURATION={part.duration:.3f},URI="{part.uri}",INDEPENDENT=YES')
        if seg.closed:
            lines.append(f"#EXTINF:{seg.duration:.3f},")
            lines.append(seg.uri)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    elif next_part is not None:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{next_part[0]}.{next_part[1]}.m4s"')
    return "\n".join(lines) + "\n"


def render_vod(cfg: MediaConfig, segments: Sequence[SegmentEntry]) -> str:
    first_msn = segments[0].msn if segments else 0
    lines = _header(cfg, first_msn)
    lines.insert(4, "#EXT-X-PLAYLIST-TYPE:VOD")
    lines.append(f'#EXT-X-MAP:URI="{INIT_URI}"')
    for seg in segments:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt)}")
        lines.append(f"#EXTINF:{seg.duration:.3f},")
        lines.append(seg.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
