"""Live room state pushed to browsers: Server-Sent Events, on the raw ASGI path because every
listener page may hold one open (docs/stage.md).

    GET /api/spaces/<id>/events   [Authorization: Bearer X | ?access_token=X]
        event: stage   the stage view (public, or the moderators' view), on change
        event: you     the caller's own participant record, on change (with a grant)
        event: ended   the Space has ended; the stream closes

A stream holds no queue: it remembers what it last sent and, when woken, sends the latest
view if it differs, at most once per ``event_interval_s``. A client that does not read
blocks only its own stream. The shared view is serialised once per version for everyone.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from urllib.parse import parse_qs

import orjson

from amphi.control.spaces import SpaceState
from amphi.control.stage import State
from amphi.core.errors import AmphiError, MethodNotAllowed, TooBusy
from amphi.node import Node
from amphi.web.asgi import CORS, NO_STORE, Receive, Scope, Send, bearer, header, send_error

log = logging.getLogger(__name__)

PATH = re.compile(r"^/api/spaces/([A-Za-z0-9_-]{1,64})/events$")
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
REFRESH_S = 1.0  # audience counts are looked at this often even when the stage is quiet
SEND_TIMEOUT_S = 10.0  # a client that takes longer to accept one event is cut off


def _credential(scope: Scope) -> str | None:
    auth = header(scope, b"authorization")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return bearer(auth.decode("latin-1") if auth else None, (query.get("access_token") or [None])[0])


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class EventStream:
    def __init__(self, node: Node) -> None:
        self._node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send, m: re.Match[str]) -> None:
        node = self._node
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("events take GET")
            space = node.get(m.group(1))
            if space.state is SpaceState.ENDED:
                await self._start(send)
                await send({"type": "http.response.body", "body": _event("ended", b"{}"), "more_body": False})
                return
            who = _credential(scope)
            viewer = node.participant(space, who) if who else None
            room = node.room(space)
            if node.event_streams >= node.cfg.stage.max_event_streams:
                raise TooBusy("too many live event streams on this node; the stage is also at GET /stage",
                              retry_after_s=30)
        except AmphiError as err:
            await send_error(send, err)
            return

        node.event_streams += 1
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await self._start(send)
            interval = node.cfg.stage.event_interval_s
            last_key: tuple[object, ...] | None = None
            last_you: dict[str, object] | None = None
            last_sent = time.monotonic()
            moderator = bool(viewer and viewer.moderator)
            while not gone.done():
                chunks = []
                if viewer is not None:
                    you = viewer.private()
                    if you != last_you:
                        chunks.append(_event("you", orjson.dumps(you)))
                        last_you = you
                    moderator = viewer.moderator
                key, data = room.view_bytes(moderator, node.stage_extra(space))
                if key != last_key:
                    chunks.append(_event("stage", data))
                    last_key = key
                ended = room.ended or space.state is SpaceState.ENDED
                removed = viewer is not None and viewer.state is State.REMOVED
                if ended or removed:
                    if ended:
                        chunks.append(_event("ended", b"{}"))
                    await self._send(send, b"".join(chunks), more=False)
                    return
                now = time.monotonic()
                if not chunks and now - last_sent >= KEEPALIVE_S:
                    chunks.append(b": keepalive\n\n")
                if chunks:
                    await self._send(send, b"".join(chunks))
                    last_sent = now
                    await asyncio.wait([gone], timeout=interval)  # coalesce what comes next
                changed = asyncio.ensure_future(room.changed().wait())
                try:
                    await asyncio.wait([gone, changed], timeout=REFRESH_S, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        except (OSError, RuntimeError, TimeoutError) as exc:  # the client went away or stopped reading
            log.debug("event stream for %s closed: %r", space.id, exc)
        finally:
            node.event_streams -= 1
            gone.cancel()

    @staticmethod
    async def _start(send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", NO_STORE),
            (b"x-accel-buffering", b"no"), CORS]})

    @staticmethod
    async def _send(send: Send, body: bytes, more: bool = True) -> None:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await send({"type": "http.response.body", "body": body, "more_body": more})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
