"""Join and leave: the waiting room's front door, on the raw ASGI path because it takes the
surge (see docs/admission.md).

    POST /api/spaces/<id>/join    {} | {"ticket": T} | {"token": T}   [Authorization: Bearer HOST_KEY]
        200 admitted {playlist, token, expires_at, ...}   202 waiting {ticket, position, ...}
        200 ended {replay, download}
    POST /api/spaces/<id>/leave   {"token": T} | {"ticket": T}  -> 200 {"status": "left"|"not_held"}
"""

from __future__ import annotations

import re
import time

from amphi.core.errors import AmphiError, MethodNotAllowed
from amphi.defense.shield import CLIENT_KEY
from amphi.node import Node
from amphi.web.asgi import Receive, Scope, Send, header, read_json, send_error, send_json

JOIN_BODY_LIMIT = 4096  # a ticket or a token fits many times over
PATH = re.compile(r"^/api/spaces/([A-Za-z0-9_-]{1,64})/(join|leave)$")


class JoinEndpoint:
    def __init__(self, node: Node) -> None:
        self._node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send, m: re.Match[str]) -> None:
        started = time.perf_counter()
        node = self._node
        space = None
        outcome: str | None = "refused" if m.group(2) == "join" else None  # obs
        reason: str | None = None
        shield = node.shield
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{m.group(2)} takes POST")
            now = time.time()  # defense: the shield first, before any admission work (docs/defense.md)
            address = scope.get(CLIENT_KEY) or shield.client(scope)
            shield.check_request(scope, address, m.group(1), now)
            space = await node.space(m.group(1))  # 404; with --redis, any node's Space
            body = await read_json(scope, receive, JOIN_BODY_LIMIT)
            if m.group(2) == "leave":
                freed = await node.leave(space, ticket=body.get("ticket"), token=body.get("token"))
                await send_json(send, 200, {"status": "left" if freed else "not_held"})
                return
            auth = header(scope, b"authorization")
            if auth is not None:  # a host listening: reserved capacity, never queued
                node.registry.authorize_host(space, auth.decode("latin-1"))  # 401/403 (the hash travels with the Space)
            light = shield.check_join(space.id, address, body, now, host=auth is not None)  # defense
            status, answer = await node.join(space, ticket=body.get("ticket"), token=body.get("token"),
                                            host=auth is not None)
            outcome = _outcome(status, answer)
            shield.answered(space.id, light, status, answer, now)  # defense
            await send_json(send, status, answer,
                            retry_after_s=answer["retry_after_s"] if status == 202 else None)  # type: ignore[arg-type]
        except AmphiError as err:
            reason = err.code
            if err.code == "challenge_required" and outcome is not None:
                outcome = "challenged"  # obs: asked for proof of work (docs/defense.md)
            await send_error(send, err)
        finally:
            node.record_join(time.perf_counter() - started)
            if outcome is not None:  # obs: joins by outcome, refusals by reason
                node.obs.metrics.join(space.id if space is not None else None, outcome, reason)


def _outcome(status: int, answer: dict[str, object]) -> str:
    if status == 202:
        return "waiting"
    if answer["status"] == "ended":
        return "ended"
    return "renewed" if answer.get("renewed") else "admitted"
