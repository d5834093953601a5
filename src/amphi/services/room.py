"""A Space's conversation: its stage (control plane) joined to its pipeline's speaker tracks
and the WebRTC ingest (media plane). ``Rooms`` (``amphi.services.rooms``) keeps one ``Room``
per Space that has one; the web layer reaches it through that service.

After every stage change the room applies it to the media: who is heard (mutes), whose
connection is hung up (taken off stage, removed), and it wakes the event streams. Levels
are read from the mixer a few times a second (``poll_levels``): the talking indicator, the
sound guard's reading of each microphone (loudness, gain, feedback, talking while muted),
and the dead-air watch (docs/sound.md). What the room notices about its sound goes to
``on_sound(space_id, what, fields)`` (the root hands it to obs: an event, a metric, a line
in the Space's timeline).

The stage outlives the node (docs/stage.md, "When the host node dies"): every change a
snapshot carries (``Stage.changes``: not levels, not connections) is told to ``on_change(space_id)``,
which ``Rooms`` turns into coalesced saves to the store, off the request's path.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from amphi.control.sound import DeadAir, problems
from amphi.control.stage import HOST_ID, Participant, Stage, StageLimits
from amphi.core.config import SAMPLE_RATE, SoundConfig, StageConfig
from amphi.core.errors import Conflict, Forbidden, MalformedBody, NotFound, PreconditionFailed, Unprocessable
from amphi.media.guard import GuardStats
from amphi.media.ingest.trickle import Fragment
from amphi.media.ingest.webrtc import ReturnTrack, WebRTCIngest
from amphi.media.jitter import JitterBuffer
from amphi.media.pipeline import Pipeline

log = logging.getLogger(__name__)

SESSION_BYTES = 18  # a WHIP session's id: 144 random bits (24 characters), unguessable
ENDED_SESSIONS = 256  # WHIP sessions whose connection closed, remembered so that their DELETE is a 204 ...
ENDED_SESSION_S = 60.0  # ... for this long (clients close the connection, then DELETE: RFC 9725 section 4.2)
ETAG_BYTES = 12
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
        self.session: str | None = None  # its WHIP session (RFC 9725): the resource's id
        self.etag = ""  # the session's ICE session entity-tag (quoted, strong)

    def push(self, samples: np.ndarray) -> None:
        self.buf.push(samples)
        if not self.flowing:
            self.flowing = True
            self.room._flowing(self)

    def close(self) -> None:
        self.buf.close()
        self.room._gone(self)


@dataclass(frozen=True, slots=True)
class Spoken:
    """A speaker's offer answered: the SDP answer and its WHIP session (RFC 9725): the session
    resource's id (unguessable) and the ICE session's entity-tag."""

    answer: str
    session: str
    etag: str
    participant: str


SoundEvents = Callable[[str, str, dict[str, object]], None]
"""``on_sound(space_id, what, fields)``: "feedback", "feedback_cleared", "dead_air", "dead_air_cleared"."""


def stage_limits(cfg: StageConfig) -> StageLimits:
    return StageLimits(max_cohosts=cfg.max_cohosts, max_speakers=cfg.max_speakers)


class Room:
    def __init__(self, space_id: str, cfg: StageConfig, ingest: WebRTCIngest, sound: SoundConfig | None = None,
                 on_sound: SoundEvents | None = None, *, stage: Stage | None = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        """``stage``: one restored from a snapshot (a take-over), else a new one."""
        self.space_id = space_id
        self.cfg = cfg
        self.sound = sound or SoundConfig()
        self.dead_air = DeadAir()
        self._on_sound = on_sound
        self._on_change = on_change
        self.stage = stage or Stage(space_id, stage_limits(cfg))
        self._told = self.stage.changes  # the stage's changes last told to on_change
        self._ingest = ingest
        self.pipeline: Pipeline | None = None
        self._sinks: dict[str, _SpeakerSink] = {}  # pid -> its current connection's sink
        self._sessions: dict[str, _SpeakerSink] = {}  # WHIP session id -> its connection's sink
        self._ended_sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (pid, when it closed)
        self._ever: set[str] = set()  # pids that have connected before (reconnects are counted)
        self._changed = asyncio.Event()
        self.ended = False
        self.moved = False  # closed because another node took the Space over (docs/cluster.md)
        self._views: dict[tuple[object, ...], bytes] = {}

    def track(self, pid: str) -> str:
        return f"{self.space_id}:{pid}"

    # -- speaking ---------------------------------------------------------------------------

    async def speak(self, pipeline: Pipeline, actor: Participant, offer_sdp: str) -> Spoken:
        """Answers a speaker's offer (the caller has checked they may speak)."""
        self.pipeline = pipeline
        name = self.track(actor.id)
        sink = _SpeakerSink(self, actor.id, pipeline.add_track(name))
        sink.session = secrets.token_urlsafe(SESSION_BYTES)
        sink.etag = f'"{secrets.token_urlsafe(ETAG_BYTES)}"'
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
        if self._sinks.get(actor.id) is sink:  # else already gone: no session to point at
            self._sessions[sink.session] = sink
        self.apply()
        return Spoken(answer, sink.session, sink.etag, actor.id)

    def _session(self, session: str, actor: Participant) -> _SpeakerSink:
        """The live WHIP session ``session`` of ``actor``: 404 if there is none (never was,
        hung up, replaced, dropped), 403 if it is someone else's."""
        sink = self._sessions.get(session)
        if sink is None or self._sinks.get(sink.pid) is not sink:
            raise NotFound("no such WHIP session (it may have ended)")
        if sink.pid != actor.id:
            raise Forbidden("this WHIP session is another participant's")
        return sink

    async def hang_up(self, session: str, actor: Participant) -> None:
        """WHIP's DELETE: the session's connection hung up, as when the speaker closes it
        (the stage keeps them; they show as not connected)."""
        ended = self._ended_sessions.get(session)
        if ended is not None and time.monotonic() - ended[1] < ENDED_SESSION_S:  # (never live again: ids are new)
            if ended[0] != actor.id:
                raise Forbidden("this WHIP session is another participant's")
            del self._ended_sessions[session]  # a client that closed its connection first, then DELETEs: done
            log.info("space %s: %s hung up WHIP session (its connection had closed)", self.space_id, actor.id)
            return
        sink = self._session(session, actor)
        del self._sessions[session]  # deleted: a second DELETE is a 404, the close that follows remembers nothing
        log.info("space %s: %s hung up WHIP session", self.space_id, actor.id)
        await self._ingest.close(self.track(sink.pid))

    async def trickle(self, session: str, actor: Participant, if_match: str | None, fragment: Fragment) -> None:
        """WHIP's PATCH with trickled candidates: checked against the ICE session's entity-tag
        (``If-Match``; ``*`` asks for an ICE restart, which is not supported: 422)."""
        sink = self._session(session, actor)
        if if_match is not None:
            tags = [t.strip() for t in if_match.split(",")]
            if "*" in tags:
                raise Unprocessable("ICE restarts are not supported; trickle ICE is (If-Match: the ETag)")
            if sink.etag not in tags:
                raise PreconditionFailed(f"If-Match {if_match!r} is not this ICE session's entity-tag")
        await self._ingest.trickle(self.track(sink.pid), sink, fragment)

    def _flowing(self, sink: _SpeakerSink) -> None:
        if self._sinks.get(sink.pid) is sink:
            self.stage.set_connected(sink.pid, True)
            self.apply()

    def _gone(self, sink: _SpeakerSink) -> None:
        if self.pipeline is not None and sink.feed is not None:
            self.pipeline.remove_feed(self.track(sink.pid), sink.feed)
        if sink.session is not None and self._sessions.pop(sink.session, None) is not None:
            self._ended_sessions[sink.session] = (sink.pid, time.monotonic())
            while len(self._ended_sessions) > ENDED_SESSIONS:
                self._ended_sessions.popitem(last=False)
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
        if self.stage.changes != self._told and not self.moved:
            self._told = self.stage.changes
            if self._on_change is not None:
                self._on_change(self.space_id)
        self._notify()

    def take(self, stage: Stage) -> None:
        """The stage another node kept for this Space (a take-over) replaces this one."""
        self.stage = stage
        self._told = stage.changes
        self._views.clear()
        self.apply()

    def poll_levels(self, now: float, live: bool, dead_air_s: float) -> None:
        """The talking indicators, the guard's readings and the dead-air watch."""
        stage = self.stage
        version = stage.version
        levels = self.pipeline.levels() if self.pipeline is not None else {}
        on_stage = stage.on_stage()
        for p in on_stage:
            level, talking, guard = levels.get(self.track(p.id), (0.0, False, None))
            audible = p.audible
            stage.set_level(p.id, level if audible else 0.0, talking and audible,
                            muted_talking=talking and p.connected and p.muted)
            was = p.feedback
            if guard is not None:
                stage.set_sound(p.id, heard=guard.heard and p.connected, loudness=guard.loudness,
                                gain_db=guard.gain_db, feedback=guard.feedback if p.connected else None)
            else:
                stage.set_sound(p.id, heard=p.connected and (p.heard or talking), loudness=None, gain_db=0.0,
                                feedback=None)
            if p.feedback != was:
                self._sound_event(p, was, guard)
        if self.dead_air.update(now, live, dead_air_s, on_stage):
            stage.touch()
            alert = self.dead_air.alert
            if alert is not None:
                self._emit("dead_air", {"reason": alert.reason, "after_s": alert.after_s, "msg": alert.message,
                                        "talking_muted": list(alert.talking_muted)})
            else:
                self._emit("dead_air_cleared", {})
        if stage.version != version:
            self._notify()

    def _sound_event(self, p: Participant, was: str | None, guard: GuardStats | None) -> None:
        if p.feedback is not None:
            lag = guard.feedback_lag_ms if guard is not None else None
            sample = guard.detected_sample if guard is not None else None
            pipeline = self.pipeline
            at = None if sample is None or pipeline is None else round(pipeline.epoch + sample / SAMPLE_RATE, 3)
            self._emit("feedback", {"participant": p.id, "name": p.name, "feedback": p.feedback,
                                    "lag_ms": None if lag is None else round(lag, 1), "detected_at": at,
                                    "msg": f"feedback ({p.feedback}) on {p.name}'s microphone: ducked while others "
                                           "talk; they should use headphones"})
        else:
            self._emit("feedback_cleared", {"participant": p.id, "name": p.name, "feedback": was,
                                            "msg": f"no more feedback on {p.name}'s microphone"})

    def _emit(self, what: str, fields: dict[str, object]) -> None:
        if self._on_sound is not None:
            self._on_sound(self.space_id, what, fields)

    def sound_view(self) -> dict[str, object]:
        """The moderators' sound panel: each person on stage (their checks before going live),
        and the dead-air alert."""
        speakers = []
        for p in self.stage.on_stage():
            issues = problems(p)
            speakers.append({"id": p.id, "name": p.name, "connected": p.connected, "muted": p.muted,
                             "level": p.level, "loudness": p.loudness, "gain_db": p.gain_db, "heard": p.heard,
                             "feedback": p.feedback, "muted_talking": p.muted_talking, "ready": not issues,
                             "problems": issues})
        alert = self.dead_air.alert
        return {"target_lufs": self.sound.target_lufs, "dead_air": alert.to_json() if alert else None,
                "speakers": speakers, "ready": all(s["ready"] for s in speakers)}

    async def close(self, *, moved: bool = False) -> None:
        """The Space ended, or (``moved``) another node hosts it now: hang up every speaker,
        tell the event streams (``ended``, or ``moved``: the client comes back through the same URL)."""
        self.ended = True
        self.moved = moved
        await asyncio.gather(*(self._ingest.close(self.track(pid)) for pid in list(self._sinks)))
        self._notify()

    # -- views and events -------------------------------------------------------------------

    def view(self, viewer: Participant | None, extra: dict[str, object]) -> dict[str, object]:
        out = self._shared_view(bool(viewer and viewer.moderator), extra)
        if viewer is not None:
            out["you"] = viewer.private()
        return out

    def _shared_view(self, moderator: bool, extra: dict[str, object]) -> dict[str, object]:
        """The stage as everyone (or every moderator, with the sound panel) sees it."""
        view = {**self.stage.view(moderator=moderator), **extra}
        if moderator:
            view["sound"] = self.sound_view()
        return view

    def view_bytes(self, moderator: bool, extra: dict[str, object]) -> tuple[tuple[object, ...], bytes]:
        """The shared (not per-viewer) view as JSON, cached by what it depends on."""
        key = (self.stage.version, moderator, *extra.values())
        data = self._views.get(key)
        if data is None:
            if len(self._views) > 64:
                self._views.clear()
            data = orjson.dumps(self._shared_view(moderator, extra))
            self._views[key] = data
        return key, data

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Set at the room's next change."""
        return self._changed


__all__ = ["ACTIONS", "HOST_ID", "Room"]
