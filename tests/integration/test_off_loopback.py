"""A speaker on another host: the node in one network namespace, ``amphi speak`` in another,
joined by a veth pair (10.213.7.0/24 inside the two namespaces only). The speaker has its own
address and no way to the node's 127.0.0.1; its tone is heard in the live program, decoded
by ffmpeg inside the node's namespace. Also: the node's ICE servers endpoint (STUN, TURN
with a fresh credential), over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.audio import SR, dominant_per_window, rms
from tests.integration.amphi_proc import BIN, AmphiServer, Speaker, stop_group, wait_until

NODE_IP, SPEAKER_IP, PREFIX = "10.213.7.1", "10.213.7.2", 24
PRIVATE_IP = "192.168.213.1"  # the node's address behind its 1:1 NAT (inside its namespace only)
PORT = 8000  # the node's namespace is its own: no other process can hold the port there
TONE_HZ = 660
OPERATOR_KEY = "off-loopback-operator"  # creates the test's Spaces (an API key: docs/keys.md)

# One HTTP request from inside a namespace (the test process itself stays in the root one).
HTTP = """import json, sys, httpx
method, url, body, auth = sys.argv[1:5]
r = httpx.request(method, url, json=json.loads(body) if body else None, timeout=5,
                  headers={"authorization": f"Bearer {auth}"} if auth else {})
print(json.dumps({"status": r.status_code, "body": r.json() if r.content else None}))"""


@dataclass
class Netns:
    node: str  # the node's namespace
    speaker: str  # the speaker's

    def run(self, ns: str, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, timeout=timeout, check=check)

    def http(self, ns: str, method: str, url: str, body: dict | None = None, auth: str = "") -> tuple[int, object]:
        out = self.run(ns, sys.executable, "-c", HTTP, method, url, json.dumps(body) if body is not None else "", auth)
        answer = json.loads(out.stdout)
        return answer["status"], answer["body"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test makes network namespaces: it needs root and iproute2's `ip`")
    tag = uuid.uuid4().hex[:8]
    spaces = Netns(node=f"amphi-node-{tag}", speaker=f"amphi-spk-{tag}")
    veth_node, veth_speaker = f"an{tag}", f"as{tag}"  # interface names: 15 characters at most
    made: list[str] = []
    try:
        for ns in (spaces.node, spaces.speaker):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", veth_node, "type", "veth", "peer", "name", veth_speaker)
        ip("link", "set", veth_node, "netns", spaces.node)
        ip("link", "set", veth_speaker, "netns", spaces.speaker)
        for ns, dev, addr in ((spaces.node, veth_node, NODE_IP), (spaces.speaker, veth_speaker, SPEAKER_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield spaces
    finally:
        for ns in made:  # deleting a namespace deletes the veth end inside it, and so the pair
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=10)


@pytest.fixture
def node_in_netns(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Starts ``amphi serve`` inside the node's namespace, bound to its veth address (by default
    also its ICE address), with extra flags; returns the node's base URL. Stopped after the test."""
    url = f"http://{NODE_IP}:{PORT}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> str:
        log = tmp_path / "amphi.log"
        with open(log, "ab") as logf:
            proc = subprocess.Popen(["ip", "netns", "exec", netns.node, str(BIN), "serve", "--host", NODE_IP, "--port",
                                     str(PORT), "--data-dir", str(tmp_path / "data"), "--segment-parts", "7",
                                     "--operator-key", OPERATOR_KEY, *flags],
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"amphi serve exited with {proc.returncode}:\n{log.read_text()}")
            return netns.run(netns.node, "curl", "-sf", "-o", "/dev/null", f"{url}/api/node", check=False).returncode == 0

        wait_until(up, 30, "amphi serve to answer in its namespace", interval=0.2)
        return url

    yield start
    for proc in procs:
        stop_group(proc, 15)


def live_space(netns: Netns, url: str) -> tuple[str, str]:
    status, created = netns.http(netns.node, "POST", f"{url}/api/spaces", {"title": "off loopback"}, auth=OPERATOR_KEY)
    assert status == 201, created
    space, key = created["id"], created["host_key"]
    status, _ = netns.http(netns.node, "POST", f"{url}/api/spaces/{space}/start", auth=key)
    assert status == 200
    return space, key


def speaker_heard(netns: Netns, url: str, space: str, key: str) -> None:
    """``amphi speak --tone`` from the speaker's namespace (offering the address it reaches the
    node from); ffmpeg in the node's namespace hears the tone in the live program."""
    speaker = Speaker(SimpleNamespace(url=url, ca=None), space, key, "--tone", str(TONE_HZ))
    speaker.cmd = ["ip", "netns", "exec", netns.speaker, *speaker.cmd]
    try:
        speaker.start(timeout=30)
        status, joined = netns.http(netns.node, "POST", f"{url}/api/spaces/{space}/join", {})
        assert status == 200, joined
        playlist = joined["media_playlist"]

        def newest() -> int:
            """The newest complete segment's number in the live playlist."""
            text = netns.run(netns.node, "curl", "-sf", playlist).stdout.decode()
            m = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", text, re.M)
            assert m is not None, text
            return int(m.group(1)) + text.count("#EXTINF") - 1

        # ffmpeg starts at the newest complete segment: wait for one that began after the speaker was on air
        after = newest() + 2
        wait_until(lambda: newest() >= after, 20, f"segment {after}", interval=0.3)
        pcm = netns.run(netns.node, "ffmpeg", "-v", "error", "-live_start_index", "-1", "-i", playlist, "-t", "6",
                        "-ac", "1", "-ar", str(SR), "-f", "f32le", "-", timeout=60).stdout
    finally:
        speaker.stop()
    audio = np.frombuffer(pcm, dtype=np.float32)
    assert len(audio) >= 5.5 * SR, f"only {len(audio) / SR:.2f} s decoded"
    quarter = SR // 4
    windows = dominant_per_window(audio, 0.25)
    assert all(abs(hz - TONE_HZ) <= 5 for hz in windows), windows
    # Heard in every quarter second. This test runs beside another (make test's two workers), and a
    # CI run on a loaded machine once had a quarter at 0.18 (the tone's is 0.35): the speaker's
    # process late for a moment. Continuity to the tenth of a second is judged alone, in test_live.
    levels = [round(rms(audio[i * quarter:(i + 1) * quarter]), 3) for i in range(len(windows))]
    assert min(levels) > 0.1, f"the tone dropped out: {levels}"


