"""The pipeline's clock under the event loop the server runs (uvloop); a slow disk, a full
recorder queue and crashed tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import uvloop

from amphi.core.config import SAMPLE_RATE, MediaConfig
from amphi.core.files import write_atomic
from amphi.media.encoder import DELAY
from amphi.media.pipeline import Pipeline, PipelineStats
from amphi.media.recorder import Recording
from amphi.media.segmenter import FIRST_MSN


def run_pipeline(tmp_path: Path, ticks: int) -> PipelineStats:
    cfg = MediaConfig()

    async def main() -> PipelineStats:
        pipeline = Pipeline("clock", cfg, Recording.open(tmp_path, cfg), live=True)
        await pipeline.start()
        await pipeline.wait_for(lambda: pipeline.stats.ticks >= ticks, timeout=30)
        await pipeline.stop()
        return pipeline.stats

    return uvloop.run(main())


def test_clock_wakes_once_per_tick_under_uvloop(tmp_path: Path) -> None:
    # uvloop's clock moves in whole milliseconds; a clock that rounds a due tick to "not
    # yet" sleeps for 0 s and spins thousands of times a second
    stats = run_pipeline(tmp_path, 60)
    assert stats.ticks >= 60
    assert stats.wakeups <= stats.ticks * 1.2 + 5, stats
    assert stats.frames_dropped == 0


# -- a slow disk never delays a part ---------------------------------------------------------

SHORT = MediaConfig(part_packets=6, parts_per_segment=4)  # parts of 128 ms, segments of 512 ms
SLOW_FSYNC_S = 0.3


def slow_disk(path: Path, data: bytes) -> None:
    """A disk whose every durable write takes 300 ms longer (a busy disk's fsync)."""
    write_atomic(path, data)
    time.sleep(SLOW_FSYNC_S)


async def part_lateness(pipeline: Pipeline, segments: int) -> list[float]:
    """How long after its last sample was mixed each part was published, until ``segments``
    whole segments are out."""
    timeline = pipeline.timeline
    lateness: list[float] = []
    seen = timeline.last_position
    while seen is None or seen[0] - FIRST_MSN < segments:
        assert await pipeline.wait_for(lambda: timeline.last_position != seen, timeout=5)
        now = time.time()
        seen = timeline.last_position
        assert seen is not None
        part = timeline.part(*seen)
        assert part is not None
        lateness.append(now - (pipeline.epoch + (part.first_sample + part.samples - DELAY) / SAMPLE_RATE))
    return lateness


async def test_a_300ms_fsync_does_not_delay_parts_and_the_recording_is_complete(tmp_path: Path) -> None:
    fast = Pipeline("fast", SHORT, Recording.open(tmp_path / "fast", SHORT), live=True)
    slow = Pipeline("slow", SHORT, Recording.open(tmp_path / "slow", SHORT, write=slow_disk), live=True)
    await fast.start()
    await slow.start()
    fast_late, slow_late = await asyncio.gather(part_lateness(fast, 6), part_lateness(slow, 6))
    # without the queue each segment's write (and the first's metadata, 0.9 s) sat between two
    # parts: the parts after it came out 170-770 ms late
    assert max(slow_late) < max(fast_late) + 0.1, (slow_late, fast_late)
    assert slow.stats.recorder.peak >= 1

    t = time.monotonic()
    await asyncio.gather(fast.end(), slow.end())
    assert time.monotonic() - t < 5

    # ended: every live segment on disk, the replay playlist written, nothing dropped
    rec = slow.recording
    segments = [slow.timeline.segment(m) for m in range(FIRST_MSN, slow.timeline.last_position[0] + 1)]
    assert all(s is not None and s.live for s in segments)
    assert [e.msn for e in rec.entries] == [s.msn for s in segments]
    assert rec.finalized
    vod = (tmp_path / "slow" / "vod.m3u8").read_text()
    assert all(f"\n{s.uri}\n" in vod for s in segments) and vod.endswith("#EXT-X-ENDLIST\n")
    assert all((tmp_path / "slow" / s.uri).read_bytes() == s.data for s in segments)
    assert slow.stats.recorder.written == len(segments) and slow.stats.recorder.dropped == 0
    assert slow.stats.recorder.write_max_s >= SLOW_FSYNC_S  # the disk really was slow
    again = Recording.open(tmp_path / "slow", SHORT)
    assert again.entries == rec.entries


async def test_a_full_recorder_queue_drops_the_new_segment_and_counts_it(tmp_path: Path) -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stuck_disk(path: Path, data: bytes) -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
        write_atomic(path, data)

    pipeline = Pipeline("stuck", SHORT, Recording.open(tmp_path, SHORT, write=stuck_disk), live=True,
                        recorder_bound=2)
    await pipeline.start()
    # the disk holds the first write; the program goes on: 2 segments wait, the rest are dropped
    assert await pipeline.wait_for(lambda: (pipeline.timeline.last_position or (0, 0))[0] >= FIRST_MSN + 5, 10)
    stats = pipeline.stats.recorder
    assert stats.queued == 2 and stats.peak == 2
    assert stats.dropped >= 2 and stats.written == 0
    release.set()
    await pipeline.end()
    kept = [e.msn for e in pipeline.recording.entries]
    assert kept[:2] == [FIRST_MSN, FIRST_MSN + 1]
    total = pipeline.timeline.last_position[0] - FIRST_MSN + 1  # every segment, all live
    assert stats.written + stats.dropped == total and len(kept) == stats.written


# -- a crashed task is reported, not swallowed ----------------------------------------------------

class BrokenFeed:
    """A speaker's return feed that breaks after ``after`` frames."""

    def __init__(self, after: int) -> None:
        self.left = after

    def push(self, samples: np.ndarray) -> None:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("return feed broke")


async def test_a_crash_in_the_mixer_is_logged_reported_and_the_recording_closed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline("crash", SHORT, Recording.open(tmp_path, SHORT), live=True)
    pipeline.add_feed("speaker", BrokenFeed(after=60))  # 1.2 s of program, then the mixer dies
    with caplog.at_level(logging.INFO):
        await pipeline.start()
        assert await pipeline.wait_for(lambda: bool(pipeline.failures), timeout=10)
        assert pipeline.failures == {"mixer:crash": "RuntimeError: return feed broke"}
        logged = [r for r in caplog.records if r.levelno == logging.ERROR and "mixer:crash" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        await asyncio.wait_for(pipeline.end(), 5)  # does not wait for a program that cannot end
        await pipeline.stop()
    assert pipeline.ended and pipeline.timeline.ended
    assert pipeline.recording.finalized and len(pipeline.recording.entries) >= 1  # what reached it is kept
    assert Recording.open(tmp_path, SHORT).entries == pipeline.recording.entries
    assert pipeline.failures == {"mixer:crash": "RuntimeError: return feed broke"}  # the encoder was cancelled
    assert len([r for r in caplog.records if "mixer:crash" in r.getMessage() and r.levelno == logging.ERROR]) == 1


async def test_a_dead_recorder_stops_the_recording_not_the_program(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def full_disk(path: Path, data: bytes) -> None:
        if path.suffix == ".m4s" and int(path.stem) > FIRST_MSN:
            raise OSError(28, "No space left on device")
        write_atomic(path, data)

    pipeline = Pipeline("full", SHORT, Recording.open(tmp_path, SHORT, write=full_disk), live=True)
    await pipeline.start()
    assert await pipeline.wait_for(lambda: bool(pipeline.failures), timeout=10)
    assert pipeline.failures == {"recorder:full": "OSError: [Errno 28] No space left on device"}
    position = pipeline.timeline.last_position
    assert await pipeline.wait_for(lambda: pipeline.timeline.last_position != position, timeout=5)  # still live
    await asyncio.wait_for(pipeline.stop(), 5)
    assert [e.msn for e in pipeline.recording.entries] == [FIRST_MSN]
    assert pipeline.recording.finalized
    assert pipeline.stats.recorder.dropped >= 1
    assert any("recorder:full" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_program_cancelled_from_outside_still_ends_and_closes_the_recording(tmp_path: Path) -> None:
    pipeline = Pipeline("cancelled", SHORT, Recording.open(tmp_path, SHORT), live=True)
    await pipeline.start()
    assert await pipeline.wait_for(lambda: pipeline.stats.recorder.written >= 1, timeout=10)
    encoder = next(t for t in pipeline.supervisor.tasks if t.get_name() == "encoder:cancelled")
    encoder.cancel()
    await asyncio.wait_for(pipeline.stop(), 5)  # does not wait for an end the encoder cannot bring
    assert pipeline.ended and pipeline.recording.finalized and pipeline.recording.entries
    assert pipeline.failures == {}  # cancelled is not failed
    assert pipeline.supervisor.tasks == []
