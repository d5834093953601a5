"""The node's whole ASGI app: ``/media/`` goes to the raw origin, join/leave to the raw
waiting-room endpoint and ``/events`` to the raw event streams (the hot paths), everything else to the Starlette control API and
pages, ``/metrics`` and ``/dashboard`` to the operator's endpoints (``amphi.web.ops``). Served
without ASGI lifespan: the node's lifecycle is run by ``amphi.server``, which owns the loop.

Every request is counted here, by route *template* (``/media/{id}/t/{token}/{msn}.{part}.m4s``,
never the raw path) and status, with its time to first byte (``amphi.obs.metrics``). A
request whose client left before any answer is counted with status 499."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from amphi.control.listeners import Listeners
from amphi.core.config import Config
from amphi.core.errors import AmphiError
from amphi.defense.shield import CLIENT_KEY, Shield
from amphi.obs.logging import request_id
from amphi.obs.observer import Observer
from amphi.obs.snapshot import NodeSnapshot
from amphi.web.api import build_api
from amphi.web.asgi import Receive, Scope, Send, close_if_body_unread, header, send_error
from amphi.web.events import EventStream
from amphi.web.join import JoinEndpoint
from amphi.web.ops import PATHS as OPS_PATHS
from amphi.web.ops import Ops
from amphi.web.origin import Origin
from amphi.web.ports import Finder, SpaceDesk, StageDesk

JOIN_ROUTES = {"join": "/api/spaces/{id}/join", "leave": "/api/spaces/{id}/leave"}
EVENTS_ROUTE = "/api/spaces/{id}/events"
JOIN_PATH = re.compile(r"^/api/spaces/([A-Za-z0-9_-]{1,64})/(join|leave)$")
EVENTS_PATH = re.compile(r"^/api/spaces/([A-Za-z0-9_-]{1,64})/events$")
_MEDIA_NAMES = ("live.m3u8", "init.mp4", "vod.m3u8", "download.m4a")
_MEDIA_ROUTES = {(tok, name): ("/media/{id}/t/{token}/" if tok else "/media/{id}/") + name
                 for tok in (True, False) for name in (*_MEDIA_NAMES, "{msn}.{part}.m4s", "{msn}.m4s")}


def media_route(path: str) -> str:
    """The template of a /media/ path, without a regex (this runs ~10k times a second)."""
    tail = path.rpartition("/")[2]
    if tail.endswith(".m4s"):
        name = "{msn}.{part}.m4s" if tail.count(".") == 2 else "{msn}.m4s"
    elif tail in _MEDIA_NAMES:
        name = tail
    else:
        return "/media/other"
    return _MEDIA_ROUTES[("/t/" in path, name)]


class App:
    def __init__(self, cfg: Config, listeners: Listeners, spaces: SpaceDesk, rooms: StageDesk, finder: Finder,
                 shield: Shield, obs: Observer, operator_key: str, snapshot: Callable[[], NodeSnapshot]) -> None:
        self.shield = shield
        self.origin = Origin(spaces, listeners, cfg.media)
        self.join = JoinEndpoint(listeners, finder, spaces, shield, obs.metrics)
        self.events = EventStream(rooms, finder, cfg.stage)
        self.ops = Ops(cfg, obs, operator_key)
        self.api = build_api(cfg, spaces, finder, rooms, lambda: snapshot().to_json())
        self.metrics = obs.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        receive, send = close_if_body_unread(scope, receive, send)
        shield = self.shield  # defense: requests in flight per client address
        address = scope[CLIENT_KEY] = shield.client(scope)
        try:
            shield.enter(address)
        except AmphiError as err:
            await send_error(send, err)
            return
        try:
            await self._route(scope, receive, send)
        finally:
            shield.leave(address)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        first_byte = 0.0
        status = 499

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal first_byte, status
            if message["type"] == "http.response.start":
                first_byte = time.perf_counter()
                status = message["status"]
            await send(message)

        path = scope["path"]
        try:
            if path.startswith("/media/"):
                route = media_route(path)
                await self.origin(scope, receive, timed_send)
            elif path.startswith("/api/spaces/") and (m := JOIN_PATH.match(path)):
                route = JOIN_ROUTES[m.group(2)]
                await self.join(scope, receive, timed_send, m.group(1), m.group(2))
            elif path.endswith("/events") and (m := EVENTS_PATH.match(path)):
                route = EVENTS_ROUTE
                await self.events(scope, receive, timed_send, m.group(1))
            elif path in OPS_PATHS:
                route = path
                await self.ops(scope, receive, timed_send)
            else:
                route = "other"
                given = header(scope, b"x-request-id")
                token = request_id.set(given.decode("latin-1")[:64] if given else secrets.token_hex(6))
                try:
                    await self.api(scope, receive, timed_send)
                finally:
                    request_id.reset(token)
                    matched = scope.get("route")  # Starlette leaves the matched route here
                    route = getattr(matched, "path", "other")
        finally:
            self.metrics.request(route, status, (first_byte or time.perf_counter()) - started)
