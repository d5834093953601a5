"""Server side of a speaker's WebRTC connection: SDP offer in, answer out, decoded audio
to a ``FrameSink`` as 20 ms float32 mono frames at 48 kHz, and (when the offer also
receives) the speaker's return feed sent back on the same audio m-line (``ReturnTrack``).

One ``WebRTCIngest`` holds every live speaker connection of a node, keyed by name. The
server only receives (``recvonly``), Opus only (a video m-line is answered ``inactive``), with
no STUN servers: every candidate of the server is in the answer; the speaker's may also trickle
in afterwards (``trickle``, WHIP's PATCH). Host candidates come from ``ice_addresses`` alone
(see ``use_ice_addresses``), so by default all media stays on 127.0.0.1.

Lifecycle of one connection: accepted -> consuming -> gone. It is gone when the peer
closes or fails, the track ends, it does not connect within ``connect_timeout_s``, the
sink raises, it is replaced by a newer ``accept()`` of the same name, or it is hung up
(``close``/``close_all``), or it is connected but sends no decodable audio for
``silence_timeout_s`` (or mostly undecodable packets over ``garbage_timeout_s``). Whatever
the reason, the sink's ``close()`` is called exactly once and the ``RTCPeerConnection`` is
released. Once gone, it cannot be reused.

What this relies on inside aiortc and aioice (the decoder queue it replaces, the ICE
addresses, the offer parser, pre-encoded return audio) lives in ``compat``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from amphi.core.config import SAMPLE_RATE
from amphi.core.errors import InvalidSdp, NotFound, Unprocessable
from amphi.media.ingest.compat import (
    InlineDecoderQueue,
    MediaLine,
    offer_media,
    parse_candidate,
    replace_decoder_queue,
    sender_packet,
    use_ice_addresses,
)
from amphi.media.ingest.trickle import Fragment

__all__ = ["FrameSink", "ReturnTrack", "WebRTCIngest", "announce", "use_ice_addresses"]

logger = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE // 50  # 960: one 20 ms frame
CONNECT_TIMEOUT_S = 20.0  # an accepted peer that has not connected by then is dropped
SILENCE_TIMEOUT_S = 15.0  # a connected peer that sends no decodable audio this long is dropped
GARBAGE_TIMEOUT_S = 5.0  # ... or mostly undecodable packets over this long
GARBAGE_SHARE = 0.2  # "mostly": more than this share of the packets
WATCH_PERIOD_S = 1.0
RETURN_BOUND = 10  # return-feed frames held for the sender (200 ms); the oldest go first


class FrameSink(Protocol):
    def push(self, samples: np.ndarray) -> None:
        """One 20 ms frame: float32 mono, shape (960,), 48 kHz, range [-1, 1]."""

    def close(self) -> None:
        """The peer is gone (closed, failed, replaced or hung up). Called once."""


class ReturnTrack(MediaStreamTrack):
    """A speaker's return feed: 20 ms frames pushed by the mixer's clock, encoded to Opus
    (mono, low-delay) here and handed to aiortc's sender as ready packets, so aiortc neither
    resamples nor hops to a thread per frame. Bounded: when the sender falls behind, the
    oldest frames are dropped (a return feed is for talking, late audio is worthless)."""

    kind = "audio"

    def __init__(self, bitrate: int = 48_000) -> None:
        super().__init__()
        self._frames: deque[np.ndarray] = deque(maxlen=RETURN_BOUND)
        self._ready = asyncio.Event()
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        self._codec.options = {"application": "lowdelay", "frame_duration": "20"}
        self._pts = 0
        self.pushed = 0
        self.sent = 0

    def push(self, samples: np.ndarray) -> None:
        """One 20 ms float32 mono frame in [-1, 1]."""
        self._frames.append(samples)
        self.pushed += 1
        self._ready.set()

    @property
    def dropped(self) -> int:
        return self.pushed - self.sent - len(self._frames)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            while not self._frames:
                self._ready.clear()
                await self._ready.wait()
                if self.readyState != "live":
                    raise MediaStreamError
            pcm = (self._frames.popleft() * 32767).astype(np.int16)
            self.sent += 1
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            self._pts += len(pcm)
            packets = self._codec.encode(frame)
            if packets:
                return sender_packet(packets[-1], frame.pts)

    def stop(self) -> None:
        super().stop()
        self._ready.set()


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


class OpusDecoder:
    """Opus packets -> float32 mono samples at 48 kHz in [-1, 1].

    libopus decodes straight to mono (a stereo stream is downmixed by libopus, as the mean
    of its channels), so the only numpy work per packet is one int16 -> float32 scale."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.layout = "mono"
        self._codec.sample_rate = SAMPLE_RATE
        self.errors = 0  # packets libopus refused

    def decode(self, packet: bytes) -> np.ndarray:
        try:
            parts = [_mono_float(f) for f in self._codec.decode(av.Packet(packet))]
        except (av.FFmpegError, ValueError) as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 500 == 0:
                logger.warning("Opus decoding failed (%d so far): %s", self.errors, exc)
            return _NO_SAMPLES
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else _NO_SAMPLES


