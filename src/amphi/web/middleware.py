"""The app's middleware, a plain ASGI class (it wraps the next app; no framework).

``Gate`` runs before every HTTP request:

* the shield's view of the caller: its address (behind trusted proxies, the one they
  forwarded) in ``scope[CLIENT_KEY]``, and its requests in flight (too many: 429 at once);
* an answer that leaves the request's body unread says ``Connection: close``
  (``amphi.web.asgi.close_if_body_unread``).

One class, not one per concern, and served as the app itself (``App.asgi``): each layer is a
coroutine per request, and on the join path two layers cost 3 % of the node's instructions per
join (``bench/request_cost.py``). Only HTTP reaches it: the server runs without lifespan
and websockets.
"""

from __future__ import annotations

from amphi.core.errors import AmphiError
from amphi.defense.shield import CLIENT_KEY, Shield
from amphi.web.asgi import App, Receive, Scope, Send, close_if_body_unread, send_error


class Gate:
    def __init__(self, app: App, shield: Shield) -> None:
        self.app = app
        self.shield = shield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receive, send = close_if_body_unread(scope, receive, send)
        shield = self.shield  # defense: requests in flight per client address
        address = scope[CLIENT_KEY] = shield.client(scope)
        try:
            shield.enter(address)
        except AmphiError as err:
            await send_error(send, err)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            shield.leave(address)
