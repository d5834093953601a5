"""Join and leave: the waiting room's front door, on the raw ASGI path because it takes the
surge (see docs/admission.md). The decision is ``amphi.control.listeners.Listeners.join``;
the defense looks first (``amphi.defense.shield``); ``amphi.web.answers`` says it in HTTP.

    POST /api/spaces/<id>/join    {} | {"ticket": T} | {"token": T}   [Authorization: Bearer HOST_KEY]
        200 admitted {playlist, token, expires_at, ...}   202 waiting {ticket, position, ...}
        200 ended {replay, download}
    POST /api/spaces/<id>/leave   {"token": T} | {"ticket": T}  -> 200 {"status": "left"|"not_held"}
    GET  /api/spaces/<id>/line    the line document, cacheable for a second (edges serve it): the
        number being called and the places that left, so a waiter knows its position from its
        place number, and comes back to join with its ticket only once its turn has come
    POST /api/edge/joins          {"joins": [[space, client address, body, authorization, header bytes], ...]}
        x-amphi-edge: credential; 200 {"answers": [[status, retry-after, {body}], ...]}: an edge's batch of
        joins (edge/joins.py), each decided as if it had come alone
    POST /api/edge/renewals       {"spaces": {<id>: [[seat, old expiry, new expiry], ...]}}   x-amphi-edge: credential
        200 {"extended": n, "gone": {<id>: [seat, ...]}}: the seats an edge renewed (edge/renewals.py)
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

import orjson

from amphi.control.tokens import SEAT
from amphi.core.errors import AmphiError, MalformedBody, MethodNotAllowed, PayloadTooLarge
from amphi.defense.shield import CLIENT_KEY, Shield
from amphi.obs.metrics import Metrics
from amphi.web.answers import join_answer, line_answer, outcome
from amphi.web.asgi import (Receive, Scope, Send, error_parts, header, json_parts, parse_body, read_body, read_json,
                            respond, send_error, send_json)
from amphi.web.ports import Finder, ListenerDesk, SpaceDesk
from amphi.web.routes import JOIN_BODY_LIMIT, PLACES

SPACE_ID = re.compile(PLACES["id"].grammar)

BATCH_BODY_LIMIT = 1 << 20  # an edge's batch: MAX_BATCH_JOINS joins of up to a few hundred bytes each
MAX_BATCH_JOINS = 1000  # joins in one batch (an edge sends at most edge/joins.py MAX_BATCH)
RENEWALS_BODY_LIMIT = 256 * 1024  # an edge's report: a thousand seats (edge/renewals.py BATCH) in about 40 KB
MAX_RENEWALS = 5000  # seats in one report
LINE_CACHE = b"public, max-age=1"  # the line document: edges and browsers keep it a second


class JoinEndpoint:
    def __init__(self, listeners: ListenerDesk, finder: Finder, spaces: SpaceDesk, shield: Shield,
                 metrics: Metrics) -> None:
        self._listeners = listeners
        self._finder = finder
        self._spaces = spaces
        self._shield = shield
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send, space_id: str, action: str) -> None:
        if action == "line":
            await self.line(scope, send, space_id)
            return
        if scope["method"] != "POST":
            await send_error(send, MethodNotAllowed(f"{action} takes POST"))
            return
        address = scope.get(CLIENT_KEY) or self._shield.client(scope)
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        auth = header(scope, b"authorization")

        async def body() -> bytes:
            return await read_body(scope, receive, JOIN_BODY_LIMIT)

        status, headers, answer = await self.decide(action, space_id, address, size, body,
                                                    auth.decode("latin-1") if auth is not None else None)
        await respond(send, status, headers, answer)

    async def decide(self, action: str, space_id: str, address: str, header_bytes: int,
                     body: Callable[[], Awaitable[bytes]], auth: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One join or leave, from one client, decided: (status, headers, JSON body). The same
        for a join that came alone and one in an edge's batch (``batch``): the shield first, on
        the client's own address, then admission."""
        started = time.perf_counter()
        listeners, shield = self._listeners, self._shield
        space = None
        counted: str | None = "refused" if action == "join" else None  # obs
        reason: str | None = None
        try:
            now = time.time()  # defense: the shield first, before any admission work (docs/defense.md)
            shield.check_request(header_bytes, address, space_id, now)
            space = await self._finder.space(space_id)  # 404; with --redis, any node's Space
            data = strings(parse_body(await body()))
            if action == "leave":
                freed = await listeners.leave(space, ticket=data.get("ticket"), token=data.get("token"))
                return json_parts(200, {"status": "left" if freed else "not_held"})
            if auth is not None:  # a host listening: reserved capacity, never queued
                self._spaces.authorize_host(space, auth)  # 401/403
            light = shield.check_join(space.id, address, data, now, host=auth is not None)  # defense
            result = await listeners.join(space, ticket=data.get("ticket"), token=data.get("token"),
                                          host=auth is not None)
            status, answer = join_answer(result)
            counted = outcome(result)
            shield.answered(space.id, light, status, answer, now)  # defense
            return json_parts(status, answer,
                              retry_after_s=answer["retry_after_s"] if status == 202 else None)  # type: ignore[arg-type]
        except AmphiError as err:
            reason = err.code
            if err.code == "challenge_required" and counted is not None:
                counted = "challenged"  # obs: asked for proof of work (docs/defense.md)
            return error_parts(err)
        finally:
            listeners.record_join(time.perf_counter() - started)
            if counted is not None:  # obs: joins by outcome, refusals by reason
                self._metrics.join(space.id if space is not None else None, counted, reason)

    async def batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An edge's batch of joins (``edge/joins.py``): each decided as ``decide`` decides one
        that came alone, in order; the answer lists ``[status, retry-after or null, body]``, the
        body the client gets (its JSON embedded as it was made: ``orjson.Fragment``)."""
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("a batch of joins takes POST")
            credential = header(scope, b"x-amphi-edge")
            self._listeners.verify_edge(credential.decode("latin-1") if credential is not None else None)  # 403
            rows = _batch((await read_json(scope, receive, BATCH_BODY_LIMIT)).get("joins"))
        except AmphiError as err:
            await send_error(send, err)
            return
        answers: list[list[object]] = []
        for space_id, address, text, auth, header_bytes in rows:
            raw = text.encode()

            async def body(raw: bytes = raw) -> bytes:
                if len(raw) > JOIN_BODY_LIMIT:
                    raise PayloadTooLarge(f"body larger than {JOIN_BODY_LIMIT} bytes")
                return raw

            status, headers, answer = await self.decide("join", space_id, address, header_bytes, body, auth)
            retry = next((v.decode() for k, v in headers if k == b"retry-after"), None)
            answers.append([status, retry, orjson.Fragment(answer)])
        await send_json(send, 200, {"answers": answers})

    async def line(self, scope: Scope, send: Send, space_id: str) -> None:
        """The line document: one store lookup a second at most, cacheable for a second."""
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("the line document is read with GET")
            space = await self._finder.space(space_id)  # 404
            doc = line_answer(space, *await self._listeners.line(space), self._listeners.cfg)
            await send_json(send, 200, doc, head_only=scope["method"] == "HEAD", cache=LINE_CACHE)
        except AmphiError as err:
            await send_error(send, err, head_only=scope["method"] == "HEAD")

    async def edge(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """What edges send the API nodes with their credential: a batch of joins, renewed seats."""
        if name == "joins":
            await self.batch(scope, receive, send)
        else:
            await self.renewals(scope, receive, send)

    async def renewals(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An edge's report of the seats it renewed: each still held is extended in one store
        call per Space; the answer names those that are not (the edge refuses their tokens)."""
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("renewals take POST")
            credential = header(scope, b"x-amphi-edge")
            self._listeners.verify_edge(credential.decode("latin-1") if credential is not None else None)  # 403
            spaces = (await read_json(scope, receive, RENEWALS_BODY_LIMIT)).get("spaces")
            report = _report(spaces)
            gone: dict[str, list[str]] = {}
            for space_id, rows in report.items():
                if lost := await self._listeners.extend(space_id, rows):
                    gone[space_id] = lost
            await send_json(send, 200, {"extended": sum(len(r) for r in report.values()) - sum(map(len, gone.values())),
                                        "gone": gone})
        except AmphiError as err:
            await send_error(send, err)


