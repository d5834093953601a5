"""The program guards its own sound (docs/sound.md), end to end: a real node, speakers over
WebRTC (`amphi speak` processes and an aiortc client in this process), the live program
read by ffmpeg and judged by ffmpeg's EBU R128 meter. Real speech from espeak-ng."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from amphi.core.config import SoundConfig
from amphi.media.ingest.client import speak
from amphi.media.ingest.sources import GeneratedTrack
from tests.audio import SR, ebur128, ffmpeg_decode, rms, speech
from tests.integration.amphi_proc import AmphiServer, Speaker, wait_until
from tests.obs.test_against_server import KEY, scrape, value

pytestmark = pytest.mark.serial  # detection and dead-air times are judged: alone (make test)

TARGET = SoundConfig.target_lufs
LIVE_LAG_S = 7.5  # ffmpeg starts at the live playlist's last whole segment (tests/integration/test_room.py)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    server = AmphiServer(tmp_path_factory.mktemp("sound-node") / "data", None, "--operator-key", KEY)
    server.expect_feedback = True  # one test here makes a loop on purpose
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("voices")
    out = {}
    for name, text, voice, dbfs, peak in (("quiet", 0, "en", -40.0, False), ("hot", 0, "en", -0.1, True),
                                          ("other", 1, "en+f3", -20.0, False)):
        speech(d / f"{name}.wav", text=text, voice=voice, dbfs=dbfs, peak=peak)
        out[name] = d / f"{name}.wav"
    noise = (np.random.default_rng(5).standard_normal(5 * SR) * 10 ** (-70 / 20)).astype(np.float32)
    from tests.audio import write_wav

    write_wav(d / "noise.wav", noise)
    out["noise"] = d / "noise.wav"
    return out


def live_audio(server: AmphiServer, space: str, seconds: float) -> np.ndarray:
    """``seconds`` of what a listener hears, all of it produced after this call."""
    return ffmpeg_decode(server.join(space), seconds=seconds + LIVE_LAG_S, live_edge=True)[-int(seconds * SR):]


def guard_of(server: AmphiServer, space: str, key: str, pid: str = "host") -> dict:
    return next(s for s in server.stage(space, key)["sound"]["speakers"] if s["id"] == pid)


def test_a_quiet_speaker_is_heard_at_the_target_a_hot_one_never_clips_and_silence_stays_silent(
        node: AmphiServer, voices: dict[str, Path]) -> None:
    spaces = {}
    speakers = []
    try:
        for name in ("quiet", "hot", "noise"):
            space, key = node.create(f"sound {name}")
            node.start_space(space, key)
            speakers.append(Speaker(node, space, key, "--file", str(voices[name]), "--loop").start())
            spaces[name] = (space, key)
        space, key = spaces["quiet"]
        wait_until(lambda: guard_of(node, space, key)["heard"], 10, "the quiet speaker to be heard")
        time.sleep(3)  # the figure is after 3 s of speech: this is a wait for that, not for a race
        quiet = live_audio(node, space, 6)
        hot = live_audio(node, *spaces["hot"][:1], 6)
        noise = live_audio(node, *spaces["noise"][:1], 4)
    finally:
        for s in speakers:
            s.stop()
    loudness, _ = ebur128(quiet)
    assert loudness == pytest.approx(TARGET, abs=2.0), loudness  # sent at about -41 LUFS
    view = guard_of(node, space, key)
    assert view["loudness"] == pytest.approx(-41, abs=2) and view["gain_db"] > 20, view
    hot_loudness, hot_peak = ebur128(hot)
    assert hot_peak <= -1.0, hot_peak  # true peak, after the AAC encoder and decoder
    assert hot_loudness == pytest.approx(TARGET, abs=2.0), hot_loudness  # peaks at 0 dBFS: about -20 LUFS, lifted
    assert 20 * np.log10(max(rms(noise), 1e-9)) < -60  # -70 dBFS room noise: not lifted


class LoopedMicrophone:
    """A speaker who takes their headphones off while the other talks: from ``after_s`` after
    they first hear the other, what they hear comes back into their microphone, 1.5x, after
    the time it takes to arrive (the return feed's own delay, plus 60 ms of room)."""

    def __init__(self, gain: float = 1.5, delay_s: float = 0.06, after_s: float = 1.5) -> None:
        self.gain = gain
        self.after_s = after_s
        self.silence = np.zeros(int(delay_s * SR), np.float32)
        self.buffer = self.silence.copy()
        self.heard_from: float | None = None  # when the first audible return frame came out
        self.echo_from: float | None = None  # when the first audible frame went back in
        self.lock = threading.Lock()

    def hear(self, samples: np.ndarray, wall: float) -> None:
        if self.heard_from is None and rms(samples) > 1e-3:
            self.heard_from = wall
        if self.heard_from is None or wall - self.heard_from < self.after_s:
            return  # headphones still on
        with self.lock:
            self.buffer = np.concatenate([self.buffer, samples * np.float32(self.gain)])
        if self.echo_from is None and rms(samples) > 1e-3:
            self.echo_from = wall

    def render(self, start: int, n: int) -> np.ndarray:
        with self.lock:
            out, self.buffer = self.buffer[:n], self.buffer[n:]
        return np.pad(out, (0, n - len(out)))


def test_a_speaker_whose_microphone_plays_back_the_space_is_caught_within_a_second_and_the_other_stays_heard(
        node: AmphiServer, voices: dict[str, Path]) -> None:
    space, key = node.create("feedback")
    node.start_space(space, key)
    bob, grant = node.on_stage(space, key, "Bob")
    host = Speaker(node, space, key, "--file", str(voices["other"]), "--loop").start()
    mic = LoopedMicrophone()
    stop = threading.Event()

    async def bob_speaks() -> None:
        task = asyncio.ensure_future(speak(node.url, space, GeneratedTrack(mic.render), token=grant, on_return=mic.hear))
        while not stop.is_set() and not task.done():
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    runner = threading.Thread(target=asyncio.run, args=(bob_speaks(),), daemon=True)
    runner.start()
    try:
        wait_until(lambda: mic.echo_from is not None, 15, "Bob to hear the host")
        member = wait_until(lambda: (m := node.member(space, bob)) and m["feedback"] and m, 5, "feedback on Bob")
        shown_after = time.time() - mic.echo_from
        assert member["feedback"] == "loop"
        assert shown_after <= 1.6, shown_after  # in the view, refreshed every 0.2 s, as read every 0.05 s here
        event = _feedback_events(node, space)[0]
        print(f"loop caught {event['detected_at'] - mic.echo_from:.2f} s after its first echo, shown {shown_after:.2f} s")
        assert event["detected_at"] - mic.echo_from <= 1.0, (event, mic.echo_from)  # the mixer's own tick
        panel = guard_of(node, space, key, bob)
        assert panel["feedback"] == "loop" and "feedback: use headphones" in panel["problems"] and not panel["ready"]
        assert guard_of(node, space, key)["feedback"] is None  # the host is not the loop
        wait_until(lambda: value(scrape(node), "amphi_feedback_speakers", space=space) == 1, 3,
                   "the one-second sample to count Bob")
        assert value(scrape(node), "amphi_sound_alerts_total", kind="feedback") >= 1
        program = live_audio(node, space, 5)
    finally:
        stop.set()
        runner.join(15)
        host.stop()
    loudness, _ = ebur128(program)
    assert loudness == pytest.approx(TARGET, abs=3.0), loudness  # the host, heard and leveled
    lag = round(float(_feedback_events(node, space)[0]["lag_ms"]) / 1000 * SR)
    assert _correlation_at(program, lag) < 0.2  # no echo of the host on top of the host


def _feedback_events(node: AmphiServer, space: str) -> list[dict]:
    import orjson

    lines = (node.data_dir / "spaces" / space / "timeline.jsonl").read_bytes().splitlines()
    events = [e for e in map(orjson.loads, lines) if e.get("kind") == "sound" and e.get("what") == "feedback"]
    assert events, "a feedback line in the Space's timeline"
    return events


def _correlation_at(x: np.ndarray, lag: int) -> float:
    """The program's normalised correlation with itself ``lag`` samples (±5 ms) later."""
    best = 0.0
    for d in range(max(1, lag - SR // 200), lag + SR // 200):
        a, b = x[:-d], x[d:]
        best = max(best, float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))))
    return best


