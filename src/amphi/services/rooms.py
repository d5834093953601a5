"""The stage service: who is calling, requests to speak, invites, moderation, speakers'
connections, and the stage views (docs/stage.md). One ``Room`` (``amphi.services.room``:
the pure stage joined to the media) per Space that has one.

Each stage is saved to the store as it changes (``saves``: one task for all the rooms), so the
node that takes a Space over carries it on (``restore``; docs/stage.md). A save never holds
up the request that made the change: the room only marks its Space unsaved, and the saver
sends the stage as it is by then, so a Space's newest state replaces any older unsent one.
At most one save per Space per ``SAVE_INTERVAL_S``, and a change is saved within that;
while the store is away, the unsaved stay marked and are tried again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.control.stage import HOST_ID, Participant, Stage
from amphi.control.store import Store
from amphi.control.tokens import Signer, new_participant_id
from amphi.core.config import SoundConfig, StageConfig
from amphi.core.errors import AmphiError, Conflict, NotFound, TooManyRequests, Unauthorized
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.media.pipeline import Pipeline
from amphi.media.ingest.trickle import Fragment
from amphi.services.room import Room, SoundEvents, Spoken, stage_limits

log = logging.getLogger(__name__)

LEVELS_PERIOD_S = 0.2  # talking indicators are refreshed this often
SAVE_INTERVAL_S = 0.1  # a Space's stage is saved at most this often, and its last change within this
SAVE_RETRY_S = 0.5  # a save that failed (the store away) is tried again after this


@dataclass(frozen=True, slots=True)
class Grant:
    """What lets a participant act and speak in one Space until ``expires`` (docs/stage.md)."""

    participant: str
    grant: str
    expires: int


@dataclass(frozen=True, slots=True)
class Requested:
    """A request to speak: the caller's record and, for a newcomer, their grant."""

    you: Participant
    grant: Grant | None  # None: a known participant asked again with their grant


@dataclass(frozen=True, slots=True)
class Invited:
    grant: Grant
    url: str  # the listener page, grant in the query