def test_a_speaker_in_its_own_network_namespace_is_heard(netns: Netns, node_in_netns: Callable[..., str]) -> None:
    url = node_in_netns()
    space, key = live_space(netns, url)

    # The speaker's namespace reaches the node at its address only: the node's 127.0.0.1 is not
    # there (its own loopback has nothing listening), and neither is the root namespace's.
    assert netns.run(netns.speaker, "curl", "-sf", "-o", "/dev/null", "-m", "5", f"{url}/api/node").returncode == 0
    for loopback in (f"http://127.0.0.1:{PORT}", "http://127.0.0.1:8000"):
        refused = netns.run(netns.speaker, "curl", "-s", "-o", "/dev/null", "-m", "5", f"{loopback}/api/node",
                            check=False)
        assert refused.returncode == 7, refused  # curl: failed to connect
    routes = netns.run(netns.speaker, "ip", "-4", "addr", "show").stdout.decode()
    assert f"inet {SPEAKER_IP}/{PREFIX}" in routes and NODE_IP not in routes

    # The node hands out no STUN or TURN here: the two host addresses are all there is.
    status, servers = netns.http(netns.speaker, "GET", f"{url}/api/spaces/{space}/ice", auth=key)
    assert (status, servers) == (200, {"ice_servers": []})

    speaker_heard(netns, url, space, key)


def test_a_node_behind_1to1_nat_announces_its_public_address(netns: Netns,
                                                             node_in_netns: Callable[..., str]) -> None:
    """The node binds a private address (on the loopback interface of its namespace) that the speaker
    has no route to; iptables in the node's namespace maps the public one (its veth address)
    to it, port for port, as a cloud's 1:1 NAT does. The speaker takes UDP only in answer to
    its own. ``--ice-announce`` puts the public address in the answer, and the speaker is heard
    (without it, the speaker's checks go to the private address and never arrive)."""
    netns.run(netns.node, "ip", "addr", "add", f"{PRIVATE_IP}/32", "dev", "lo")
    netns.run(netns.node, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", NODE_IP, "-p", "udp",
              "-j", "DNAT", "--to-destination", PRIVATE_IP)
    netns.run(netns.node, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", PRIVATE_IP, "-p", "udp",
              "-j", "SNAT", "--to-source", NODE_IP)
    # The speaker is behind a stateful firewall, as behind a home router: UDP comes in only in
    # answer to what it sent (else the node's own checks would find it, from the public address).
    netns.run(netns.speaker, "iptables", "-A", "INPUT", "-p", "udp", "-m", "conntrack", "--ctstate",
              "ESTABLISHED,RELATED", "-j", "ACCEPT")
    netns.run(netns.speaker, "iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP")
    unroutable = netns.run(netns.speaker, "ip", "route", "get", PRIVATE_IP, check=False)
    assert unroutable.returncode != 0, unroutable.stdout  # the private address is no use to the speaker

    url = node_in_netns("--ice-address", PRIVATE_IP, "--ice-announce", NODE_IP)
    space, key = live_space(netns, url)
    speaker_heard(netns, url, space, key)


def test_the_node_hands_speakers_stun_and_fresh_turn_credentials(tmp_path: Path) -> None:
    secret = "s3cret-for-this-test"
    server = AmphiServer(tmp_path / "data", None, "--stun", "stun:stun.example.org:3478",
                         "--turn", "turn:127.0.0.1:3478?transport=udp", "--turn", "turn:127.0.0.1:3478?transport=tcp",
                         "--turn-secret", secret, "--turn-ttl", "600").start()
    try:
        space, key = server.create("ice servers")
        r = server.http.get(f"/api/spaces/{space}/ice")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        r = server.http.get(f"/api/spaces/{space}/ice", headers={"authorization": "Bearer not-the-key"})
        assert r.status_code in (401, 403), r.text
        before = time.time()
        r = server.http.get(f"/api/spaces/{space}/ice", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
        stun, turn = r.json()["ice_servers"]
        assert stun == {"urls": ["stun:stun.example.org:3478"]}
        assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
        expiry, user = turn["username"].split(":")
        assert user == "host" and before + 600 - 1 <= int(expiry) <= time.time() + 600
        expected = base64.b64encode(hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest())
        assert turn["credential"] == expected.decode()

        # a speaker on stage gets its own, named after it
        pid, grant = server.on_stage(space, key, "Ada")
        r = server.http.get(f"/api/spaces/{space}/ice", headers={"authorization": f"Bearer {grant}"})
        assert r.status_code == 200 and r.json()["ice_servers"][1]["username"].endswith(f":{pid}")
    finally:
        server.stop()