_NO_SAMPLES = np.empty(0, dtype=np.float32)
_S16_SCALE = np.float32(1 / 32768)


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    if frame.format.name != "s16" or len(frame.layout.channels) != 1:  # libopus gives s16 mono as asked
        raise ValueError(f"unexpected decoder output {frame.format.name}/{frame.layout.name}")
    return np.frombuffer(frame.planes[0], np.int16, frame.samples) * _S16_SCALE


class _InlineDecoding(InlineDecoderQueue):
    """Decodes one receiver's Opus in the event loop, as each frame completes, instead of in
    aiortc's decoder thread (``compat.InlineDecoderQueue`` says how it takes that place).

    aiortc decodes each receiver's media in a thread of its own and hands every frame back to
    the event loop with ``run_coroutine_threadsafe``: two thread hops, a future chain and a
    queue per 20 ms, which cost more CPU than decoding the audio (~0.08 ms a packet). Here
    each complete Opus frame is decoded, cut into 20 ms frames and pushed to the sink, all
    inline. A sink that raises is fed nothing more, and ``on_sink_error`` (set by the owner)
    is called once.
    """

    def __init__(self, sink: FrameSink) -> None:
        super().__init__()
        self.sink = sink
        self.frames = 0  # 20 ms frames pushed
        self.on_sink_error: Callable[[BaseException], None] = lambda exc: None
        self._decoder = OpusDecoder()
        self._rechunk = Rechunker()
        self._failed = False
        self.packets = 0  # Opus packets received

    @classmethod
    def install(cls, receiver: RTCRtpReceiver, sink: FrameSink) -> _InlineDecoding:
        """A new instance in ``receiver``'s place for its decoder queue; call before the
        receiver starts (``addTransceiver`` -> here -> ``setRemoteDescription``)."""
        inline = cls(sink)
        replace_decoder_queue(receiver, inline)
        return inline

    @property
    def decode_errors(self) -> int:
        return self._decoder.errors

    def frame(self, mime_type: str, data: bytes) -> None:
        if self._failed or mime_type.lower() != "audio/opus":
            return
        self.packets += 1
        try:
            for chunk in self._rechunk.feed(self._decoder.decode(data)):
                self.sink.push(chunk)
                self.frames += 1
        except Exception as exc:
            self._failed = True
            self.on_sink_error(exc)


# --- connections ----------------------------------------------------------------------------


