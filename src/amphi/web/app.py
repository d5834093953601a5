"""The node's whole ASGI app. Every path is looked up once in the route table
(``amphi.web.routes``) and goes by its route's kind: media to the raw origin, join/leave to the
raw waiting-room endpoint, what edges send (a batch of joins, renewed seats) to the same
endpoint, and events to the raw event streams (the hot paths), ops to the
operator's endpoints (``amphi.web.ops``), a CORS preflight on media or a join to one answer
(``CROSS_ORIGIN``: any page may embed a Space), WHIP (RFC 9725: the speak endpoint and its
sessions) to the API with CORS for any origin on every answer and its preflights answered here,
everything else to the Starlette control API and
pages (``amphi.web.api``, whose routes are the same table's). Served without ASGI lifespan:
the node's lifecycle is run by ``amphi.server``, which owns the loop.

Every request is counted here, by route *template* (``/media/{id}/t/{token}/{msn}.{part}.m4s``,
never the raw path) and status, with its time to first byte (``amphi.obs.metrics``). A
request whose client left before any answer is counted with status 499. Middleware is plain
ASGI classes (``amphi.web.middleware``)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

from amphi.control.listeners import Listeners
from amphi.core.config import Config
from amphi.defense.shield import Shield
from amphi.obs.logging import request_id
from amphi.obs.observer import Observer
from amphi.obs.snapshot import NodeSnapshot
from amphi.web.api import build_api
from amphi.web.asgi import WHIP_ACCEPT, WHIP_PREFLIGHT_HEADERS, Receive, Scope, Send, header, preflight, whip_cors
from amphi.web.events import EventStream
from amphi.web.forward import Forwarder
from amphi.web.join import JoinEndpoint
from amphi.web.middleware import Gate
from amphi.web.ops import Ops
from amphi.web.origin import Origin
from amphi.web.ports import Finder, KeyDesk, SpaceDesk, StageDesk
from amphi.web.routes import MEDIA_OTHER, OTHER, ROUTES

CROSS_ORIGIN = frozenset({"media", "join"})  # what a page on another origin may call: embed a Space (CORS preflights)
# ... and speak through WHIP (RFC 9725): preflights with the bearer token and If-Match allowed,
# every answer with CORS and the WHIP headers exposed (asgi.whip_cors), answered by the API


def _methods_by_template() -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for r in ROUTES:  # a template two routes share (GET and POST /api/spaces) takes both's methods
        out[r.template] = out.get(r.template, frozenset()) | r.methods | (
            {"OPTIONS"} if r.kind in CROSS_ORIGIN else frozenset())
    return out


METHODS = _methods_by_template()


def allow(start: dict[str, Any], template: str) -> dict[str, Any]:
    """A 405's start with the ``Allow`` header (RFC 9110 15.5.6): every method of the path's
    template in the route table (in place of Starlette's, which names one route's)."""
    headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"allow"]
    return {**start, "headers": [*headers, (b"allow", ", ".join(sorted(METHODS[template])).encode())]}


class App:
    def __init__(self, cfg: Config, listeners: Listeners, spaces: SpaceDesk, rooms: StageDesk, finder: Finder,
                 shield: Shield, obs: Observer, operator_key: str, snapshot: Callable[[], NodeSnapshot],
                 access: KeyDesk) -> None:
        self.shield = shield
        self.origin = Origin(spaces, listeners, cfg.media)
        self.join = JoinEndpoint(listeners, finder, spaces, shield, obs.metrics)
        self.closing = asyncio.Event()  # the node is shutting down: long-lived streams end
        self.forward = Forwarder(cfg.node_id, cfg.http.max_body_bytes, self.closing)  # calls about Spaces hosted elsewhere
        self.events = EventStream(rooms, finder, cfg.stage, self.closing, self.forward)
        self.ops = Ops(cfg, obs, operator_key, self.closing)
        self.api = build_api(cfg, spaces, finder, rooms, lambda: snapshot().to_json(), access, self.forward)
        self.metrics = obs.metrics
        self.asgi = Gate(self._route, shield)  # what the HTTP server serves: the middleware, then the routes

    def close(self) -> None:
        """Shutdown: the event and dashboard streams end (their clients reconnect elsewhere),
        so the HTTP server can drain."""
        self.closing.set()

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        first_byte = 0.0
        status = 499

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal first_byte, status
            if message["type"] == "http.response.start":
                first_byte = time.perf_counter()
                status = message["status"]
                if status == 405 and m is not None:
                    message = allow(message, m.route.template)
            await send(message)

        path = scope["path"]
        m = ROUTES.match(path, scope["method"])
        if m is not None:
            route, kind = m.route.template, m.route.kind  # the metric label: the template
        else:
            route = kind = MEDIA_OTHER if path.startswith("/media/") else OTHER
        try:
            if scope["method"] == "OPTIONS" and m is not None and kind in CROSS_ORIGIN:
                await preflight(timed_send, m.route.methods)
            elif kind == "whip" and m is not None and scope["method"] == "OPTIONS":
                await preflight(timed_send, m.route.methods, allow=WHIP_PREFLIGHT_HEADERS,
                                extra=tuple(WHIP_ACCEPT[x] for x in sorted(m.route.methods) if x in WHIP_ACCEPT))
            elif kind == "media" or kind == MEDIA_OTHER:
                await self.origin(scope, receive, timed_send, m)
            elif kind == "join":
                assert m is not None
                await self.join(scope, receive, timed_send, m.params["id"], m.route.name)  # type: ignore[arg-type]
            elif kind == "edge":
                assert m is not None
                await self.join.edge(scope, receive, timed_send, m.route.name)
            elif kind == "events":
                assert m is not None
                await self.events(scope, receive, timed_send, m.params["id"])  # type: ignore[arg-type]
            elif kind == "ops":
                assert m is not None
                await self.ops(scope, receive, timed_send, m)
            else:  # the control API, WHIP and the pages: Starlette, over the same table's templates
                given = header(scope, b"x-request-id")
                token = request_id.set(given.decode("latin-1")[:64] if given else secrets.token_hex(6))
                try:
                    await self.api(scope, receive, whip_cors(timed_send) if kind == "whip" else timed_send)
                finally:
                    request_id.reset(token)
        finally:
            self.metrics.request(route, status, (first_byte or time.perf_counter()) - started)
