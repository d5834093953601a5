"""WebRTC ingest end to end: real aiortc peers on 127.0.0.1, no mocks.

Most tests hand the client's offer straight to ``WebRTCIngest.accept()``; one goes through
``speak()`` and a minimal HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from amphi.core.errors import InvalidSdp
from amphi.media.ingest.client import SpeakError, speak
from amphi.media.ingest.sources import FileTrack, GeneratedTrack, ToneTrack
from amphi.media.ingest.webrtc import OpusDecoder, Rechunker, WebRTCIngest

SR = 48_000
FRAME = 960
WAIT_S = 5.0  # generous bound on any single wait; real connections take ~0.1 s


class Sink:
    """Collects frames; ``wait_frames(n)`` and ``closed`` let tests wait without sleeping."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.closed = asyncio.Event()
        self.close_calls = 0
        self._want = 0
        self._enough = asyncio.Event()

    def push(self, samples: np.ndarray) -> None:
        self.frames.append(samples)
        if len(self.frames) >= self._want:
            self._enough.set()

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()

    async def wait_frames(self, n: int, timeout: float = WAIT_S) -> None:
        self._want = n
        if len(self.frames) < n:
            self._enough.clear()
            await asyncio.wait_for(self._enough.wait(), timeout)

    async def wait_closed(self, timeout: float = WAIT_S) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)


def dominant_hz(frames: list[np.ndarray]) -> float:
    x = np.concatenate(frames).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


def rms(frames: list[np.ndarray]) -> float:
    return float(np.sqrt(np.mean(np.concatenate(frames).astype(np.float64) ** 2)))


def assert_frames_ok(frames: list[np.ndarray]) -> None:
    for f in frames:
        assert f.dtype == np.float32 and f.shape == (FRAME,)
        assert float(np.max(np.abs(f))) <= 1.0


def candidate_addresses(sdp: str) -> list[str]:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


@pytest.fixture
async def ingest() -> AsyncIterator[WebRTCIngest]:
    ingest = WebRTCIngest(("127.0.0.1",))
    yield ingest
    await ingest.close_all()


