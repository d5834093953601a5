"""Live room state pushed to browsers: Server-Sent Events, on the raw ASGI path because every
listener page may hold one open (docs/stage.md).

    GET /api/spaces/<id>/events   [Authorization: Bearer X | ?access_token=X]
        event: stage   the stage view (public, or the moderators' view), on change
        event: you     the caller's own participant record, on change (with a grant)
        event: ended   the Space has ended; the stream closes
        event: moved   another node hosts the Space now; the stream closes (connect again: docs/cluster.md)

A stream holds no queue: it remembers what it last sent and, when woken, sends the latest
view if it differs, at most once per ``event_interval_s``. A client that does not read
blocks only its own stream. The shared view is serialised once per version for everyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qs

import orjson

from amphi.control.spaces import SpaceState
from amphi.control.stage import State
from amphi.core.config import StageConfig
from amphi.core.errors import AmphiError, HostedElsewhere, MethodNotAllowed, TooBusy
from amphi.web import sse
from amphi.web.asgi import Receive, Scope, Send, bearer, header, send_error
from amphi.web.forward import Forwarder
from amphi.web.ports import Finder, StageDesk

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # audience counts are looked at this often even when the stage is quiet


def _credential(scope: Scope) -> str | None:
    auth = header(scope, b"authorization")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return bearer(auth.decode("latin-1") if auth else None, (query.get("access_token") or [None])[0])


class EventStream:
    def __init__(self, rooms: StageDesk, finder: Finder, cfg: StageConfig, closing: asyncio.Event,
                 forward: Forwarder) -> None:
        self._closing = closing  # set at shutdown: the stream ends
        self._forward = forward  # a Space another node hosts: its stream, relayed from there
        self._rooms = rooms
        self._finder = finder
        self._cfg = cfg

    async def __call__(self, scope: Scope, receive: Receive, send: Send, space_id: str) -> None:
        rooms = self._rooms
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("events take GET")
            path = scope["path"] + (f"?{qs.decode('latin-1')}" if (qs := scope.get("query_string")) else "")
            space = await self._finder.hosted(space_id, path)  # HostedElsewhere: relayed (--redis)
            if space.state is SpaceState.ENDED:
                await sse.start(send)
                await sse.write(send, sse.event("ended", b"{}"), more=False)
                return
            viewer = rooms.viewer(space, _credential(scope))
            room = rooms.room(space)
            if rooms.event_streams >= self._cfg.max_event_streams:
                raise TooBusy("too many live event streams on this node; the stage is also at GET /stage",
                              retry_after_s=30)
        except HostedElsewhere as err:
            await self._forward(scope, receive, send, err)
            return
        except AmphiError as err:
            await send_error(send, err)
            return

        rooms.event_streams += 1
        gone = sse.watch_disconnect(receive, self._closing)
        try:
            await sse.start(send)
            interval = self._cfg.event_interval_s
            last_key: tuple[object, ...] | None = None
            last_you: dict[str, object] | None = None
            last_sent = time.monotonic()
            moderator = bool(viewer and viewer.moderator)
            while not gone.done():
                chunks = []
                if viewer is not None:
                    you = viewer.private()
                    if you != last_you:
                        chunks.append(sse.event("you", orjson.dumps(you)))
                        last_you = you
                    moderator = viewer.moderator
                key, data = room.view_bytes(moderator, rooms.extra(space))
                if key != last_key:
                    chunks.append(sse.event("stage", data))
                    last_key = key
                ended = room.ended or space.state is SpaceState.ENDED
                removed = viewer is not None and viewer.state is State.REMOVED
                if ended or removed:
                    if ended:  # or moved: another node took the Space over, the client comes back (docs/cluster.md)
                        chunks.append(sse.event("moved" if room.moved else "ended", b"{}"))
                    await sse.write(send, b"".join(chunks), more=False)
                    return
                now = time.monotonic()
                if not chunks and now - last_sent >= sse.KEEPALIVE_S:
                    chunks.append(sse.KEEPALIVE)
                if chunks:
                    await sse.write(send, b"".join(chunks))
                    last_sent = now
                    await asyncio.wait([gone], timeout=interval)  # coalesce what comes next
                changed = asyncio.ensure_future(room.changed().wait())
                try:
                    await asyncio.wait([gone, changed], timeout=REFRESH_S, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
            await sse.finish(send, self._closing)
        except (OSError, RuntimeError, TimeoutError) as exc:  # the client went away or stopped reading
            log.debug("event stream for %s closed: %r", space.id, exc)
        finally:
            rooms.event_streams -= 1
            gone.cancel()
