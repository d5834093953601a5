"""WHIP's ICE servers (RFC 9725 section 4.4): a node configured with STUN and TURN hands them to a
WHIP client in ``Link`` headers on the 201, the TURN one with a TURN REST credential that checks
out against the shared secret. The whole node (``amphi.node.Node``: real pipeline, real ingest)
driven at the ASGI level, with a real aiortc offer; tests/integration/test_whip.py covers the
rest with a node process (whose default config has no STUN/TURN, so no Link)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from pathlib import Path

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from amphi.core.config import Config, IceConfig
from amphi.media.ingest.compat import use_ice_addresses
from amphi.media.ingest.sources import ToneTrack
from amphi.node import Node

STUN = "stun:stun.example.net:3478"
TURN = ("turn:turn.example.net:3478?transport=udp", "turns:turn.example.net:5349?transport=tcp")
SECRET = "coturn-static-auth-secret"
LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="ice-server"(?:; username="(?P<user>[^"]+)"; '
                  r'credential="(?P<cred>[^"]+)"; credential-type="password")?$')


async def offer() -> tuple[RTCPeerConnection, str]:
    use_ice_addresses(("127.0.0.1",))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(ToneTrack(440.0), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_the_201_carries_the_ice_servers_in_link_headers(tmp_path: Path) -> None:
    ice = IceConfig(stun=(STUN,), turn=TURN, turn_secret=SECRET, turn_ttl_s=3600)
    node = Node(Config(data_dir=tmp_path / "data", ice=ice, operator_key="whip-operator"))
    await node.open()
    pc, sdp = await offer()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=node.app.asgi),
                                     base_url="http://node.test") as http:
            r = await http.post("/api/spaces", json={"title": "Link"},
                                headers={"authorization": "Bearer whip-operator"})  # an API key (docs/keys.md)
            space, key = r.json()["id"], r.json()["host_key"]
            auth = {"authorization": f"Bearer {key}"}
            assert (await http.post(f"/api/spaces/{space}/start", headers=auth)).status_code == 200
            before = time.time()
            r = await http.post(f"/api/spaces/{space}/speak", content=sdp,
                                headers={**auth, "content-type": "application/sdp"})
            assert r.status_code == 201, r.text
            links = [LINK.match(v) for v in r.headers.get_list("link")]
            assert all(links), r.headers.get_list("link")
            assert [m["url"] for m in links] == [STUN, *TURN]
            assert links[0]["user"] is None  # STUN: no credential
            for m in links[1:]:
                expiry, _, user = m["user"].partition(":")
                assert user == "host" and before + 3600 - 1 <= int(expiry) <= time.time() + 3600
                expected = base64.b64encode(hmac.new(SECRET.encode(), m["user"].encode(), hashlib.sha1).digest())
                assert m["cred"] == expected.decode()
            assert "link" in r.headers["access-control-expose-headers"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))

            # a content type other than SDP is refused before anything is answered
            r2 = await http.post(f"/api/spaces/{space}/speak", content=sdp,
                                 headers={**auth, "content-type": "application/json"})
            assert (r2.status_code, r2.json()["error"]) == (415, "unsupported_media_type"), r2.text

            r = await http.delete(r.headers["location"], headers=auth)
            assert r.status_code == 204, r.text
    finally:
        await pc.close()
        await node.close()


async def test_a_session_deleted_before_it_connects_closes_its_peer_connection(tmp_path: Path) -> None:
    """A DELETE right after the offer, before ICE got anywhere: the node's peer connection (and
    its ICE socket) is closed at once. (Its task, cancelled before its first step, never ran
    its own clean-up: each such session kept a UDP socket open for good.)"""
    import psutil

    def udp_sockets() -> int:
        return len(psutil.Process().net_connections(kind="udp"))

    node = Node(Config(data_dir=tmp_path / "data", operator_key="whip-operator"))
    await node.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=node.app.asgi),
                                     base_url="http://node.test") as http:
            r = await http.post("/api/spaces", json={"title": "DELETE early"},
                                headers={"authorization": "Bearer whip-operator"})
            space, key = r.json()["id"], r.json()["host_key"]
            auth = {"authorization": f"Bearer {key}"}
            before = udp_sockets()
            for _ in range(3):
                pc, sdp = await offer()
                try:
                    r = await http.post(f"/api/spaces/{space}/speak", content=sdp,
                                        headers={**auth, "content-type": "application/sdp"})
                    assert r.status_code == 201, r.text
                    assert udp_sockets() == before + 2  # ours and the node's
                    assert (await http.delete(r.headers["location"], headers=auth)).status_code == 204
                    assert udp_sockets() == before + 1  # the node's is closed by the time DELETE answers
                finally:
                    await pc.close()
            assert udp_sockets() == before
            assert node.ingest.connections == 0
    finally:
        await node.close()
