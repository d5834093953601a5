"""The node's API as an OpenAPI 3.1 document (``GET /api/openapi.json``; docs/api.md).

Built from the one route table (``amphi.web.routes.ROUTES``): every path is a route's template,
every path parameter its placeholder's grammar (``PLACES``, anchored), so the document and the
dispatcher cannot drift. What the table does not say (what a route takes and answers) is here,
per route name and method (``OPERATIONS``), in a few lines each; ``build_document`` refuses a
route of a described kind (``DESCRIBED``) that has no entry here, and an entry that no route
has. Errors share one schema, ``Error`` (``amphi.core.errors``: ``{"error": code, "message":
...}``), and each operation lists the statuses it can answer with.

Media (HLS playlists, init, parts, segments), pages, static files and the operator's endpoints
are not JSON; the document lists them under ``x-amphi-other-routes`` (name, template, kind,
methods), again from the table.

To describe a new route: add it to the route table, then one entry to ``OPERATIONS``
(``op(...)``: a summary, the body it takes, its answers, its credentials).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from amphi.control.spaces import MAX_DEAD_AIR_S, MAX_STARTS_AT, MAX_TITLE, MIN_DEAD_AIR_S
from amphi.control.stage import MAX_NAME, Role, State
from amphi.services.spaces import SpaceStatus
from amphi.web.asgi import SDP, TRICKLE
from amphi.web.routes import PLACES, READ, ROUTES, Route, RouteTable

DESCRIBED = frozenset({"api", "join", "events", "whip"})  # the kinds of route a client program calls: all described
JSON = "application/json"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


# -- answers ---------------------------------------------------------------------------------

ERRORS = {  # status -> what it means here (every one answers the Error schema)
    400: "Malformed: a body or a parameter that is not what is described.",
    401: "No credentials, expired ones, or an Authorization header that is not 'Bearer X' (WWW-Authenticate: "
         "Bearer); an API key that is missing, unknown or revoked (docs/keys.md).",
    403: "Wrong credentials, or not allowed to do this.",
    404: "No such Space (or participant).",
    405: "The path takes other methods.",
    409: "Not in this state (a Space already ended, a participant not on stage, ...).",
    412: "If-Match names another ICE session (the ETag of the WHIP session's 201 is the one).",
    415: "The body's Content-Type is not the one this operation takes.",
    422: "An ICE restart, which WHIP sessions here do not support (trickle ICE only; docs/stage.md).",
    413: "The body is larger than the node takes.",
    429: "Too many requests: come back after Retry-After (retry_after_s).",
    431: "The request's headers are too large.",
    503: "The node is too busy or cannot take more now, or (with --redis) the node hosting the Space is out of "
         "reach or changing (docs/cluster.md): come back after Retry-After.",
}
EVERYWHERE = (429, 431, 503)  # the shield's answers, before any route (amphi.web.middleware.Gate)


@dataclass(frozen=True)
class Answer:
    """A success: its status, description, and its body's schema under its media type."""

    status: int
    description: str
    schema: Schema | None = None
    media: str = JSON
    headers: tuple[str, ...] = ()  # names of components/headers


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: tuple[Answer, ...]
    errors: tuple[int, ...] = ()  # besides EVERYWHERE
    body: Schema | None = None  # a JSON object body, optional (an empty body is {})
    body_media: str = JSON
    body_required: bool = False
    security: tuple[str, ...] = ()  # security schemes, any one of which is accepted
    optional_auth: bool = False  # the credentials are optional (else: required)
    query: tuple[Schema, ...] = ()  # query parameters (OpenAPI parameter objects)
    description: str = ""
    tags: tuple[str, ...] = ()


def op(summary: str, *answers: Answer, **kw: Any) -> Operation:
    return Operation(summary, answers, **kw)


def ok(schema: Schema | None, description: str = "OK", status: int = 200, **kw: Any) -> Answer:
    return Answer(status, description, schema, **kw)