class Speaker:
    """The client half without HTTP: offer -> ingest.accept() -> answer."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(track, direction="sendonly")
        self.offer = ""
        self.answer = ""

    async def connect(self, ingest: WebRTCIngest, sink: Sink, name: str = "alice") -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer = self.pc.localDescription.sdp
        self.answer, _ = await ingest.accept(self.offer, sink, name=name)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()


@pytest.fixture
async def speakers() -> AsyncIterator[Callable[[MediaStreamTrack], Speaker]]:
    made: list[Speaker] = []

    def make(track: MediaStreamTrack) -> Speaker:
        made.append(Speaker(track))
        return made[-1]

    yield make
    for s in made:
        await s.close()


# --- end to end -----------------------------------------------------------------------------


async def test_tone_arrives_as_440_hz(ingest: WebRTCIngest, speakers) -> None:
    sink = Sink()
    speaker = speakers(ToneTrack(440, amplitude=0.5))
    await speaker.connect(ingest, sink)
    assert ingest.connections == 1

    await sink.wait_frames(60)  # 1.2 s; the first frames may carry codec start-up
    frames = sink.frames[10:60]
    assert_frames_ok(sink.frames)
    assert abs(dominant_hz(frames) - 440) <= 5
    # a 0.5 sine has an RMS of 0.354; Opus keeps the level within a few percent
    assert 0.3 < rms(frames) < 0.4


async def test_wav_file_arrives_as_660_hz(ingest: WebRTCIngest, speakers, tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    rate = 44_100  # not 48 kHz, so FileTrack has to resample
    t = np.arange(int(rate * 2.0)) / rate
    pcm = (0.4 * np.sin(2 * np.pi * 660 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())

    sink = Sink()
    await speakers(FileTrack(str(path))).connect(ingest, sink)
    await sink.wait_frames(60)
    frames = sink.frames[10:60]
    assert_frames_ok(frames)
    assert abs(dominant_hz(frames) - 660) <= 5
    assert 0.2 < rms(frames) < 0.35  # 0.4 / sqrt(2) = 0.283


async def test_finite_track_ends_and_closes_sink(ingest: WebRTCIngest, speakers) -> None:
    # 0.3 s of audio, then the track ends; the speaker hangs up when its track ends.
    track = GeneratedTrack(lambda start, n: np.zeros(n, np.float32) if start < 0.3 * SR else None)
    ended = asyncio.Event()
    track.on("ended", ended.set)
    sink = Sink()
    speaker = speakers(track)
    await speaker.connect(ingest, sink)
    await asyncio.wait_for(ended.wait(), WAIT_S)
    await speaker.close()
    await sink.wait_closed()
    assert sink.close_calls == 1
    assert 5 <= len(sink.frames) <= 16


async def test_client_close_calls_sink_close_once(ingest: WebRTCIngest, speakers) -> None:
    sink = Sink()
    speaker = speakers(ToneTrack(300))
    await speaker.connect(ingest, sink)
    await sink.wait_frames(5)

    await speaker.close()
    await sink.wait_closed()
    assert ingest.connections == 0
    await ingest.close_all()
    assert sink.close_calls == 1


async def test_candidates_are_loopback_only(ingest: WebRTCIngest, speakers) -> None:
    sink = Sink()
    speaker = speakers(ToneTrack(440))
    await speaker.connect(ingest, sink)
    for sdp in (speaker.offer, speaker.answer):
        addresses = candidate_addresses(sdp)
        assert addresses and set(addresses) == {"127.0.0.1"}
    assert "a=recvonly" in speaker.answer
    assert "opus/48000" in speaker.answer


async def test_same_name_replaces_previous_connection(ingest: WebRTCIngest, speakers) -> None:
    first, second = Sink(), Sink()
    await speakers(ToneTrack(440)).connect(ingest, first, name="alice")
    await first.wait_frames(3)
    await speakers(ToneTrack(660)).connect(ingest, second, name="alice")

    await first.wait_closed()
    assert ingest.connections == 1
    await second.wait_frames(3)
    assert second.close_calls == 0


async def test_close_and_close_all_hang_up(ingest: WebRTCIngest, speakers) -> None:
    sinks = {name: Sink() for name in ("a", "b", "c")}
    for name, sink in sinks.items():
        await speakers(ToneTrack(440)).connect(ingest, sink, name=name)
    await asyncio.gather(*(s.wait_frames(2) for s in sinks.values()))

    await ingest.close("a")
    assert sinks["a"].close_calls == 1 and ingest.connections == 2
    await ingest.close("nobody")
    await ingest.close_all()
    assert ingest.connections == 0
    assert [s.close_calls for s in sinks.values()] == [1, 1, 1]


async def test_failing_sink_harms_only_its_connection(ingest: WebRTCIngest, speakers) -> None:
    class BadSink(Sink):
        def push(self, samples: np.ndarray) -> None:
            raise RuntimeError("sink bug")

    bad, good = BadSink(), Sink()
    await speakers(ToneTrack(440)).connect(ingest, bad, name="bad")
    await speakers(ToneTrack(440)).connect(ingest, good, name="good")
    await bad.wait_closed()
    await good.wait_frames(20)
    assert ingest.connections == 1 and good.close_calls == 0


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "hello",
        '{"sdp": "v=0"}',
        "v=0\r\n",  # no audio m-line
        "v=0\r\nm=audio\r\n",  # audio, but not parsable
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",  # no ICE, no DTLS
    ],
)
async def test_garbage_sdp_is_invalid(ingest: WebRTCIngest, body: str) -> None:
    with pytest.raises(InvalidSdp):
        await ingest.accept(body, Sink(), name="x")
    assert ingest.connections == 0


async def test_an_offer_that_also_sends_video_is_heard_and_its_video_declined(ingest: WebRTCIngest, speakers) -> None:
    """WHIP encoders (OBS Studio) always offer video beside the audio: the audio is taken, the
    video m-line is answered inactive, so no video is sent."""
    from aiortc.mediastreams import VideoStreamTrack

    sink = Sink()
    speaker = speakers(ToneTrack(440, amplitude=0.5))
    video = speaker.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await speaker.connect(ingest, sink)
    sections = speaker.answer.split("\r\nm=")
    assert len(sections) == 3 and sections[2].startswith("video"), speaker.answer
    assert "a=inactive" in sections[2] and "a=inactive" not in sections[1]
    await sink.wait_frames(60)
    assert abs(dominant_hz(sink.frames[10:60]) - 440) <= 5
    assert video.currentDirection == "inactive"


async def test_offer_without_audio_is_invalid(ingest: WebRTCIngest) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(InvalidSdp, match="audio"):
            await ingest.accept(pc.localDescription.sdp, Sink(), name="x")
    finally:
        await pc.close()


async def test_offer_that_only_receives_is_invalid(ingest: WebRTCIngest) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(InvalidSdp, match="send"):
            await ingest.accept(pc.localDescription.sdp, Sink(), name="x")
    finally:
        await pc.close()


# --- through HTTP with speak() -------------------------------------------------------------

Handler = Callable[[str, dict[str, str], str], Awaitable[tuple[int, str, str]]]


async def serve_http(handler: Handler) -> tuple[asyncio.Server, str]:
    """A one-request-per-connection HTTP/1.1 server on 127.0.0.1; enough for signalling."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _method, path, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if h)}
            body = (await reader.readexactly(int(headers.get("content-length", "0")))).decode()
            status, content_type, text = await handler(path, headers, body)
            data = text.encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_speak_tone_through_http(ingest: WebRTCIngest) -> None:
    sink = Sink()
    seen: list[tuple[str, dict[str, str]]] = []

    async def handler(path: str, headers: dict[str, str], body: str) -> tuple[int, str, str]:
        seen.append((path, headers))
        if path.endswith("/ice"):  # the ICE servers, asked before the offer: none here
            return 200, "application/json", json.dumps({"ice_servers": []})
        try:
            answer, _ = await ingest.accept(body, sink, name="alice")
        except InvalidSdp as exc:
            return exc.status, "application/json", json.dumps(exc.to_json())
        return 201, "application/sdp", answer

    server, url = await serve_http(handler)
    connected = asyncio.Event()
    sent: list[int] = []
    track = ToneTrack(440, on_frame=lambda sample, _wall: sent.append(sample))
    try:
        await speak(url, "lobby", track, key="k3y", duration=1.5, on_connected=connected.set)
    finally:
        server.close()
        await server.wait_closed()

    assert connected.is_set()
    assert [path for path, _ in seen] == ["/api/spaces/lobby/ice", "/api/spaces/lobby/speak"]
    assert seen[0][1]["authorization"] == "Bearer k3y"
    assert seen[1][1]["content-type"] == "application/sdp"
    assert seen[1][1]["authorization"] == "Bearer k3y"
    assert sent[:3] == [0, FRAME, 2 * FRAME]

    await sink.wait_closed()  # speak() hung up after its duration
    assert_frames_ok(sink.frames)
    assert 60 <= len(sink.frames) <= 90  # ~1.5 s of 20 ms frames
    frames = sink.frames[10:60]
    assert abs(dominant_hz(frames) - 440) <= 5
    assert 0.3 < rms(frames) < 0.4