class Rooms:
    def __init__(self, cfg: StageConfig, base_url: str, registry: SpaceRegistry, store: Store, signer: Signer,
                 ingest: WebRTCIngest, program: Callable[[Space], Awaitable[Pipeline]],
                 sound: SoundConfig | None = None) -> None:
        self.cfg = cfg
        self._base_url = base_url
        self._registry = registry
        self._store = store
        self._signer = signer
        self._ingest = ingest
        self._rooms: dict[str, Room] = {}
        self._program = program  # the Space's running pipeline (Spaces.program)
        self.event_streams = 0  # open SSE connections
        self.sound = sound or SoundConfig()
        self.on_sound: SoundEvents | None = None  # the root hands these to obs
        # stages to save (bounded by the rooms: one entry per Space), and when each may be next
        self._unsaved: dict[str, None] = {}
        self._next_save: dict[str, float] = {}  # space -> monotonic time
        self._failing: set[str] = set()  # Spaces whose last save failed (logged once until one succeeds)
        self._wake_saver = asyncio.Event()

    def room(self, space: Space) -> Room:
        room = self._rooms.get(space.id)
        if room is None:
            if space.state is SpaceState.ENDED:
                raise Conflict(f"Space {space.id} has ended")
            room = self._rooms[space.id] = self._new_room(space.id)
        return room

    def _new_room(self, space_id: str, stage: Stage | None = None) -> Room:
        return Room(space_id, self.cfg, self._ingest, self.sound, self.on_sound, stage=stage,
                    on_change=self._unsave)

    async def close(self, space_id: str, *, moved: bool = False) -> None:
        """The Space ended (or ``moved`` to another node): hang up its speakers, tell its event streams."""
        room = self._rooms.get(space_id)
        if room is not None:
            await room.close(moved=moved)
            self._rooms.pop(space_id, None)
        self._unsaved.pop(space_id, None)  # moved: the new host saves it from now on
        self._next_save.pop(space_id, None)
        self._failing.discard(space_id)

    async def levels(self) -> None:
        """The talking indicators, the sound guard's readings and dead air, a few times a second."""
        while True:
            await asyncio.sleep(LEVELS_PERIOD_S)
            now = time.time()
            for space_id, room in list(self._rooms.items()):
                space = self._registry.find(space_id)
                if space is None:
                    continue
                try:
                    room.poll_levels(now, space.state is SpaceState.LIVE, self.dead_air_s(space))
                except Exception:  # one room's failure must not stop the others' indicators
                    log.exception("space %s: reading the levels failed", space_id)

    # -- the stage outliving the node (docs/stage.md) -------------------------------------------

    async def restore(self, space_id: str) -> bool:
        """A take-over, before this node says it hosts the Space: the Space's room gets the
        stage its last host saved. True if one was found and applied; else (none, the store
        away, a snapshot this node cannot read: logged) the stage starts afresh when first needed."""
        try:
            raw = await self._store.load_stage(space_id)
        except Exception as e:  # the take-over goes on without it
            log.warning("space %s: the stage could not be loaded (%s); it starts afresh", space_id, e)
            return False
        if raw is None:
            log.info("space %s: no stage saved; it starts afresh", space_id)
            return False
        try:
            stage = Stage.restore(orjson.loads(raw), space_id=space_id, limits=stage_limits(self.cfg))
        except ValueError as e:  # MalformedSnapshot, or not JSON
            log.warning("space %s: the stage saved cannot be restored (%s); it starts afresh", space_id, e)
            return False
        room = self._rooms.get(space_id)
        if room is None:
            self._rooms[space_id] = self._new_room(space_id, stage)
        else:
            room.take(stage)
        log.info("space %s: stage restored (%d people, %d on stage)", space_id, len(stage.people),
                 len(stage.on_stage()))
        return True

    def _unsave(self, space_id: str) -> None:
        """A room's stage changed: save it soon (never here: this is the request's path)."""
        if space_id not in self._unsaved:
            self._unsaved[space_id] = None
            self._wake_saver.set()

    async def saves(self) -> None:
        """Saves the changed stages to the store, each at most once per ``SAVE_INTERVAL_S``."""
        while True:
            self._wake_saver.clear()
            now = time.monotonic()
            for space_id in [s for s in self._unsaved if self._next_save.get(s, 0.0) <= now]:
                await self._save(space_id)
            timeout = None
            if self._unsaved:
                timeout = max(0.0, min(self._next_save.get(s, 0.0) for s in self._unsaved) - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake_saver.wait()
            except TimeoutError:
                pass

    async def _save(self, space_id: str) -> None:
        room = self._rooms.get(space_id)
        self._unsaved.pop(space_id, None)  # a change during the save marks it again
        if room is None:
            return
        data = orjson.dumps(room.stage.snapshot())
        try:
            await self._store.save_stage(space_id, data)
        except Exception as e:  # the store away (Unavailable), or a bug: keep it, try again
            if space_id in self._rooms:
                self._unsaved.setdefault(space_id, None)
                self._next_save[space_id] = time.monotonic() + SAVE_RETRY_S
            if space_id not in self._failing:
                self._failing.add(space_id)
                log.warning("space %s: saving the stage failed (%s); trying again", space_id, e,
                            exc_info=not isinstance(e, AmphiError))
            return
        self._next_save[space_id] = time.monotonic() + SAVE_INTERVAL_S
        if space_id in self._failing:
            self._failing.discard(space_id)
            log.info("space %s: stage saved again", space_id)

    def sound_state(self, space_id: str) -> tuple[str | None, int]:
        """(why the Space has dead air, or None; how many speakers are ducked for feedback)."""
        room = self._rooms.get(space_id)
        if room is None:
            return None, 0
        alert = room.dead_air.alert
        return (alert.reason if alert else None), sum(1 for p in room.stage.on_stage() if p.feedback)

    def dead_air_s(self, space: Space) -> float:
        return space.dead_air_s if space.dead_air_s is not None else self.sound.dead_air_s

    # -- who is calling -----------------------------------------------------------------------

    def participant(self, space: Space, credential: str | None) -> Participant:
        """``credential`` is the host key or a grant (docs/stage.md)."""
        if not credential:
            raise Unauthorized("this needs a grant or the host key: Authorization: Bearer ...")
        room = self.room(space)
        if "." in credential:
            pid, _ = self._signer.verify_grant(space.id, credential, time.time())
            return room.stage.member(pid)
        self._registry.check_host_key(space, credential)
        return room.stage.get(HOST_ID)

    def viewer(self, space: Space, credential: str | None) -> Participant | None:
        return self.participant(space, credential) if credential else None

    def grant(self, space: Space, pid: str) -> Grant:
        expires = int(time.time() + self.cfg.grant_ttl_s)
        return Grant(pid, self._signer.grant(space.id, pid, expires), expires)

    def host_session(self, space: Space) -> Grant:
        """A grant for the host (the caller has shown the host key)."""
        self.room(space)
        return self.grant(space, HOST_ID)

    # -- the stage ------------------------------------------------------------------------------

    async def request_to_speak(self, space: Space, name: object, credential: str | None, client: str) -> Requested:
        """A listener asks to speak: a new participant (and its grant), or a known one again.
        ``client`` is the caller's address as the shield sees it (behind trusted edges, the
        listener's own, not the edge's)."""
        room = self.room(space)
        now = time.time()
        await self._limit(client, now, "too many requests to speak from your address")
        if credential:
            actor = room.stage.rerequest(self.participant(space, credential), now)
            grant = None
        else:
            actor = room.stage.request(name, new_participant_id(), now)
            grant = self.grant(space, actor.id)
        room.apply()
        return Requested(actor, grant)

    async def _limit(self, key: str, now: float, what: str) -> None:
        """One GCRA budget per ``key`` (a client address, a speaker), in the store (so shared
        by the nodes with --redis): 429 when spent."""
        wait = await self._store.take(key, self.cfg.request_rate_per_s, self.cfg.request_burst, now)
        if wait > 0:
            raise TooManyRequests(f"{what}; try again in {math.ceil(wait)} s", retry_after_s=wait)

    def invite(self, space: Space, actor: Participant, name: object) -> Invited:
        room = self.room(space)
        guest = room.stage.invite(actor, name, new_participant_id(), time.time())
        room.apply()
        grant = self.grant(space, guest.id)
        return Invited(grant, f"{self._base_url}/s/{space.id}?grant={grant.grant}")

    async def act(self, space: Space, actor: Participant, pid: str, action: str,
                  body: dict[str, object]) -> Participant:
        if space.state is SpaceState.ENDED:
            raise Conflict(f"Space {space.id} has ended")
        return await self.room(space).act(actor, pid, action, body, time.time())

    def extra(self, space: Space) -> dict[str, object]:
        """What stage views carry besides the stage: the Space's state and audience."""
        counts = self._store.known_counts(space.id)
        return {"state": space.state.value, "listeners": counts.listeners, "waiting": counts.waiting}

    def view(self, space: Space, viewer: Participant | None) -> dict[str, object]:
        return self.room(space).view(viewer, self.extra(space))

    async def speak(self, space: Space, offer_sdp: str, credential: str | None) -> Spoken:
        """A speaker's WebRTC offer -> the answer and its WHIP session. The host key or an
        on-stage grant."""
        actor = self.participant(space, credential)
        room = self.room(space)
        room.stage.check_can_speak(actor.id)
        await self._limit(f"speak {space.id} {actor.id}", time.time(), "too many connections from this speaker")
        pipeline = await self._program(space)
        return await room.speak(pipeline, actor, offer_sdp)

    def _session_room(self, space: Space, credential: str | None) -> tuple[Room, Participant]:
        """The room and caller of a WHIP session request: the same credential as the offer's
        (401/403); 404 once the Space's room is gone (ended)."""
        if not credential:
            raise Unauthorized("this needs the credential the offer was sent with: Authorization: Bearer ...")
        room = self._rooms.get(space.id)
        if room is None:
            raise NotFound("no such WHIP session (the Space has no room)")
        return room, self.participant(space, credential)

    async def hang_up(self, space: Space, session: str, credential: str | None) -> None:
        """WHIP's DELETE on a session: its speaker's connection hung up."""
        room, actor = self._session_room(space, credential)
        await room.hang_up(session, actor)

    async def trickle(self, space: Space, session: str, credential: str | None, if_match: str | None,
                      fragment: Fragment) -> None:
        """WHIP's PATCH on a session: trickled ICE candidates for its connection."""
        room, actor = self._session_room(space, credential)
        await room.trickle(session, actor, if_match, fragment)
