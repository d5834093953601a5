"""The node's whole ASGI app: ``/media/`` goes to the raw origin, join/leave to the raw
waiting-room endpoint and ``/events`` to the raw event streams (the hot paths), everything else to the Starlette control API and
pages. Served without ASGI lifespan: the node's lifecycle is run by ``amphi.server``, which
owns the loop."""

from __future__ import annotations

from dataclasses import asdict

from amphi.node import Node
from amphi.web.api import build_api
from amphi.web.asgi import Receive, Scope, Send
from amphi.web.events import PATH as EVENTS_PATH
from amphi.web.events import EventStream
from amphi.web.join import PATH as JOIN_PATH
from amphi.web.join import JoinEndpoint
from amphi.web.origin import Origin


class App:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.origin = Origin(node, node.cfg.media)
        self.join = JoinEndpoint(node)
        self.events = EventStream(node)
        self.api = build_api(node, self.stats)

    def stats(self) -> dict[str, object]:
        return {
            "pipelines": {sid: asdict(p.stats) for sid, p in self.node.pipelines.items()},
            "speakers": self.node.ingest.connections,
            "event_streams": self.node.event_streams,
            "origin": asdict(self.origin.stats),
            "admission": {
                "occupied": self.node.store.occupied,
                "waiting": self.node.store.waiting,
                "limit": self.node.store.limit,
                "max_listeners": self.node.cfg.admission.max_listeners,
                "paused": self.node.store.paused,
            },
            "store": self.node.store.status(),
            "degradation": self.node.governor.status(),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith("/media/"):
            await self.origin(scope, receive, send)
        elif path.startswith("/api/spaces/") and (m := JOIN_PATH.match(path)):
            await self.join(scope, receive, send, m)
        elif path.endswith("/events") and (m := EVENTS_PATH.match(path)):
            await self.events(scope, receive, send, m)
        else:
            await self.api(scope, receive, send)
