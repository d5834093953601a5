"""The room with real processes: `amphi serve`, `amphi speak` speakers (aiortc) for the host and
for a listener brought on stage, ffmpeg as a listener, the replay as the program's record.
Audio is checked as audio: bands of the decoded program and of each speaker's return feed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import wave
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc.codecs import opus as aiortc_opus

from amphi.media.ingest.client import SpeakError, speak
from amphi.media.ingest.sources import ToneTrack
from tests.audio import SR, ffmpeg_decode
from tests.integration.amphi_proc import AmphiServer, Speaker, wait_until

A_HZ, B_HZ = 440.0, 660.0
LIVE_LAG_S = 7.5  # two segments and a little: how far behind live ffmpeg may start


def band(x: np.ndarray, hz: float) -> float:
    """Amplitude of the strongest component within 10 Hz of ``hz`` (a sine of amplitude a gives a/2)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / len(x) * 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[np.abs(freqs - hz) < 10].max())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def live_audio(server: AmphiServer, space: str, seconds: float) -> np.ndarray:
    """``seconds`` of what a listener hears, all of it produced after this call: ffmpeg starts
    at the last whole segment of the live playlist, which may begin up to two segments
    (7.2 s) before the live edge, so it reads that much more and only the end is kept."""
    playlist = server.join(space)
    return ffmpeg_decode(playlist, seconds=seconds + LIVE_LAG_S, live_edge=True)[-int(seconds * SR):]


def test_two_speakers_are_mixed_each_hears_the_other_and_a_host_mute_silences_one(
        serve: Callable[..., AmphiServer], tmp_path: Path) -> None:
    server = serve()
    space, key = server.create("Two voices")
    server.start_space(space, key)
    bob, grant = server.on_stage(space, key, "Bob")
    host_hears, bob_hears = tmp_path / "host.wav", tmp_path / "bob.wav"
    a = Speaker(server, space, key, "--tone", str(A_HZ), "--duration", "30", "--return-to", str(host_hears)).start()
    b = Speaker(server, space, grant, "--tone", str(B_HZ), "--duration", "30", "--return-to", str(bob_hears)).start()
    try:
        both = wait_until(lambda: (s := server.stage(space)) and all(m["talking"] for m in s["members"]) and s,
                          10, "both speakers talking on the stage view")
        assert [m["id"] for m in both["members"]] == ["host", bob]

        tail = live_audio(server, space, 3)
        assert band(tail, A_HZ) > 0.05 and band(tail, B_HZ) > 0.05, (band(tail, A_HZ), band(tail, B_HZ))

        r = server.stage_call(space, f"/{bob}/mute", key)
        assert r.status_code == 200, r.text
        assert server.member(space, bob)["host_muted"]
        r = server.stage_call(space, "/me/unmute", grant)
        assert r.status_code == 403 and r.json()["error"] == "host_muted", r.text
        wait_until(lambda: not server.member(space, bob)["talking"], 5, "Bob's indicator to stop")
        tail = live_audio(server, space, 3)
        assert band(tail, A_HZ) > 0.05 and band(tail, B_HZ) < 0.002, (band(tail, A_HZ), band(tail, B_HZ))
    finally:
        a.stop()
        b.stop()

    # each speaker's return feed: the other's voice, never their own
    host_audio, bob_audio = read_wav(host_hears)[SR:], read_wav(bob_hears)[SR:]
    assert len(host_audio) > 5 * SR and len(bob_audio) > 5 * SR
    assert band(host_audio, B_HZ) > 0.02 and band(host_audio, A_HZ) < 0.002, (band(host_audio, B_HZ), band(host_audio, A_HZ))
    assert band(bob_audio, A_HZ) > 0.05 and band(bob_audio, B_HZ) < 0.002, (band(bob_audio, A_HZ), band(bob_audio, B_HZ))