class _Connection:
    """One speaker's peer connection and the task that drains its audio track."""

    def __init__(self, name: str, pc: RTCPeerConnection, track: MediaStreamTrack, inline: _InlineDecoding,
                 feed: ReturnTrack | None = None) -> None:
        self.name = name
        self.pc = pc
        self.track = track
        self.feed = feed
        self.sink = inline.sink
        self.inline = inline
        inline.on_sink_error = self._on_sink_error
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.remote_ufrag: str | None = None  # the offer's ICE username fragment (trickle ICE)
        self._ending = False
        self._finished = False
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

    def _on_sink_error(self, exc: BaseException) -> None:
        logger.error("speaker %r: sink failed, hanging up", self.name, exc_info=exc)
        if self.task is not None:
            self.task.cancel()

    async def run(self, timeouts: _Timeouts, on_exit: _ExitCallback) -> None:
        try:
            try:
                async with asyncio.timeout(timeouts.connect_s):
                    await self.connected.wait()
            except TimeoutError:
                logger.warning("speaker %r: not connected after %.0f s, dropped", self.name, timeouts.connect_s)
                return
            # the audio goes to the sink inline (_InlineDecoding); this waits for the end
            ended = asyncio.ensure_future(self._drain())
            try:
                reason = await self._watch(ended, timeouts)
            finally:
                ended.cancel()
            if reason:
                logger.warning("speaker %r: %s, hung up", self.name, reason)
            else:
                logger.info("speaker %r: track ended", self.name)
        except asyncio.CancelledError:
            pass  # hung up, replaced, or the peer failed/closed: a normal end, not an error
        except Exception:
            logger.exception("speaker %r: consumer failed", self.name)
        finally:
            await self.finish(on_exit)

    async def finish(self, on_exit: _ExitCallback) -> None:
        """The end of the connection, once: the return feed stopped, the owner told, the sink
        and the peer connection closed. ``run`` ends with it; so does ``_stop``, since a task
        cancelled before its first step never runs its body (a WHIP DELETE right after the
        offer: the peer connection, and its ICE socket, would stay open for good)."""
        if self._finished:
            return
        self._finished = True
        self._ending = True
        if self.feed is not None:
            self.feed.stop()
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
        logger.info("speaker %r: gone after %d frames (%d undecodable packets)",
                    self.name, self.inline.frames, self.inline.decode_errors)


    async def _drain(self) -> None:
        try:
            while True:
                await self.track.recv()
        except MediaStreamError:
            pass

    async def _watch(self, ended: asyncio.Future[None], timeouts: _Timeouts) -> str | None:
        """Returns when the track ends (None) or the peer misbehaves (the reason): no decodable
        audio for ``silence_s``, or a share of undecodable packets above ``GARBAGE_SHARE``
        over the last ``garbage_s`` (SRTP authenticates every packet, so a real encoder's
        stream has none: network loss drops packets, it does not garble them)."""
        loop = asyncio.get_running_loop()
        inline = self.inline
        last_audio = loop.time()
        frames = inline.frames
        history: deque[tuple[float, int, int]] = deque()  # (time, packets, undecodable) per period
        while True:
            done, _ = await asyncio.wait([ended], timeout=WATCH_PERIOD_S)
            if done:
                return None
            now = loop.time()
            history.append((now, inline.packets, inline.decode_errors))
            while now - history[0][0] > timeouts.garbage_s:
                history.popleft()
            t0, packets0, errors0 = history[0]
            packets, errors = inline.packets - packets0, inline.decode_errors - errors0
            if now - t0 >= timeouts.garbage_s - WATCH_PERIOD_S and packets and errors > GARBAGE_SHARE * packets:
                return f"{errors} of its last {packets} packets were undecodable"
            if inline.frames != frames:
                frames, last_audio = inline.frames, now
            elif now - last_audio >= timeouts.silence_s:
                return f"no audio for {now - last_audio:.0f} s"


@dataclass(frozen=True)
class _Timeouts:
    connect_s: float = CONNECT_TIMEOUT_S
    silence_s: float = SILENCE_TIMEOUT_S
    garbage_s: float = GARBAGE_TIMEOUT_S


class _ExitCallback(Protocol):
    def __call__(self, conn: _Connection, /) -> None: ...


