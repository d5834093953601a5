"""Server side of a speaker's WebRTC connection: SDP offer in, answer out, decoded audio
to a ``FrameSink`` as 20 ms float32 mono frames at 48 kHz.

One ``WebRTCIngest`` holds every live speaker connection of a node, keyed by name. The
server only receives (``recvonly``), Opus only, with no STUN servers and non-trickle ICE:
every candidate is in the answer. Host candidates come from ``ice_addresses`` alone (see
``use_ice_addresses``), so by default all media stays on 127.0.0.1.

Lifecycle of one connection: accepted -> consuming -> gone. It is gone when the peer
closes or fails, the track ends, it does not connect within ``connect_timeout_s``, the
sink raises, it is replaced by a newer ``accept()`` of the same name, or it is hung up
(``close``/``close_all``). Whatever the reason, the sink's ``close()`` is called exactly
once and the ``RTCPeerConnection`` is released. Once gone, it cannot be reused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Protocol

import aioice.ice
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from amphi.core.config import SAMPLE_RATE
from amphi.core.errors import InvalidSdp

__all__ = ["FrameSink", "WebRTCIngest", "use_ice_addresses"]

logger = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE // 50  # 960: one 20 ms frame
CONNECT_TIMEOUT_S = 20.0  # an accepted peer that has not connected by then is dropped


class FrameSink(Protocol):
    def push(self, samples: np.ndarray) -> None:
        """One 20 ms frame: float32 mono, shape (960,), 48 kHz, range [-1, 1]."""

    def close(self) -> None:
        """The peer is gone (closed, failed, replaced or hung up). Called once."""


# --- ICE host addresses -------------------------------------------------------------------

_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_ice_addresses: tuple[str, ...] | None = None


def use_ice_addresses(addresses: Sequence[str]) -> None:
    """Make aioice offer host candidates on exactly ``addresses`` and nothing else.

    aioice's own ``get_host_addresses()`` lists every interface but deliberately skips
    127.0.0.1; Amphi wants the opposite (media on loopback, never on other interfaces), so
    this replaces ``aioice.ice.get_host_addresses``. It is process-wide (the last call wins)
    and idempotent; both the server (``WebRTCIngest``) and the client (``speak``) call it
    before gathering. Raises ``ValueError`` for a string that is not an IP address.
    """
    global _ice_addresses
    parsed = tuple(ipaddress.ip_address(a) for a in addresses)
    wanted = tuple(str(a) for a in parsed)
    if wanted == _ice_addresses:
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a)
            for a in parsed
            if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses
    _ice_addresses = wanted
    logger.debug("ICE host addresses: %s", ", ".join(wanted) or "(none)")


# --- audio conversion ---------------------------------------------------------------------


class Rechunker:
    """Cuts a stream of float32 samples into frames of exactly ``size`` samples.

    Each frame handed out is a fresh array, so a sink may keep it."""

    def __init__(self, size: int = FRAME_SAMPLES) -> None:
        self.size = size
        self._buf = np.empty(size, dtype=np.float32)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples held back until the next frame is full."""
        return self._fill

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        frames: list[np.ndarray] = []
        i, n = 0, len(samples)
        while i < n:
            take = min(self.size - self._fill, n - i)
            self._buf[self._fill : self._fill + take] = samples[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.size:
                frames.append(self._buf)
                self._buf = np.empty(self.size, dtype=np.float32)
                self._fill = 0
        return frames


_SCALE = {"s16": 1 / 32768, "s16p": 1 / 32768, "flt": 1.0, "fltp": 1.0}


class MonoConverter:
    """Decoded ``av.AudioFrame`` -> float32 mono samples at 48 kHz in [-1, 1].

    aiortc's Opus decoder hands out s16 packed stereo at 48 kHz (960 samples per frame):
    that path is plain numpy. Anything else goes through ``av.AudioResampler`` first. The
    downmix is the mean of the channels, so a mono source sent as stereo keeps its level."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        frames = [frame]
        if frame.sample_rate != SAMPLE_RATE or frame.format.name not in _SCALE:
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=SAMPLE_RATE)
            frames = self._resampler.resample(frame)
        parts = [self._to_mono(f) for f in frames]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    @staticmethod
    def _to_mono(frame: av.AudioFrame) -> np.ndarray:
        channels = len(frame.layout.channels)
        fmt = frame.format.name
        data = frame.to_ndarray()
        if frame.format.is_planar:  # shape (channels, samples)
            planes = data.astype(np.float32, copy=False)
        else:  # shape (1, samples * channels), interleaved
            planes = data.reshape(-1, channels).T.astype(np.float32, copy=False)
        mono = planes[0] if channels == 1 else planes.mean(axis=0, dtype=np.float32)
        out = mono * np.float32(_SCALE.get(fmt, 1.0))
        if fmt.startswith("flt"):
            np.clip(out, -1.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)


# --- connections ----------------------------------------------------------------------------


class _Connection:
    """One speaker's peer connection and the task that drains its audio track."""

    def __init__(self, name: str, pc: RTCPeerConnection, track: MediaStreamTrack, sink: FrameSink) -> None:
        self.name = name
        self.pc = pc
        self.track = track
        self.sink = sink
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._ending = False
        self._state = pc.connectionState
        if self._state == "connected":
            self.connected.set()
        pc.on("connectionstatechange", self._on_state_change)

    def _on_state_change(self) -> None:
        old, new = self._state, self.pc.connectionState
        if new == old:
            return
        self._state = new
        logger.info("speaker %r: %s -> %s", self.name, old, new)
        if new == "connected":
            self.connected.set()
        elif new in ("failed", "closed") and not self._ending and self.task is not None:
            self.task.cancel()

    async def run(self, connect_timeout_s: float, on_exit: _ExitCallback) -> None:
        frames = 0
        try:
            async with asyncio.timeout(connect_timeout_s):
                await self.connected.wait()
            rechunk = Rechunker()
            convert = MonoConverter()
            while True:
                frame = await self.track.recv()
                for chunk in rechunk.feed(convert.convert(frame)):
                    self.sink.push(chunk)
                    frames += 1
        except MediaStreamError:
            logger.info("speaker %r: track ended", self.name)
        except TimeoutError:
            logger.warning("speaker %r: not connected after %.0f s, dropped", self.name, connect_timeout_s)
        except asyncio.CancelledError:
            pass  # hung up, replaced, or the peer failed/closed: a normal end, not an error
        except Exception:
            logger.exception("speaker %r: consumer failed", self.name)
        finally:
            self._ending = True
            on_exit(self)
            try:
                self.sink.close()
            except Exception:
                logger.exception("speaker %r: sink.close() failed", self.name)
            try:
                # shielded: hanging up twice must not leave the peer connection half closed
                await asyncio.shield(self.pc.close())
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("speaker %r: closing the peer connection failed", self.name)
            logger.info("speaker %r: gone after %d frames", self.name, frames)


class _ExitCallback(Protocol):
    def __call__(self, conn: _Connection, /) -> None: ...


class WebRTCIngest:
    """Accepts speakers' WebRTC offers and feeds their decoded audio to sinks.

    Consumer loops are tasks owned by the ingest; an exception in one connection ends that
    connection only. ``close``/``close_all`` return once the connections' tasks have exited.
    """

    def __init__(
        self,
        ice_addresses: tuple[str, ...] = ("127.0.0.1",),
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.ice_addresses = tuple(ice_addresses)
        self.connect_timeout_s = connect_timeout_s
        self._conns: dict[str, _Connection] = {}
        use_ice_addresses(self.ice_addresses)

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def accept(self, offer_sdp: str, sink: FrameSink, *, name: str) -> str:
        """Answer a speaker's SDP offer; returns the answer SDP with all candidates.

        A speaker's offer carries exactly one audio m-line (Opus, sending) and nothing else.
        Raises ``InvalidSdp`` otherwise. A previous connection of the same ``name`` is
        closed once the new one has been answered."""
        _check_offer(offer_sdp)
        use_ice_addresses(self.ice_addresses)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver("audio", direction="recvonly")
            transceiver.setCodecPreferences(
                [c for c in RTCRtpReceiver.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
            )
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except OperationError as exc:  # no codec in common
                raise InvalidSdp(f"the offer has no usable audio codec (Opus required): {exc}") from None
            except (ValueError, InvalidAccessError, InvalidStateError) as exc:
                raise InvalidSdp(f"invalid SDP offer: {exc}") from None
            track = transceiver.receiver.track
            if track is None:
                raise InvalidSdp("the offer does not send audio")
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            raise

        conn = _Connection(name, pc, track, sink)
        previous = self._conns.get(name)
        self._conns[name] = conn
        conn.task = asyncio.create_task(
            conn.run(self.connect_timeout_s, self._forget), name=f"webrtc-ingest:{name}"
        )
        if previous is not None:
            logger.info("speaker %r: replaced by a new connection", name)
            await _stop(previous)
        return pc.localDescription.sdp

    async def close(self, name: str) -> None:
        """Hang up one speaker; returns once its task has exited. Unknown names are ignored."""
        conn = self._conns.pop(name, None)
        if conn is not None:
            await _stop(conn)

    async def close_all(self) -> None:
        """Hang up every speaker; returns once all their tasks have exited."""
        conns = list(self._conns.values())
        self._conns.clear()
        await asyncio.gather(*(_stop(c) for c in conns))

    def _forget(self, conn: _Connection) -> None:
        if self._conns.get(conn.name) is conn:
            del self._conns[conn.name]


async def _stop(conn: _Connection) -> None:
    task = conn.task
    if task is None:
        return
    task.cancel()
    # wait() neither raises the task's outcome nor cancels the task if we are cancelled
    await asyncio.wait([task])


def _check_offer(offer_sdp: str) -> None:
    """Cheap checks before aiortc sees the offer: SDP at all, one sending audio m-line."""
    if not isinstance(offer_sdp, str) or not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidSdp("the body is not an SDP offer (it must start with v=0)")
    if "\nm=audio" not in offer_sdp:
        raise InvalidSdp("the SDP offer has no audio m-line")
    try:
        description = aiortc_sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:  # untrusted text: any parse failure is the sender's
        raise InvalidSdp(f"unparsable SDP offer: {exc!r}") from None
    kinds = [m.kind for m in description.media]
    if kinds != ["audio"]:
        raise InvalidSdp(f"a speaker's offer must carry exactly one audio m-line, not {kinds}")
    media = description.media[0]
    if media.direction not in (None, "sendonly", "sendrecv"):
        raise InvalidSdp(f"the offer's audio is {media.direction}; a speaker must send")
    if not media.ice.usernameFragment or not media.ice.password:
        raise InvalidSdp("the offer has no ICE credentials")
    if media.dtls is None or not media.dtls.fingerprints:
        raise InvalidSdp("the offer has no DTLS fingerprint")

