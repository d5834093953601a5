"""A program resumed from a standby's copy: numbers and decode times run on, and the
discontinuity where it restarted is rendered and counted as the window slides (pure)."""

import json

import pytest

from amphi.core.config import AAC_FRAME, SAMPLE_RATE, MediaConfig
from amphi.media import fmp4
from amphi.media.playlist import SegmentEntry, render_vod
from amphi.media.recorder import Recording
from amphi.media.replica import parse_live, rebuild
from amphi.media.segmenter import Resume, SegmentClosed, Segmenter
from amphi.media.timeline import MediaTimeline

CFG = MediaConfig(part_packets=2, parts_per_segment=3, window_segments=3)
PER_SEGMENT = 6  # units
DELAY = AAC_FRAME


def make(units: int, *, seg: Segmenter | None = None, tl: MediaTimeline | None = None):
    seg = seg or Segmenter(CFG, epoch=1000.0, encoder_delay=DELAY)
    tl = tl or MediaTimeline(CFG)
    closed = []
    for _ in range(units):
        for ev in seg.push(b"\x01\x02\x03", live=True):
            tl.apply(ev, seg.next_position)
            if isinstance(ev, SegmentClosed):
                closed.append(ev.segment)
    return seg, tl, closed


def resumed(gap: bool, kept: int = 7) -> tuple[Resume, list]:
    """The first host makes ``kept`` segments; a copy of them rebuilt from their bytes and the
    host's playlist, as the replica does."""
    _, tl, closed = make(kept * PER_SEGMENT)
    playlist = parse_live(tl.render())
    copies = [rebuild(s.msn, s.data, pdt=s.pdt, live=True, discontinuity=False) for s in closed]
    assert [c.msn for c in copies] == [s.msn for s in closed]
    assert playlist.live_from == 1 and [x.msn for x in playlist.segments] == [s.msn for s in closed[-3:]]
    newest = copies[-1]
    last = fmp4.read_fragments(newest.parts[-1].data)[-1]
    return Resume(next_msn=newest.msn + 1, next_sample=last.end_decode_time, next_sequence=last.sequence + 1,
                  segments=tuple(copies[-7:]), discontinuity_sequence=0, gap=gap,
                  end_wall=newest.pdt + newest.duration), closed


def continue_program(r: Resume, units: int, *, wall: float):
    """What Pipeline.start does with a resume point (wall: the new program's epoch)."""
    epoch = wall - r.next_sample / SAMPLE_RATE if r.gap else r.end_wall - (r.next_sample - DELAY) / SAMPLE_RATE
    seg = Segmenter(CFG, epoch=epoch, encoder_delay=DELAY, first_msn=r.next_msn, first_sample=r.next_sample,
                    first_sequence=r.next_sequence, discontinuity=r.gap)
    tl = MediaTimeline(CFG, first_msn=r.next_msn, segments=r.segments, discontinuity_sequence=r.discontinuity_sequence)
    return make(units, seg=seg, tl=tl)


def test_rebuilt_segments_have_the_parts_the_host_made() -> None:
    _, _, closed = make(2 * PER_SEGMENT)
    for s in closed:
        copy = rebuild(s.msn, s.data, pdt=s.pdt, live=True, discontinuity=False)
        assert copy.parts == s.parts and copy.data == s.data and copy.first_sample == s.first_sample
        assert copy.closed and copy.size == s.size


@pytest.mark.parametrize("gap", [True, False])
def test_numbers_and_decode_times_run_on(gap: bool) -> None:
    r, before = resumed(gap)
    _, tl, after = continue_program(r, 2 * PER_SEGMENT, wall=5000.0)
    assert [s.msn for s in after] == [before[-1].msn + 1, before[-1].msn + 2]
    infos = [i for s in before + after for i in fmp4.read_fragments(s.data)]
    for a, b in zip(infos, infos[1:]):
        assert b.base_decode_time == a.end_decode_time
        assert b.sequence == a.sequence + 1
    assert after[0].discontinuity is gap and not after[1].discontinuity
    if gap:  # the wall time of the new program (its sample 0, less the priming)
        assert after[0].pdt == pytest.approx(5000.0 - DELAY / SAMPLE_RATE)
    else:  # exactly where the last one ended
        assert after[0].pdt == pytest.approx(before[-1].pdt + before[-1].duration)
    # the copied segments are served as if made here
    assert tl.segment(before[-1].msn) is not None and tl.segment(before[-1].msn).data == before[-1].data


