import pytest

from amphi.core.config import AAC_FRAME, MediaConfig
from amphi.media import fmp4
from amphi.media.segmenter import PartReady, SegmentClosed, Segmenter
from amphi.media.timeline import MediaTimeline

CFG = MediaConfig(part_packets=4, parts_per_segment=3)
UNIT = b"\x01\x02"


def run(tags: list[bool]) -> tuple[list[PartReady], list[SegmentClosed]]:
    seg = Segmenter(CFG, epoch=1000.0, encoder_delay=AAC_FRAME, first_msn=0)
    events = []
    for live in tags:
        events += seg.push(UNIT, live=live)
    events += seg.finish()
    return [e for e in events if isinstance(e, PartReady)], [e for e in events if isinstance(e, SegmentClosed)]


def test_parts_and_segments_have_the_configured_sizes() -> None:
    parts, segs = run([False] * 30)
    assert [len(s.segment.parts) for s in segs] == [3, 3, 2]  # 30 units = 7 parts of 4 + one of 2
    assert [p.part.samples for p in parts] == [4 * AAC_FRAME] * 7 + [2 * AAC_FRAME]
    assert [s.segment.msn for s in segs] == [0, 1, 2]


def test_timestamps_run_on_without_gaps_across_parts_and_segments() -> None:
    parts, segs = run([False] * 10 + [True] * 17)
    infos = [i for s in segs for i in fmp4.read_fragments(s.segment.data)]
    assert infos[0].base_decode_time == 0
    for a, b in zip(infos, infos[1:]):
        assert b.base_decode_time == a.end_decode_time
        assert b.sequence == a.sequence + 1
    assert infos[-1].end_decode_time == 27 * AAC_FRAME


def test_a_change_to_live_cuts_the_segment_exactly_there() -> None:
    _, segs = run([False] * 6 + [True] * 12)
    s = [e.segment for e in segs]
    assert [(x.live, x.samples // AAC_FRAME) for x in s] == [(False, 6), (True, 12)]
    assert s[1].first_sample == 6 * AAC_FRAME
    assert s[1].pdt == pytest.approx(1000.0 + (6 - 1) * AAC_FRAME / 48_000)


def test_next_position_names_the_part_to_come() -> None:
    seg = Segmenter(CFG, epoch=0.0, encoder_delay=0, first_msn=0)
    assert seg.next_position == (0, 0)
    for _ in range(4):
        seg.push(UNIT, live=True)
    assert seg.next_position == (0, 1)
    for _ in range(8):
        seg.push(UNIT, live=True)
    assert seg.next_position == (1, 0)


def test_push_after_finish_is_an_error() -> None:
    seg = Segmenter(CFG, epoch=0.0, encoder_delay=0)
    seg.finish()
    with pytest.raises(RuntimeError):
        seg.push(UNIT, live=True)


def test_media_sequence_numbers_start_at_one() -> None:
    # hls.js treats a part of segment 0 as "no part" when it appends it, drops that segment
    # from its fragment tracker and reloads its last part in a loop (the first listener of a
    # new program stalled for seconds). A program's first segment is therefore number 1.
    seg = Segmenter(CFG, epoch=0.0, encoder_delay=0)
    assert seg.next_position == (1, 0)
    events = [e for _ in range(12) for e in seg.push(UNIT, live=True)]
    assert [e.part.uri for e in events if isinstance(e, PartReady)] == ["1.0.m4s", "1.1.m4s", "1.2.m4s"]
    assert [e.segment.msn for e in events if isinstance(e, SegmentClosed)] == [1]
    assert MediaTimeline(CFG).next_position == (1, 0)
