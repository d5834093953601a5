"""A Space's stage: who is on it, who asked to speak, who is muted, and who may do what.
Pure: no I/O, no clock (every call that needs the time is given ``now``). docs/stage.md.

Participants move between states:

    listener --request--> requested --accept (moderator)--> on_stage --leave/remove--> listener
    (new)    --invite---> invited   --accept (self)-------> on_stage
    any      --remove from the Space--> removed (final)

Every change bumps ``version``, so views can be cached per version and pushed on change.
Actions check the actor's role first (403), then the target (404), then the state (409).

A stage outlives its node as a *snapshot* (``snapshot``/``restore``): who is who, in which
state, muted by whom, and what is pending, but nothing about media (connections, levels, the
sound guard's readings), which the node that takes a Space over measures afresh. Changes a
snapshot carries also bump ``changes``; levels and connections bump only ``version``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from amphi.core.errors import (
    Conflict,
    Forbidden,
    HostMuted,
    MalformedBody,
    NotFound,
    NotOnStage,
    RemovedFromSpace,
    StageFull,
    TooEarly,
    TooManyRequests,
)

SNAPSHOT_VERSION = 1  # the format of Stage.snapshot(); restore refuses any other

HOST_ID = "host"
MAX_NAME = 40
LEVEL_STEP = 0.05  # levels are published in steps of this size, so tiny changes push nothing


class Role(enum.Enum):
    HOST = "host"
    COHOST = "cohost"
    SPEAKER = "speaker"
    LISTENER = "listener"


class State(enum.Enum):
    LISTENER = "listener"
    REQUESTED = "requested"
    INVITED = "invited"
    ON_STAGE = "on_stage"
    REMOVED = "removed"


@dataclass
class Participant:
    id: str
    name: str
    role: Role = Role.LISTENER
    state: State = State.LISTENER
    self_muted: bool = False
    host_muted: bool = False
    connected: bool = False  # media flowing from them (a live WebRTC connection)
    level: float = 0.0  # 0..1, quantised to LEVEL_STEP
    talking: bool = False
    # the sound guard's view of their microphone (docs/sound.md)
    muted_talking: bool = False  # muted, and their microphone sends talk
    feedback: str | None = None  # "loop" or "resonance": ducked (docs/sound.md)
    heard: bool = False  # speech from them since they connected
    loudness: float | None = None  # their speech's loudness (LUFS), before the leveler
    gain_db: float = 0.0  # the leveler's gain
    since: float = 0.0  # when they entered their current state
    declined_at: float = -math.inf
    reconnects: int = 0  # media connections after the first

    @property
    def on_stage(self) -> bool:
        return self.state is State.ON_STAGE

    @property
    def moderator(self) -> bool:
        return self.role in (Role.HOST, Role.COHOST) and self.on_stage

    @property
    def muted(self) -> bool:
        return self.self_muted or self.host_muted

    @property
    def audible(self) -> bool:
        return self.on_stage and self.connected and not self.muted

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "role": self.role.value, "muted": self.muted,
                "host_muted": self.host_muted, "connected": self.connected, "talking": self.talking,
                "level": self.level, "feedback": self.feedback, "muted_talking": self.muted_talking}

    def private(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "role": self.role.value, "state": self.state.value,
                "self_muted": self.self_muted, "host_muted": self.host_muted, "connected": self.connected,
                "reconnects": self.reconnects, "feedback": self.feedback, "muted_talking": self.muted_talking}


@dataclass(frozen=True)
class StageLimits:
    max_cohosts: int = 2
    max_speakers: int = 10
    max_requests: int = 1000  # pending requests to speak per Space
    max_participants: int = 20_000  # everyone who ever asked or was invited, per Space
    request_cooldown_s: float = 10.0  # after a decline, before asking again

    @property
    def stage_size(self) -> int:
        """Everyone on stage at once: the host, the co-hosts and the speakers (13). A co-host
        seat not taken may hold a speaker; co-hosts are capped on their own."""
        return 1 + self.max_cohosts + self.max_speakers


class MalformedSnapshot(ValueError):
    """A stored stage snapshot that ``Stage.restore`` cannot take: not this format, not this
    Space, or not a stage the rules could have made. Never a user's doing (it does not reach
    HTTP): the node taking a Space over logs it and starts the stage afresh."""


def clean_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise MalformedBody("name must be a non-empty string")
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise MalformedBody(f"name is longer than {MAX_NAME} characters")
    return name


def quantise(level: float) -> float:
    return round(round(min(max(level, 0.0), 1.0) / LEVEL_STEP) * LEVEL_STEP, 2)


@dataclass
class Stage:
    space_id: str
    limits: StageLimits = field(default_factory=StageLimits)
    host_name: str = "Host"
    version: int = 0

    def __post_init__(self) -> None:
        host = Participant(HOST_ID, self.host_name, Role.HOST, State.ON_STAGE)
        self.people: dict[str, Participant] = {HOST_ID: host}
        self.changes = 0  # bumped by what a snapshot carries (not levels, sound, connections)

    # -- lookups ----------------------------------------------------------------------------

    def get(self, pid: str) -> Participant:
        p = self.people.get(pid)
        if p is None:
            raise NotFound(f"no participant {pid!r} in this Space")
        return p

    def member(self, pid: str) -> Participant:
        """The caller behind a valid grant; removed participants are refused."""
        p = self.get(pid)
        if p.state is State.REMOVED:
            raise RemovedFromSpace("you were removed from this Space")
        return p

    def on_stage(self) -> list[Participant]:
        order = {Role.HOST: 0, Role.COHOST: 1, Role.SPEAKER: 2, Role.LISTENER: 3}
        return sorted((p for p in self.people.values() if p.on_stage), key=lambda p: (order[p.role], p.since))

    def count(self, role: Role) -> int:
        return sum(1 for p in self.people.values() if p.on_stage and p.role is role)

    def requests(self) -> list[Participant]:
        return sorted((p for p in self.people.values() if p.state is State.REQUESTED), key=lambda p: p.since)

    def audible(self) -> set[str]:
        return {p.id for p in self.people.values() if p.audible}

    def check_can_speak(self, pid: str) -> Participant:
        p = self.member(pid)
        if not p.on_stage:
            raise NotOnStage("you are not on stage: request to speak and wait for the host to accept")
        return p

    # -- listeners' side --------------------------------------------------------------------

    def request(self, name: object, pid: str, now: float) -> Participant:
        """A new participant asks to speak."""
        name = clean_name(name)
        if len(self.people) >= self.limits.max_participants:
            raise TooManyRequests("this Space has too many participants to take more requests", retry_after_s=60)
        self._check_request_room()
        p = Participant(pid, name)
        self.people[pid] = p
        self._set(p, State.REQUESTED, now)
        return p

    def rerequest(self, actor: Participant, now: float) -> Participant:
        """Someone known asks (again)."""
        if actor.state in (State.REQUESTED, State.ON_STAGE):
            return actor
        if actor.state is State.INVITED:
            raise Conflict("you are invited already: accept the invitation")
        wait = actor.declined_at + self.limits.request_cooldown_s - now
        if wait > 0:
            raise TooEarly(f"your request was declined; you may ask again in {math.ceil(wait)} s", retry_after_s=wait)
        self._check_request_room()
        self._set(actor, State.REQUESTED, now)
        return actor

    def _check_request_room(self) -> None:
        if len(self.requests()) >= self.limits.max_requests:
            raise TooManyRequests("the host has too many requests to answer already; try again later",
                                  retry_after_s=30)

    # -- moderation -------------------------------------------------------------------------

    def invite(self, actor: Participant, name: object, pid: str, now: float) -> Participant:
        self._moderator(actor)
        name = clean_name(name)
        if len(self.people) >= self.limits.max_participants:
            raise TooManyRequests("this Space has too many participants to invite more", retry_after_s=60)
        p = Participant(pid, name)
        self.people[pid] = p
        self._set(p, State.INVITED, now)
        return p

    def accept(self, actor: Participant, pid: str, now: float) -> Participant:
        target = self.get(pid)
        if target.state is State.REQUESTED:
            self._moderator(actor)
        elif target.state is State.INVITED:
            if actor is not target:
                raise Forbidden("only the invited person can accept an invitation")
        elif target.on_stage:
            return target
        elif target.state is State.REMOVED:
            raise Conflict(f"{target.name} was removed from this Space")
        else:
            raise Conflict(f"{target.name} has not asked to speak")
        if len(self.on_stage()) >= self.limits.stage_size:
            raise StageFull(
                f"the stage is full: {self.limits.stage_size} people (the host, up to {self.limits.max_cohosts} "
                f"co-hosts and {self.limits.max_speakers} speakers); someone must leave or be removed first"
            )
        target.role = Role.SPEAKER
        target.self_muted = target.host_muted = False
        self._set(target, State.ON_STAGE, now)
        return target

    def decline(self, actor: Participant, pid: str, now: float) -> Participant:
        target = self.get(pid)
        if target.state not in (State.REQUESTED, State.INVITED):
            raise Conflict(f"{target.name} has no pending request or invitation")
        if actor is not target:
            self._moderator(actor)
            if target.state is State.REQUESTED:
                target.declined_at = now
        self._set(target, State.LISTENER, now)
        return target

    def mute(self, actor: Participant, pid: str, muted: bool) -> Participant:
        target = self.get(pid)
        if not target.on_stage:
            raise Conflict(f"{target.name} is not on stage")
        if actor is target:
            if not muted and target.host_muted:
                raise HostMuted("you were muted by the host; only the host or a co-host can unmute you")
            changed = target.self_muted != muted
            target.self_muted = muted
        else:
            self._may_moderate(actor, target)
            changed = target.host_muted != muted
            target.host_muted = muted
        if changed:
            self._bump(state=True)
        return target

    def remove(self, actor: Participant, pid: str, *, from_space: bool, now: float) -> Participant:
        target = self.get(pid)
        self._may_moderate(actor, target)
        if target.state is State.REMOVED:
            return target
        if not from_space and not target.on_stage:
            raise Conflict(f"{target.name} is not on stage")
        self._off_stage(target)
        self._set(target, State.REMOVED if from_space else State.LISTENER, now)
        return target

    def leave(self, actor: Participant, pid: str, now: float) -> Participant:
        target = self.get(pid)
        if actor is not target:
            raise Forbidden("only the speaker can leave the stage; moderators remove")
        if target.role is Role.HOST:
            raise Conflict("the host cannot leave the stage; end the Space instead")
        if not target.on_stage:
            return target
        self._off_stage(target)
        self._set(target, State.LISTENER, now)
        return target

    def set_role(self, actor: Participant, pid: str, role: object) -> Participant:
        if actor.role is not Role.HOST:
            raise Forbidden("only the host can make or unmake co-hosts")
        target = self.get(pid)
        if role not in ("cohost", "speaker"):
            raise MalformedBody('role must be "cohost" or "speaker"')
        if target.role is Role.HOST:
            raise Conflict("the host stays the host")
        if not target.on_stage:
            raise Conflict(f"{target.name} is not on stage")
        new = Role(role)
        if new is target.role:
            return target
        if new is Role.COHOST and self.count(Role.COHOST) >= self.limits.max_cohosts:
            raise StageFull(f"a Space has at most {self.limits.max_cohosts} co-hosts")
        target.role = new
        self._bump(state=True)
        return target

    # -- media ------------------------------------------------------------------------------

    def set_connected(self, pid: str, connected: bool) -> None:
        p = self.people.get(pid)
        if p is None or p.connected == connected:
            return
        p.connected = connected
        if not connected:
            p.level, p.talking, p.muted_talking = 0.0, False, False
        self._bump()

    def note_connection(self, pid: str, first: bool) -> None:
        p = self.people.get(pid)
        if p is not None and not first:
            p.reconnects += 1
            self._bump()

    def set_level(self, pid: str, level: float, talking: bool, muted_talking: bool = False) -> None:
        p = self.people.get(pid)
        if p is None:
            return
        q = quantise(level)
        if q != p.level or talking != p.talking or muted_talking != p.muted_talking:
            p.level, p.talking, p.muted_talking = q, talking, muted_talking
            self._bump()

    def set_sound(self, pid: str, *, heard: bool, loudness: float | None, gain_db: float, feedback: str | None) -> None:
        """The guard's reading of one microphone (loudness and gain in half-dB steps)."""
        p = self.people.get(pid)
        if p is None:
            return
        loud = None if loudness is None else round(loudness * 2) / 2
        gain = round(gain_db * 2) / 2
        if (heard, loud, gain, feedback) != (p.heard, p.loudness, p.gain_db, p.feedback):
            p.heard, p.loudness, p.gain_db, p.feedback = heard, loud, gain, feedback
            self._bump()

    def touch(self) -> None:
        """Something the views carry besides the stage changed (the dead-air alert)."""
        self._bump()

    # -- views ------------------------------------------------------------------------------

    def view(self, *, moderator: bool) -> dict[str, object]:
        requests = self.requests()
        out: dict[str, object] = {
            "space": self.space_id,
            "version": self.version,
            "moderator": moderator,
            "members": [p.public() for p in self.on_stage()],
            "requests": len(requests),
        }
        if moderator:
            out["requests"] = [{"id": p.id, "name": p.name, "at": p.since} for p in requests]
            out["invited"] = [{"id": p.id, "name": p.name, "at": p.since}
                              for p in self.people.values() if p.state is State.INVITED]
        return out

    # -- snapshots (the stage outliving its node: docs/stage.md) --------------------------------

    def snapshot(self) -> dict[str, object]:
        """What another node needs to carry the stage on: everyone's role, state and mutes,
        pending requests and invites, the removed. JSON-able; no media state."""
        return {
            "format": SNAPSHOT_VERSION,
            "space": self.space_id,
            "version": self.version,
            "changes": self.changes,
            "people": [
                {"id": p.id, "name": p.name, "role": p.role.value, "state": p.state.value,
                 "self_muted": p.self_muted, "host_muted": p.host_muted, "since": p.since,
                 "declined_at": None if p.declined_at == -math.inf else p.declined_at,
                 "reconnects": p.reconnects}
                for p in self.people.values()
            ],
        }

    @classmethod
    def restore(cls, data: object, *, space_id: str | None = None, limits: StageLimits | None = None) -> Stage:
        """The stage a ``snapshot`` describes, under ``limits`` (this node's). Everyone is
        disconnected (they come back by offering again) and silent; the version moves past the
        snapshot's, so views restored are newer than any sent before it. Raises
        ``MalformedSnapshot`` for anything else than a snapshot of this format (of ``space_id``
        if given)."""
        d = _mapping(data, "the snapshot")
        if d.get("format") != SNAPSHOT_VERSION:
            raise MalformedSnapshot(f"snapshot format {d.get('format')!r}; this node reads {SNAPSHOT_VERSION}")
        sid = _typed(d, "space", str)
        if space_id is not None and sid != space_id:
            raise MalformedSnapshot(f"snapshot of Space {sid!r}, not {space_id!r}")
        version, changes = _typed(d, "version", int), _typed(d, "changes", int)
        people = d.get("people")
        if not isinstance(people, list):
            raise MalformedSnapshot("snapshot: people is not a list")
        stage = cls(sid, limits or StageLimits())
        stage.people = {}
        for i, raw in enumerate(people):
            p = _participant(_mapping(raw, f"participant {i}"))
            if p.id in stage.people:
                raise MalformedSnapshot(f"snapshot: participant {p.id!r} twice")
            stage.people[p.id] = p
        host = stage.people.get(HOST_ID)
        if host is None or host.role is not Role.HOST or not host.on_stage:
            raise MalformedSnapshot("snapshot: no host on stage")
        stage.host_name = host.name
        stage.version, stage.changes = version + 1, changes
        return stage

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _moderator(actor: Participant) -> None:
        if not actor.moderator:
            raise Forbidden("only the host or a co-host can do that")

    def _may_moderate(self, actor: Participant, target: Participant) -> None:
        self._moderator(actor)
        if target.role is Role.HOST or (actor.role is Role.COHOST and target.role is Role.COHOST):
            raise Forbidden(f"a {actor.role.value} cannot do that to the {target.role.value}")
        if actor is target:
            raise Forbidden("moderators cannot moderate themselves")

    @staticmethod
    def _off_stage(p: Participant) -> None:
        p.role = Role.LISTENER
        p.self_muted = p.host_muted = False
        p.level, p.talking, p.muted_talking, p.feedback = 0.0, False, False, None

    def _set(self, p: Participant, state: State, now: float) -> None:
        p.state = state
        p.since = now
        self._bump(state=True)

    def _bump(self, *, state: bool = False) -> None:
        self.version += 1
        if state:
            self.changes += 1



