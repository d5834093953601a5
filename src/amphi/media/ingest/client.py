"""The ``amphi speak`` client: send one audio track to a Space over WebRTC, and hear the
others on stage (the return feed the server sends back on the same connection).

Signalling is WHIP (RFC 9725), without trickle: POST the complete SDP offer to
``{server}/api/spaces/{space}/speak`` and get the complete answer back with ``201`` and the
session's ``Location``; DELETE that session when done (hanging up at once, rather than the
server noticing the silence).
``speak()`` is one connection; ``stay_on_stage()`` reconnects when the network drops or the
Space's host changes (issue 19: the client keeps the URL it started with, an edge or any
node, which forwards to the host; docs/cluster.md), and stops for good when the server says
no (not on stage any more, Space ended). Its timings, for a host killed mid-Space: the loss
is noticed within ``SUSPECT_SILENCE_S`` (0.5 s) of the last return audio once the room's event
stream broke (a killed node closes it at once), else ``RETURN_SILENCE_S`` (2 s), the first offer goes
out at once, a node that answers 503 with Retry-After (a take-over in progress) is asked again
after that long (+0-15 %), without climbing the backoff ladder.
Before each offer it asks the node for the STUN and TURN servers to use (``GET
/api/spaces/{space}/ice``, a fresh TURN credential each time), and it offers host candidates
on ``ice_addresses`` only (by default the address this machine reaches the server from:
``local_address_towards``). ``follow_room()`` reads the room's event stream beside it and says what the speaker should
know (docs/sound.md): talking while muted, feedback on their microphone, and, for hosts,
dead air.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable

import av
import httpx
import numpy as np
import orjson
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from amphi.core.errors import AmphiError
from amphi.media.ingest.compat import use_ice_addresses

__all__ = ["SpeakError", "Suspicion", "follow_room", "ice_servers", "local_address_towards", "notices", "speak", "stay_on_stage"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0  # from the answer to a connected peer
HTTP_TIMEOUT_S = 10.0  # the signalling request
HANG_UP_TIMEOUT_S = 3.0  # the DELETE of the WHIP session when done (best effort)
RETURN_SILENCE_S = 2.0  # no return audio for this long while connected: the connection is down (a node
# descheduled for a second, as a loaded machine does, is not: tests/integration/test_live.py)
SUSPECT_SILENCE_S = 0.5  # ... this long, once the room's event stream broke (a dead node drops both at once)
SUSPECT_FOR_S = 3.0  # a broken event stream makes the return feed's silence suspect this long


class Suspicion:
    """The room's event stream (``follow_room``) broke: for ``SUSPECT_FOR_S`` a shorter silence of
    the return feed means the node is gone. A killed node closes its connections at once, so the
    speaker offers again within about half a second; a node that only stalls keeps them open."""

    def __init__(self) -> None:
        self._until = 0.0

    def broke(self) -> None:
        self._until = time.monotonic() + SUSPECT_FOR_S

    def silence_s(self) -> float:
        return SUSPECT_SILENCE_S if time.monotonic() < self._until else RETURN_SILENCE_S
# (the mixer sends the feed every 20 ms, silence included; the node covers its own stalls up to
# 1 s, MediaConfig.stall_cover_ms): a dead host is noticed in 1 s, so a take-over (the lease
# lapses in 1.5 s) has the speaker back within the 5 s
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # between reconnection attempts, each +- 25 % at random
RETRY_AFTER_JITTER = (1.0, 1.15)  # a 503's Retry-After is waited times this: never early, a little spread
RETRY_AFTER_MAX_S = 30.0  # a longer Retry-After is waited this long
FINAL_STATUSES = (400, 401, 403, 404, 409, 413)  # the server said no: reconnecting will not help

ReturnHook = Callable[[np.ndarray, float], None]
"""``on_return(samples, wall_time)``: one decoded return-feed frame (float32 mono, 48 kHz) and
``time.time()`` when it came out of the decoder."""


class SpeakError(AmphiError):
    """Speaking failed. ``status`` is the server's HTTP status when it refused the offer,
    or 0 when there was no HTTP answer (unreachable) or the media connection failed.
    ``retry_after_s``: the server's Retry-After (a 503 while a Space changes host);
    ``lost``: a connection that was up went down (the host died, the network dropped)."""

    code = "speak_failed"

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None,
                 lost: bool = False) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status
        self.lost = lost

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
    on_return: ReturnHook | None = None,
    verify: ssl.SSLContext | bool = True,
    suspicion: Suspicion | None = None,
) -> None:
    """Send ``track`` to ``space`` until ``duration`` seconds after connecting (None: until
    the track ends or the caller cancels), then hang up cleanly. ``on_connected`` is called
    once media flows. aiortc stops ``track`` when the connection closes: it is single-use.
    The offer also receives: the server's return feed (if it sends one) goes to
    ``on_return``, and its silence for ``RETURN_SILENCE_S`` means the connection is down.

    Raises ``SpeakError`` when the server refuses the offer (non-2xx), cannot be reached,
    hangs up first, or the connection fails, goes silent, or does not come up within
    ``CONNECT_TIMEOUT_S``. ``verify``: the trust in an https server's certificate
    (``amphi.core.tls.client_context``; True: httpx's default)."""
    use_ice_addresses(ice_addresses)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=await ice_servers(server, space, key or token, verify)))
    connected = asyncio.Event()
    gone = asyncio.Event()  # failed or closed
    silent = asyncio.Event()  # the return feed stopped
    track_ended = asyncio.Event()
    track.on("ended", track_ended.set)
    hearing: list[asyncio.Task[None]] = []
    session: str | None = None  # the WHIP session's URL, to DELETE when done

    @pc.on("track")
    def _on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "audio":
            hearing.append(asyncio.ensure_future(_hear(remote, on_return, silent, suspicion or Suspicion())))

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
        sender = pc.addTransceiver(track, direction="sendrecv").sender
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers all candidates here
        answer, session = await _post_offer(server, space, pc.localDescription.sdp, key or token, verify)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        if await _first(connected, gone, timeout=CONNECT_TIMEOUT_S) is not connected:
            raise SpeakError(0, f"the media connection to {server} {'failed' if gone.is_set() else 'timed out'}")
        if on_connected is not None:
            on_connected()

        ended = await _first(gone, track_ended, silent, timeout=duration)
        if ended is silent:
            raise SpeakError(0, f"the audio from {server} stopped: the connection is down", lost=True)
        if ended is not None:
            # aiortc also ends the track when sending fails, so an ended track alone does
            # not mean the source ran out: the transport tells which.
            transport = sender.transport.state
            if state == "failed" or transport == "failed":
                raise SpeakError(0, f"the media connection to {server} failed", lost=True)
            if ended is gone or transport != "connected":
                raise SpeakError(0, f"{server} hung up", lost=True)
    except SpeakError as e:
        if e.lost:
            session = None  # no DELETE: the host is gone or has dropped us (a new offer replaces
            # the session anyway), and asking a dead host would hold up the reconnection
        raise
    finally:
        track.remove_listener("ended", track_ended.set)
        for task in hearing:
            task.cancel()
        if session is not None:
            await _hang_up(session, key or token, verify)
        await pc.close()


