"""Calls about a Space another node hosts, forwarded to that node (docs/cluster.md).

With ``--redis`` any node may get a call about any Space: an entry edge round-robins
``/api/`` over the nodes, and in a take-over the host changes under a client that keeps the
URL it started with. A 307 to the host is no answer for those calls: a browser follows a
cross-origin 307 without the Authorization header (the Fetch spec), and ``amphi speak``
follows none. So the node that is not the host makes the call itself, one reverse-proxy hop:

    client ──▶ node B (not the host) ──httpx──▶ node A (the host)
                 x-amphi-forwarded: B             the answer streamed back as it comes
                                                  (the WHIP answer, the event stream)

This is the one place that turns ``HostedElsewhere`` into an answer: the API's exception
handler (``amphi.web.api``) and the raw event streams (``amphi.web.events``) both hand it here.

* **Loop guard**: a forwarded call carries ``x-amphi-forwarded: <node id>``; a node that gets
  one about a Space it does not host answers 503 + ``Retry-After: 1`` (the directory is
  changing under the two nodes), never a second hop.
* **Bounded**: connecting to the host takes at most ``CONNECT_S``; its first byte at most the
  route's ``FIRST_BYTE_S`` (an offer's answer takes seconds); the request's body is read
  here first, under the node's body limit (413 past it), so the hop sends a known length.
* **The host out of reach** (refused, timed out, broken before its answer began): 503 +
  ``Retry-After: 1``, the answer a client retries; never a 307 to a dead node, never a 5xx
  without Retry-After. Once the answer has begun, a break ends it (a stream's client opens
  it again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from amphi.core.errors import AmphiError, HostedElsewhere, Unavailable
from amphi.core.tls import client_context
from amphi.web import sse
from amphi.web.asgi import Receive, Scope, Send, header, read_body, send_error
from amphi.web.routes import ROUTES

log = logging.getLogger(__name__)

FORWARDED = b"x-amphi-forwarded"  # the node that forwarded this call (the loop guard)
CONNECT_S = 1.0  # to reach the hosting node
FIRST_BYTE_S = {"speak": 8.0, "events": 3.0}  # per route name: the host's first byte (the client waits 10 s)
DEFAULT_FIRST_BYTE_S = 5.0
RETRY_S = 1.0  # the Retry-After of a 503 while the directory changes or the host is out of reach

# RFC 9110 7.6.1: hop-by-hop fields, never forwarded; host is the hop's own, and a length is
# set by whoever frames the body
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
                        b"content-length"})


def end_to_end(headers: Any) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones (and those a Connection header names)."""
    pairs = [(k.lower(), v) for k, v in headers]
    named = {t.strip().lower().encode() for k, v in pairs if k == b"connection" for t in v.decode("latin-1").split(",")}
    return [(k, v) for k, v in pairs if k not in HOP_BY_HOP and k not in named]


class Forwarder:
    """Makes a call about a Space on the node that hosts it and streams the answer back.

    Lifecycle: one per node, built with the app; its HTTP client is made on the first
    forward and lives as long as the process (connections to the other nodes are kept)."""

    def __init__(self, node_id: str, max_body_bytes: int, closing: asyncio.Event) -> None:
        self.node_id = node_id
        self._limit = max_body_bytes
        self._closing = closing  # the node is shutting down: forwarded streams end
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=client_context(),  # the system's store (SSL_CERT_FILE): the nodes' own certificates
 follow_redirects=False, trust_env=False,
                timeout=httpx.Timeout(connect=CONNECT_S, read=None, write=DEFAULT_FIRST_BYTE_S, pool=CONNECT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send, err: HostedElsewhere) -> None:
        try:
            await self._forward(scope, receive, send, err)
        except AmphiError as e:  # before the answer began: the body's limit, the loop guard, the host unreachable
            await send_error(send, e)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, err: HostedElsewhere) -> None:
        came_from = header(scope, FORWARDED)
        if came_from is not None:
            raise Unavailable(f"node {came_from.decode('latin-1')} forwarded a call about a Space this node "
                              f"({self.node_id}) does not host: the directory is changing", retry_after_s=RETRY_S)
        body = await read_body(scope, receive, self._limit) if scope["method"] not in ("GET", "HEAD") else b""
        headers = end_to_end(scope["headers"])
        peer = scope.get("client")
        if peer:  # as a proxy does: the host's shield reads it if it trusts this node (trusted_proxies)
            headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"] + [(b"x-forwarded-for", b", ".join(
                [*(v for k, v in headers if k == b"x-forwarded-for"), str(peer[0]).encode()]))]
        headers.append((FORWARDED, self.node_id.encode()))
        match = ROUTES.match(scope["path"], scope["method"])
        first_byte_s = FIRST_BYTE_S.get(match.route.name if match else "", DEFAULT_FIRST_BYTE_S)
        client = self.client()
        request = client.build_request(scope["method"], err.location, headers=headers, content=body)
        try:
            async with asyncio.timeout(first_byte_s):
                response = await client.send(request, stream=True)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("forwarding %s %s to %s: %r", scope["method"], scope["path"], err.location, exc)
            raise Unavailable(f"the node hosting this Space does not answer ({type(exc).__name__}); "
                              "it may be changing", retry_after_s=RETRY_S) from None
        try:
            await self._relay(response, receive, send, scope["method"] == "HEAD")
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, receive: Receive, send: Send, head: bool) -> None:
        """Streams the host's answer to the client, until it ends, the client leaves or the node
        shuts down; a host that breaks off midway ends it here too."""
        headers = end_to_end(response.headers.raw)
        length = response.headers.get("content-length")
        if length is not None:
            headers.append((b"content-length", length.encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        gone = sse.watch_disconnect(receive, self._closing)
        chunks = response.aiter_raw()
        try:
            while True:
                following = asyncio.ensure_future(anext(chunks))
                await asyncio.wait([following, gone], return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    await sse.finish(send, self._closing)  # the node is closing: the answer ends (a client that left needs none)
                    return
                try:
                    chunk = following.result()
                except StopAsyncIteration:
                    break
                except httpx.HTTPError as exc:
                    log.info("forwarded answer from %s broke off: %r", response.url, exc)
                    break
                await sse.write(send, chunk)
            await sse.write(send, b"", more=False)
        except (OSError, RuntimeError, TimeoutError) as exc:  # the client stopped reading
            log.debug("forwarded answer not taken: %r", exc)
        finally:
            gone.cancel()
