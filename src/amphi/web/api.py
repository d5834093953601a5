"""The control API and the pages (Starlette, dispatching on the templates of ``amphi.web.routes``).

    POST /api/spaces                      {title, starts_at?, dead_air_s?}, Authorization: Bearer API_KEY
                                          -> 201 {id, host_key, state, ...} (docs/keys.md)
    GET  /api/spaces                      [status, ...]
    GET  /api/spaces/<id>                 status
    POST /api/spaces/<id>/start           Authorization: Bearer HOST_KEY (or an API key: any Space)
    POST /api/spaces/<id>/end             Authorization: Bearer HOST_KEY (or an API key)
    POST /api/spaces/<id>/join, /leave    the waiting room (amphi.web.join, raw ASGI)
    POST /api/spaces/<id>/defense         {pow: on|off|auto}, host key or API key (docs/defense.md)
    POST /api/spaces/<id>/speak           WHIP (RFC 9725): SDP offer (application/sdp), host key or grant ->
                                          201 SDP answer, Location (the session), ETag, Accept-Patch,
                                          Link rel="ice-server" per STUN/TURN URL (docs/stage.md)
    DELETE /api/spaces/<id>/speak/<session>  the offer's credential -> 204 hung up; 404 unknown/ended
    PATCH  /api/spaces/<id>/speak/<session>  trickle ICE (application/trickle-ice-sdpfrag, If-Match: ETag)
                                          -> 204; ICE restart 422, stale ETag 412
    OPTIONS on both                       CORS preflight, any origin (answered in amphi.web.app)
    GET  /api/spaces/<id>/ice             host key or grant -> {ice_servers: [...]}: STUN, TURN with a fresh credential
    POST /api/spaces/<id>/stage/session   host key or API key -> a host grant
    GET  /api/spaces/<id>/stage           the stage view (more with a grant; see docs/stage.md)
    POST /api/spaces/<id>/stage/requests  {name} -> 201 {participant, grant, ...}
    POST /api/spaces/<id>/stage/invites   {name} -> 201 {participant, grant, invite_url}
    POST /api/spaces/<id>/stage/<pid>/<action>   accept, decline, mute, unmute, remove, leave, role
    GET  /api/spaces/<id>/events          Server-Sent Events (amphi.web.events, raw ASGI)
    GET  /api/node                        this node's counters (pipelines, speakers, origin, store)
    GET  /api/nodes                       the node registry (with --redis; docs/cluster.md)
    GET  /api/openapi.json                this API as an OpenAPI 3.1 document (amphi.web.openapi; docs/api.md)
    GET  /s/<id>                          listener page
    GET  /s/<id>/host                     host console
    GET  /                                index of Spaces
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from amphi.control.ice import ice_servers, link_header
from amphi.control.spaces import Space
from amphi.control.stage import Participant
from amphi.core.config import Config
from amphi.core.errors import (
    AmphiError,
    Forbidden,
    HostedElsewhere,
    InvalidSdp,
    NotFound,
    UnsupportedMediaType,
)
from amphi.defense.shield import CLIENT_KEY
from amphi.media.ingest.trickle import parse_fragment
from amphi.services.access import OPERATOR
from amphi.web import assets
from amphi.web.answers import grant_json, invited_json, requested_json
from amphi.web.asgi import SDP, TRICKLE, bearer, error_parts, parse_object, read_body
from amphi.web.forward import Forwarder
from amphi.web.openapi import document_bytes
from amphi.web.ports import Finder, KeyDesk, SpaceDesk, StageDesk
from amphi.web.routes import ROUTES

STATIC = Path(__file__).parent / "static"
NO_STORE = {"cache-control": "no-store"}

log = logging.getLogger(__name__)


def error_response(err: AmphiError) -> Response:
    status, headers, body = error_parts(err)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object body; an empty body is ``{}`` (as on the raw endpoints)."""
    raw = await read_body(request.scope, request.receive, limit)
    return parse_object(raw) if raw.strip() else {}


def credential(request: Request) -> str | None:
    return bearer(request.headers.get("authorization"), request.query_params.get("access_token"))


