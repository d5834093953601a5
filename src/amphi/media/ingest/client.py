"""The ``amphi speak`` client: send one audio track to a Space over WebRTC.

Signalling is one HTTP request (WHIP-like, non-trickle): POST the complete SDP offer to
``{server}/api/spaces/{space}/speak`` and get the complete answer back with ``201``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from amphi.core.errors import AmphiError
from amphi.media.ingest.webrtc import use_ice_addresses

__all__ = ["SpeakError", "speak"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0  # from the answer to a connected peer
HTTP_TIMEOUT_S = 10.0  # the signalling request


class SpeakError(AmphiError):
    """Speaking failed. ``status`` is the server's HTTP status when it refused the offer,
    or 0 when there was no HTTP answer (unreachable) or the media connection failed."""

    code = "speak_failed"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" if self.status else self.message


async def speak(
    server: str,
    space: str,
    track: MediaStreamTrack,
    *,
    key: str | None = None,
    token: str | None = None,
    duration: float | None = None,
    ice_addresses: tuple[str, ...] = ("127.0.0.1",),
    on_connected: Callable[[], None] | None = None,
) -> None:
    """Send ``track`` to ``space`` until ``duration`` seconds after connecting (None: until
    the track ends or the caller cancels), then hang up cleanly. ``on_connected`` is called
    once media flows. aiortc stops ``track`` when the connection closes: it is single-use.

    Raises ``SpeakError`` when the server refuses the offer (non-2xx), cannot be reached,
    hangs up first, or the connection fails or does not come up within
    ``CONNECT_TIMEOUT_S``."""
    use_ice_addresses(ice_addresses)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    gone = asyncio.Event()  # failed or closed
    track_ended = asyncio.Event()
    track.on("ended", track_ended.set)

    state = pc.connectionState

    @pc.on("connectionstatechange")
    def _on_state_change() -> None:
        nonlocal state
        old, state = state, pc.connectionState
        if old == state:
            return
        logger.info("speak %s: %s -> %s", space, old, state)
        if state == "connected":
            connected.set()
        elif state in ("failed", "closed"):
            gone.set()

    try:
        sender = pc.addTransceiver(track, direction="sendonly").sender
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers all candidates here
        answer = await _post_offer(server, space, pc.localDescription.sdp, key or token)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        if await _first(connected, gone, timeout=CONNECT_TIMEOUT_S) is not connected:
            raise SpeakError(0, f"the media connection to {server} {'failed' if gone.is_set() else 'timed out'}")
        if on_connected is not None:
            on_connected()

        ended = await _first(gone, track_ended, timeout=duration)
        if ended is not None:
            # aiortc also ends the track when sending fails, so an ended track alone does
            # not mean the source ran out: the transport tells which.
            transport = sender.transport.state
            if state == "failed" or transport == "failed":
                raise SpeakError(0, f"the media connection to {server} failed")
            if ended is gone or transport != "connected":
                raise SpeakError(0, f"{server} hung up")
    finally:
        track.remove_listener("ended", track_ended.set)
        await pc.close()


async def _post_offer(server: str, space: str, offer: str, credential: str | None) -> str:
    url = f"{server.rstrip('/')}/api/spaces/{space}/speak"
    headers = {"Content-Type": "application/sdp"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            response = await client.post(url, content=offer.encode(), headers=headers)
    except httpx.HTTPError as exc:
        raise SpeakError(0, f"cannot reach {url}: {exc!r}") from exc
    if not response.is_success:
        raise SpeakError(response.status_code, _error_message(response))
    return response.text


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return response.text.strip()[:200] or response.reason_phrase


async def _first(*events: asyncio.Event, timeout: float | None) -> asyncio.Event | None:
    """The first of ``events`` to be set (checked in order), or None after ``timeout``."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return next((e for e in events if e.is_set()), None)