async def _hear(remote: MediaStreamTrack, on_return: ReturnHook | None, silent: asyncio.Event,
                suspicion: Suspicion) -> None:
    """Drains the return feed (aiortc queues it unboundedly otherwise), hands it on, and sets
    ``silent`` when nothing arrives for ``suspicion.silence_s()`` or the feed ends. The first
    frame may take as long as the connection takes to come up (the track is announced with the
    answer): the silence is counted from then on."""
    loop = asyncio.get_running_loop()
    last: float | None = None
    first_by = loop.time() + CONNECT_TIMEOUT_S + RETURN_SILENCE_S
    try:
        while True:
            left = (first_by if last is None else last + suspicion.silence_s()) - loop.time()
            if left <= 0:
                break
            try:  # looked at again at least every SUSPECT_SILENCE_S: a stream that breaks shortens the wait
                frame = await asyncio.wait_for(remote.recv(), min(left, SUSPECT_SILENCE_S))
            except TimeoutError:
                continue
            last = loop.time()
            if on_return is not None:
                on_return(_mono(frame), time.time())
    except MediaStreamError:
        pass
    silent.set()


def _mono(frame: av.AudioFrame) -> np.ndarray:
    pcm = frame.to_ndarray()  # s16 packed: shape (1, samples * channels)
    channels = len(frame.layout.channels)
    samples = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.reshape(-1)
    return samples.astype(np.float32) / 32768


