"""The composition root: builds one node from config and owns all its tasks.

The control plane (``amphi.control``) and the media plane (``amphi.media``) meet here and
nowhere else: a Space's lifecycle drives its pipeline; the web layer talks to this class.

Lifecycle: new -> running -> stopped. ``run()`` serves until cancelled, then shuts down in
order: stop accepting speakers, end live programs (their recordings are closed with
reason "shutdown"), stop the HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from amphi.control.presence import Presence
from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.core.config import Config
from amphi.core.errors import Conflict
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.media.jitter import JitterBuffer
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording

log = logging.getLogger(__name__)

SCHEDULER_PERIOD_S = 0.25


class _TrackSink:
    """Feeds one speaker's decoded audio into its jitter buffer in the mixer."""

    def __init__(self, buf: JitterBuffer) -> None:
        self._buf = buf

    def push(self, samples: np.ndarray) -> None:
        self._buf.push(samples)

    def close(self) -> None:
        self._buf.close()


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.registry = SpaceRegistry(cfg.data_dir / "spaces")
        self.ingest = WebRTCIngest(cfg.ice_addresses)
        self.pipelines: dict[str, Pipeline] = {}
        self._recordings: dict[str, Recording] = {}
        self._presence: dict[str, Presence] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()  # serialises lifecycle changes
        self.ready = asyncio.Event()

    # -- start-up and shutdown --------------------------------------------------------------

    async def open(self) -> None:
        """Loads stored Spaces; closes the recordings of those a crash cut off."""
        for space in self.registry.load():
            rec = self.recording(space.id)
            await asyncio.to_thread(rec.finalize)
            log.warning("space %s ended abnormally; %.1f s of recording kept", space.id, rec.duration)
        self.spawn(self._scheduler(), name="scheduler")

    async def close(self) -> None:
        await self.ingest.close_all()
        for space_id, pipeline in list(self.pipelines.items()):
            space = self.registry.get(space_id)
            if space.state is SpaceState.LIVE:
                self.registry.transition(space, SpaceState.ENDED, reason="shutdown")
            await pipeline.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _scheduler(self) -> None:
        while True:
            for space in self.registry.due():
                try:
                    await self.start_space(space)
                except Conflict:
                    pass
            await asyncio.sleep(SCHEDULER_PERIOD_S)

    # -- Spaces -----------------------------------------------------------------------------

    def create_space(self, title: object, starts_at: object = None) -> tuple[Space, str]:
        return self.registry.create(title, starts_at)

    async def start_space(self, space: Space) -> None:
        async with self._lock:
            self.registry.transition(space, SpaceState.LIVE)  # raises, naming the state
            pipeline = self.pipelines.get(space.id)
            if pipeline is None:
                await self._pipeline(space)  # born live: no hold audio to cut away
            else:
                pipeline.go_live()  # listeners already hear hold music: switch at the next boundary

    async def end_space(self, space: Space) -> None:
        async with self._lock:
            self.registry.transition(space, SpaceState.ENDED, reason="host")
            pipeline = self.pipelines.get(space.id)
        await self.ingest.close(self._speaker(space.id, "host"))
        if pipeline is not None:
            await pipeline.end()
        self.registry.record_peak(space, self._presence_of(space.id).peak)
        self.registry.save(space)
        self.pipelines.pop(space.id, None)

    async def _pipeline(self, space: Space) -> Pipeline:
        """The Space's running pipeline, started on first need (a join, a speaker, the start)."""
        if space.state is SpaceState.ENDED:
            raise Conflict(f"Space {space.id} has ended")
        pipeline = self.pipelines.get(space.id)
        if pipeline is None:
            pipeline = Pipeline(space.id, self.cfg.media, self.recording(space.id), live=space.state is SpaceState.LIVE)
            self.pipelines[space.id] = pipeline
            await pipeline.start()
        return pipeline

    def recording(self, space_id: str) -> Recording:
        rec = self._recordings.get(space_id)
        if rec is None:
            rec = Recording.open(self.registry.dir(space_id), self.cfg.media)
            self._recordings[space_id] = rec
        return rec

    # -- listeners --------------------------------------------------------------------------

    async def join(self, space: Space, session: str) -> dict[str, object]:
        base = self.cfg.http.base_url
        if space.state is not SpaceState.ENDED:
            await self._pipeline(space)
            self.touch_listener(space.id, session)
            return {"status": "admitted", "playlist": f"{base}/media/{space.id}/live.m3u8?sid={session}",
                    "state": space.state.value}
        return {"status": "ended", "playlist": f"{base}/media/{space.id}/vod.m3u8", "state": space.state.value}

    async def media(self, space_id: str) -> tuple[Pipeline | None, Recording]:
        """What the origin serves for a Space: its running pipeline (started if a player
        asks before anyone joined, e.g. after a restart), or None once ended."""
        space = self.registry.get(space_id)  # 404 for unknown Spaces
        pipeline = None if space.state is SpaceState.ENDED else await self._pipeline(space)
        return pipeline, self.recording(space_id)

    def touch_listener(self, space_id: str, session: str) -> None:
        self._presence_of(space_id).touch(session, time.monotonic())

    def _presence_of(self, space_id: str) -> Presence:
        presence = self._presence.get(space_id)
        if presence is None:
            presence = self._presence[space_id] = Presence()
        return presence

    # -- speakers ---------------------------------------------------------------------------

    @staticmethod
    def _speaker(space_id: str, who: str) -> str:
        return f"{space_id}:{who}"

    async def speak(self, space: Space, offer_sdp: str) -> str:
        pipeline = await self._pipeline(space)
        name = self._speaker(space.id, "host")
        buf = pipeline.add_track(name)
        try:
            return await self.ingest.accept(offer_sdp, _TrackSink(buf), name=name)
        except BaseException:
            pipeline.mixer.remove_track(name, buf)
            raise

    # -- status -----------------------------------------------------------------------------

    def status(self, space: Space) -> dict[str, object]:
        base = self.cfg.http.base_url
        presence = self._presence_of(space.id)
        listeners = presence.count(time.monotonic()) if space.state is not SpaceState.ENDED else 0
        self.registry.record_peak(space, presence.peak)
        rec = self.recording(space.id)
        ended = space.state is SpaceState.ENDED
        has_replay = ended and rec.finalized and bool(rec.entries)
        return {
            "id": space.id,
            "title": space.title,
            "state": space.state.value,
            "starts_at": iso(space.starts_at),
            "started_at": iso(space.started_at),
            "ended_at": iso(space.ended_at),
            "end_reason": space.end_reason,
            "ended_abnormally": space.end_reason == "abnormal",
            "listeners": listeners,
            "peak_listeners": space.peak_listeners,
            "listen_url": f"{base}/s/{space.id}",
            "recorded_s": round(rec.duration, 3),
            "replay": f"{base}/media/{space.id}/vod.m3u8" if has_replay else None,
            "download": f"{base}/media/{space.id}/download.m4a" if has_replay else None,
        }

    def get(self, space_id: str) -> Space:
        return self.registry.get(space_id)