def build_api(cfg: Config, spaces: SpaceDesk, finder: Finder, rooms: StageDesk,
              node_stats: Callable[[], dict[str, object]], access: KeyDesk, forward: Forwarder) -> Starlette:
    limit = cfg.http.max_body_bytes
    vendor_root = assets.root(cfg.web_assets_dir)
    if assets.missing(vendor_root):
        log.warning("%s", assets.missing_message(vendor_root))

    async def status_of(space: Space) -> dict[str, object]:
        return (await spaces.status(space)).to_json()

    def client(request: Request) -> str:
        return request.scope.get(CLIENT_KEY) or "unknown"  # the shield's address: behind edges, the caller's

    async def create(request: Request) -> Response:
        await access.require(request.headers.get("authorization"), client(request), "creating a Space")
        data = await read_json(request, limit)
        space, key = await spaces.create(data.get("title"), data.get("starts_at"), data.get("dead_air_s"))
        return JSONResponse({**await status_of(space), "host_key": key}, status_code=201)

    async def listing(request: Request) -> Response:
        return JSONResponse([await status_of(s) for s in await finder.all_spaces()])

    async def status(request: Request) -> Response:
        return JSONResponse(await status_of(await finder.space(request.path_params["id"])))

    async def here(request: Request) -> Space:
        """The Space, if this node hosts it; else HostedElsewhere, and the call is forwarded to
        the node that does (--redis; ``elsewhere``)."""
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return await finder.hosted(request.path_params["id"], path)

    async def host_only(request: Request) -> Space:
        """The Space, if the caller holds its host key or an API key (the operator's: any Space)."""
        space = await here(request)
        authorization = request.headers.get("authorization")
        if access.is_key((authorization or "").partition(" ")[2].strip()):
            await access.require(authorization, client(request), "managing a Space")
        else:
            spaces.authorize_host(space, authorization)
        return space

    async def start(request: Request) -> Response:
        space = await host_only(request)
        await spaces.start(space)
        return JSONResponse(await status_of(space))

    async def end(request: Request) -> Response:
        space = await host_only(request)
        await spaces.end(space)
        return JSONResponse(await status_of(space))

    async def defense(request: Request) -> Response:
        """The host's proof-of-work switch for its Space: {"pow": "on" | "off" | "auto"}."""
        space = await host_only(request)
        data = await read_json(request, limit)
        return JSONResponse(spaces.set_pow(space, data.get("pow")))

    async def sdp_text(request: Request, media: str, what: str, *, required: bool) -> str:
        """The body of ``what`` (an SDP offer or fragment): 415 if its Content-Type is not ``media``
        (or is missing where ``required``), 413 past the limit, 400 if it is not UTF-8 text."""
        kind = request.headers.get("content-type")
        if (kind is not None or required) and (kind or "").partition(";")[0].strip().lower() != media:
            raise UnsupportedMediaType(f"{what} is {media}, not {kind}")
        raw = await read_body(request.scope, request.receive, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSdp(f"the SDP of {what} is not UTF-8 text") from None

    async def speak(request: Request) -> Response:
        """WHIP (RFC 9725): an SDP offer -> 201, the answer, the session's Location and ETag,
        the ICE servers in Link headers."""
        space = await here(request)
        who = credential(request)
        rooms.participant(space, who)  # 401/403 before reading the body
        offer = await sdp_text(request, SDP, "an offer", required=False)  # older callers send no type
        spoken = await rooms.speak(space, offer, who)
        location = ROUTES["speak.session"].path(id=space.id, session=spoken.session)
        response = Response(spoken.answer, status_code=201, media_type=SDP,
                            headers={"location": location, "etag": spoken.etag, "accept-patch": TRICKLE,
                                     **NO_STORE})
        for link in link_header(ice_servers(cfg.ice, time.time(), spoken.participant)):
            response.headers.append("link", link)
        return response

    async def speak_session(request: Request) -> Response:
        """A WHIP session: DELETE hangs up; PATCH trickles ICE candidates (no ICE restarts)."""
        space = await here(request)
        session = request.path_params["session"]
        who = credential(request)
        if request.method == "DELETE":
            await rooms.hang_up(space, session, who)
            return Response(status_code=204)
        fragment = parse_fragment(await sdp_text(request, TRICKLE, "a WHIP PATCH", required=True))
        await rooms.trickle(space, session, who, request.headers.get("if-match"), fragment)
        return Response(status_code=204)

    async def ice(request: Request) -> Response:
        """The ICE servers a speaker's client should use (docs/deploying.md): asked before each
        offer, so a TURN credential is always fresh; only for those who may speak."""
        space = await here(request)
        who = rooms.participant(space, credential(request))
        return JSONResponse({"ice_servers": ice_servers(cfg.ice, time.time(), who.id)}, headers=NO_STORE)

    def stage_view(space: Space, viewer: Participant | None) -> JSONResponse:
        return JSONResponse(rooms.view(space, viewer), headers=NO_STORE)

    async def stage(request: Request) -> Response:
        space = await here(request)
        return stage_view(space, rooms.viewer(space, credential(request)))

    async def stage_session(request: Request) -> Response:
        space = await host_only(request)
        return JSONResponse(grant_json(rooms.host_session(space)), headers=NO_STORE)

    async def stage_request(request: Request) -> Response:
        space = await here(request)
        data = await read_json(request, limit)
        answer = await rooms.request_to_speak(space, data.get("name"), credential(request), client(request))
        return JSONResponse(requested_json(answer), status_code=201, headers=NO_STORE)

    async def stage_invite(request: Request) -> Response:
        space = await here(request)
        actor = rooms.participant(space, credential(request))
        data = await read_json(request, limit)
        return JSONResponse(invited_json(rooms.invite(space, actor, data.get("name"))), status_code=201,
                            headers=NO_STORE)

    async def stage_action(request: Request) -> Response:
        space = await here(request)
        actor = rooms.participant(space, credential(request))
        data = await read_json(request, limit)
        await rooms.act(space, actor, request.path_params["pid"], request.path_params["action"], data)
        return stage_view(space, actor)

    async def node(request: Request) -> Response:
        return JSONResponse(node_stats(), headers=NO_STORE)

    async def nodes(request: Request) -> Response:
        return JSONResponse(await finder.nodes(), headers=NO_STORE)

    async def drain(request: Request) -> Response:
        await spaces.this_node(request.path_params["node"], request.url.path)  # else forwarded: that node checks
        if await access.require(request.headers.get("authorization"), client(request), "draining a node") != OPERATOR:
            raise Forbidden("draining a node needs its operator key")
        return JSONResponse(await spaces.drain(), headers=NO_STORE)

    async def openapi(request: Request) -> Response:
        return Response(document_bytes(), media_type="application/json",
                        headers={"cache-control": "public, max-age=3600", "access-control-allow-origin": "*"})

    async def page(request: Request, name: str) -> Response:
        try:
            await finder.space(request.path_params["id"])
            status_code = 200
        except NotFound:
            status_code = 404  # the page itself tells the person the Space does not exist
        return FileResponse(STATIC / name, status_code=status_code, headers={"cache-control": "no-cache"})

    async def listener_page(request: Request) -> Response:
        return await page(request, "listener.html")

    async def host_console(request: Request) -> Response:
        return await page(request, "host.html")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or not path.is_file():
            raise NotFound(f"no static file {name!r}")
        return FileResponse(path, headers={"cache-control": "public, max-age=60"})

    def vendor(name: str) -> Callable[[Request], Awaitable[Response]]:
        """The handler of a player library's route: its file from npm (amphi.web.assets)."""
        rel, ctype = assets.VENDOR[name]
        path = vendor_root / rel

        async def handler(request: Request) -> Response:
            if not path.is_file():
                raise NotFound(assets.missing_message(vendor_root, rel))
            return FileResponse(path, media_type=ctype, headers={"cache-control": "public, max-age=3600"})
        return handler

    async def amphi_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AmphiError)
        return error_response(exc)

    async def elsewhere(request: Request, exc: Exception) -> Any:
        """Another node hosts the Space: the call is made there and its answer relayed
        (``amphi.web.forward``); an ASGI app in the place of a response."""
        assert isinstance(exc, HostedElsewhere)
        return partial(forward, err=exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)  # a 405's Allow

    handlers = {
        "index": index, "listener": listener_page, "host": host_console, "static": static,
        "vendor.hls": vendor("vendor.hls"), "vendor.shaka": vendor("vendor.shaka"),
        "node": node, "nodes": nodes, "node.drain": drain, "openapi": openapi,
        "spaces.create": create, "spaces.list": listing, "space": status,
        "space.start": start, "space.end": end, "space.defense": defense, "speak": speak, "speak.session": speak_session,
        "speak.ice": ice, "stage": stage,
        "stage.session": stage_session, "stage.requests": stage_request, "stage.invites": stage_invite,
        "stage.action": stage_action,
    }
    served = {r.name for r in ROUTES if r.kind in ("api", "whip", "page", "static")}
    assert served == set(handlers), f"routes without a handler or handlers without a route: {served ^ set(handlers)}"
    routes = [Route(ROUTES[name].template, handler, methods=sorted(ROUTES[name].methods))
              for name, handler in handlers.items()]
    return Starlette(routes=routes, exception_handlers={AmphiError: amphi_error, HostedElsewhere: elsewhere,
                                                         HTTPException: http_error})
