"""The node's whole ASGI app: ``/media/`` goes to the raw origin (hot path), everything else
to the Starlette control API and pages. Served without ASGI lifespan: the node's lifecycle
is run by ``amphi.server``, which owns the loop."""

from __future__ import annotations

from dataclasses import asdict

from amphi.node import Node
from amphi.web.api import build_api
from amphi.web.origin import Origin, Receive, Scope, Send


class App:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.origin = Origin(node, node.cfg.media)
        self.api = build_api(node, self.stats)

    def stats(self) -> dict[str, object]:
        return {
            "pipelines": {sid: asdict(p.stats) for sid, p in self.node.pipelines.items()},
            "speakers": self.node.ingest.connections,
            "origin": asdict(self.origin.stats),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/media/"):
            await self.origin(scope, receive, send)
        else:
            await self.api(scope, receive, send)
