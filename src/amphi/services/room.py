"""A Space's conversation: its stage (control plane) joined to its pipeline's speaker tracks
and the WebRTC ingest (media plane). ``Rooms`` (``amphi.services.rooms``) keeps one ``Room``
per Space that has one; the web layer reaches it through that service.

After every stage change the room applies it to the media: who is heard (mutes), whose
connection is hung up (taken off stage, removed), and it wakes the event streams. Levels
are read from the mixer a few times a second (``poll_levels``) for the talking indicator.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import orjson

from amphi.control.stage import HOST_ID, Participant, Stage, StageLimits
from amphi.core.config import StageConfig
from amphi.core.errors import Conflict, MalformedBody
from amphi.media.ingest.webrtc import ReturnTrack, WebRTCIngest
from amphi.media.jitter import JitterBuffer
from amphi.media.pipeline import Pipeline

log = logging.getLogger(__name__)

ACTIONS = ("accept", "decline", "mute", "unmute", "remove", "leave", "role")


class _SpeakerSink:
    """One media connection's audio into the speaker's jitter buffer; tells the room when
    media starts flowing and when the connection is gone."""

    def __init__(self, room: Room, pid: str, buf: JitterBuffer) -> None:
        self.room = room
        self.pid = pid
        self.buf = buf
        self.feed: ReturnTrack | None = None
        self.flowing = False

    def push(self, samples: np.ndarray) -> None:
        self.buf.push(samples)
        if not self.flowing:
            self.flowing = True
            self.room._flowing(self)

    def close(self) -> None:
        self.buf.close()
        self.room._gone(self)


class Room:
    def __init__(self, space_id: str, cfg: StageConfig, ingest: WebRTCIngest) -> None:
        self.space_id = space_id
        self.cfg = cfg
        self.stage = Stage(space_id, StageLimits(max_cohosts=cfg.max_cohosts, max_speakers=cfg.max_speakers))
        self._ingest = ingest
        self.pipeline: Pipeline | None = None
        self._sinks: dict[str, _SpeakerSink] = {}  # pid -> its current connection's sink
        self._ever: set[str] = set()  # pids that have connected before (reconnects are counted)
        self._changed = asyncio.Event()
        self.ended = False
        self._views: dict[tuple[object, ...], bytes] = {}

    def track(self, pid: str) -> str:
        return f"{self.space_id}:{pid}"

    # -- speaking ---------------------------------------------------------------------------

    async def speak(self, pipeline: Pipeline, actor: Participant, offer_sdp: str) -> str:
        """Answers a speaker's offer (the caller has checked they may speak)."""
        self.pipeline = pipeline
        name = self.track(actor.id)
        sink = _SpeakerSink(self, actor.id, pipeline.add_track(name))
        previous = self._sinks.get(actor.id)
        self._sinks[actor.id] = sink
        try:
            answer, feed = await self._ingest.accept(
                offer_sdp, sink, name=name, feed=lambda: ReturnTrack(self.cfg.return_bitrate))
        except BaseException:
            if self._sinks.get(actor.id) is sink:
                if previous is None:
                    del self._sinks[actor.id]
                else:
                    self._sinks[actor.id] = previous
            pipeline.mixer.remove_track(name, sink.buf)
            raise
        if feed is not None and self._sinks.get(actor.id) is sink:
            sink.feed = feed
            pipeline.add_feed(name, feed)
        self.stage.note_connection(actor.id, first=actor.id not in self._ever)
        self._ever.add(actor.id)
        self.apply()
        return answer

    def _flowing(self, sink: _SpeakerSink) -> None:
        if self._sinks.get(sink.pid) is sink:
            self.stage.set_connected(sink.pid, True)
            self.apply()

    def _gone(self, sink: _SpeakerSink) -> None:
        if self.pipeline is not None and sink.feed is not None:
            self.pipeline.remove_feed(self.track(sink.pid), sink.feed)
        if self._sinks.get(sink.pid) is sink:
            del self._sinks[sink.pid]
            self.stage.set_connected(sink.pid, False)
            self.apply()

    # -- actions ----------------------------------------------------------------------------

    async def act(self, actor: Participant, pid: str, action: str, body: dict[str, object], now: float) -> Participant:
        """One moderation or self-service action (docs/stage.md); returns its target."""
        stage = self.stage
        if self.ended:
            raise Conflict("the Space has ended")
        target_id = actor.id if pid == "me" else pid
        if action == "accept":
            target = stage.accept(actor, target_id, now)
        elif action == "decline":
            target = stage.decline(actor, target_id, now)
        elif action in ("mute", "unmute"):
            target = stage.mute(actor, target_id, action == "mute")
        elif action == "remove":
            where = body.get("from", "stage")
            if where not in ("stage", "space"):
                raise MalformedBody('"from" must be "stage" or "space"')
            target = stage.remove(actor, target_id, from_space=where == "space", now=now)
        elif action == "leave":
            target = stage.leave(actor, target_id, now)
        elif action == "role":
            target = stage.set_role(actor, target_id, body.get("role"))
        else:
            raise MalformedBody(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        self.apply()
        await self._hang_up_off_stage()
        return target

    async def _hang_up_off_stage(self) -> None:
        for pid in [pid for pid in self._sinks if not self.stage.get(pid).on_stage]:
            log.info("space %s: %s is off stage; hanging up their connection", self.space_id, pid)
            await self._ingest.close(self.track(pid))

    def apply(self) -> None:
        """Brings the media in line with the stage, and wakes the event streams."""
        if self.pipeline is not None:
            silenced = {self.track(p.id) for p in self.stage.people.values() if not p.on_stage or p.muted}
            self.pipeline.set_muted(silenced)
        self._notify()

    def poll_levels(self) -> None:
        if self.pipeline is None:
            return
        version = self.stage.version
        levels = self.pipeline.levels()
        for p in self.stage.on_stage():
            level, talking = levels.get(self.track(p.id), (0.0, False))
            heard = p.audible
            self.stage.set_level(p.id, level if heard else 0.0, talking and heard)
        if self.stage.version != version:
            self._notify()

    async def close(self) -> None:
        """The Space ended: hang up every speaker, tell the event streams."""
        self.ended = True
        await asyncio.gather(*(self._ingest.close(self.track(pid)) for pid in list(self._sinks)))
        self._notify()

    # -- views and events -------------------------------------------------------------------

    def view(self, viewer: Participant | None, extra: dict[str, object]) -> dict[str, object]:
        out = {**self.stage.view(moderator=bool(viewer and viewer.moderator)), **extra}
        if viewer is not None:
            out["you"] = viewer.private()
        return out

    def view_bytes(self, moderator: bool, extra: dict[str, object]) -> tuple[tuple[object, ...], bytes]:
        """The shared (not per-viewer) view as JSON, cached by what it depends on."""
        key = (self.stage.version, moderator, *extra.values())
        data = self._views.get(key)
        if data is None:
            if len(self._views) > 64:
                self._views.clear()
            data = orjson.dumps({**self.stage.view(moderator=moderator), **extra})
            self._views[key] = data
        return key, data

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Set at the room's next change."""
        return self._changed


__all__ = ["ACTIONS", "HOST_ID", "Room"]
