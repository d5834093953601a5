"""A streamed segment whose program dies mid-way is cut off, never ended as if whole: an edge
or a player that saw a clean end would keep a truncated segment (docs/streaming.md). The real
pipeline, crashed as tests/media/test_pipeline.py crashes it, behind the real origin."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from amphi.core.config import MediaConfig
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.web.origin import Origin, StreamCut
from amphi.web.routes import ROUTES
from tests.media.test_pipeline import BrokenFeed

CFG = MediaConfig(part_packets=4, parts_per_segment=40)  # 85 ms parts, 3.4 s segments: the crash comes mid-segment


class Source:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def media(self, space_id: str) -> tuple[Pipeline, Recording]:
        return self.pipeline, self.pipeline.recording

    def ended(self, space_id: str) -> bool:
        return False

    def optional_work_allowed(self) -> None:
        return None

    def check_publishing(self, space_id: str) -> None:
        return None  # one node: it publishes the Spaces it has

    def may_publish(self, space_id: str) -> bool:
        return True


class Edge:
    def verify_edge(self, credential: str | None) -> str:
        return "edge1"


async def test_a_segment_whose_program_dies_is_cut_off_not_ended(tmp_path: Path) -> None:
    pipeline = Pipeline("cut", CFG, Recording.open(tmp_path, CFG), live=True)
    pipeline.add_feed("speaker", BrokenFeed(after=40))  # 0.8 s of program, then the mixer dies
    origin = Origin(Source(pipeline), Edge(), CFG)  # type: ignore[arg-type]
    await pipeline.start()
    try:
        path = f"/media/s/edge/{pipeline.timeline.next_position[0]}.m4s"
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
        sent: list[dict] = []

        async def receive() -> dict:
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        async def end_on_failure() -> None:  # what the Space's service does with a failed program
            await pipeline.wait_for(lambda: bool(pipeline.failures), 10)
            await pipeline.end()

        ending = asyncio.create_task(end_on_failure())
        with pytest.raises(StreamCut):
            await asyncio.wait_for(origin(scope, receive, send, ROUTES.match(path, "GET")), 5)
        await ending
    finally:
        await pipeline.stop()
    assert pipeline.failures == {"mixer:cut": "RuntimeError: return feed broke"}
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = sent[1:]
    assert bodies and all(m["more_body"] for m in bodies)  # parts went out, and no clean end followed
    assert sum(len(m["body"]) for m in bodies) > 0
    assert origin.stats.streams == 1 and origin.stats.streams_cut == 1 and origin.stats.streams_open == 0