# -- schemas ---------------------------------------------------------------------------------

_PY_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
             "bool": {"type": "boolean"}, "None": {"type": "null"}, "dict[str, object]": {"type": "object"}}


def dataclass_schema(cls: type) -> Schema:
    """A JSON schema of a flat dataclass's ``asdict`` (its fields' annotations, as written:
    ``str | None``, ``float``, ``dict[str, object]``), every field required."""
    props: dict[str, Schema] = {}
    for f in dataclasses.fields(cls):
        kinds = [_PY_TYPES[t.strip()] for t in str(f.type).split("|")]
        props[f.name] = kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    return {"type": "object", "properties": props, "required": list(props)}


def _schemas() -> dict[str, Schema]:
    status = dataclass_schema(SpaceStatus)
    status["properties"]["state"] = {"enum": ["scheduled", "live", "ended"]}
    roles = {"enum": [r.value for r in Role]}
    feedback = {"enum": ["loop", "resonance", None], "description": "a feedback the guard ducked (docs/sound.md)"}
    member = {"type": "object", "required": ["id", "name", "role"],
              "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                             "role": roles, "muted": {"type": "boolean"},
                             "host_muted": {"type": "boolean"}, "connected": {"type": "boolean"},
                             "talking": {"type": "boolean"}, "level": {"type": "number"},
                             "feedback": feedback, "muted_talking": {"type": "boolean"}}}
    pending = {"type": "object", "required": ["id", "name"],
               "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "at": {"type": "number"}}}
    you = {"type": "object", "required": ["id", "name", "role", "state"],
           "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "role": roles,
                          "state": {"enum": [s.value for s in State]}, "self_muted": {"type": "boolean"},
                          "host_muted": {"type": "boolean"}, "connected": {"type": "boolean"},
                          "reconnects": {"type": "integer"}, "feedback": feedback,
                          "muted_talking": {"type": "boolean"}}}
    time = nullable({"type": "string", "format": "date-time"})
    common = {"state": {"enum": ["scheduled", "live", "ended"]}, "starts_at": time}
    return {
        "Error": {"type": "object", "required": ["error", "message"],
                  "properties": {"error": {"type": "string", "description": "a stable code: not_found, ..."},
                                 "message": {"type": "string"},
                                 "retry_after_s": {"type": "number"},
                                 "challenge": {"type": "object", "description": "429 challenge_required: "
                                                                                "the proof of work to solve"}}},
        "SpaceStatus": status,
        "SpaceCreated": {"allOf": [ref("SpaceStatus"), {"type": "object", "required": ["host_key"],
                                                         "properties": {"host_key": {"type": "string"}}}]},
        "NewSpace": {"type": "object", "required": ["title"],
                     "properties": {"title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE,
                                              "pattern": r"\S"},
                                    "starts_at": nullable({"anyOf": [
                                        {"type": "string", "format": "date-time",
                                         "description": "ISO 8601 with a zone"},
                                        {"type": "number", "minimum": 0, "maximum": MAX_STARTS_AT,
                                         "description": "Unix seconds"}]}),
                                    "dead_air_s": nullable({"type": "number", "minimum": MIN_DEAD_AIR_S,
                                                            "maximum": MAX_DEAD_AIR_S})}},
        "JoinRequest": {"type": "object", "properties": {
            "ticket": nullable({"type": "string", "description": "a place in line (redeem it)"}),
            "token": nullable({"type": "string", "description": "an admission token to renew"}),
            "challenge": nullable({"type": "string", "description": "a proof-of-work challenge (docs/defense.md)"}),
            "solution": nullable({"type": "string", "description": "its solution"})}},
        "Admitted": {"type": "object",
                     "required": ["status", "state", "playlist", "media_playlist", "token", "expires_at"],
                     "properties": {"status": {"const": "admitted"}, **common, "playlist": {"type": "string"},
                                    "media_playlist": {"type": "string"}, "token": {"type": "string"},
                                    "expires_at": {"type": "string"}, "expires_in_s": {"type": "number"},
                                    "renew_after_s": {"type": "number"}, "renewed": {"type": "boolean"},
                                    "edges": {"type": "array", "items": {"type": "string"}}}},
        "Ended": {"type": "object", "required": ["status", "state"],
                  "properties": {"status": {"const": "ended"}, "state": {"const": "ended"},
                                 "playlist": nullable({"type": "string"}), "replay": nullable({"type": "string"}),
                                 "download": nullable({"type": "string"})}},
        "Waiting": {"type": "object", "required": ["status", "state", "ticket", "position", "place", "line"],
                    "properties": {"status": {"const": "waiting"}, **common, "ticket": {"type": "string"},
                                   "position": {"type": "integer"}, "waiting": {"type": "integer"},
                                   "estimated_wait_s": {"type": "number"}, "retry_after_s": {"type": "number"},
                                   "order": {"type": "string"}, "requeued": {"type": "boolean"},
                                   "place": {"type": "integer"}, "line": {"type": "string"}}},
        "LeaveRequest": {"type": "object", "properties": {"ticket": nullable({"type": "string"}),
                                                          "token": nullable({"type": "string"})}},
        "Left": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["left", "not_held"]}}},
        "Line": {"type": "object",
                 "required": ["space", "state", "called", "next", "gaps", "waiting", "free", "poll"],
                 "properties": {"space": {"type": "string"}, **common, "at": {"type": "number"},
                                "called": {"type": "integer"}, "next": {"type": "integer"},
                                "gaps": {"type": "array", "items": {"type": "integer"}},
                                "gaps_complete": {"type": "boolean"}, "waiting": {"type": "integer"},
                                "pooled": {"type": "integer"}, "free": {"type": "integer"},
                                "wait_s": {"type": "number"}, "admit_rate_per_s": {"type": "number"},
                                "line_rate_per_s": {"type": "number"},
                                "poll": {"type": "object", "required": ["min_s", "max_s"],
                                         "properties": {k: {"type": "number"} for k in
                                                        ("min_s", "max_s", "per_place_s", "jitter", "stretch")}}}},
        "Defense": {"type": "object", "required": ["pow"],
                    "properties": {"label": {"type": "string"}, "node": {"type": "string"}, "pow": {"type": "object"}}},
        "PowSwitch": {"type": "object", "required": ["pow"], "properties": {"pow": {"enum": ["on", "off", "auto"]}}},
        "Member": member,
        "You": you,
        "Stage": {"type": "object", "required": ["space", "version", "moderator", "members", "requests"],
                  "properties": {"space": {"type": "string"}, "version": {"type": "integer"},
                                 "moderator": {"type": "boolean"},
                                 "members": {"type": "array", "items": ref("Member")},
                                 "requests": {"anyOf": [{"type": "integer"},
                                                        {"type": "array", "items": pending}],
                                              "description": "a count; the list, for moderators"},
                                 "invited": {"type": "array", "items": pending},
                                 "state": {"enum": ["scheduled", "live", "ended"]},
                                 "listeners": {"type": "integer"}, "waiting": {"type": "integer"},
                                 "you": ref("You"),
                                 "sound": {"type": "object", "description": "the moderators' sound panel"}}},
        "IceServers": {"type": "object", "required": ["ice_servers"], "properties": {"ice_servers": {
            "type": "array", "items": {"type": "object", "required": ["urls"], "properties": {
                "urls": {"type": "array", "items": {"type": "string"}}, "username": {"type": "string"},
                "credential": {"type": "string"}}}}}},
        "Grant": {"type": "object", "required": ["participant", "grant", "expires_at"],
                  "properties": {"participant": {"type": "string"}, "grant": {"type": "string"},
                                 "expires_at": {"type": "string"}}},
        "Requested": {"type": "object", "required": ["participant", "you"],
                      "properties": {"participant": {"type": "string"}, "grant": {"type": "string"},
                                     "expires_at": {"type": "string"}, "you": ref("You")}},
        "Invited": {"allOf": [ref("Grant"), {"type": "object", "required": ["invite_url"],
                                             "properties": {"invite_url": {"type": "string"}}}]},
        "Name": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": r"\S"}}},
        "StageAction": {"type": "object", "properties": {"role": {"enum": ["cohost", "speaker"],
                                                                  "description": "the action 'role'"}}},
        "Node": {"type": "object", "description": "this node's counters (pipelines, speakers, origin, store)"},
        "Nodes": {"type": "array", "items": {"type": "object"}, "description": "the node registry (--redis)"},
        "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
    }


