"""Where a node keeps what can cross nodes: admission (seats, lines, the admission rate,
counters), the directory of Spaces (which node hosts which) and the node registry.

    Store             the small async interface the node uses (this module)
    ├── MemoryStore   one node: today's pure ``Admission`` in memory, nothing shared (default)
    └── RedisStore    many nodes sharing one Redis (``amphi serve --redis URL``, docs/cluster.md)

The media, the WebRTC sessions and the room stay on the node that hosts a Space; a Space's
own record lives in that node's ``SpaceRegistry`` (memory + disk) and is *published* to the
store, so other nodes can answer joins for it and say where its media is served.
"""

from __future__ import annotations

from collections.abc import Sequence

from amphi.control.admission import Admitted, Line, SpaceCounts, Waiting
from amphi.control.spaces import Space
from amphi.control.tokens import Token


class Store:
    """Lifecycle: new -> open -> closed. ``limit`` and ``paused`` are set by the node's
    health loop and apply to the admissions this node makes."""

    kind = "abstract"
    limit: int
    paused: bool
    level = 0  # the node's degradation level, shown in the registry

    async def open(self) -> None:
        """Starts whatever background work the store needs (heartbeats, reconnects)."""

    async def close(self) -> None:
        """Stops it; the store cannot be reused."""

    @property
    def occupied(self) -> int:  # seats taken (cluster-wide with Redis; last known)
        raise NotImplementedError

    @property
    def waiting(self) -> int:  # places in line
        raise NotImplementedError

    # -- admission (the same answers as amphi.control.admission.Admission) ----------------

    async def join(self, space_id: str, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        raise NotImplementedError

    async def poll(self, space_id: str, ticket: object, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        raise NotImplementedError

    async def renew(self, space_id: str, token: str, now: float) -> Admitted:
        raise NotImplementedError

    async def renew_seat(self, token: Token, now: float) -> Admitted:
        raise NotImplementedError

    async def line(self, space_id: str, now: float) -> Line:
        """The Space's line as its line document shows it (``Admission.line``)."""
        raise NotImplementedError

    async def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]], now: float) -> list[str]:
        """Seats an edge renewed: (seat, the expiry of the token it renewed, the new token's expiry).
        Each seat of this Space still held (issued, not a reserved offer) now lasts until the new
        expiry plus the grace (never shortened: a later expiry already known is kept). Returns the
        seats that are not held (released, lapsed, another Space's, never seen): the edge refuses
        their tokens from then on. Never creates a seat, so the cap stays exact."""
        raise NotImplementedError

    def host(self, space_id: str, now: float) -> Admitted:
        raise NotImplementedError

    async def leave(self, space_id: str, *, token: str | None, ticket: object, now: float) -> bool:
        raise NotImplementedError

    async def seat_held(self, token: Token, now: float) -> bool:
        raise NotImplementedError

    async def counts(self, space_id: str) -> SpaceCounts:
        raise NotImplementedError

    def known_counts(self, space_id: str) -> SpaceCounts:
        """``counts`` without waiting: exact on one node, the last known with Redis (the
        heartbeat refreshes those of the Spaces this node hosts)."""
        raise NotImplementedError

    async def promote(self, now: float) -> float | None:
        raise NotImplementedError

    async def sweep(self, now: float) -> int:
        raise NotImplementedError

    async def draw(self, space_id: str) -> int:
        raise NotImplementedError

    async def close_space(self, space_id: str) -> None:
        raise NotImplementedError

    # -- rate limits ------------------------------------------------------------------------

    async def take(self, key: str, rate: float, burst: int, now: float) -> float:
        """One grant from ``key``'s GCRA budget (``rate`` per second, ``burst`` at once):
        0 if granted, else the seconds until one would be."""
        raise NotImplementedError

    # -- the directory of Spaces and the node registry --------------------------------------

    async def publish(self, space: Space) -> None:
        """This node hosts ``space`` (created, started, ended, a new peak): tell the others."""

    async def lookup(self, space_id: str) -> tuple[Space, str] | None:
        """A Space hosted by another node and that node's public URL; None if unknown."""
        return None

    def origin(self, space_id: str) -> tuple[str, str] | None:
        """(public URL, node id) of the node hosting a Space looked up before; None if not known."""
        return None

    async def spaces(self) -> list[tuple[Space, str]]:
        """Every Space other nodes host, with their public URLs."""
        return []

    async def nodes(self) -> list[dict[str, object]]:
        """The live nodes (the registry); empty on a single node."""
        return []

    # -- leases: which node hosts each live Space, which stands by (docs/cluster.md) ----------
    # One node alone holds every lease and has no standby: it cannot outlive itself.

    async def renew_leases(self, space_ids: Sequence[str], ttl_s: float) -> dict[str, str]:
        """Renews this node's leases: for each Space, '' if held, else the node that holds it.
        Raises ``Unavailable`` when the store cannot be reached."""
        return dict.fromkeys(space_ids, "")

    async def stand_by(self, space_ids: Sequence[str], ttl_s: float) -> dict[str, tuple[str, str]]:
        """Offers to stand by each Space (other nodes host them): {space: (standby, holder)},
        the holder '' while the lease has lapsed."""
        return {}

    async def acquire(self, space_id: str, ttl_s: float, reclaim_s: float) -> int:
        """Takes a lapsed lease as its standby: the new generation, or 0 if refused."""
        return 0

    async def hand_over(self, space_id: str, to: str, last_msn: int, ttl_s: float) -> int:
        """Gives a held lease to node ``to`` (a drain; ``last_msn``: the last segment made here,
        the new host resumes after it): the new generation, or 0 if not held."""
        return 0

    async def release(self, space_ids: Sequence[str]) -> None:
        """The Spaces ended here: their leases and standbys go."""

    async def holders(self, space_ids: Sequence[str]) -> dict[str, tuple[str, str, int | None]]:
        """{space: (holder, standby, a hand-over's last segment)}, '' (None) for none."""
        return {s: ("", "", None) for s in space_ids}

    async def live_elsewhere(self) -> list[tuple[Space, str, str]]:
        """Spaces not ended that other nodes host: (Space, public URL, node id)."""
        return []

    async def published_by(self, space_id: str) -> str | None:
        """The node the directory's record of the Space names now (read afresh, not cached);
        None without a record (a Redis restarted empty has none)."""
        return None

    def forget(self, space_id: str) -> None:
        """This node no longer hosts the Space (another took it over): never re-published from here."""

    def status(self) -> dict[str, object]:
        return {"kind": self.kind}

    # -- a Space's stage, kept for the node that takes it over (docs/stage.md) ----------------

    async def save_stage(self, space_id: str, data: bytes) -> None:
        """Keeps the newest snapshot of a Space's stage (``Stage.snapshot``, as JSON).
        Raises ``Unavailable`` when the store cannot be reached (the caller tries again)."""

    async def load_stage(self, space_id: str) -> bytes | None:
        """The stage last saved for a Space; None if none is kept."""
        return None
