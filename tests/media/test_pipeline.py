"""The pipeline's clock under the event loop the server runs (uvloop)."""

from __future__ import annotations

from pathlib import Path

import uvloop

from amphi.core.config import MediaConfig
from amphi.media.pipeline import Pipeline, PipelineStats
from amphi.media.recorder import Recording


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
