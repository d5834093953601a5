"""Everything Amphi changes or relies on inside aiortc and aioice beyond their documented
API, in one place. The rest of Amphi calls the functions here and touches no private name.

Checked against (pinned in pyproject.toml): aiortc 1.16.0, aioice 0.13.0, av (PyAV) 18.1.0.
``tests/media/test_compat.py`` checks each item below against the installed packages and
fails, naming the item and what to look at, when an upgrade moves one. Upgrading any of the
three: bump the pin, run that test, then re-read the upstream code named below.

1. ICE host addresses (``use_ice_addresses``) -- a monkeypatch.
   Replaces the module function ``aioice.ice.get_host_addresses(use_ipv4, use_ipv6)``, which
   ``aioice.ice.Connection.gather_candidates`` looks up as a module global. aioice lists
   every interface but skips 127.0.0.1; Amphi wants exactly the configured addresses
   (``Config.ice.addresses``, by default 127.0.0.1), so speakers, tests and benchmarks keep
   media on loopback. Process-wide: the server and the ``speak`` client both call it.

2. Inline Opus decoding (``InlineDecoderQueue``, ``replace_decoder_queue``) -- a private
   attribute replaced. ``aiortc.RTCRtpReceiver`` keeps a ``queue.Queue`` in the name-mangled
   attribute ``_RTCRtpReceiver__decoder_queue``: ``_handle_rtp_packet`` (in the event loop)
   puts ``(RTCRtpCodecParameters, JitterFrame)`` for every complete frame, the stop path puts
   ``None``, and the thread ``aiortc.rtcrtpreceiver.decoder_worker`` calls ``get()`` until
   it gets ``None``, then ends the receiver's track. aiortc decodes there and hops back to the
   loop per 20 ms frame, which cost more CPU than the decoding (docs/architecture.md), so
   Amphi puts an object with the same ``put``/``get`` in the queue's place: ``put`` hands the
   Opus bytes to the owner at once, in the loop; ``get`` parks aiortc's thread until the
   receiver stops, so the track still ends as it would.

3. SDP offers parsed before aiortc sees them (``offer_media``), and trickled candidates
   (``parse_candidate``) -- an undocumented module. ``aiortc.sdp.SessionDescription.parse``
   and the fields Amphi reads of each media line: ``kind``, ``direction``,
   ``ice.usernameFragment``, ``ice.password``, ``dtls.fingerprints``; ``aiortc.sdp.candidate_from_sdp``
   for a WHIP PATCH's ``candidate:`` values (``RTCPeerConnection.addIceCandidate`` takes its result).

4. Pre-encoded audio to a sender (``sender_packet``) -- relied on, not patched.
   ``RTCRtpSender`` sends an ``av.Packet`` that a track's ``recv()`` returns as it is
   (``OpusEncoder.pack``: the payload is ``bytes(packet)``, the RTP timestamp ``packet.pts``
   converted from ``packet.time_base``), without resampling or a thread hop; the return feed
   (``webrtc.ReturnTrack``) encodes its own Opus and relies on this.

Tests also reach one aiortc name: ``tests/integration/test_room.py`` replaces
``aiortc.codecs.opus.OpusEncoder.encode(frame, force_keyframe)`` to send undecodable audio.
"""

from __future__ import annotations

import fractions
import ipaddress
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import aioice.ice
import aiortc
import av
from aiortc import RTCIceCandidate, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc import sdp as aiortc_sdp
from aiortc.jitterbuffer import JitterFrame

from amphi.core.config import SAMPLE_RATE
from amphi.core.errors import InvalidSdp

__all__ = [
    "PINNED",
    "InlineDecoderQueue",
    "MediaLine",
    "offer_media",
    "parse_candidate",
    "replace_decoder_queue",
    "sender_packet",
    "use_ice_addresses",
]

logger = logging.getLogger(__name__)

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "av": "18.1.0"}  # what this module was checked against

# --- 1. ICE host addresses ----------------------------------------------------------------

AIOICE_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses  # aioice's own, before any replacement
_ice_addresses: tuple[str, ...] | None = None