BODY_STRINGS = ("ticket", "token", "challenge", "solution")  # a join's or a leave's fields: strings or null


def strings(data: dict[str, object]) -> dict[str, object]:
    """A join's or a leave's body, its fields checked: 400 for one that is not a string (the
    API fuzz found a ticket of ``false`` left to the store, and a number for a solution)."""
    for name in BODY_STRINGS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedBody(f"{name} must be a string")
    return data


def _batch(rows: object) -> list[tuple[str, str, str, str | None, int]]:
    """An edge's batch, checked: [[space, address, body, authorization or null, header bytes], ...];
    400 otherwise. Each client's own body is checked when its join is decided (its own 400)."""
    if not isinstance(rows, list) or len(rows) > MAX_BATCH_JOINS:
        raise MalformedBody(f'a batch is {{"joins": [[space, address, body, authorization, header bytes], ...]}}, '
                            f'at most {MAX_BATCH_JOINS}')
    out = []
    for row in rows:
        if (not isinstance(row, list) or len(row) != 5 or not all(isinstance(x, str) for x in row[:3])
                or not (row[3] is None or isinstance(row[3], str)) or not isinstance(row[4], int)
                or not SPACE_ID.fullmatch(row[0])):
            raise MalformedBody(f"a join is [space, address, body, authorization, header bytes], not {str(row)[:80]}")
        out.append((row[0], row[1], row[2], row[3], row[4]))
    return out


def _report(spaces: object) -> dict[str, list[tuple[str, int, int]]]:
    """An edge's report, checked: {space: [[seat, old expiry, new expiry], ...]}; 400 otherwise."""
    if not isinstance(spaces, dict):
        raise MalformedBody('a report is {"spaces": {space: [[seat, old expiry, new expiry], ...]}}')
    out: dict[str, list[tuple[str, int, int]]] = {}
    n = 0
    for space_id, rows in spaces.items():
        if not isinstance(rows, list) or not SPACE_ID.fullmatch(space_id):
            raise MalformedBody(f"bad Space in a report: {str(space_id)[:64]!r}")
        checked = out[space_id] = []
        for row in rows:
            if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str) or not SEAT.fullmatch(row[0])
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in row[1:])):
                raise MalformedBody(f"a seat is [seat, old expiry, new expiry], not {str(row)[:80]}")
            checked.append((row[0], row[1], row[2]))
        n += len(checked)
    if n > MAX_RENEWALS:
        raise MalformedBody(f"at most {MAX_RENEWALS} seats a report, not {n}")
    return out
