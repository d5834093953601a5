"""Server-Sent Events, the one implementation: the stage streams (``amphi.web.events``) and
the dashboard's stream (``amphi.web.ops``) both frame, start, write and notice a client that
left with these. A stream holds no queue: each caller remembers what it last sent."""

from __future__ import annotations

import asyncio

from amphi.web.asgi import CORS, NO_STORE, Receive, Send

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
SEND_TIMEOUT_S = 10.0  # a client that takes longer to accept one write is cut off
KEEPALIVE = b": keepalive\n\n"


def event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def start(send: Send, *, cors: bool = True) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", NO_STORE),
               (b"x-accel-buffering", b"no")]
    if cors:
        headers.append(CORS)
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def write(send: Send, body: bytes, *, more: bool = True) -> None:
    """One write; a client that does not take it within ``SEND_TIMEOUT_S`` raises TimeoutError."""
    async with asyncio.timeout(SEND_TIMEOUT_S):
        await send({"type": "http.response.body", "body": body, "more_body": more})


def watch_disconnect(receive: Receive, closing: asyncio.Event) -> asyncio.Future[None]:
    """Done when the client has gone, or when the node is shutting down (``closing``): every
    stream then ends, so the HTTP server can drain. Cancel it when the stream ends."""
    async def left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def gone() -> None:
        waits = [asyncio.ensure_future(left()), asyncio.ensure_future(closing.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    return asyncio.ensure_future(gone())


async def finish(send: Send, closing: asyncio.Event) -> None:
    """Ends the response of a stream stopped by the shutdown (a client that left needs none)."""
    if closing.is_set():
        try:
            await write(send, b"", more=False)
        except (OSError, RuntimeError, TimeoutError):
            pass
