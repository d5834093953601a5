"""The aiortc/aioice internals Amphi relies on (``amphi.media.ingest.compat``) are where it
expects them in the installed packages. Each failure names the override that broke and what
to read upstream; compat.py's docstring says why each one exists.

Checks the shapes (names, signatures, who calls what), then each override's behaviour with
real aiortc/aioice objects on loopback."""

from __future__ import annotations

import asyncio
import dis
import inspect
import queue
import tomllib
from importlib.metadata import version
from pathlib import Path

import aioice
import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtcrtpreceiver, rtcrtpsender
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from amphi.core.config import SAMPLE_RATE
from amphi.core.errors import InvalidSdp
from amphi.media.ingest import compat
from amphi.media.ingest.sources import ToneTrack

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
WAIT_S = 5.0


def pins() -> dict[str, str]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        name, _, pinned = dep.partition("==")
        out[name.strip()] = pinned.strip()
    return out


def globals_loaded(func: object) -> set[str]:
    return {i.argval for i in dis.get_instructions(func) if i.opname == "LOAD_GLOBAL"}


def attributes_used(func: object) -> set[str]:
    return {i.argval for i in dis.get_instructions(func) if i.opname in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR")}


def broke(override: str, what: str) -> str:
    return (f"compat override {override!r} no longer matches the installed aiortc/aioice: {what}. "
            "Read src/amphi/media/ingest/compat.py's docstring for what it relies on, then the upstream code named there.")


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(compat.PINNED))
def test_installed_versions_are_the_pinned_ones(package: str) -> None:
    pinned = pins().get(package)
    assert pinned == compat.PINNED[package], (
        f"pyproject.toml pins {package}=={pinned} but compat.py was checked against {compat.PINNED[package]}: "
        "after an upgrade, re-check every override in compat.py's docstring, then update compat.PINNED")
    assert version(package) == pinned, (
        f"{package} {version(package)} is installed but pyproject.toml pins {pinned}: "
        "reinstall (make setup), or re-check compat.py's overrides against the new version")


# --- 1. ICE host addresses --------------------------------------------------------------------


def test_ice_host_addresses_shape() -> None:
    original = compat.AIOICE_GET_HOST_ADDRESSES
    assert original.__module__ == "aioice.ice", broke(
        "ICE host addresses", f"aioice.ice.get_host_addresses now comes from {original.__module__}")
    assert list(inspect.signature(original).parameters) == ["use_ipv4", "use_ipv6"], broke(
        "ICE host addresses", f"get_host_addresses{inspect.signature(original)} has new parameters")
    assert "get_host_addresses" in globals_loaded(aioice.ice.Connection.gather_candidates), broke(
        "ICE host addresses", "Connection.gather_candidates no longer calls the module global "
        "aioice.ice.get_host_addresses, so replacing it changes nothing")


async def test_ice_host_addresses_are_exactly_the_configured_ones() -> None:
    compat.use_ice_addresses(["127.0.0.1"])
    conn = aioice.Connection(ice_controlling=True)
    try:
        await conn.gather_candidates()
        hosts = sorted({c.host for c in conn.local_candidates if c.type == "host"})
    finally:
        await conn.close()
    assert hosts == ["127.0.0.1"], broke("ICE host addresses", f"aioice gathered host candidates on {hosts}")


def test_ice_addresses_refuse_a_name() -> None:
    with pytest.raises(ValueError):
        compat.use_ice_addresses(["localhost"])


# --- 2. Inline decoding -----------------------------------------------------------------------


def test_decoder_queue_shape() -> None:
    worker = rtcrtpreceiver.decoder_worker
    assert list(inspect.signature(worker).parameters)[:2] == ["loop", "input_q"], broke(
        "inline decoding", f"aiortc.rtcrtpreceiver.decoder_worker{inspect.signature(worker)} no longer takes "
        "the decoder queue as its second argument")
    assert "get" in attributes_used(worker), broke(
        "inline decoding", "decoder_worker no longer reads its queue with get()")
    handle = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet
    assert compat.DECODER_QUEUE_ATTR in attributes_used(handle), broke(
        "inline decoding", f"RTCRtpReceiver._handle_rtp_packet no longer uses {compat.DECODER_QUEUE_ATTR}")
    assert "put" in attributes_used(handle), broke(
        "inline decoding", "RTCRtpReceiver._handle_rtp_packet no longer put()s frames on the decoder queue")
    assert vars(JitterFrame(b"x", 0)).get("data") == b"x", broke(
        "inline decoding", "aiortc.jitterbuffer.JitterFrame has no .data")


class Recorder(compat.InlineDecoderQueue):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[str, bytes]] = []
        self.got = asyncio.Event()

    def frame(self, mime_type: str, data: bytes) -> None:
        self.frames.append((mime_type, data))
        if len(self.frames) >= 5:
            self.got.set()


