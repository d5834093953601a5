"""Spaces and their lifecycle. Pure state plus a small file store.

Lifecycle: scheduled -> live -> ended. Every change goes through ``SpaceRegistry.transition``,
which raises ``IllegalTransition`` naming the current state, persists the Space, and logs
``old -> new`` once. A Space that was live when the process died is found at start-up and
ended with ``end_reason = "abnormal"`` (alone; in a cluster its standby may have carried it on).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from amphi.core.errors import Forbidden, IllegalTransition, MalformedBody, NotFound, Unauthorized
from amphi.core.files import write_atomic

log = logging.getLogger(__name__)

MAX_TITLE = 200


class SpaceState(enum.Enum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


_ALLOWED = {
    SpaceState.SCHEDULED: {SpaceState.LIVE, SpaceState.ENDED},
    SpaceState.LIVE: {SpaceState.ENDED},
    SpaceState.ENDED: set(),
}


@dataclass
class Space:
    id: str
    title: str
    state: SpaceState
    host_key_hash: str
    created_at: float
    starts_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None  # "host", "shutdown" or "abnormal"
    peak_listeners: int = 0
    dead_air_s: float | None = None  # alert the hosts after this long of dead air (None: the node's default)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Space:
        d = dict(d)
        d["state"] = SpaceState(d["state"])
        return cls(**d)  # type: ignore[arg-type]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MIN_DEAD_AIR_S, MAX_DEAD_AIR_S = 2.0, 3600.0


def parse_dead_air(value: object) -> float | None:
    """Seconds of dead air before the hosts are alerted (docs/sound.md)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            MIN_DEAD_AIR_S <= value <= MAX_DEAD_AIR_S):
        raise MalformedBody(f"dead_air_s must be a number of seconds from {MIN_DEAD_AIR_S:g} to {MAX_DEAD_AIR_S:g}")
    return float(value)


MAX_STARTS_AT = 253_402_214_400.0  # 9999-12-31T00:00:00Z: any later, and it cannot be written back as a date


