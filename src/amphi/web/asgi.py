"""Raw ASGI helpers for the hot paths (the origin, join and leave): answers without a
framework in the way, and the same JSON error shape as the Starlette API."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from amphi.core.errors import AmphiError, HostedElsewhere, MalformedBody, Misdirected, PayloadTooLarge, Unauthorized
from amphi.media.ingest.trickle import MEDIA_TYPE as TRICKLE

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
NO_STORE = b"no-store"
CORS = (b"access-control-allow-origin", b"*")
EXPOSE = (b"access-control-expose-headers", b"content-length, content-range, location, retry-after")
PREFLIGHT_MAX_AGE = b"86400"
PREFLIGHT_HEADERS = b"content-type, range, x-request-id"  # what a page on another origin may send


# WHIP (RFC 9725) from a page on any origin: a bearer token, never a cookie, so "*" is safe
WHIP_EXPOSE = (b"access-control-expose-headers", b"location, etag, link, accept-patch, accept-post, "
                                                  b"content-length, retry-after")
WHIP_PREFLIGHT_HEADERS = b"authorization, content-type, if-match, x-request-id"
SDP = "application/sdp"  # a WHIP offer and its answer; trickled candidates are TRICKLE (RFC 8840)
WHIP_ACCEPT = {"POST": (b"accept-post", SDP.encode()), "PATCH": (b"accept-patch", TRICKLE.encode())}


async def preflight(send: Send, methods: frozenset[str], *, allow: bytes = PREFLIGHT_HEADERS,
                    extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A CORS preflight's answer: any origin may embed a Space (join it and play its media)
    and read what it needs of the answers (``EXPOSE``); a WHIP client may send its offer,
    bearer token and If-Match (``allow``), and learn what the resource accepts (``extra``)."""
    headers = [CORS, (b"access-control-allow-methods", ", ".join(sorted(methods | {"OPTIONS"})).encode()),
               (b"access-control-allow-headers", allow),
               (b"access-control-max-age", PREFLIGHT_MAX_AGE), (b"cache-control", b"public, max-age=86400"),
               *extra]
    await respond(send, 204, headers, b"")


def whip_cors(send: Send) -> Send:
    """``send`` with every answer open to any origin and the WHIP headers exposed
    (``WHIP_EXPOSE``: a client reads Location, ETag, Link and Accept-Patch cross-origin)."""
    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", ())
                    if k.lower() not in (b"access-control-allow-origin", b"access-control-expose-headers")]
            message = {**message, "headers": [*kept, CORS, WHIP_EXPOSE]}
        await send(message)
    return sending


def retry_after_value(seconds: float) -> str:
    """Retry-After in whole seconds, rounded up: a client that waits exactly that long is
    never early. Both the raw endpoints and the Starlette API answer with it."""
    return str(max(1, math.ceil(seconds)))


async def respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                  length: int | None = None) -> None:
    headers.append((b"content-length", str(len(body) if length is None else length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: object, *, retry_after_s: float | None = None,
                    head_only: bool = False, cache: bytes = NO_STORE) -> None:
    status, headers, body = json_parts(status, obj, retry_after_s=retry_after_s, cache=cache)
    await respond(send, status, headers, b"" if head_only else body, len(body))


def json_parts(status: int, obj: object, *, retry_after_s: float | None = None,
               cache: bytes = NO_STORE) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A JSON answer as (status, headers, body), as ``error_parts`` gives an error's."""
    headers = [(b"content-type", JSON), (b"cache-control", cache), CORS, EXPOSE]
    if retry_after_s is not None:
        headers.append((b"retry-after", retry_after_value(retry_after_s).encode()))
    return status, headers, orjson.dumps(obj)


async def send_error(send: Send, err: AmphiError, *, head_only: bool = False) -> None:
    status, headers, body = error_parts(err)
    await respond(send, status, headers, b"" if head_only else body, len(body))


def error_parts(err: AmphiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one mapping of an error to HTTP: (status, headers, JSON body), for the raw
    endpoints and the Starlette API alike."""
    headers = [(b"content-type", JSON), (b"cache-control", NO_STORE), CORS, EXPOSE]
    if isinstance(err, HostedElsewhere):
        headers.append((b"location", err.location.encode()))
    elif isinstance(err, Misdirected):
        headers.append((b"x-amphi-host", err.host.encode()))
    if err.retry_after_s is not None:
        headers.append((b"retry-after", retry_after_value(err.retry_after_s).encode()))
    if isinstance(err, Unauthorized):
        headers.append((b"www-authenticate", err.challenge.encode()))
    return err.status, headers, orjson.dumps(err.to_json())


def close_if_body_unread(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """``receive`` and ``send`` for a request whose answer says ``Connection: close`` when it
    leaves the request's body unread (a 413, a 401 before an SDP offer was read, ...): granian
    drops such a connection, and a client that reused it would meet a dead socket. GET and
    HEAD, which carry no body, pass through untouched."""
    if scope["method"] in ("GET", "HEAD"):
        return receive, send
    read = False

    async def reading() -> dict[str, Any]:
        nonlocal read
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            read = True
        return message

    async def answering(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not read and _declares_body(scope):
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return reading, answering


def _declares_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    return (length is not None and length != b"0") or header(scope, b"transfer-encoding") is not None


def bearer(authorization: str | None, access_token: str | None = None) -> str | None:
    """The caller's credential (a host key or a grant): ``Authorization: Bearer X``, else the
    ``access_token`` query parameter (for EventSource, which cannot set headers)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization must be 'Bearer HOST_KEY' or 'Bearer GRANT'")
        return value.strip()
    return access_token or None


def header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request's body: the one body reader of every endpoint (raw or Starlette). 413
    past ``limit`` bytes, declared or sent, before reading more than that."""
    check_declared_length(header(scope, b"content-length"), limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        if not message.get("more_body"):
            break
    return bytes(body)


async def read_json(scope: Scope, receive: Receive, limit: int) -> dict[str, Any]:
    """The request's JSON object body; an empty body is ``{}``. 400 for anything that is
    not a JSON object."""
    return parse_body(await read_body(scope, receive, limit))


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; an empty body is ``{}``; 400 for anything else."""
    return parse_object(raw) if raw.strip() else {}


def check_declared_length(declared: bytes | str | None, limit: int) -> None:
    """413 for a Content-Length over ``limit`` (or not a number), before reading a byte."""
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"body larger than {limit} bytes")


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; 400 otherwise."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedBody(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedBody("body must be a JSON object")
    return data
