"""Golden-file tests: rendered playlists are compared byte for byte with tests/golden/.
Regenerate after an intended change with AMPHI_UPDATE_GOLDEN=1 and review the diff."""

import os
import re
from pathlib import Path

import pytest

from amphi.core.config import AAC_FRAME, MediaConfig
from amphi.media.playlist import render_multivariant, render_vod
from amphi.media.segmenter import Segmenter
from amphi.media.timeline import MediaTimeline, entry

GOLDEN = Path(__file__).parent.parent / "golden"
CFG = MediaConfig(parts_per_segment=7)  # the golden files are of 3.584 s segments, whatever the default
EPOCH = 1_795_000_000.0  # a fixed wall time, so PROGRAM-DATE-TIME is stable


def timeline_after(hold_units: int, live_units: int, *, end: bool = False) -> tuple[MediaTimeline, list]:
    seg = Segmenter(CFG, epoch=EPOCH, encoder_delay=AAC_FRAME, first_msn=0)
    tl = MediaTimeline(CFG, first_msn=0)
    closed = []
    tags = [False] * hold_units + [True] * live_units
    for live in tags:
        for ev in seg.push(b"\x00", live=live):
            tl.apply(ev, seg.next_position)
            if hasattr(ev, "segment") and ev.segment.closed and ev.segment not in closed:
                closed.append(ev.segment)
    if end:
        for ev in seg.finish():
            tl.apply(ev, seg.next_position)
            if ev.segment.closed and ev.segment not in closed:
                closed.append(ev.segment)
        tl.end()
    return tl, closed


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("AMPHI_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file"


def test_live_playlist_mid_segment() -> None:
    # 2 hold segments' worth, then live: 3 full live segments and 3 parts of the next
    per_segment = CFG.part_packets * CFG.parts_per_segment
    tl, _ = timeline_after(2 * per_segment, 3 * per_segment + 3 * CFG.part_packets + 5)
    check_golden("live.m3u8", tl.render())


def test_live_playlist_window_slides() -> None:
    per_segment = CFG.part_packets * CFG.parts_per_segment
    tl, _ = timeline_after(0, 12 * per_segment + CFG.part_packets)
    check_golden("live_window.m3u8", tl.render())


def test_ended_live_playlist_and_vod() -> None:
    per_segment = CFG.part_packets * CFG.parts_per_segment
    tl, closed = timeline_after(per_segment // 2, 2 * per_segment + 30, end=True)
    check_golden("live_ended.m3u8", tl.render())
    vod = render_vod(CFG, [entry(s, with_parts=False) for s in closed if s.live])
    check_golden("vod.m3u8", vod)


@pytest.mark.parametrize("name", ["live.m3u8", "live_window.m3u8", "live_ended.m3u8", "vod.m3u8"])
def test_golden_files_are_valid_hls(name: str) -> None:
    """The golden files themselves follow RFC 8216bis rules that matter to players."""
    lines = (GOLDEN / name).read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    target = int(next(line for line in lines if line.startswith("#EXT-X-TARGETDURATION:")).split(":")[1])
    durations = [float(line[8:].rstrip(",")) for line in lines if line.startswith("#EXTINF:")]
    assert durations and all(d <= target + 0.5 for d in durations)
    assert all(float(line.split("DURATION=")[1].split(",")[0]) <= CFG.part_s + 1e-9 for line in lines if line.startswith("#EXT-X-PART:"))
    assert not any("DISCONTINUITY" in line for line in lines)
    if "ended" in name or name == "vod.m3u8":
        assert lines[-1] == "#EXT-X-ENDLIST" and not any("PRELOAD-HINT" in line for line in lines)
    else:
        assert lines[-1].startswith("#EXT-X-PRELOAD-HINT:TYPE=PART")
    # parts are byte ranges of their segment, back to back from byte 0, and the hint names the
    # next part's first byte: in the open segment, or at 0 of the next one
    ends: dict[str, int] = {}
    for line in lines:
        if line.startswith(("#EXT-X-PART:", "#EXT-X-PRELOAD-HINT:")):
            uri = line.split('URI="')[1].split('"')[0]
            assert re.fullmatch(r"[0-9]+\.m4s", uri), line
            if line.startswith("#EXT-X-PART:"):
                length, offset = map(int, line.split('BYTERANGE="')[1].split('"')[0].split("@"))
                assert offset == ends.get(uri, 0) and length > 0, line
                ends[uri] = offset + length
            else:
                assert int(line.split("BYTERANGE-START=")[1]) == ends.get(uri, 0), line


def test_multivariant_names_the_codec_and_bandwidth() -> None:
    text = render_multivariant("live.m3u8", peak_bps=71_000, average_bps=69_000)
    check_golden("index.m3u8", text)
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and lines[-1] == "live.m3u8"
    assert 'CODECS="mp4a.40.2"' in lines[-2] and "BANDWIDTH=71000" in lines[-2]