class _Borrowed(MediaStreamTrack):
    """One connection's view of a source that outlives it: aiortc stops the track it sends
    when the connection closes; this stops, the source goes on for the next connection."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live" or self._source.readyState != "live":
            self.stop()
            raise MediaStreamError
        try:
            return await self._source.recv()
        except MediaStreamError:
            self.stop()
            raise


async def stay_on_stage(
    server: str,
    space: str,
    track: MediaStreamTrack,
    *,
    key: str | None = None,
    token: str | None = None,
    duration: float | None = None,
    ice_addresses: tuple[str, ...] = ("127.0.0.1",),
    on_connected: Callable[[], None] | None = None,
    on_return: ReturnHook | None = None,
    on_drop: Callable[[str, float], None] | None = None,
    verify: ssl.SSLContext | bool = True,
    suspicion: Suspicion | None = None,
) -> int:
    """``speak()`` that survives a dropped network and a change of host: a connection that
    was up and went down (failed, or its return feed silent for ``RETURN_SILENCE_S``) is
    offered again at once; an offer that cannot be made is tried again after 0.5, 1, 2, 4, 8,
    8... s (jittered); an offer answered 503 with Retry-After (the Space changing host) after
    that long (``RETRY_AFTER_JITTER``), without climbing that ladder. Always a new offer with
    the same credential to the same ``server``, until ``duration`` seconds have passed in all
    (None: until the track ends or the caller cancels). Returns how many times it reconnected.
    ``on_drop(reason, delay)`` is called before each wait. Raises ``SpeakError`` at once
    when the server refuses for good (a 4xx: not on stage any more, Space ended, bad key)."""
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    attempt = 0
    reconnects = 0
    while True:
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return reconnects
        up = asyncio.Event()

        def connected() -> None:
            up.set()
            if on_connected is not None:
                on_connected()

        try:
            await speak(server, space, _Borrowed(track), key=key, token=token, duration=left,
                        ice_addresses=ice_addresses, on_connected=connected, on_return=on_return, verify=verify,
                        suspicion=suspicion)
            return reconnects  # the duration passed or the source ran out
        except SpeakError as e:
            if e.status in FINAL_STATUSES or track.readyState != "live":
                raise
            if up.is_set():
                attempt = 0
            if e.retry_after_s is not None:  # told when: the ladder stays where it is
                delay = min(e.retry_after_s, RETRY_AFTER_MAX_S) * random.uniform(*RETRY_AFTER_JITTER)
            elif e.lost and up.is_set():  # it was up: the host may be gone, ask again at once
                delay = 0.0
            else:
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)] * random.uniform(0.75, 1.25)
                attempt += 1
            reconnects += 1
            logger.warning("speak %s: %s; reconnecting in %.1f s", space, e, delay)
            if on_drop is not None:
                on_drop(str(e), delay)
            await asyncio.sleep(delay)


def _bearer(credential: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"} if credential else {}


async def ice_servers(server: str, space: str, credential: str | None,
                      verify: ssl.SSLContext | bool = True) -> list[RTCIceServer]:
    """The STUN and TURN servers the node hands its speakers (``GET /api/spaces/{space}/ice``);
    none when it has none or does not answer (the offer that follows says why). aiortc uses
    the first STUN and the first TURN server of the list."""
    url = f"{server.rstrip('/')}/api/spaces/{space}/ice"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify) as client:
            response = await client.get(url, headers=_bearer(credential))
        listed = response.json()["ice_servers"] if response.is_success else []
        return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                for s in listed]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        logger.debug("ICE servers of %s: %r", url, exc)
        return []


def local_address_towards(server: str) -> str:
    """The address of this machine that packets to ``server``'s host leave from (the kernel's
    route to it; no packet is sent): the ICE host address a speaker should offer by default."""
    host = httpx.URL(server).host or "127.0.0.1"
    family, _, _, _, sockaddr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        return s.getsockname()[0]


async def _post_offer(server: str, space: str, offer: str, credential: str | None,
                      verify: ssl.SSLContext | bool = True) -> tuple[str, str | None]:
    """(the answer, the WHIP session's absolute URL: None if the server gave no Location)."""
    url = f"{server.rstrip('/')}/api/spaces/{space}/speak"
    headers = {"Content-Type": "application/sdp", **_bearer(credential)}
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify) as client:
            response = await client.post(url, content=offer.encode(), headers=headers)
    except httpx.HTTPError as exc:
        raise SpeakError(0, f"cannot reach {url}: {exc!r}") from exc
    if not response.is_success:
        raise SpeakError(response.status_code, _error_message(response), retry_after_s=_retry_after(response))
    location = response.headers.get("location")
    return response.text, str(response.url.join(location)) if location else None