def test_dead_air_when_everyone_on_stage_is_muted_is_told_to_the_hosts_and_clears_when_heard(
        node: AmphiServer) -> None:
    r = node.http.post("/api/spaces", json={"title": "dead air", "dead_air_s": 3}, headers=node.api_headers)
    assert r.status_code == 201 and r.json()["dead_air_s"] == 3.0, r.text
    space, key = r.json()["id"], r.json()["host_key"]
    assert node.http.post("/api/spaces", json={"title": "x", "dead_air_s": 0.5}, headers=node.api_headers).status_code == 400
    node.start_space(space, key)
    host = Speaker(node, space, key, "--tone", "440").start()
    try:
        wait_until(lambda: node.member(space, "host")["talking"], 10, "the host to be heard")
        assert node.stage(space, key)["sound"]["dead_air"] is None
        assert node.stage_call(space, "/me/mute", key).status_code == 200
        muted_at = time.time()
        alert = wait_until(lambda: node.stage(space, key)["sound"]["dead_air"], 6, "the dead-air alert")
        assert time.time() - muted_at <= 3 + 1.0
        assert alert["reason"] == "all_muted" and alert["after_s"] == 3.0
        assert "Host is talking while muted" in alert["message"], alert
        assert node.member(space, "host")["muted_talking"] is True
        assert "sound" not in node.stage(space)  # listeners do not see the hosts' panel
        assert value(scrape(node), "amphi_dead_air", space=space, reason="all_muted") == 1
        assert node.http.get("/api/node").status_code == 200
        assert node.stage_call(space, "/me/unmute", key).status_code == 200
        wait_until(lambda: node.stage(space, key)["sound"]["dead_air"] is None, 2, "the alert to clear")
        assert value(scrape(node), "amphi_dead_air", space=space, reason="all_muted") == 0  # the series is gone
        said = _stderr(host)
        assert "you're muted (by yourself): nobody hears you" in said, said
        assert "Dead air: everyone on stage is muted" in said, said
    finally:
        host.stop()
    lines = (node.data_dir / "spaces" / space / "timeline.jsonl").read_text()
    assert '"what":"dead_air"' in lines and '"what":"dead_air_cleared"' in lines


def _stderr(speaker: Speaker) -> str:
    assert speaker.proc is not None and speaker.proc.stderr is not None
    return (speaker.proc.stderr.read() or b"").decode(errors="replace")
