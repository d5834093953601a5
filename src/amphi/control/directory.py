"""The directory: which node hosts a Space, and where its listeners fetch its media.

A Space lives in the registry of the node that hosts it; with ``--redis`` the other nodes
find it, and the public URL and id of its node, in the store (``amphi.control.store``).
Listeners fetch media from an edge cache when the node has edges (the next one in turn,
under the prefix ``/o/<node_id>`` that routes to the hosting node), else from the hosting
node itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from amphi.control.spaces import Space, SpaceRegistry
from amphi.control.store import Store
from amphi.core.config import Config
from amphi.core.errors import HostedElsewhere, NotFound, Unavailable


class Directory:
    def __init__(self, cfg: Config, registry: SpaceRegistry, store: Store) -> None:
        self._base_url = cfg.http.base_url
        self._node_id = cfg.node_id
        self.edges = cfg.edges
        self._registry = registry
        self._store = store
        self._next_edge = random.randrange(len(cfg.edges)) if cfg.edges else 0  # round-robin over the edges
        # a Space this node stands by for (services/failover.py): while its record is missing (Redis
        # restarted empty, its host dead) it is moving here, not gone: 503, never a 404 a client gives up on
        self.standing_by: Callable[[str], bool] = lambda space_id: False

    async def locate(self, space_id: str) -> tuple[Space, str | None]:
        """A Space and, if another node hosts it (--redis), that node's public URL; 404 if none."""
        space = self._registry.find(space_id)
        if space is not None:
            return space, None
        found = await self._store.lookup(space_id)
        if found is None:
            if self.standing_by(space_id):
                raise Unavailable(f"Space {space_id} is changing hosts", retry_after_s=1)
            raise NotFound(f"no Space {space_id!r}")
        return found

    async def space(self, space_id: str) -> Space:
        """A Space this node hosts, else one another node hosts (with --redis); 404 if none."""
        space = self._registry.find(space_id)  # the common case first: on the join path
        return space if space is not None else (await self.locate(space_id))[0]

    async def hosted(self, space_id: str, path: str) -> Space:
        """A Space this node hosts; one another node hosts -> 307 to ``path`` there."""
        space, elsewhere = await self.locate(space_id)
        if elsewhere is not None:
            raise HostedElsewhere(f"Space {space_id} is hosted by {elsewhere}", location=elsewhere + path)
        return space

    def origin_of(self, space_id: str) -> tuple[str, str]:
        """(public URL, node id) of the node hosting a Space: this one, or with --redis the
        one that published it."""
        if self._registry.find(space_id) is None and (hit := self._store.origin(space_id)) is not None:
            return hit
        return self._base_url, self._node_id

    def media_base(self, space_id: str, edge: str | None = None) -> str:
        """Where a listener fetches a Space's media: an edge (the next one in turn unless
        named) under the hosting node's prefix; without edges, the hosting node itself."""
        url, node_id = self.origin_of(space_id)
        edges = self.edges
        if not edges:
            return url
        if edge is None:
            edge = edges[self._next_edge % len(edges)]
            self._next_edge += 1
        return f"{edge.rstrip('/')}/o/{node_id}"

    def playlist(self, space_id: str, token: str) -> tuple[str, tuple[str, ...]]:
        """A seated listener's (multivariant) playlist URL, and the media base at every edge
        (to fail over)."""
        url = f"{self.media_base(space_id)}/media/{space_id}/t/{token}/index.m3u8"
        return url, tuple(self.media_base(space_id, edge) for edge in self.edges)

    async def all_spaces(self) -> list[Space]:
        mine = self._registry.all()
        ids = {s.id for s in mine}
        return mine + [s for s, _ in await self._store.spaces() if s.id not in ids]

    async def nodes(self) -> list[dict[str, object]]:
        """The node registry (with --redis; docs/cluster.md)."""
        return await self._store.nodes()
