"""What the web layer needs of the services, as small protocols: the web depends on these,
never on the root. ``amphi.node`` hands it the real services (``amphi.control.listeners``,
``amphi.control.directory``, ``amphi.services``); ``amphi.web.origin.MediaSource`` is the
origin's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from amphi.control.admission import Line
from amphi.control.listeners import JoinResult
from amphi.control.spaces import Space
from amphi.control.stage import Participant
from amphi.core.config import AdmissionConfig
from amphi.media.ingest.trickle import Fragment
from amphi.services.room import Room, Spoken
from amphi.services.rooms import Grant, Invited, Requested
from amphi.services.spaces import SpaceStatus
from amphi.web.origin import MediaSource


class ListenerDesk(Protocol):
    cfg: AdmissionConfig

    async def join(self, space: Space, *, ticket: object = None, token: object = None,
                   host: bool = False) -> JoinResult: ...

    async def leave(self, space: Space, *, ticket: object = None, token: object = None) -> bool: ...

    def record_join(self, seconds: float) -> None: ...

    async def line(self, space: Space) -> tuple[float, Line, float]: ...  # (when, the line, poll stretch)

    def verify_edge(self, credential: str | None) -> str: ...  # 403

    async def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]]) -> list[str]: ...


class Finder(Protocol):
    async def space(self, space_id: str) -> Space: ...  # 404; with --redis, any node's Space

    async def hosted(self, space_id: str, path: str) -> Space: ...  # 307 to its node if elsewhere

    async def all_spaces(self) -> list[Space]: ...

    async def nodes(self) -> list[dict[str, object]]: ...


class SpaceDesk(MediaSource, Protocol):
    def authorize_host(self, space: Space, authorization: str | None) -> None: ...  # 401/403

    async def create(self, title: object, starts_at: object = None, dead_air_s: object = None) -> tuple[Space, str]: ...

    async def start(self, space: Space) -> None: ...

    async def end(self, space: Space) -> None: ...

    async def status(self, space: Space) -> SpaceStatus: ...

    def set_pow(self, space: Space, mode: object) -> dict[str, object]: ...

    async def this_node(self, node_id: str, path: str) -> None: ...  # HostedElsewhere (forwarded) if another

    async def drain(self) -> dict[str, object]: ...  # 409 alone


class KeyDesk(Protocol):
    """Who may create Spaces and manage any Space (``amphi.services.access``; docs/keys.md)."""

    def is_key(self, credential: str) -> bool: ...  # an API key or the operator key (else a host key, a grant)

    async def require(self, authorization: str | None, client: str, what: str) -> str: ...  # 401/429/503


class StageDesk(Protocol):
    event_streams: int

    def room(self, space: Space) -> Room: ...

    def participant(self, space: Space, credential: str | None) -> Participant: ...

    def viewer(self, space: Space, credential: str | None) -> Participant | None: ...

    def host_session(self, space: Space) -> Grant: ...

    def extra(self, space: Space) -> dict[str, object]: ...

    def view(self, space: Space, viewer: Participant | None) -> dict[str, object]: ...

    async def request_to_speak(self, space: Space, name: object, credential: str | None,
                               client: str) -> Requested: ...

    def invite(self, space: Space, actor: Participant, name: object) -> Invited: ...

    async def act(self, space: Space, actor: Participant, pid: str, action: str,
                  body: dict[str, object]) -> Participant: ...

    async def speak(self, space: Space, offer_sdp: str, credential: str | None) -> Spoken: ...

    async def hang_up(self, space: Space, session: str, credential: str | None) -> None: ...  # WHIP DELETE

    async def trickle(self, space: Space, session: str, credential: str | None, if_match: str | None,
                      fragment: Fragment) -> None: ...  # WHIP PATCH