# -- what each route takes and answers -------------------------------------------------------

HOST = ("hostKey",)
API_KEY = ("apiKey",)
HOST_OR_KEY = ("hostKey", "apiKey")  # the Space's host key, or an operator's API key (any Space)
PARTICIPANT = ("hostKey", "grant")  # a grant: a participant's (docs/stage.md)
SSE = "text/event-stream"
ACCESS_TOKEN = {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "the credential, for EventSource (which cannot set headers)"}
ON_SPACE = (400, 404, 409)  # ... on a Space's stage: a bad Authorization, no such Space, an ended Space

OPERATIONS: dict[str, dict[str, Operation]] = {  # route name -> method -> what it takes and answers
    "openapi": {"GET": op("This document", ok(ref("OpenAPI")), tags=("node",))},
    "node": {"GET": op("This node's counters", ok(ref("Node")), tags=("node",))},
    "nodes": {"GET": op("The node registry (with --redis; docs/cluster.md)", ok(ref("Nodes")), tags=("node",))},
    "node.drain": {"POST": op("Hand every live Space this node hosts to its standby, with no gap "
                              "(the operator key; docs/cluster.md)",
                              ok({"type": "object", "properties": {
                                  "node": {"type": "string"},
                                  "moved": {"type": "array", "items": {"type": "object"}},
                                  "kept": {"type": "array", "items": {"type": "object"}}}}),
                              errors=(401, 403, 404, 409, 503), security=API_KEY, tags=("node",))},
    "spaces.create": {"POST": op("Create a Space", ok(ref("SpaceCreated"), "Created; host_key is shown once",
                                                      201),
                                 errors=(400, 413), body=ref("NewSpace"), body_required=True, security=API_KEY,
                                 tags=("spaces",))},
    "spaces.list": {"GET": op("Every Space", ok({"type": "array", "items": ref("SpaceStatus")}), tags=("spaces",))},
    "space": {"GET": op("A Space's status", ok(ref("SpaceStatus")), errors=(404,), tags=("spaces",))},
    "space.start": {"POST": op("Go live (the host)", ok(ref("SpaceStatus")), errors=(400, 401, 403, 404, 409),
                               security=HOST_OR_KEY, tags=("spaces",))},
    "space.end": {"POST": op("End the Space (the host)", ok(ref("SpaceStatus")),
                             errors=(400, 401, 403, 404, 409), security=HOST_OR_KEY, tags=("spaces",))},
    "space.defense": {"POST": op("The host's proof-of-work switch (docs/defense.md)", ok(ref("Defense")),
                                 errors=(400, 401, 403, 404, 413), body=ref("PowSwitch"), security=HOST_OR_KEY,
                                 tags=("spaces",))},
    "join": {"POST": op("Join: a seat, a place in line, or the replay (docs/admission.md)",
                        ok({"oneOf": [ref("Admitted"), ref("Ended")]}, "Admitted, or the Space has ended"),
                        ok(ref("Waiting"), "In line: come back with the ticket", 202, headers=("Retry-After",)),
                        errors=(400, 401, 403, 404, 413), body=ref("JoinRequest"), security=HOST, optional_auth=True,
                        description="With the host key: a host listening (never queued).", tags=("listeners",))},
    "leave": {"POST": op("Give up a seat or a place in line", ok(ref("Left")), errors=(400, 401, 403, 404, 413),
                         body=ref("LeaveRequest"), tags=("listeners",))},
    "line": {"GET": op("The line document: who is being called (cacheable for a second)", ok(ref("Line")),
                       errors=(404,), tags=("listeners",))},
    "events": {"GET": op("Live stage events (Server-Sent Events: stage, you, ended)",
                         ok({"type": "string"}, "An event stream", media=SSE),
                         errors=(400, 401, 403, 404), security=PARTICIPANT, optional_auth=True,
                         query=(ACCESS_TOKEN,), tags=("stage",))},
    "speak": {"POST": op("WHIP (RFC 9725): a WebRTC offer -> the answer and the session (the host, or a grant on stage)",
                         ok({"type": "string"}, "The SDP answer; Location is the WHIP session", 201, media=SDP,
                            headers=("Location", "ETag", "Accept-Patch", "Link")),
                         errors=(*ON_SPACE, 401, 403, 413, 415), body={"type": "string"}, body_media=SDP,
                         body_required=True, security=PARTICIPANT, tags=("stage",))},
    "speak.session": {
        "DELETE": op("Hang the WHIP session up", Answer(204, "Hung up"), errors=(400, 401, 403, 404),
                     security=PARTICIPANT, tags=("stage",)),
        "PATCH": op("Trickle ICE candidates into the WHIP session (no ICE restart)", Answer(204, "Added"),
                    errors=(400, 401, 403, 404, 412, 413, 415, 422), body={"type": "string"},
                    body_media=TRICKLE, body_required=True, security=PARTICIPANT, tags=("stage",)),
    },
    "speak.ice": {"GET": op("The STUN and TURN servers a speaker's client should use (a fresh TURN credential)",
                            ok(ref("IceServers")), errors=(400, 401, 403, 404, 409), security=PARTICIPANT,
                            tags=("stage",))},
    "stage": {"GET": op("The stage (more for moderators)", ok(ref("Stage")), errors=(*ON_SPACE, 401, 403),
                        security=PARTICIPANT, optional_auth=True, query=(ACCESS_TOKEN,), tags=("stage",))},
    "stage.session": {"POST": op("The host's grant for the stage", ok(ref("Grant")),
                                 errors=(*ON_SPACE, 401, 403), security=HOST_OR_KEY, tags=("stage",))},
    "stage.requests": {"POST": op("Ask to speak", ok(ref("Requested"), "Asked", 201),
                                  errors=(*ON_SPACE, 401, 403, 413), body=ref("Name"), security=PARTICIPANT,
                                  optional_auth=True, tags=("stage",))},
    "stage.invites": {"POST": op("Invite someone to speak (moderators)", ok(ref("Invited"), "Invited", 201),
                                 errors=(*ON_SPACE, 401, 403, 413), body=ref("Name"), security=PARTICIPANT,
                                 tags=("stage",))},
    "stage.action": {"POST": op("Act on a participant: accept, decline, mute, unmute, remove, leave, role",
                                ok(ref("Stage")), errors=(*ON_SPACE, 401, 403, 413), body=ref("StageAction"),
                                security=PARTICIPANT, tags=("stage",))},
}