async def _hang_up(session: str, credential: str | None, verify: ssl.SSLContext | bool = True) -> None:
    """DELETE the WHIP session (RFC 9725 section 4.2): the server hangs up at once. Best effort:
    a session already gone (404) or a server out of reach changes nothing here."""
    try:
        async with httpx.AsyncClient(timeout=HANG_UP_TIMEOUT_S, verify=verify) as client:
            response = await client.delete(session, headers=_bearer(credential))
        logger.info("speak: DELETE %s -> %d", session, response.status_code)
    except httpx.HTTPError as exc:
        logger.info("speak: DELETE %s failed: %r", session, exc)


def _retry_after(response: httpx.Response) -> float | None:
    """A 503's Retry-After in seconds (delta-seconds; an HTTP date is not sent by Amphi and is
    taken as absent), else None."""
    value = response.headers.get("retry-after")
    if response.status_code != 503 or value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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


def notices(you: dict[str, object] | None, stage: dict[str, object] | None, said: dict[str, object]) -> list[str]:
    """What to tell the speaker, from their own record (``you``) and the stage view, once per
    change (``said`` remembers what was told). Pure."""
    out = []
    if you is not None:
        muted_talking = bool(you.get("muted_talking"))
        if muted_talking != said.get("muted_talking", False):
            said["muted_talking"] = muted_talking
            if muted_talking:
                by = "by the host" if you.get("host_muted") else "by yourself"
                out.append(f"you're muted ({by}): nobody hears you. Unmute to speak.")
        feedback = you.get("feedback")
        if feedback != said.get("feedback"):
            said["feedback"] = feedback
            out.append("we hear an echo of the Space in your microphone, so your voice is turned down while "
                       "others talk: use headphones" if feedback else "no more echo in your microphone")
    sound = stage.get("sound") if stage is not None else None
    if isinstance(sound, dict):
        alert = sound.get("dead_air")
        message = alert.get("message") if isinstance(alert, dict) else None
        if message != said.get("dead_air"):
            said["dead_air"] = message
            out.append(str(message) if message else "dead air over: someone is heard")
    return out


async def follow_room(server: str, space: str, credential: str, tell: Callable[[str], None],
                      verify: ssl.SSLContext | bool = True, suspicion: Suspicion | None = None) -> None:
    """Reads the room's events (``GET /api/spaces/{space}/events``) for as long as it runs, and
    passes each notice to ``tell``. A broken stream is opened again after a pause; this never
    ends the speaking. A stream that breaks (or says the Space ``moved``) tells ``suspicion``."""
    url = f"{server.rstrip('/')}/api/spaces/{space}/events"
    said: dict[str, object] = {}
    attempt = 0
    while True:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_S, read=60.0), verify=verify) as client, \
                    client.stream("GET", url, headers=_bearer(credential)) as response:
                if response.status_code in FINAL_STATUSES:
                    return  # not ours to follow (the speaking says why)
                response.raise_for_status()
                attempt = 0
                kind = None
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind in ("you", "stage"):
                        data = orjson.loads(line[5:])
                        for notice in notices(data if kind == "you" else None, data if kind == "stage" else None, said):
                            tell(notice)
                    elif line.startswith("data:") and kind == "ended":
                        return
        except (httpx.HTTPError, ValueError) as exc:
            logger.debug("room events for %s: %r", space, exc)
        if suspicion is not None:
            suspicion.broke()
        await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        attempt += 1
