"""The app's middleware, as plain ASGI classes (each wraps the next app; no framework):

    BodyGuard   an answer that leaves a request's body unread says ``Connection: close``
    ClientGate  the shield's view of the caller: its address (behind trusted proxies, the
                one they forwarded) in ``scope[CLIENT_KEY]``, and its requests in flight
"""

from __future__ import annotations

from amphi.core.errors import AmphiError
from amphi.defense.shield import CLIENT_KEY, Shield
from amphi.web.asgi import App, Receive, Scope, Send, close_if_body_unread, send_error


class BodyGuard:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receive, send = close_if_body_unread(scope, receive, send)
        await self.app(scope, receive, send)


class ClientGate:
    def __init__(self, app: App, shield: Shield) -> None:
        self.app = app
        self.shield = shield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