SECURITY_SCHEMES = {
    "hostKey": {"type": "http", "scheme": "bearer", "description": "the Space's host key (POST /api/spaces)"},
    "grant": {"type": "http", "scheme": "bearer", "description": "a participant's grant (stage requests, invites)"},
    "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key the operator made (amphi keys create; "
                                                                  "docs/keys.md)"},
}


# -- the document ----------------------------------------------------------------------------

def path_parameter(name: str) -> Schema:
    place = PLACES[name]
    schema: Schema = ({"type": "integer", "minimum": 0} if place.type is int else
                      {"type": "string", "pattern": f"^{place.grammar}$"})
    return {"name": name, "in": "path", "required": True, "schema": schema, "x-amphi-capture": place.capture}


def _responses(o: Operation) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for a in o.answers:
        answer: Schema = {"description": a.description}
        if a.schema is not None:
            answer["content"] = {a.media: {"schema": a.schema}}
        if a.headers:
            answer["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in a.headers}
        out[str(a.status)] = answer
    statuses = sorted(set(o.errors) | set(EVERYWHERE) | ({401} if o.security and not o.optional_auth else set()))
    for status in statuses:
        answer = {"description": ERRORS[status], "content": {JSON: {"schema": ref("Error")}}}
        if status in (429, 503):
            answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
        out[str(status)] = answer
    return out


def _operation(route: Route, method: str, o: Operation) -> Schema:
    doc: Schema = {"operationId": f"{route.name}.{method.lower()}", "summary": o.summary,
                   "responses": _responses(o)}
    if o.description:
        doc["description"] = o.description
    if o.tags:
        doc["tags"] = list(o.tags)
    if o.query:
        doc["parameters"] = list(o.query)
    if o.body is not None:
        doc["requestBody"] = {"required": o.body_required, "content": {o.body_media: {"schema": o.body}}}
    if o.security:
        doc["security"] = [{s: []} for s in o.security] + ([{}] if o.optional_auth else [])
    return doc


def documented_methods(route: Route) -> frozenset[str]:
    """The methods of a route the document describes: HEAD goes without saying beside GET."""
    return route.methods - {"HEAD"} if route.methods >= READ else route.methods


def paths(table: RouteTable = ROUTES, operations: dict[str, dict[str, Operation]] = OPERATIONS) -> dict[str, Schema]:
    """The document's paths: one per route of a described kind, with its operations; ValueError
    for a route with none, a method not described, or a description of no route."""
    out: dict[str, Schema] = {}
    names = {r.name for r in table}
    if stray := set(operations) - names:
        raise ValueError(f"operations described for no route: {sorted(stray)}")
    for route in table:
        if route.kind not in DESCRIBED:
            if route.name in operations:
                raise ValueError(f"{route.name} is a {route.kind} route: not described here")
            continue
        described = operations.get(route.name)
        if described is None:
            raise ValueError(f"route {route.name} ({route.template}) has no description in amphi.web.openapi")
        if set(described) != documented_methods(route):
            raise ValueError(f"route {route.name} takes {sorted(documented_methods(route))}, "
                             f"described: {sorted(described)}")
        item = out.setdefault(route.template, {})
        if route.params:
            item["parameters"] = [path_parameter(p) for p in route.params]
        for method, o in sorted(described.items()):
            item[method.lower()] = _operation(route, method, o)
    return out


def build_document(version: str = "0", table: RouteTable = ROUTES) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Amphi", "version": version,
                 "description": "Live-audio rooms: Spaces, their waiting room, stage and events. "
                                "Every error is {\"error\": code, \"message\": ...} (docs/api.md)."},
        "paths": paths(table),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": SECURITY_SCHEMES,
            "headers": {"Retry-After": {"description": "whole seconds to wait", "schema": {"type": "string"}},
                        "Location": {"description": "where to ask instead; on a WHIP 201, the session",
                                     "schema": {"type": "string"}},
                        "ETag": {"description": "the WHIP session's ICE session (If-Match on PATCH)",
                                 "schema": {"type": "string"}},
                        "Accept-Patch": {"description": TRICKLE, "schema": {"type": "string"}},
                        "Link": {"description": "one rel=\"ice-server\" per STUN/TURN URL (RFC 9725 section 4.6)",
                                 "schema": {"type": "string"}}},
        },
        "x-amphi-other-routes": [{"name": r.name, "template": r.template, "kind": r.kind,
                                  "methods": sorted(r.methods)} for r in table if r.kind not in DESCRIBED],
    }


@cache
def document_bytes() -> bytes:
    """The document served, as JSON: built once per process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("amphi")
    except PackageNotFoundError:
        v = "0"
    return orjson.dumps(build_document(v))