def _mapping(data: object, what: str) -> dict[str, object]:
    if not isinstance(data, dict):
        raise MalformedSnapshot(f"{what} is not an object")
    return data


def _typed(d: dict[str, object], key: str, kind: type, *, optional: bool = False) -> object:
    value = d.get(key)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedSnapshot(f"snapshot: {key} is {value!r}, not a {kind.__name__}")
    if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
        raise MalformedSnapshot(f"snapshot: {key} is {value!r}")
    return value


def _participant(d: dict[str, object]) -> Participant:
    """One participant of a snapshot, checked against what the stage's rules can make."""
    try:
        role, state = Role(d.get("role")), State(d.get("state"))
    except ValueError as e:
        raise MalformedSnapshot(f"snapshot: {e}") from None
    pid, name = _typed(d, "id", str), _typed(d, "name", str)
    if not pid or not name:
        raise MalformedSnapshot("snapshot: a participant without id or name")
    if (role is not Role.LISTENER) != (state is State.ON_STAGE):
        raise MalformedSnapshot(f"snapshot: {pid!r} is a {role.value} in state {state.value}")
    if (role is Role.HOST) != (pid == HOST_ID):
        raise MalformedSnapshot(f"snapshot: {pid!r} cannot be the {role.value}")
    self_muted, host_muted = _typed(d, "self_muted", bool), _typed(d, "host_muted", bool)
    if (self_muted or host_muted) and state is not State.ON_STAGE:
        raise MalformedSnapshot(f"snapshot: {pid!r} is muted off stage")
    declined = _typed(d, "declined_at", float, optional=True)
    reconnects = _typed(d, "reconnects", int)
    if reconnects < 0:  # type: ignore[operator]
        raise MalformedSnapshot(f"snapshot: {pid!r} has {reconnects} reconnects")
    return Participant(pid, name, role, state, self_muted=self_muted, host_muted=host_muted,  # type: ignore[arg-type]
                       since=_typed(d, "since", float), reconnects=reconnects,  # type: ignore[arg-type]
                       declined_at=-math.inf if declined is None else declined)  # type: ignore[arg-type]