def parse_starts_at(value: object) -> float | None:
    """Accepts epoch seconds or an ISO-8601 time with a zone, from 1970 to 9999 (a time that
    cannot be written back as an ISO date would break every status of the Space)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value <= MAX_STARTS_AT:  # also NaN and infinities
            raise MalformedBody(f"starts_at must be epoch seconds from 0 to {MAX_STARTS_AT:.0f}")
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedBody(f"starts_at {value!r} is not an ISO-8601 time") from None
        if dt.tzinfo is None:
            raise MalformedBody("starts_at needs a time zone, e.g. 2026-11-21T20:00:00Z")
        return parse_starts_at(dt.timestamp())
    raise MalformedBody("starts_at must be an ISO-8601 string or epoch seconds")


def new_space_id() -> str:
    """A Space's id: 64 random bits, URL-safe, never starting with '-': it is an argument on
    command lines (``amphi space start ID``), where '-x...' would be taken for an option."""
    while (space_id := secrets.token_urlsafe(8)).startswith("-"):
        pass
    return space_id


class SpaceRegistry:
    """All Spaces of this node, kept in memory and in ``<data_dir>/spaces/<id>/space.json``."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time,
                 on_change: Callable[[Space, SpaceState | None, SpaceState, str | None], None] | None = None) -> None:
        self.root = root
        self._clock = clock
        self._on_change = on_change  # (space, old or None when created, new, reason): logs it, if given
        self._spaces: dict[str, Space] = {}
        root.mkdir(parents=True, exist_ok=True)

    def load(self, *, end_live: bool = True) -> list[Space]:
        """Reads every stored Space and returns those found live: a crash cut them off.
        Alone (``end_live``) they are ended as abnormal, so their recordings can be closed.
        In a cluster they are left out: their standby may carry them on, and the caller
        decides (``amphi.services.failover``)."""
        crashed = []
        for path in sorted(self.root.glob("*/space.json")):
            space = Space.from_json(json.loads(path.read_text()))
            if space.state is SpaceState.LIVE:
                crashed.append(space)
                if not end_live:
                    continue
                self._spaces[space.id] = space
                self.transition(space, SpaceState.ENDED, reason="abnormal")
            else:
                self._spaces[space.id] = space
        return crashed

    def adopt(self, space: Space) -> None:
        """This node hosts ``space`` from now on (it took it over): kept and stored here."""
        self._spaces[space.id] = space
        self.dir(space.id).mkdir(parents=True, exist_ok=True)
        self._save(space)

    def forget(self, space_id: str) -> None:
        """Another node hosts the Space now: no longer this node's (its files stay on disk)."""
        self._spaces.pop(space_id, None)

    def create(self, title: object, starts_at: object = None, dead_air_s: object = None) -> tuple[Space, str]:
        if not isinstance(title, str) or not title.strip():
            raise MalformedBody("title must be a non-empty string")
        if len(title) > MAX_TITLE:
            raise MalformedBody(f"title is longer than {MAX_TITLE} characters")
        key = secrets.token_urlsafe(24)
        space = Space(
            id=new_space_id(),
            title=title.strip(),
            state=SpaceState.SCHEDULED,
            host_key_hash=hash_key(key),
            created_at=self._clock(),
            starts_at=parse_starts_at(starts_at),
            dead_air_s=parse_dead_air(dead_air_s),
        )
        self._spaces[space.id] = space
        self.dir(space.id).mkdir(parents=True, exist_ok=True)
        self._save(space)
        if self._on_change is not None:
            self._on_change(space, None, space.state, None)
        else:
            log.info("space %s created: %r", space.id, space.title)
        return space, key

    def get(self, space_id: str) -> Space:
        space = self._spaces.get(space_id)
        if space is None:
            raise NotFound(f"no Space {space_id!r}")
        return space

    def known(self, space_id: str) -> bool:
        return space_id in self._spaces

    def find(self, space_id: str) -> Space | None:
        return self._spaces.get(space_id)

    def all(self) -> list[Space]:
        return list(self._spaces.values())

    def dir(self, space_id: str) -> Path:
        return self.root / space_id

    def authorize_host(self, space: Space, authorization: str | None) -> None:
        if not authorization:
            raise Unauthorized("this needs the host key (or an API key): Authorization: Bearer HOST_KEY")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("Authorization must be 'Bearer HOST_KEY'")
        self.check_host_key(space, key.strip())

    @staticmethod
    def check_host_key(space: Space, key: str) -> None:
        if not hmac.compare_digest(hash_key(key), space.host_key_hash):
            raise Forbidden("wrong host key for this Space")

    def transition(self, space: Space, new: SpaceState, *, reason: str | None = None) -> None:
        old = space.state
        if new not in _ALLOWED[old]:
            raise IllegalTransition(f"Space {space.id} is {old.value}; it cannot become {new.value}")
        space.state = new
        now = self._clock()
        if new is SpaceState.LIVE:
            space.started_at = now
        elif new is SpaceState.ENDED:
            space.ended_at = now
            space.end_reason = reason
        self._save(space)
        if self._on_change is not None:
            self._on_change(space, old, new, reason)
        else:
            log.info("space %s %s -> %s%s", space.id, old.value, new.value, f" ({reason})" if reason else "")

    def due(self) -> list[Space]:
        now = self._clock()
        return [
            s for s in self._spaces.values()
            if s.state is SpaceState.SCHEDULED and s.starts_at is not None and s.starts_at <= now
        ]

    def record_peak(self, space: Space, peak: int) -> None:
        if peak > space.peak_listeners:
            space.peak_listeners = peak

    def save(self, space: Space) -> None:
        self._save(space)

    def _save(self, space: Space) -> None:
        write_atomic(self.dir(space.id) / "space.json", json.dumps(space.to_json()).encode())
