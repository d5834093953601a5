"""The Space outlives its origin (docs/cluster.md): a real redis-server, two `amphi serve --redis`
nodes, a real Varnish edge in front of both, `amphi speak` through the edge, ffmpeg as the
listener. The host is killed (-9) or stopped (SIGSTOP) mid-Space; its standby carries it on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from amphi.control.leases import LEASE_TTL_S
from tests.audio import SR, decode, dominant_per_window, rms
from tests.edge.edges import EdgeProc
from tests.integration.amphi_proc import (
    BIN,
    AmphiServer,
    free_port,
    stop_group,
    wait_until,
)
from tests.integration.test_room import band

SECRET = "failover-test-secret-0123456789abcdef"
TONE_HZ = 440
SECOND_HZ = 660  # a second speaker's tone


@dataclass
class Cluster:
    """Nodes (by name: ``c.a``, ``c.b``, ...) on one Redis, and one edge in front of them all."""

    nodes: dict[str, AmphiServer]
    edge: EdgeProc

    def __getattr__(self, name: str) -> AmphiServer:
        try:
            return self.nodes[name]
        except KeyError:
            raise AttributeError(name) from None


@contextlib.contextmanager
def edge_cluster(tmp_path: Path, redis_url: str, names: str) -> Iterator[Cluster]:
    """A node per letter of ``names`` (`amphi serve --redis --edge`), one real edge with every node
    as an origin; the nodes the test killed have their clients closed at the end."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    edge_port = free_port()
    edge_url = f"http://127.0.0.1:{edge_port}"
    nodes = {n: AmphiServer(tmp_path / f"data-{n}", None, "--redis", redis_url, "--node-id", n,
                            "--edge", edge_url, "--pow", "off") for n in names}
    edge = None
    try:
        for node in nodes.values():
            node.start()
        origins = [arg for n in names[1:] for arg in ("--origin", f"{n}={nodes[n].url}")]
        edge = EdgeProc(tmp_path / "edge", "edge1", f"{names[0]}={nodes[names[0]].url}", secret_file, *origins,
                        "--media-rate", "0", port=edge_port).start()
        yield Cluster(nodes, edge)
    finally:
        if edge is not None:
            edge.stop()
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
            else:
                node.http.close()  # killed by the test: its client still holds a connection to it


@pytest.fixture
def cluster(tmp_path: Path, redis_server, monkeypatch) -> Iterator[Cluster]:
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    with edge_cluster(tmp_path, redis_server.url, "ab") as c:
        yield c


def failover(node: AmphiServer) -> dict:
    return node.http.get("/api/node", timeout=5).json()["failover"]


def copied(node: AmphiServer, space: str) -> int:
    """Segments the standby has copied of ``space`` (0 if it does not stand by it)."""
    try:
        return failover(node)["standbys"].get(space, {}).get("segments", 0)
    except httpx.TransportError:
        return 0