async def test_inline_decoder_queue_gets_opus_frames_and_ends_the_track() -> None:
    """A real connection on loopback: the replaced queue receives Opus frames in the loop, and
    when the receiver stops, aiortc's decoder thread leaves get() and ends the track."""
    compat.use_ice_addresses(["127.0.0.1"])
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tone = ToneTrack(440)
    try:
        client.addTransceiver(tone, direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        transceiver = server.addTransceiver("audio", direction="recvonly")
        assert isinstance(getattr(transceiver.receiver, compat.DECODER_QUEUE_ATTR, None), queue.Queue), broke(
            "inline decoding", f"a new RTCRtpReceiver has no queue.Queue at {compat.DECODER_QUEUE_ATTR}")
        recorder = Recorder()
        compat.replace_decoder_queue(transceiver.receiver, recorder)
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
        try:
            await asyncio.wait_for(recorder.got.wait(), WAIT_S)
        except TimeoutError:
            pytest.fail(broke("inline decoding", "the replaced decoder queue received no frame; "
                              "check what RTCRtpReceiver._handle_rtp_packet puts on it"))
        mime, data = recorder.frames[0]
        assert mime.lower() == "audio/opus" and isinstance(data, bytes) and data, broke(
            "inline decoding", f"put() was given a frame of {mime!r}, {type(data).__name__}")
        track = transceiver.receiver.track
        await transceiver.receiver.stop()
        with pytest.raises(MediaStreamError):
            while True:  # frames already queued to the track (none: it was bypassed), then the end
                await asyncio.wait_for(track.recv(), WAIT_S)
    finally:
        tone.stop()
        await client.close()
        await server.close()


def test_replacing_a_missing_queue_fails_loudly() -> None:
    class NotAReceiver:
        pass

    with pytest.raises(RuntimeError, match="run tests/media/test_compat.py"):
        compat.replace_decoder_queue(NotAReceiver(), Recorder())  # type: ignore[arg-type]


# --- 3. Offer parsing --------------------------------------------------------------------------


async def test_offer_media_reads_a_real_aiortc_offer() -> None:
    compat.use_ice_addresses(["127.0.0.1"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tone = ToneTrack(440)
    try:
        pc.addTransceiver(tone, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        offer: RTCSessionDescription = pc.localDescription
    finally:
        tone.stop()
        await pc.close()
    lines = compat.offer_media(offer.sdp)
    ufrag = next(line.split(":", 1)[1] for line in offer.sdp.split("\r\n") if line.startswith("a=ice-ufrag:"))
    assert lines == [compat.MediaLine("audio", "sendrecv", True, True, ufrag)], broke(
        "offer parsing", f"aiortc.sdp.SessionDescription.parse read a real offer as {lines}")
    without = "\r\n".join(line for line in offer.sdp.split("\r\n")
                          if not line.startswith(("a=fingerprint", "a=ice-pwd")))
    assert compat.offer_media(without) == [compat.MediaLine("audio", "sendrecv", False, False, ufrag)]


def test_offer_media_refuses_garbage() -> None:
    with pytest.raises(InvalidSdp):
        compat.offer_media("v=0\r\nm=audio x y z\r\n")


def test_parse_candidate_reads_a_trickled_candidate() -> None:
    c = compat.parse_candidate("candidate:1 1 UDP 2130706431 198.51.100.1 41289 typ host")
    assert (c.foundation, c.component, c.protocol.lower(), c.priority, c.ip, c.port, c.type) == \
        ("1", 1, "udp", 2130706431, "198.51.100.1", 41289, "host"), broke(
            "trickled candidates", "aiortc.sdp.candidate_from_sdp reads candidate lines differently")
    with pytest.raises(InvalidSdp):
        compat.parse_candidate("candidate:nonsense")


# --- 4. Pre-encoded audio to a sender -------------------------------------------------------------


def test_sender_packs_pre_encoded_packets() -> None:
    next_frame = rtcrtpsender.RTCRtpSender._next_encoded_frame
    assert "pack" in attributes_used(next_frame), broke(
        "pre-encoded audio", "RTCRtpSender._next_encoded_frame no longer hands packets to encoder.pack()")
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = SAMPLE_RATE, "mono", "s16"
    packets: list[av.Packet] = []
    for i in range(3):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, i * 960
        packets += codec.encode(frame)
    packet = compat.sender_packet(packets[-1], 2 * 960)
    payloads, timestamp = OpusEncoder().pack(packet)
    assert payloads == [bytes(packet)] and timestamp == 2 * 960, broke(
        "pre-encoded audio", f"OpusEncoder.pack gave {len(payloads)} payloads at timestamp {timestamp}")


def test_test_suite_reach_into_opus_encoder() -> None:
    """tests/integration/test_room.py replaces OpusEncoder.encode to send garbage."""
    assert list(inspect.signature(OpusEncoder.encode).parameters) == ["self", "frame", "force_keyframe"], broke(
        "OpusEncoder.encode (tests only)", f"its signature is now {inspect.signature(OpusEncoder.encode)}")