async def test_speak_raises_server_error() -> None:
    async def handler(path: str, headers: dict[str, str], body: str) -> tuple[int, str, str]:
        return 403, "application/json", json.dumps({"error": "forbidden", "message": "wrong speaker key"})

    server, url = await serve_http(handler)
    try:
        with pytest.raises(SpeakError) as info:
            await speak(url, "lobby", ToneTrack(440), token="t", duration=1)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.status == 403 and info.value.message == "wrong speaker key"


async def test_speak_unreachable_server() -> None:
    server, url = await serve_http(lambda *a: None)  # type: ignore[arg-type,return-value]
    server.close()
    await server.wait_closed()
    with pytest.raises(SpeakError) as info:
        await speak(url, "lobby", ToneTrack(440), duration=1)
    assert info.value.status == 0


# --- pure logic -----------------------------------------------------------------------------


def test_rechunker_cuts_exact_frames() -> None:
    rechunk = Rechunker(960)
    x = np.arange(960 * 3 + 100, dtype=np.float32)
    out = rechunk.feed(x[:500]) + rechunk.feed(x[500:2000]) + rechunk.feed(x[2000:])
    assert [len(f) for f in out] == [960, 960, 960]
    assert np.array_equal(np.concatenate(out), x[: 960 * 3])
    assert rechunk.pending == 100
    assert out[0] is not out[1]  # fresh arrays: a sink may keep them