class Listener(threading.Thread):
    """ffmpeg reading the join's playlist through the edge, as plain HLS, decoding to PCM."""

    def __init__(self, playlist: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.cmd = ["ffmpeg", "-v", "error", "-live_start_index", "-1", "-i", playlist, "-t", str(seconds),
                    "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
        self.pcm = b""
        self.err = ""

    def run(self) -> None:
        proc = subprocess.run(self.cmd, capture_output=True, timeout=180)
        self.pcm, self.err = proc.stdout, proc.stderr.decode(errors="replace")


def listen(c: Cluster, space: str, seconds: float) -> Listener:
    """A listener joined through the edge, ffmpeg reading its playlist there for ``seconds``."""
    joined = httpx.post(f"{c.edge.url}/api/spaces/{space}/join", json={}, timeout=10).json()
    listener = Listener(joined["media_playlist"], seconds)
    listener.start()
    return listener


def speaker_via(entry: str, space: str, key: str, hz: int, *, grant: bool = False) -> subprocess.Popen[bytes]:
    """`amphi speak` pointed at the edge (the entry): any node answers, the host's is forwarded.
    ``key``: the host key, or (``grant``) a speaker's grant."""
    who = ["--as", "speaker", "--token", key] if grant else ["--key", key]
    proc = subprocess.Popen([str(BIN), "speak", "--server", entry, "--space", space, *who, "--tone", str(hz)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if "on air" in line:
            os.set_blocking(proc.stderr.fileno(), False)
            return proc
    stop_group(proc, 5)
    raise AssertionError(f"speaker did not get on air: {''.join(seen)}")


def stop_speaker(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, 10)
    if proc.stderr is not None:
        proc.stderr.close()


def tone_windows(audio: np.ndarray, hz: int, window_s: float = 0.25) -> list[bool]:
    """For each window: the tone is there (dominant frequency, and not faint)."""
    n = int(SR * window_s)
    found = dominant_per_window(audio, window_s)
    return [abs(f - hz) <= 5 and rms(audio[i * n:(i + 1) * n]) > 0.05 for i, f in enumerate(found)]


def longest_gap_s(heard: list[bool], window_s: float = 0.25) -> float:
    gap = longest = 0
    for h in heard:
        gap = 0 if h else gap + 1
        longest = max(longest, gap)
    return longest * window_s


def second_speaker(c: Cluster, space: str, key: str) -> subprocess.Popen[bytes]:
    """A second person on stage (asked and accepted through the edge), `amphi speak` with its
    grant through the edge, at ``SECOND_HZ``."""
    asked = httpx.post(f"{c.edge.url}/api/spaces/{space}/stage/requests", json={"name": "second"}, timeout=10)
    assert asked.status_code == 201, asked.text
    accepted = httpx.post(f"{c.edge.url}/api/spaces/{space}/stage/{asked.json()['participant']}/accept",
                          headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert accepted.status_code == 200, accepted.text
    return speaker_via(c.edge.url, space, asked.json()["grant"], SECOND_HZ, grant=True)


def both_windows(audio: np.ndarray, window_s: float = 0.25) -> list[bool]:
    """For each window: both speakers' tones are there (each tone's own band: they are mixed)."""
    n = int(SR * window_s)
    return [min(band(audio[i:i + n], TONE_HZ), band(audio[i:i + n], SECOND_HZ)) > 0.05
            for i in range(0, len(audio) - n + 1, n)]


def live_space(c: Cluster) -> tuple[str, str, subprocess.Popen[bytes]]:
    space, key = c.a.create("outlives its origin")
    c.a.start_space(space, key)
    speaker = speaker_via(c.edge.url, space, key, TONE_HZ)
    wait_until(lambda: copied(c.b, space) >= 2, 30, "node b to stand by and copy two segments", interval=0.3)
    return space, key, speaker


def replay(node: AmphiServer, space: str) -> tuple[str, np.ndarray, list[int]]:
    """The ended Space's replay from ``node``: (vod.m3u8, decoded audio, media sequence numbers),
    read once the lease the node held for it would have lapsed (a replay needs none)."""
    time.sleep(LEASE_TTL_S)  # not a race: the replay must be there for good, not just as the Space ends
    with httpx.Client(base_url=node.url, timeout=30) as http:
        vod = http.get(f"/media/{space}/vod.m3u8")
        assert vod.status_code == 200, vod.text
        init = http.get(f"/media/{space}/init.mp4").content
        uris = [line for line in vod.text.splitlines() if line.endswith(".m4s")]
        body = b"".join(http.get(f"/media/{space}/{u}").content for u in uris)
    return vod.text, decode(init + body), [int(u.removesuffix(".m4s")) for u in uris]


def test_kill_9_of_the_host_the_space_goes_on_through_the_edge_and_the_replay_holds_both_sides(cluster) -> None:
    """Two speakers (distinct tones) through the edge; ffmpeg through the edge hears both before and
    after the kill, with no one doing anything; the replay holds both sides of one gap."""
    c = cluster
    space, key, speaker = live_space(c)
    second = second_speaker(c, space, key)
    try:
        listener = listen(c, space, 20)
        wait_until(lambda: copied(c.b, space) >= 4, 30, "two more segments copied while ffmpeg listens", interval=0.3)
        c.a.kill9()
        killed = time.monotonic()
        wait_until(lambda: failover(c.b)["takeovers"] == 1, 10, "node b to take the Space over", interval=0.1)
        took_s = time.monotonic() - killed
        listener.join(120)
        assert not listener.is_alive()
        audio = np.frombuffer(listener.pcm, dtype=np.float32)
        assert len(audio) >= 19.5 * SR, f"ffmpeg stopped after {len(audio) / SR:.1f} s: {listener.err}"
        heard = both_windows(audio)
        first = heard.index(True)
        assert longest_gap_s(heard[first:]) <= 5.0, (took_s, heard)
        assert sum(heard[-16:]) >= 12, heard  # both tones are back at the end: both speakers found node b
        status = c.b.status(space)
        assert status["state"] == "live" and not status["ended_abnormally"]
        c.b.end_space(space, key)
    finally:
        stop_speaker(speaker)
        stop_speaker(second)
    vod, audio, msns = replay(c.b, space)
    assert msns == list(range(msns[0], msns[-1] + 1)), msns  # one playlist, numbers running on
    assert vod.count("#EXT-X-DISCONTINUITY\n") == 1, vod
    heard = both_windows(audio)
    before = vod.split("#EXT-X-DISCONTINUITY\n")[0]
    cut_s = sum(float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", before))  # the replay's time of the cut
    assert sum(heard[: int(cut_s * 4)]) >= 4 and sum(heard[int(cut_s * 4):]) >= 8, (cut_s, heard, vod)  # both sides


def test_the_host_stopped_past_its_lease_stops_publishing_and_a_restarted_host_never_ends_the_space(cluster) -> None:
    """SIGSTOP longer than the lease: node b takes over; on SIGCONT node a answers the Space's
    media with 421 naming b (never a byte of its own), and the speaker ends up on b alone. Then a
    is killed and restarted: it does not end the Space that lives on b."""
    c = cluster
    space, key, speaker = live_space(c)
    try:
        assert c.a.proc is not None
        os.kill(c.a.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: failover(c.b)["takeovers"] == 1, 10, "node b to take the Space over", interval=0.1)
        finally:
            os.kill(c.a.proc.pid, signal.SIGCONT)
        answers = []

        def misdirected() -> bool:
            """Node a's answer for the Space's media: never a byte once b took over (503 while it
            does not know who holds the lease, then 421 naming b)."""
            r = c.a.http.get(f"/media/{space}/edge/live.m3u8", headers={"x-amphi-edge": edge_credential()}, timeout=10)
            answers.append(r.status_code)
            return r.status_code == 421 and r.headers["x-amphi-host"] == "b"

        wait_until(misdirected, 5, "node a to answer 421 naming b", interval=0.05)
        assert set(answers) <= {503, 421}, answers
        wait_until(lambda: failover(c.a)["fenced"] == 1, 5, "node a to learn it was replaced")
        wait_until(lambda: c.b.node()["speakers"] == 1 and c.a.node()["speakers"] == 0, 15,
                   "the speaker to end up on node b alone", interval=0.3)
        assert space in c.b.node()["pipelines"] and space not in c.a.node()["pipelines"]
        c.a.kill9()
        c.a.start()  # back after a crash: the Space found live on its disk is b's now
        wait_until(lambda: copied(c.a, space) >= 1, 30, "node a to stand by for b", interval=0.3)
        assert c.b.status(space)["state"] == "live"
        assert c.a.status(space)["state"] == "live"
        # and back: b drained (its operator key, through the edge), the Space ended through the edge
        drained = httpx.post(f"{c.edge.url}/api/nodes/b/drain", headers=c.b.api_headers, timeout=30)
        assert drained.status_code == 200 and drained.json()["moved"][0]["to"] == "a", drained.text
        ended = httpx.post(f"{c.edge.url}/api/spaces/{space}/end", headers={"authorization": f"Bearer {key}"},
                           timeout=20)
        assert ended.status_code == 200 and ended.json()["state"] == "ended", ended.text
    finally:
        stop_speaker(speaker)


def edge_credential() -> str:
    from amphi.control.tokens import Signer

    return Signer(SECRET.encode()).edge_credential("test")


def test_drain_hands_the_space_over_with_no_gap_in_the_program_or_the_replay(cluster) -> None:
    """`amphi drain a` through the edge: the Space moves to b at a part boundary; the replay has no
    discontinuity and its program times run on without a gap; ffmpeg through the edge reads on; the
    speaker follows to b by itself."""
    c = cluster
    space, key, speaker = live_space(c)
    try:
        listener = listen(c, space, 16)
        wait_until(lambda: copied(c.b, space) >= 4, 30, "two more segments copied while ffmpeg listens", interval=0.3)
        out = subprocess.run([str(BIN), "drain", "a", "--server", c.edge.url, "--key", c.a.api_key, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        drained = json.loads(out.stdout)
        assert [m["id"] for m in drained["moved"]] == [space] and drained["moved"][0]["to"] == "b", drained
        assert failover(c.b)["handed_to_me"] == 1 and failover(c.a)["handed_over"] == 1
        assert space in c.b.node()["pipelines"] and space not in c.a.node()["pipelines"]
        wait_until(lambda: c.b.node()["speakers"] == 1, 15, "the speaker to follow the Space to b", interval=0.3)
        listener.join(120)
        audio = np.frombuffer(listener.pcm, dtype=np.float32)
        assert len(audio) >= 15.5 * SR, f"ffmpeg stopped after {len(audio) / SR:.1f} s: {listener.err}"
        ended = httpx.post(f"{c.edge.url}/api/spaces/{space}/end", headers={"authorization": f"Bearer {key}"},
                           timeout=20)  # through the edge: whichever node gets it, the host ends it
        assert ended.status_code == 200 and ended.json()["state"] == "ended", ended.text
    finally:
        stop_speaker(speaker)
    vod, audio, msns = replay(c.b, space)
    assert msns == list(range(msns[0], msns[-1] + 1)), msns
    assert "#EXT-X-DISCONTINUITY" not in vod, vod
    times = [(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp(), float(d)) for t, d in
             re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)\n(?:#[^\n]*\n)*?#EXTINF:([0-9.]+),", vod)]
    assert len(times) == len(msns), vod
    seams = [round(b[0] - (a[0] + a[1]), 3) for a, b in zip(times, times[1:])]
    assert all(abs(s) <= 0.05 for s in seams), seams  # one program: each segment begins where the last ended
    heard = tone_windows(audio, TONE_HZ)
    last = drained["moved"][0]["last_msn"]
    seam_s = sum(d for (_, d), m in zip(times, msns) if m <= last)
    assert sum(heard[: int(seam_s * 4)]) >= 4 and sum(heard[int(seam_s * 4):]) >= 8, (seam_s, heard)
