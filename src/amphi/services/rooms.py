"""The stage service: who is calling, requests to speak, invites, moderation, speakers'
connections, and the stage views (docs/stage.md). One ``Room`` (``amphi.services.room``:
the pure stage joined to the media) per Space that has one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.control.stage import HOST_ID, Participant
from amphi.control.store import Store
from amphi.control.tokens import Signer, new_participant_id
from amphi.core.config import SoundConfig, StageConfig
from amphi.core.errors import Conflict, NotFound, TooManyRequests, Unauthorized
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.media.pipeline import Pipeline
from amphi.media.ingest.trickle import Fragment
from amphi.services.room import Room, SoundEvents, Spoken

log = logging.getLogger(__name__)

LEVELS_PERIOD_S = 0.2  # talking indicators are refreshed this often


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

    def room(self, space: Space) -> Room:
        room = self._rooms.get(space.id)
        if room is None:
            if space.state is SpaceState.ENDED:
                raise Conflict(f"Space {space.id} has ended")
            room = self._rooms[space.id] = Room(space.id, self.cfg, self._ingest, self.sound, self.on_sound)
        return room

    async def close(self, space_id: str, *, moved: bool = False) -> None:
        """The Space ended (or ``moved`` to another node): hang up its speakers, tell its event streams."""
        room = self._rooms.get(space_id)
        if room is not None:
            await room.close(moved=moved)
            self._rooms.pop(space_id, None)

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