def test_roles_are_enforced_and_bad_requests_get_specific_errors(serve: Callable[..., AmphiServer]) -> None:
    server = serve()
    space, key = server.create("Rules")
    server.start_space(space, key)
    call = server.stage_call

    r = call(space, "/requests", body={"name": "Eve"})
    assert r.status_code == 201
    eve, eve_grant = r.json()["participant"], r.json()["grant"]
    bob, bob_grant = server.on_stage(space, key, "Bob")

    # a listener cannot moderate, publish audio, or see the requests
    assert call(space, f"/{bob}/mute", eve_grant).status_code == 403
    assert call(space, f"/{eve}/accept", eve_grant).status_code == 403
    assert call(space, "/invites", eve_grant, {"name": "x"}).status_code == 403
    speak = server.http.post(f"/api/spaces/{space}/speak", content=b"v=0\r\n",
                             headers={"authorization": f"Bearer {eve_grant}", "content-type": "application/sdp"})
    assert speak.status_code == 403 and speak.json()["error"] == "not_on_stage", speak.text
    view = server.stage(space, eve_grant)
    assert view["requests"] == 1 and view["moderator"] is False and view["you"]["state"] == "requested"
    assert [q["name"] for q in server.stage(space, key)["requests"]] == ["Eve"]
    # a speaker cannot moderate either, nor act on the host
    assert call(space, f"/{eve}/accept", bob_grant).status_code == 403
    assert call(space, "/host/remove", key).status_code == 403
    # credentials
    assert call(space, f"/{bob}/mute").status_code == 401
    assert call(space, f"/{bob}/mute", "wrong-host-key").status_code == 403
    forged = bob_grant[:-3] + ("AAA" if not bob_grant.endswith("AAA") else "BBB")
    assert call(space, f"/{bob}/mute", forged).status_code == 403
    other, other_key = server.create("Elsewhere")
    assert call(other, "/me/leave", bob_grant).status_code == 403  # a grant is bound to its Space
    # targets and bodies
    assert call(space, "/nobody/mute", key).status_code == 404
    assert call(space, f"/{bob}/dance", key).status_code == 400
    assert call(space, f"/{bob}/remove", key, {"from": "everywhere"}).status_code == 400
    assert call(space, "/requests", body={"name": ""}).status_code == 400
    assert call(space, "/requests", body={"name": "x" * 500}).status_code == 400

    # the stage holds 13: the host and 12 more (invited: requests from one address are limited);
    # the 14th gets 409 with a clear message
    for i in range(11):
        r = call(space, "/invites", key, {"name": f"Guest {i}"})
        assert r.status_code == 201 and f"grant={r.json()['grant']}" in r.json()["invite_url"], r.text
        assert call(space, "/me/accept", r.json()["grant"]).status_code == 200
    r = call(space, f"/{eve}/accept", key)
    assert r.status_code == 409 and r.json()["error"] == "stage_full" and "13 people" in r.json()["message"], r.text
    assert len(server.stage(space)["members"]) == 13

    # removed from the Space: the grant no longer works here
    assert call(space, f"/{bob}/remove", key, {"from": "space"}).status_code == 200
    r = call(space, "/me/leave", bob_grant)
    assert r.status_code == 403 and r.json()["error"] == "removed"


