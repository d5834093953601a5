"""The operator's endpoints (raw ASGI; see docs/observability.md):

    GET  /metrics                 Prometheus text format          operator only
    GET  /dashboard               the live dashboard, or the login form (401) without a session
    POST /dashboard/login         form field ``key`` -> session cookie, 303 to /dashboard
    POST /dashboard/logout        clears the cookie, 303 to /dashboard
    GET  /dashboard/stream        Server-Sent Events: a snapshot, then new samples and events
    GET  /vendor/uPlot.iife.min.js, /vendor/uPlot.min.css    the chart library (npm; amphi.web.assets)

Operator only = ``Authorization: Bearer OPERATOR_KEY``, or the session cookie the login form
sets (an HMAC of the key, HttpOnly, SameSite=Strict: the key itself never sits in the URL
bar or in the browser's cookie jar). ``/metrics`` is operator-only too, also on loopback:
behind an edge on the same machine every client is loopback. Prometheus sends the key with
``authorization: {credentials_file: <data_dir>/operator_key}``.

The stream holds no queue: it remembers the number of the last message it sent and sends
what came after it when the sampler wakes it (once a second), coalesced into one write.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs

import orjson

from amphi.core.config import Config
from amphi.core.errors import AmphiError, MethodNotAllowed, NotFound, TooBusy, Unauthorized
from amphi.obs.metrics import CONTENT_TYPE
from amphi.obs.observer import Observer
from amphi.web import assets, sse
from amphi.web.asgi import NO_STORE, Receive, Scope, Send, bearer, header, read_body, respond, send_error
from amphi.web.routes import Match

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "amphi_operator"
SESSION_S = 12 * 3600
LOGIN_BODY_LIMIT = 1024
MAX_STREAMS = 32  # dashboards open at once per node
HTML = b"text/html; charset=utf-8"
_COOKIE_RE = re.compile(COOKIE + r"=([0-9a-f]{64})")


class Ops:
    def __init__(self, cfg: Config, obs: Observer, operator_key: str, closing: asyncio.Event) -> None:
        self._closing = closing  # set at shutdown: the dashboards' streams end
        self._obs = obs
        self._key = operator_key.encode()
        self._max_listeners = cfg.admission.max_listeners
        self._session = hmac.new(self._key, b"amphi dashboard session", hashlib.sha256).hexdigest()
        self._secure = cfg.http.base_url.startswith("https://")
        self._assets = assets.root(cfg.web_assets_dir)

    # -- who is asking ------------------------------------------------------------------------

    def _authorized(self, scope: Scope) -> bool:
        auth = header(scope, b"authorization")
        if auth is not None:
            key = bearer(auth.decode("latin-1"))
            return key is not None and hmac.compare_digest(key.encode(), self._key)
        cookie = header(scope, b"cookie")
        m = _COOKIE_RE.search(cookie.decode("latin-1")) if cookie else None
        return m is not None and hmac.compare_digest(m.group(1), self._session)

    def _require(self, scope: Scope) -> None:
        if not self._authorized(scope):
            raise Unauthorized("this needs the operator key: Authorization: Bearer OPERATOR_KEY, "
                               "or log in at /dashboard")

    # -- routing ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, m: Match) -> None:
        name = m.route.name  # the "ops" routes of amphi.web.routes
        try:
            if not m.allowed:
                raise MethodNotAllowed(f"{scope['path']} takes {' or '.join(sorted(m.route.methods))}")
            if name in assets.VENDOR:
                await self._vendor(name, send)
            elif name == "dashboard.login":
                await self._login(scope, receive, send)
            elif name == "dashboard.logout":
                await self._redirect(send, f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")
            elif name == "metrics":
                self._require(scope)
                body = self._obs.metrics.exposition()
                await respond(send, 200, [(b"content-type", CONTENT_TYPE.encode()), (b"cache-control", NO_STORE)], body)
            elif name == "dashboard":
                if self._authorized(scope):
                    await self._page(send, 200, "dashboard.html")
                else:
                    await self._page(send, 401, "login.html")
            else:
                self._require(scope)
                await self._stream(receive, send)
        except AmphiError as err:
            await send_error(send, err)

    async def _page(self, send: Send, status: int, name: str, message: str = "") -> None:
        body = (STATIC / name).read_bytes().replace(b"{message}", message.encode())
        await respond(send, status, [(b"content-type", HTML), (b"cache-control", NO_STORE)], body)

    async def _vendor(self, name: str, send: Send) -> None:
        rel, ctype = assets.VENDOR[name]
        file = self._assets / rel
        if not file.is_file():
            raise NotFound(assets.missing_message(self._assets, rel))
        await respond(send, 200, [(b"content-type", ctype.encode()), (b"cache-control", b"public, max-age=3600")],
                      file.read_bytes())

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, LOGIN_BODY_LIMIT)
        key = (parse_qs(body.decode("latin-1")).get("key") or [""])[0].strip()
        if not hmac.compare_digest(key.encode(), self._key):
            log.warning("dashboard login refused (wrong operator key)")
            await self._page(send, 401, "login.html", "That is not this node's operator key.")
            return
        secure = "; Secure" if self._secure else ""
        await self._redirect(send, f"{COOKIE}={self._session}; Max-Age={SESSION_S}; Path=/; HttpOnly; "
                                   f"SameSite=Strict{secure}")

    @staticmethod
    async def _redirect(send: Send, cookie: str) -> None:
        await respond(send, 303, [(b"location", b"/dashboard"), (b"set-cookie", cookie.encode()),
                                  (b"cache-control", NO_STORE)], b"")

    async def _stream(self, receive: Receive, send: Send) -> None:
        obs = self._obs
        if obs.dashboard_streams >= MAX_STREAMS:
            raise TooBusy(f"{MAX_STREAMS} dashboards are open on this node", retry_after_s=30)
        obs.dashboard_streams += 1
        gone = sse.watch_disconnect(receive, self._closing)
        try:
            await sse.start(send, cors=False)
            info = {"node_id": obs.node_id, "max_listeners": self._max_listeners}
            seq, data = obs.feed.snapshot()
            await sse.write(send, sse.event("hello", orjson.dumps(info)) + sse.event("snapshot", data))
            while not gone.done():
                waited = asyncio.ensure_future(obs.feed.wait(sse.KEEPALIVE_S))
                await asyncio.wait([gone, waited], return_when=asyncio.FIRST_COMPLETED)
                waited.cancel()
                if gone.done():
                    await sse.finish(send, self._closing)
                    return
                news = obs.feed.since(seq)
                if news is None:  # fell behind the ring: start over
                    seq, data = obs.feed.snapshot()
                    await sse.write(send, sse.event("snapshot", data))
                elif news[1]:
                    seq = news[0]
                    await sse.write(send, sse.event("update", news[1]))
                else:
                    await sse.write(send, sse.KEEPALIVE)
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.debug("dashboard stream closed: %r", exc)
        finally:
            obs.dashboard_streams -= 1
            gone.cancel()
