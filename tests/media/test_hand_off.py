"""A planned move (``Pipeline.hand_off``, for ``amphi drain``): the program stops at a part
boundary with its last segment complete, and the program resumed from it on another node
(``Resume(gap=False)``) runs on with no discontinuity, in numbers, decode times, wall times
and sound. In process: a real node cannot be told to hand off without the lead's drain API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from amphi.core.config import SAMPLE_RATE, MediaConfig, SoundConfig
from amphi.core.errors import IllegalTransition
from amphi.media import fmp4
from amphi.media.encoder import DELAY
from amphi.media.jitter import JitterBuffer
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.media.replica import parse_live, rebuild, resume_from
from amphi.media.segmenter import FIRST_MSN
from tests.audio import SR, dominant_hz, ffmpeg_decode, rms

PARTS = 4  # 2.048 s segments of 0.512 s parts
# the guard off: the tone reaches the encoder as made, so the seam is measured alone
CFG = MediaConfig(parts_per_segment=PARTS, sound=SoundConfig(enabled=False))
LEVEL = 0.35
TONE_RMS = LEVEL / np.sqrt(2)


class ToneTrack(JitterBuffer):
    """A speaker's input that always has its next 20 ms of a 440 Hz tone, its phase that of
    program-independent sample ``start + n``: two programs can play one unbroken tone. (A
    pushed jitter buffer may run dry on a busy machine; the seam would drown in that.)"""

    def __init__(self, start: int) -> None:
        super().__init__(target=1, limit=1)
        self.next = start

    def pop(self, overdue: int = 0) -> np.ndarray:
        n = CFG.tick_samples
        t = (np.arange(n) + self.next) / SAMPLE_RATE
        self.next += n
        return (LEVEL * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def play_tone(pipeline: Pipeline, start: int) -> None:
    pipeline.add_track("tone")
    pipeline.mixer.tracks["tone"] = ToneTrack(start)


def copy_to(recording: Recording, segments, init: bytes) -> None:
    """What the standby's replica did: each live segment, rebuilt from its bytes, into its own
    recording (the epoch read back from the first one's wall time and decode time)."""
    first = segments[0]
    recording.begin(epoch=first.pdt - (first.first_sample - DELAY) / SAMPLE_RATE, delay=DELAY,
                    asc=fmp4.read_audio_specific_config(init))
    for s in segments:
        recording.write_segment(s)


async def test_hand_off_mid_segment_then_the_next_node_runs_on_seamlessly(tmp_path: Path) -> None:
    host = Pipeline("moving", CFG, Recording(tmp_path / "host", CFG), live=True)
    play_tone(host, 0)  # the first tick plays tone sample 0: phase = decode time - DELAY
    await host.start()
    timeline = host.timeline
    second = FIRST_MSN + 1
    assert await host.wait_for(lambda: (timeline.last_position or (0, 0)) >= (second, 0), 15)
    seen = timeline.last_position
    assert seen is not None and seen[0] == second and seen[1] + 2 < PARTS, seen  # mid-segment

    # listeners waiting: for the part in progress (comes), past it (never comes from here)
    coming = asyncio.create_task(host.wait_for(lambda: timeline.part(second, seen[1] + 1) is not None, 30))
    reload = asyncio.create_task(host.wait_for(lambda: timeline.satisfies(second + 1, None), 30))
    hinted = asyncio.create_task(host.wait_for(lambda: timeline.part(second, seen[1] + 2) is not None, 30))
    nxt = asyncio.create_task(host.wait_for(lambda: timeline.growing(second + 1) is not None, 30))
    await asyncio.sleep(0)
    t = time.monotonic()
    last = await host.hand_off()
    took = time.monotonic() - t
    assert last == second and took < CFG.part_s + 1.0, took  # at the next part boundary, not the segment's
    assert await asyncio.wait_for(coming, 1) is True
    assert await asyncio.wait_for(asyncio.gather(reload, hinted, nxt), 1) == [False, False, False]

    # the last segment: complete, shorter, listed complete, no ENDLIST, no preload hint
    seg = timeline.segment(last)
    assert seg is not None and seg.closed and len(seg.parts) == seen[1] + 2
    assert seg.samples == len(seg.parts) * CFG.part_samples < CFG.segment_samples
    text = timeline.render()
    assert "#EXT-X-ENDLIST" not in text and "PRELOAD-HINT" not in text and not timeline.ended
    listed = parse_live(text)
    assert listed.segments[-1].msn == last and not listed.ended
    assert f"#EXTINF:{seg.duration:.3f}," in text and seg.duration < CFG.segment_s
    assert host.handed_off and host.ended and host.supervisor.tasks == []

    # the recording: the last segment written, closed for writing, no replay here
    assert [e.msn for e in host.recording.entries] == [FIRST_MSN, last]
    assert (tmp_path / "host" / f"{last}.m4s").read_bytes() == seg.data
    assert not (tmp_path / "host" / "vod.m3u8").exists() and host.recorder.closed
    assert not host.recorder.put(seg)

    # nothing published after; idempotent; end() returns at once; what exists is still there
    after = timeline.last_position
    await asyncio.sleep(2 * CFG.part_s)  # the mixer would have made four more parts by now
    assert timeline.last_position == after == (last, len(seg.parts) - 1)
    assert await asyncio.wait_for(host.hand_off(), 1) == last
    await asyncio.wait_for(host.end(), 1)
    assert not timeline.ended and timeline.segment(last) is seg and not (tmp_path / "host" / "vod.m3u8").exists()

    # -- the next node: its copy (the standby's), resumed with no gap --------------------------
    copies = [rebuild(s.msn, s.data, pdt=s.pdt, live=s.live, discontinuity=False) for s in timeline.segments]
    standby = Recording(tmp_path / "standby", CFG)
    copy_to(standby, copies, host.init)
    resume = resume_from(copies, gap=False)
    assert resume.next_msn == last + 1 and resume.end_wall == pytest.approx(seg.pdt + seg.duration)
    nexthost = Pipeline("moving", CFG, standby, live=True, resume=resume)
    # without a gap the next program's sample s decodes at next_sample + s: the tone runs on
    play_tone(nexthost, resume.next_sample - DELAY)
    await nexthost.start()
    assert await nexthost.wait_for(lambda: nexthost.stats.recorder.written >= 2, 20)
    live_text = nexthost.timeline.render()
    await nexthost.end()
    assert nexthost.failures == {}

    entries = standby.entries
    msns = [e.msn for e in entries]
    assert msns == list(range(FIRST_MSN, FIRST_MSN + len(msns))) and last + 2 in msns
    assert not any(e.discontinuity for e in entries)
    assert "DISCONTINUITY" not in live_text and "DISCONTINUITY" not in (tmp_path / "standby" / "vod.m3u8").read_text()
    for a, b in zip(entries, entries[1:]):  # wall times run on exactly
        assert b.pdt == pytest.approx(a.pdt + a.duration, abs=1e-6), (a, b)
    frags = [f for m in msns for f in fmp4.read_fragments((tmp_path / "standby" / f"{m}.m4s").read_bytes())]
    for a, b in zip(frags, frags[1:]):  # decode times and moof numbers run on
        assert (b.base_decode_time, b.sequence) == (a.end_decode_time, a.sequence + 1)

    # -- what a listener hears across the seam (ffmpeg reads the replay) ------------------------
    audio = ffmpeg_decode(tmp_path / "standby" / "vod.m3u8")
    start = frags[0].base_decode_time
    total = frags[-1].end_decode_time - start
    assert abs(len(audio) - total) <= DELAY, (len(audio), total)
    trimmed = total - len(audio)  # samples of priming ffmpeg left out at the start (if any)
    seam = resume.next_sample - start - trimmed  # where the next node's first unit plays
    w = SR // 50  # 20 ms
    around = audio[seam - SR // 2: seam + SR // 2]
    hz = [dominant_hz(around[i:i + SR // 20]) for i in range(0, len(around), SR // 20)]
    assert all(abs(h - 440) < 25 for h in hz), hz  # the tone in every 50 ms around the seam
    levels = [rms(audio[seam + k * w: seam + (k + 1) * w]) for k in range(-3, 3)]
    step = float(np.abs(np.diff(audio[seam - w: seam + 2 * w])).max())
    tone_step = LEVEL * 2 * np.pi * 440 / SR  # the tone's own largest step from one sample to the next
    ref = LEVEL * np.sin(2 * np.pi * 440 * (np.arange(len(audio)) + start + trimmed - DELAY) / SR)
    err = [rms((audio - ref)[seam + k * w // 4: seam + (k + 1) * w // 4]) for k in range(-4, 8)]
    print(f"seam at decode time {resume.next_sample}: 20 ms RMS {[round(x, 3) for x in levels]}"
          f" (tone {TONE_RMS:.3f}); max step {step:.4f}"
          f" (tone {tone_step:.4f}); error to the unbroken tone, 5 ms RMS"
          f" {[round(x, 3) for x in err]}")
    # with the next node's priming unit kept, the 20 ms after the seam fell to 0.56 of the tone
    # (a fade-out) and the tone came back with a step of 0.18 (a click): 9 times the tone's
    assert all(0.8 * TONE_RMS < x < 1.15 * TONE_RMS for x in levels), levels  # 0.89-0.99 at 14 part ends
    assert step < 2.5 * tone_step, step


async def test_hand_off_is_refused_without_a_segment_and_answers_at_once_after_the_end(tmp_path: Path) -> None:
    pipeline = Pipeline("early", CFG, Recording(tmp_path, CFG), live=True)
    with pytest.raises(IllegalTransition, match="not started"):
        await pipeline.hand_off()
    await pipeline.start()
    assert await pipeline.wait_for(lambda: pipeline.timeline.has_segments, 15)
    await pipeline.end()
    newest = pipeline.timeline.segments[-1].msn
    assert await asyncio.wait_for(pipeline.hand_off(), 1) == newest
    assert not pipeline.handed_off and pipeline.recording.finalized  # an end stays an end


async def test_two_hand_offs_at_once_make_one_move(tmp_path: Path) -> None:
    pipeline = Pipeline("twice", CFG, Recording(tmp_path, CFG), live=True)
    await pipeline.start()
    assert await pipeline.wait_for(lambda: pipeline.timeline.last_position is not None, 15)
    a, b = await asyncio.gather(pipeline.hand_off(), pipeline.hand_off())
    assert a == b == FIRST_MSN and pipeline.timeline.segment(a).closed
    await pipeline.abandon()  # a fence after the move changes nothing
    assert await pipeline.hand_off() == a and not pipeline.timeline.ended