def test_a_flood_of_requests_to_speak_is_limited(serve: Callable[..., AmphiServer]) -> None:
    server = serve()
    space, key = server.create("Flood")
    server.start_space(space, key)
    codes = [server.stage_call(space, "/requests", body={"name": f"bot {i}"}).status_code for i in range(20)]
    assert codes[:5] == [201] * 5 and codes.count(429) >= 14, codes
    r = server.stage_call(space, "/requests", body={"name": "bot"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert len(server.stage(space, key)["requests"]) == codes.count(201)

    # offers from one speaker: each would cost a peer connection; a burst, then 429
    offers = [server.http.post(f"/api/spaces/{space}/speak", content=b"v=0\r\nnot really",
                               headers={"authorization": f"Bearer {key}", "content-type": "application/sdp"})
              for _ in range(8)]
    assert [o.status_code for o in offers[:5]] == [400] * 5 and offers[-1].status_code == 429, offers


def test_a_speaker_whose_network_dies_is_dropped_then_reconnects_on_its_own(
        serve: Callable[..., AmphiServer], tmp_path: Path) -> None:
    server = serve("--speaker-timeout", "2")
    space, key = server.create("Flaky")
    server.start_space(space, key)
    bob, grant = server.on_stage(space, key, "Bob")
    a = Speaker(server, space, key, "--tone", str(A_HZ), "--duration", "40").start()
    b = Speaker(server, space, grant, "--tone", str(B_HZ), "--duration", "40").start()
    try:
        wait_until(lambda: server.member(space, bob)["talking"], 10, "Bob talking")
        os.killpg(b.proc.pid, signal.SIGSTOP)  # Bob's network goes silent both ways
        try:
            gone = wait_until(lambda: (m := server.member(space, bob)) and not m["connected"] and m, 10,
                              "the server to drop Bob's silent connection")
            assert gone["talking"] is False and server.member(space, "host")["connected"]
            # listeners keep hearing the host, unbroken
            heard = live_audio(server, space, 2)
            assert band(heard, A_HZ) > 0.05 and band(heard, B_HZ) < 0.002
        finally:
            os.killpg(b.proc.pid, signal.SIGCONT)
        back = wait_until(lambda: (m := server.member(space, bob)) and m["connected"] and m["talking"] and m, 20,
                          "Bob to reconnect by himself")
        assert back["id"] == bob
        assert server.stage(space, grant)["you"]["reconnects"] >= 1
        heard = live_audio(server, space, 2)
        assert band(heard, A_HZ) > 0.05 and band(heard, B_HZ) > 0.05
        assert b.proc.poll() is None and server.node()["speakers"] == 2
    finally:
        a.stop()
        b.stop()


def test_a_speaker_taken_off_stage_is_hung_up_and_cannot_come_back(serve: Callable[..., AmphiServer]) -> None:
    server = serve()
    space, key = server.create("Off you go")
    server.start_space(space, key)
    bob, grant = server.on_stage(space, key, "Bob")
    b = Speaker(server, space, grant, "--tone", str(B_HZ), "--duration", "30").start()
    try:
        wait_until(lambda: server.member(space, bob)["connected"], 10, "Bob connected")
        assert server.stage_call(space, f"/{bob}/remove", key, {"from": "stage"}).status_code == 200
        code = b.wait(15)  # the client tries again, is told it is not on stage, and gives up
        assert code != 0
        err = b.proc.stderr.read().decode(errors="replace") if b.proc.stderr else ""
        assert "not on stage" in err, err
        assert server.member(space, bob) is None and server.node()["speakers"] == 0
    finally:
        b.stop()


class Events:
    """Server-Sent Events from a streaming response, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.iter_lines()

    def until(self, want: Callable[[str, dict], bool], timeout_s: float = 10) -> list[tuple[str, dict]]:
        """Reads until an event for which ``want(name, data)`` holds; returns all read."""
        seen: list[tuple[str, dict]] = []
        name, deadline = None, time.monotonic() + timeout_s
        for line in self._lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                seen.append((name, json.loads(line[6:])))
                if want(name, seen[-1][1]):
                    return seen
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no such event within {timeout_s} s; saw {[n for n, _ in seen]}")


def test_room_state_is_pushed_to_every_kind_of_viewer(serve: Callable[..., AmphiServer]) -> None:
    server = serve()
    space, key = server.create("Pushed")
    server.start_space(space, key)
    session = server.stage_call(space, "/session", key)
    assert session.status_code == 200
    host_grant = session.json()["grant"]
    events = f"/api/spaces/{space}/events"
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=20)) as client, \
            client.stream("GET", events) as r1, \
            client.stream("GET", events, params={"access_token": host_grant}) as r2:
        public, host = Events(r1), Events(r2)
        first = public.until(lambda n, d: n == "stage")
        assert first[-1][1]["members"][0]["id"] == "host" and first[-1][1]["requests"] == 0
        host.until(lambda n, d: n == "you" and d["role"] == "host")

        r = server.stage_call(space, "/requests", body={"name": "Carol"})
        carol, carol_grant = r.json()["participant"], r.json()["grant"]
        got = public.until(lambda n, d: n == "stage" and d["requests"] == 1)
        assert "Carol" not in json.dumps(got[-1][1])  # listeners see how many asked, not who
        got = host.until(lambda n, d: n == "stage" and d["requests"])
        assert [q["name"] for q in got[-1][1]["requests"]] == ["Carol"]

        with client.stream("GET", events, headers={"authorization": f"Bearer {carol_grant}"}) as r3:
            mine = Events(r3)
            mine.until(lambda n, d: n == "you" and d["state"] == "requested")
            assert server.stage_call(space, f"/{carol}/accept", host_grant).status_code == 200
            mine.until(lambda n, d: n == "you" and d["state"] == "on_stage" and d["role"] == "speaker")
            public.until(lambda n, d: n == "stage" and [m["id"] for m in d["members"]] == ["host", carol])
            server.end_space(space, key)
            mine.until(lambda n, d: n == "ended")
        public.until(lambda n, d: n == "ended")
    assert server.http.get(events).status_code == 200  # an ended Space's stream says so and closes
    assert server.node()["event_streams"] == 0


@pytest.mark.serial  # the server's hang-up must win the client's 3 s silence check: alone (make test)
async def test_a_peer_that_sends_garbage_is_dropped_without_disturbing_the_others(
        serve: Callable[..., AmphiServer], monkeypatch) -> None:
    """A real aiortc client whose Opus encoder emits random bytes: the server decodes nothing,
    hangs it up after its garbage timeout, and the host goes on being heard."""
    server = serve()
    space, key = server.create("Garbage")
    server.start_space(space, key)
    bob, grant = server.on_stage(space, key, "Bob")
    host = Speaker(server, space, key, "--tone", str(A_HZ), "--duration", "30").start()
    try:
        def garbage(self, frame, force_keyframe=False):  # noqa: ARG001
            self.sent = getattr(self, "sent", 0) + 960
            return [os.urandom(80)], self.sent

        monkeypatch.setattr(aiortc_opus.OpusEncoder, "encode", garbage)
        # the node's hang-up reaches the client as a close, or (on a busy machine, first) as its
        # return feed stopping; either way the node must have dropped Bob (asserted next)
        with pytest.raises(SpeakError, match="hung up|no audio|failed|stopped: the connection is down"):
            await asyncio.wait_for(speak(server.url, space, ToneTrack(B_HZ), token=grant), 30)
        assert server.member(space, bob)["connected"] is False
        assert server.member(space, "host")["talking"]
        heard = await asyncio.to_thread(live_audio, server, space, 2)
        assert band(heard, A_HZ) > 0.05
    finally:
        host.stop()