def use_ice_addresses(addresses: Sequence[str]) -> None:
    """Make aioice offer host candidates on exactly ``addresses`` and nothing else.

    Replaces ``aioice.ice.get_host_addresses`` (override 1 above). It is process-wide (the
    last call wins) and idempotent; both the server (``WebRTCIngest``) and the client
    (``speak``) call it before gathering. Raises ``ValueError`` for a string that is not an
    IP address.
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


# --- 2. Inline decoding -------------------------------------------------------------------

DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"  # aiortc 1.16's name-mangled attribute


class InlineDecoderQueue:
    """Takes the place of the ``queue.Queue`` between one ``RTCRtpReceiver`` and its decoder
    thread (override 2 above). Subclasses implement ``frame()``, which is called in the event
    loop with each complete encoded frame as it arrives.

    aiortc's thread still starts (``receive()`` starts it with this object as its queue): its
    ``get()`` blocks until the receiver stops, then returns None as the real queue would, so
    the thread ends the track and ``track.recv()`` raises ``MediaStreamError``.
    """

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def frame(self, mime_type: str, data: bytes) -> None:
        """One complete encoded frame (``mime_type`` as aiortc spells it, e.g. ``audio/opus``)."""
        raise NotImplementedError

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        """Called by the receiver, in the event loop."""
        if item is None:  # the receiver stops
            self._stopped.set()
            return
        codec, encoded = item
        self.frame(codec.mimeType, encoded.data)

    def get(self) -> None:
        """aiortc's decoder thread: parked here until the receiver stops."""
        self._stopped.wait()


def replace_decoder_queue(receiver: RTCRtpReceiver, inline: InlineDecoderQueue) -> None:
    """Puts ``inline`` in ``receiver``'s place for its decoder queue; call before the receiver
    starts (``addTransceiver`` -> here -> ``setRemoteDescription``). Raises ``RuntimeError``
    when the installed aiortc has no such queue (the attribute moved: see test_compat.py)."""
    if not isinstance(getattr(receiver, DECODER_QUEUE_ATTR, None), queue.Queue):
        raise RuntimeError(f"aiortc {aiortc.__version__}: RTCRtpReceiver has no decoder queue to replace "
                           f"({DECODER_QUEUE_ATTR}); run tests/media/test_compat.py")
    setattr(receiver, DECODER_QUEUE_ATTR, inline)


# --- 3. Offer parsing ---------------------------------------------------------------------


@dataclass(frozen=True)
class MediaLine:
    """What Amphi checks of one m-line of an offer."""

    kind: str  # "audio", "video", "application"
    direction: str | None  # None when the offer does not say (sendrecv)
    has_ice_credentials: bool  # both ice-ufrag and ice-pwd
    has_fingerprint: bool  # at least one DTLS fingerprint
    ice_ufrag: str | None = None  # its ICE username fragment (trickled candidates must name the same)


def offer_media(sdp: str) -> list[MediaLine]:
    """The m-lines of ``sdp``, parsed by aiortc's own parser (so what passes here, aiortc
    accepts). Raises ``InvalidSdp`` when the parser fails on the text."""
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # untrusted text: any parse failure is the sender's
        raise InvalidSdp(f"unparsable SDP offer: {exc!r}") from None
    return [
        MediaLine(
            kind=m.kind,
            direction=m.direction,
            has_ice_credentials=bool(m.ice.usernameFragment and m.ice.password),
            has_fingerprint=m.dtls is not None and bool(m.dtls.fingerprints),
            ice_ufrag=m.ice.usernameFragment or None,
        )
        for m in description.media
    ]


def parse_candidate(line: str) -> RTCIceCandidate:
    """A trickled ``candidate:`` attribute value as aiortc's candidate; ``InvalidSdp`` if it
    is not one (foundation component transport priority address port typ type ...)."""
    value = line[len("candidate:"):] if line.startswith("candidate:") else line
    bits = value.split()
    if len(bits) < 8 or bits[6] != "typ" or not (bits[1].isdigit() and bits[3].isdigit() and bits[5].isdigit()):
        raise InvalidSdp(f"not an ICE candidate: {line[:80]!r}")
    try:
        return aiortc_sdp.candidate_from_sdp(value)
    except (ValueError, IndexError) as exc:
        raise InvalidSdp(f"not an ICE candidate: {line[:80]!r} ({exc})") from None


# --- 4. Pre-encoded audio to a sender -----------------------------------------------------

OPUS_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def sender_packet(packet: av.Packet, pts: int) -> av.Packet:
    """``packet`` (Opus, encoded by the caller) stamped as aiortc's sender wants it from a
    track's ``recv()``: ``pts`` in samples at 48 kHz (override 4 above)."""
    packet.pts = pts
    packet.time_base = OPUS_TIME_BASE
    return packet
