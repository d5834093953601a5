"""Join and leave: the waiting room's front door, on the raw ASGI path because it takes the
surge (see docs/admission.md). The decision is ``amphi.control.listeners.Listeners.join``;
the defense looks first (``amphi.defense.shield``); ``amphi.web.answers`` says it in HTTP.

    POST /api/spaces/<id>/join    {} | {"ticket": T} | {"token": T}   [Authorization: Bearer HOST_KEY]
        200 admitted {playlist, token, expires_at, ...}   202 waiting {ticket, position, ...}
        200 ended {replay, download}
    POST /api/spaces/<id>/leave   {"token": T} | {"ticket": T}  -> 200 {"status": "left"|"not_held"}
"""

from __future__ import annotations

import time

from amphi.core.errors import AmphiError, MethodNotAllowed
from amphi.defense.shield import CLIENT_KEY, Shield
from amphi.obs.metrics import Metrics
from amphi.web.answers import join_answer, outcome
from amphi.web.asgi import Receive, Scope, Send, header, read_json, send_error, send_json
from amphi.web.ports import Finder, ListenerDesk, SpaceDesk

JOIN_BODY_LIMIT = 4096  # a ticket or a token fits many times over


class JoinEndpoint:
    def __init__(self, listeners: ListenerDesk, finder: Finder, spaces: SpaceDesk, shield: Shield,
                 metrics: Metrics) -> None:
        self._listeners = listeners
        self._finder = finder
        self._spaces = spaces
        self._shield = shield
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send, space_id: str, action: str) -> None:
        started = time.perf_counter()
        listeners, shield = self._listeners, self._shield
        space = None
        counted: str | None = "refused" if action == "join" else None  # obs
        reason: str | None = None
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{action} takes POST")
            now = time.time()  # defense: the shield first, before any admission work (docs/defense.md)
            address = scope.get(CLIENT_KEY) or shield.client(scope)
            shield.check_request(scope, address, space_id, now)
            space = await self._finder.space(space_id)  # 404; with --redis, any node's Space
            body = await read_json(scope, receive, JOIN_BODY_LIMIT)
            if action == "leave":
                freed = await listeners.leave(space, ticket=body.get("ticket"), token=body.get("token"))
                await send_json(send, 200, {"status": "left" if freed else "not_held"})
                return
            auth = header(scope, b"authorization")
            if auth is not None:  # a host listening: reserved capacity, never queued
                self._spaces.authorize_host(space, auth.decode("latin-1"))  # 401/403
            light = shield.check_join(space.id, address, body, now, host=auth is not None)  # defense
            result = await listeners.join(space, ticket=body.get("ticket"), token=body.get("token"),
                                          host=auth is not None)
            status, answer = join_answer(result)
            counted = outcome(result)
            shield.answered(space.id, light, status, answer, now)  # defense
            await send_json(send, status, answer,
                            retry_after_s=answer["retry_after_s"] if status == 202 else None)  # type: ignore[arg-type]
        except AmphiError as err:
            reason = err.code
            if err.code == "challenge_required" and counted is not None:
                counted = "challenged"  # obs: asked for proof of work (docs/defense.md)
            await send_error(send, err)
        finally:
            listeners.record_join(time.perf_counter() - started)
            if counted is not None:  # obs: joins by outcome, refusals by reason
                self._metrics.join(space.id if space is not None else None, counted, reason)
