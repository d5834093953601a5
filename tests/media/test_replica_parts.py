"""How the standby copies the open segment: its bytes cut into parts as they arrive, the open
segment read from the host's playlist, and the shorter segment a crash leaves recorded first
by the resumed program (pure, and one in-process pipeline)."""

from pathlib import Path

import pytest

from amphi.core.config import AAC_FRAME, SAMPLE_RATE, MediaConfig
from amphi.media import fmp4
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.media.replica import _Parts, parse_live, rebuild, resume_from
from amphi.media.segmenter import PartReady, Segmenter
from amphi.media.timeline import MediaTimeline

CFG = MediaConfig(part_packets=2, parts_per_segment=3, window_segments=3)
DELAY = AAC_FRAME


def program(units: int) -> tuple[MediaTimeline, list]:
    """A host's timeline after ``units`` access units, and every part it published."""
    seg = Segmenter(CFG, epoch=1000.0, encoder_delay=DELAY)
    tl = MediaTimeline(CFG)
    parts = []
    for i in range(units):
        for ev in seg.push(bytes([i % 251]) * (20 + i % 7), live=True):
            tl.apply(ev, seg.next_position)
            if isinstance(ev, PartReady):
                parts.append(ev.part)
    return tl, parts


@pytest.mark.parametrize("chunk", [1, 7, 50, 10_000])
def test_a_streamed_segment_is_cut_into_the_parts_the_host_made(chunk: int) -> None:
    tl, parts = program(6)
    seg = tl.segments[-1]
    cutter, got = _Parts(), []
    for at in range(0, seg.size, chunk):
        got += cutter.feed(seg.data[at:at + chunk])
        assert cutter.whole == (sum(len(d) for _, d in got) == min(at + chunk, seg.size))
    assert got == [(p.offset, p.data) for p in seg.parts]
    assert cutter.whole


def test_bytes_that_do_not_begin_a_part_are_refused() -> None:
    tl, _ = program(6)
    data = tl.segments[-1].data
    with pytest.raises(fmp4.MalformedMp4):
        _Parts().feed(data[8:])
    with pytest.raises(fmp4.MalformedMp4):
        _Parts().feed(b"\x00\x00\x00\x02moof")


def test_the_open_segment_is_read_from_the_playlist() -> None:
    tl, _ = program(6 + 3)  # one segment complete, the next one part and a half in
    playlist = parse_live(tl.render())
    assert [(s.msn, s.complete) for s in playlist.segments] == [(1, True), (2, False)]
    open_ = playlist.find(2)
    assert open_ is not None and open_.pdt == pytest.approx(tl.growing(2).pdt, abs=1e-3)
    assert playlist.find(3) is None and playlist.find(0) is None and playlist.newest_complete == 1
    tl.end()
    assert [s.complete for s in parse_live(tl.render()).segments] == [True]  # an ended one has no open segment


async def test_the_partial_segment_is_recorded_first_even_when_the_recording_had_not_begun(tmp_path: Path) -> None:
    """The host died during its first live segment: the copy holds two parts of it and
    nothing recorded; the resumed program records it (with the host's wall times), then its own."""
    tl, parts = program(2 * CFG.part_packets)  # two parts of segment 1, open
    open_ = tl.growing(1)
    assert open_ is not None and not open_.closed and len(open_.parts) == 2
    partial = rebuild(1, open_.data, pdt=open_.pdt, live=True, discontinuity=False)
    resume = resume_from([partial], gap=True, unrecorded=[partial])
    assert resume.next_msn == 2 and resume.end_wall == pytest.approx(open_.pdt + 2 * CFG.part_s)
    recording = Recording(tmp_path, CFG)
    pipeline = Pipeline("partial", CFG, recording, live=True, resume=resume)
    await pipeline.start()
    assert pipeline.timeline.segment(1) is partial  # served
    assert await pipeline.wait_for(lambda: pipeline.stats.recorder.written >= 2, 10)
    await pipeline.end()
    assert pipeline.failures == {}
    entries = recording.entries
    assert [(e.msn, e.discontinuity) for e in entries[:2]] == [(1, False), (2, True)]
    assert entries[0].duration == pytest.approx(2 * CFG.part_s) and entries[0].pdt == pytest.approx(open_.pdt)
    assert (tmp_path / "1.m4s").read_bytes() == open_.data
    assert recording.epoch == pytest.approx(open_.pdt - (open_.first_sample - DELAY) / SAMPLE_RATE)
    again = Recording.open(tmp_path, CFG)  # a restart reads back the host's wall times, then the new program's
    assert [e.pdt for e in again.entries] == pytest.approx([e.pdt for e in entries], abs=1e-6)