def announce(sdp: str, announced: dict[str, str]) -> str:
    """``sdp`` with each address in ``announced`` replaced by its announced one, in candidate
    lines (the connection address) and ``c=`` lines: behind 1:1 NAT the node binds its private
    address and tells peers the public one, which the NAT maps to it, port for port. Pure."""
    if not announced:
        return sdp
    lines = sdp.split("\r\n")
    for i, line in enumerate(lines):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 5 and fields[4] in announced:  # foundation component transport priority ADDRESS port
                fields[4] = announced[fields[4]]
                lines[i] = " ".join(fields)
        elif line.startswith("c=IN "):
            fields = line.split(" ")
            if len(fields) == 3 and fields[2] in announced:
                public = announced[fields[2]]
                lines[i] = f"c=IN {'IP6' if ':' in public else 'IP4'} {public}"
    return "\r\n".join(lines)


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
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        garbage_timeout_s: float = GARBAGE_TIMEOUT_S,
        announced: dict[str, str] | None = None,
    ) -> None:
        self.ice_addresses = tuple(ice_addresses)
        self.announced = dict(announced or {})  # 1:1 NAT: an ICE address -> the one the answer names instead
        self._timeouts = _Timeouts(connect_timeout_s, silence_timeout_s, garbage_timeout_s)
        self._conns: dict[str, _Connection] = {}
        use_ice_addresses(self.ice_addresses)

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def accept(self, offer_sdp: str, sink: FrameSink, *, name: str,
                     feed: Callable[[], ReturnTrack] | None = None) -> tuple[str, ReturnTrack | None]:
        """Answer a speaker's SDP offer; returns the answer SDP with all candidates, and the
        return track made by ``feed`` when the offer also receives (sendrecv), else None.

        A speaker's offer carries exactly one audio m-line (Opus, sending); a video m-line
        beside it (WHIP encoders such as OBS always send one) is answered ``inactive``, so no
        video flows. Raises ``InvalidSdp`` otherwise. A previous connection of the same ``name`` is
        closed once the new one has been answered."""
        media = _check_offer(offer_sdp)
        receives = media.direction in (None, "sendrecv")
        use_ice_addresses(self.ice_addresses)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        back = feed() if feed is not None and receives else None
        try:
            if back is not None:
                transceiver = pc.addTransceiver(back, direction="sendrecv")
            else:
                transceiver = pc.addTransceiver("audio", direction="recvonly")
            inline = _InlineDecoding.install(transceiver.receiver, sink)
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
            for other in pc.getTransceivers():  # video (OBS sends some): declined, nothing flows
                if other is not transceiver:
                    other.direction = "inactive"
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            if back is not None:
                back.stop()
            await pc.close()
            raise

        conn = _Connection(name, pc, track, inline, back)
        conn.remote_ufrag = media.ice_ufrag
        previous = self._conns.get(name)
        self._conns[name] = conn
        conn.task = asyncio.create_task(conn.run(self._timeouts, self._forget), name=f"webrtc-ingest:{name}")
        if previous is not None:
            logger.info("speaker %r: replaced by a new connection", name)
            await _stop(previous, self._forget)
        return announce(pc.localDescription.sdp, self.announced), back

    async def trickle(self, name: str, sink: FrameSink, fragment: Fragment) -> None:
        """Trickle ICE (RFC 8840, as WHIP's PATCH carries it): the speaker's further candidates
        (and end-of-candidates) added to its connection ``name`` while that is still the one
        feeding ``sink``. ``NotFound`` if it is not (gone or replaced); ``Unprocessable`` for
        credentials other than the offer's (an ICE restart: not supported); ``InvalidSdp`` for a
        candidate that does not parse."""
        conn = self._conns.get(name)
        if conn is None or conn.sink is not sink:
            raise NotFound("this WHIP session has ended")
        if fragment.ufrag is not None and fragment.ufrag != conn.remote_ufrag:
            raise Unprocessable("the fragment's ice-ufrag is not this session's: ICE restarts are not supported")
        mid = next((t.mid for t in conn.pc.getTransceivers() if t.mid is not None), None)
        for frag_mid, line in fragment.candidates:
            candidate = parse_candidate(line)
            candidate.sdpMid = frag_mid if frag_mid is not None else mid
            candidate.sdpMLineIndex = 0 if candidate.sdpMid == mid else None
            await conn.pc.addIceCandidate(candidate)
        if fragment.end:
            await conn.pc.addIceCandidate(None)

    async def close(self, name: str) -> None:
        """Hang up one speaker; returns once its task has exited. Unknown names are ignored."""
        conn = self._conns.pop(name, None)
        if conn is not None:
            await _stop(conn, self._forget)

    async def close_all(self) -> None:
        """Hang up every speaker; returns once all their tasks have exited."""
        conns = list(self._conns.values())
        self._conns.clear()
        await asyncio.gather(*(_stop(c, self._forget) for c in conns))

    def _forget(self, conn: _Connection) -> None:
        if self._conns.get(conn.name) is conn:
            del self._conns[conn.name]


async def _stop(conn: _Connection, on_exit: _ExitCallback) -> None:
    task = conn.task
    if task is None:
        return
    task.cancel()
    # wait() neither raises the task's outcome nor cancels the task if we are cancelled
    await asyncio.wait([task])
    await conn.finish(on_exit)  # if the task never started, its body (and so its finish) never ran


def _check_offer(offer_sdp: str) -> MediaLine:
    """Cheap checks before aiortc sees the offer: SDP at all, one sending audio m-line, which
    is returned (its direction says whether the offer also receives: wants a return feed)."""
    if not isinstance(offer_sdp, str) or not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidSdp("the body is not an SDP offer (it must start with v=0)")
    if "\nm=audio" not in offer_sdp:
        raise InvalidSdp("the SDP offer has no audio m-line")
    media_lines = offer_media(offer_sdp)
    kinds = [m.kind for m in media_lines]
    audio = [m for m in media_lines if m.kind == "audio"]
    if len(audio) != 1 or any(k not in ("audio", "video") for k in kinds):
        raise InvalidSdp(f"a speaker's offer must carry exactly one audio m-line (video is declined), not {kinds}")
    media = audio[0]
    if media.direction not in (None, "sendonly", "sendrecv"):
        raise InvalidSdp(f"the offer's audio is {media.direction}; a speaker must send")
    if not media.has_ice_credentials:
        raise InvalidSdp("the offer has no ICE credentials")
    if not media.has_fingerprint:
        raise InvalidSdp("the offer has no DTLS fingerprint")
    return media