def test_the_discontinuity_is_rendered_then_counted_as_it_leaves_the_window() -> None:
    r, before = resumed(True)
    cut = before[-1].msn + 1
    seg, tl, _ = continue_program(r, 1 * PER_SEGMENT + 2, wall=5000.0)
    text = tl.render()
    lines = text.splitlines()
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert "DISCONTINUITY-SEQUENCE" not in text  # still listed: nothing has left
    at = lines.index("#EXT-X-DISCONTINUITY")
    assert lines[at + 1].startswith("#EXT-X-PROGRAM-DATE-TIME:")
    uri = next(line for line in lines[at:] if not line.startswith("#"))
    assert uri == f"{cut}.m4s"
    # three more segments: the window (3) no longer lists segment `cut`
    for n in range(1, 4):
        make(PER_SEGMENT, seg=seg, tl=tl)
        text = tl.render()
        parsed = parse_live(text)
        listed = [s.msn for s in parsed.segments]
        if cut in listed:
            assert "#EXT-X-DISCONTINUITY\n" in text and parsed.discontinuity_sequence == 0
        else:
            assert "#EXT-X-DISCONTINUITY\n" not in text
            assert "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in text and parsed.discontinuity_sequence == 1
    assert cut not in listed
    # kept beyond the window, then dropped from memory: the count stays
    make(8 * PER_SEGMENT, seg=seg, tl=tl)
    assert tl.segment(cut) is None and "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in tl.render()


def test_a_second_resume_carries_the_sequence_on() -> None:
    r, _ = resumed(True)
    _, tl, after = continue_program(r, 12 * PER_SEGMENT, wall=5000.0)  # the cut has left memory
    r2 = Resume(next_msn=after[-1].msn + 1, next_sample=after[-1].first_sample + after[-1].samples,
                next_sequence=fmp4.read_fragments(after[-1].data)[-1].sequence + 1,
                segments=tuple(tl.segments), discontinuity_sequence=1, gap=True, end_wall=0.0)
    _, tl2, _ = continue_program(r2, 4 * PER_SEGMENT, wall=9000.0)
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:2\n" in tl2.render()


def test_vod_has_every_discontinuity_and_a_sequence_of_zero() -> None:
    entries = [SegmentEntry(m, f"{m}.m4s", 6.0, 1000.0 + 6 * m, discontinuity=m == 3) for m in range(1, 6)]
    text = render_vod(CFG, entries)
    lines = text.splitlines()
    assert "DISCONTINUITY-SEQUENCE" not in text and lines.count("#EXT-X-DISCONTINUITY") == 1
    at = lines.index("#EXT-X-DISCONTINUITY")
    assert next(line for line in lines[at:] if not line.startswith("#")) == "3.m4s"


def test_the_recording_reads_its_discontinuity_and_wall_times_back(tmp_path) -> None:
    r, before = resumed(True)
    _, _, after = continue_program(r, 2 * PER_SEGMENT, wall=5000.0)
    rec = Recording(tmp_path, CFG)
    rec.begin(epoch=1000.0, delay=DELAY, asc=fmp4.audio_specific_config())
    for s in before + after:
        rec.write_segment(s)
    again = Recording.open(tmp_path, CFG)
    assert json.loads((tmp_path / "rec.json").read_text())["breaks"][0][0] == after[0].msn
    assert [(e.msn, e.discontinuity) for e in again.entries] == [(e.msn, e.discontinuity) for e in rec.entries]
    assert [e.pdt for e in again.entries] == pytest.approx([e.pdt for e in rec.entries])
    assert [e.msn for e in again.entries if e.discontinuity] == [after[0].msn]
    assert again.vod_playlist() == rec.vod_playlist() and rec.vod_playlist().count("#EXT-X-DISCONTINUITY\n") == 1


def test_the_live_playlist_names_its_first_live_segment_once_live() -> None:
    seg = Segmenter(CFG, epoch=1000.0, encoder_delay=DELAY)
    tl = MediaTimeline(CFG)
    for live in [False] * 8 + [True] * 8:
        for ev in seg.push(b"\x00", live=live):
            tl.apply(ev, seg.next_position)
        if not live:
            assert parse_live(tl.render()).live_from is None
    # hold: 6 units (segment 1) + 2 (segment 2, cut short at the start); live from segment 3
    assert parse_live(tl.render()).live_from == 3 and tl.segment(2) is not None and not tl.segment(2).live
