import pytest

from amphi.core.config import MediaConfig
from amphi.core.errors import BadRequest, BeyondLiveEdge
from amphi.media.segmenter import Segmenter
from amphi.media.timeline import MediaTimeline

CFG = MediaConfig(part_packets=2, parts_per_segment=3)


def fed(units: int) -> tuple[MediaTimeline, Segmenter]:
    seg = Segmenter(CFG, epoch=0.0, encoder_delay=0, first_msn=0)
    tl = MediaTimeline(CFG, first_msn=0)
    for _ in range(units):
        for ev in seg.push(b"\x00", live=True):
            tl.apply(ev, seg.next_position)
    return tl, seg


def test_positions_and_lookups() -> None:
    tl, _ = fed(2 * 3 * 2 + 2 * 2)  # two segments and two parts of the third
    assert tl.last_position == (2, 1)
    assert tl.next_position == (2, 2)
    assert tl.part(2, 1) is not None and tl.part(2, 2) is None
    assert tl.segment(1) is not None and tl.segment(2) is None
    assert tl.is_hinted(2, 2) and not tl.is_hinted(2, 3)


def test_blocking_reload_is_satisfied_by_part_or_whole_segment() -> None:
    tl, _ = fed(2 * 3 * 2 + 2 * 2)
    assert tl.satisfies(2, 1) and not tl.satisfies(2, 2)
    assert tl.satisfies(1, None) and not tl.satisfies(2, None)
    assert tl.satisfies(None, None)


def test_requests_far_beyond_the_live_edge_are_refused_at_once() -> None:
    tl, _ = fed(2 * 3 * 2 + 2)
    tl.check_reload(2, 3)  # the next few parts: fine, the request will wait
    tl.check_reload(3, 0)
    with pytest.raises(BeyondLiveEdge):
        tl.check_reload(5, 0)
    with pytest.raises(BeyondLiveEdge):
        tl.check_reload(2, 40)
    with pytest.raises(BadRequest):
        tl.check_reload(None, 1)
    with pytest.raises(BadRequest):
        tl.check_reload(-1, None)


def test_window_keeps_a_bounded_number_of_segments() -> None:
    tl, _ = fed(2 * 3 * 40)
    assert tl.segment(0) is None and tl.segment(39) is not None
    assert tl.render().count("#EXTINF") == CFG.window_segments


def test_ended_timeline_satisfies_every_wait() -> None:
    tl, seg = fed(5)
    for ev in seg.finish():
        tl.apply(ev, seg.next_position)
    tl.end()
    assert tl.satisfies(99, 0)
    assert tl.render().endswith("#EXT-X-ENDLIST\n")


def test_a_growing_segment_is_served_from_its_first_part_and_its_bytes_add_up() -> None:
    tl, seg = fed(2 * 3 * 2 + 2 * 2)  # two segments and two parts of the third
    open_ = tl.growing(2)
    assert open_ is not None and not open_.closed and len(open_.parts) == 2
    assert [p.offset for p in open_.parts] == [0, len(open_.parts[0].data)]
    assert open_.size == len(open_.data) == sum(len(p.data) for p in open_.parts)
    assert open_.since(1) == open_.parts[1].data and open_.since(2) == b""
    assert tl.growing(1) is tl.segment(1) and tl.segment(1).closed
    # the one after the open segment is awaited (held until its first part); further is not
    assert tl.awaited(3) and not tl.awaited(4) and not tl.awaited(2)
    for _ in range(2):  # the third segment's last part: it closes, its bytes are joined once
        for ev in seg.push(b"\x00", live=True):
            tl.apply(ev, seg.next_position)
    closed = tl.segment(2)
    assert closed is open_ and closed.closed and closed.data is closed.data
    assert tl.awaited(3) and not tl.awaited(4)
    rendered = tl.render()
    # no part of segment 3 yet: no hint (Shaka Player would fetch a segment hinted at byte 0
    # whole, not streamed); the playlist names it with its first part
    assert rendered.rstrip().endswith("\n2.m4s") and "PRELOAD-HINT" not in rendered
    tl.end()
    assert not tl.awaited(3)


def test_the_hint_names_the_next_parts_first_byte_in_the_open_segment() -> None:
    tl, _ = fed(2 * 3 * 2 + 2 * 2)
    size = tl.growing(2).size
    assert f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="2.m4s",BYTERANGE-START={size}' in tl.render()
    assert tl.bit_rates() and all(r > 0 for r in tl.bit_rates())