def opus_packets(left: np.ndarray, right: np.ndarray) -> list[bytes]:
    """Stereo int16 samples -> Opus packets of 20 ms, by PyAV's libopus (as aiortc sends)."""
    import fractions

    import av

    enc = av.CodecContext.create("libopus", "w")
    enc.bit_rate, enc.format, enc.layout, enc.sample_rate = 96_000, "s16", "stereo", SR
    enc.time_base = fractions.Fraction(1, SR)
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)
    packets: list[bytes] = []
    for i in range(len(left) // FRAME):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(interleaved[:, i * 2 * FRAME : (i + 1) * 2 * FRAME]), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = SR, i * FRAME
        packets += [bytes(p) for p in enc.encode(frame)]
    return packets


def test_opus_decoder_downmixes_stereo_to_float_mono() -> None:
    t = np.arange(SR) / SR
    left = (np.sin(2 * np.pi * 440 * t) * 16384).astype(np.int16)  # 0.5 full scale
    right = (np.sin(2 * np.pi * 440 * t) * 8192).astype(np.int16)  # 0.25, in phase
    decoder = OpusDecoder()
    out = [decoder.decode(p) for p in opus_packets(left, right)]
    assert all(o.dtype == np.float32 and o.shape == (FRAME,) for o in out)
    steady = np.concatenate(out)[SR // 4 :]  # past the codec's start-up
    assert abs(dominant_hz([steady]) - 440) < 2
    assert np.max(np.abs(steady)) == pytest.approx((0.5 + 0.25) / 2, rel=0.05)  # the mean of the channels
    assert decoder.errors == 0


def test_opus_decoder_counts_garbage_and_goes_on() -> None:
    decoder = OpusDecoder()
    good = opus_packets(np.zeros(FRAME * 3, np.int16), np.zeros(FRAME * 3, np.int16))
    assert len(decoder.decode(b"\xff" * 3)) == 0  # not an Opus packet (reserved code, truncated)
    assert decoder.errors == 1
    assert all(len(decoder.decode(p)) == FRAME for p in good)


async def test_generated_track_paces_and_stamps_frames() -> None:
    hooks: list[int] = []
    track = GeneratedTrack(lambda start, n: np.full(n, 0.25, np.float32), on_frame=lambda s, _w: hooks.append(s))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    frames = [await track.recv() for _ in range(11)]
    elapsed = loop.time() - t0
    assert 0.19 <= elapsed < 0.35  # frame 10 is due 200 ms after frame 0
    assert [f.pts for f in frames] == [i * FRAME for i in range(11)] == hooks
    assert all(f.samples == FRAME and f.sample_rate == SR and f.time_base == frames[0].time_base for f in frames)
    assert frames[0].time_base.denominator == SR
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_file_track_loops_and_ends(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.full(1500, 8192, "<i2").tobytes())  # 1.56 frames

    once = FileTrack(str(path))
    got = [await once._next(i * FRAME, FRAME) for i in range(3)]
    assert got[0] is not None and got[1] is not None and got[2] is None
    assert np.allclose(got[0], 0.25, atol=1e-3) and np.allclose(got[1][540:], 0)  # padded end

    looped = FileTrack(str(path), loop=True)
    chunks = [await looped._next(i * FRAME, FRAME) for i in range(5)]
    assert all(c is not None and np.allclose(c, 0.25, atol=1e-3) for c in chunks)
    looped.stop()


async def test_peer_that_never_connects_is_dropped() -> None:
    ingest = WebRTCIngest(("127.0.0.1",), connect_timeout_s=0.5)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(ToneTrack(440), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sink = Sink()
    await ingest.accept(pc.localDescription.sdp, sink, name="ghost")
    await pc.close()  # the answer is never applied
    await sink.wait_closed()
    assert ingest.connections == 0 and sink.close_calls == 1


async def answering(ingest: WebRTCIngest, sink: Sink) -> tuple[asyncio.Server, str]:
    async def handler(path: str, headers: dict[str, str], body: str) -> tuple[int, str, str]:
        return 201, "application/sdp", (await ingest.accept(body, sink, name="alice"))[0]

    return await serve_http(handler)


async def test_speak_returns_when_track_runs_out(ingest: WebRTCIngest) -> None:
    sink = Sink()
    server, url = await answering(ingest, sink)
    track = GeneratedTrack(lambda start, n: np.zeros(n, np.float32) if start < 0.2 * SR else None)
    try:
        await asyncio.wait_for(speak(url, "lobby", track), WAIT_S)
    finally:
        server.close()
        await server.wait_closed()
    await sink.wait_closed()


@contextlib.asynccontextmanager
async def on_air(ingest: WebRTCIngest) -> AsyncIterator[tuple[Sink, asyncio.Task[None]]]:
    """``speak()`` through HTTP to ``ingest``, connected and heard; cleaned up on exit."""
    sink = Sink()
    server, url = await answering(ingest, sink)
    connected = asyncio.Event()
    speaking = asyncio.create_task(speak(url, "lobby", ToneTrack(440), on_connected=connected.set))
    try:
        await asyncio.wait_for(connected.wait(), WAIT_S)
        await sink.wait_frames(3)
        yield sink, speaking
    finally:
        speaking.cancel()
        server.close()
        await server.wait_closed()


async def test_speak_raises_when_server_hangs_up(ingest: WebRTCIngest) -> None:
    async with on_air(ingest) as (_sink, speaking):
        await ingest.close("alice")
        with pytest.raises(SpeakError, match="hung up"):
            await asyncio.wait_for(speaking, WAIT_S)


async def test_cancelling_speak_hangs_up(ingest: WebRTCIngest) -> None:
    async with on_air(ingest) as (sink, speaking):
        speaking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await speaking
        await sink.wait_closed()