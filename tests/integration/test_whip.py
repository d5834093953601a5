"""WHIP (RFC 9725) on a real node: `amphi serve`, an aiortc speaker's real offer over httpx, and
`amphi speak`. The session resource (Location), its ETag, CORS for a page on another origin
(preflights and exposed headers), DELETE (204, then 404; the speaker is hung up), PATCH (trickle
ICE: 204; the refusals RFC 9725 asks for) and the credentials a session takes. No Link header
without STUN/TURN (the default); tests/web/test_whip_asgi.py covers Link with them."""

from __future__ import annotations

import asyncio
import re

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from amphi.media.ingest.compat import use_ice_addresses
from amphi.media.ingest.sources import ToneTrack
from tests.integration.amphi_proc import AmphiServer, Speaker, wait_until

FOREIGN = "http://127.0.0.1:9"  # a page's origin that is not the node's
SESSION = re.compile(r"^/api/spaces/(?P<space>[A-Za-z0-9_-]+)/speak/(?P<session>[A-Za-z0-9_-]{16,64})$")
EXPOSED = {"location", "etag", "link", "accept-patch"}


def exposed(r: httpx.Response) -> set[str]:
    return {h.strip().lower() for h in r.headers.get("access-control-expose-headers", "").split(",")}


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def test_whip_session_location_etag_cors_patch_delete(amphi: AmphiServer) -> None:
    space, key = amphi.create("WHIP")
    amphi.start_space(space, key)
    bob, grant = amphi.on_stage(space, key, "Bob")
    http = amphi.http

    # a page on another origin asks first (CORS preflight): POST with a bearer token is allowed
    pre = http.options(f"/api/spaces/{space}/speak", headers={
        "origin": FOREIGN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert pre.status_code == 204, pre.text
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    assert pre.headers["accept-post"] == "application/sdp"

    async def scenario() -> None:
        use_ice_addresses(("127.0.0.1",))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(ToneTrack(440.0), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        try:
            async with httpx.AsyncClient(base_url=amphi.url, timeout=30) as client:
                await speak_and_hang_up(client, pc, offer)
        finally:
            await pc.close()

    async def speak_and_hang_up(client: httpx.AsyncClient, pc: RTCPeerConnection, offer: str) -> None:
        sdp = {"content-type": "application/sdp", "origin": FOREIGN}
        r = await client.post(f"/api/spaces/{space}/speak", content=offer, headers={**sdp, **bearer(key)})
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/sdp"
        assert r.text.startswith("v=0")
        m = SESSION.match(r.headers["location"])
        assert m is not None and m["space"] == space, r.headers["location"]
        session = r.headers["location"]
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[A-Za-z0-9_-]{8,}"', etag), etag
        assert r.headers["accept-patch"] == "application/trickle-ice-sdpfrag"
        assert r.headers["access-control-allow-origin"] == "*"
        assert EXPOSED <= exposed(r), r.headers
        assert "link" not in r.headers  # no STUN/TURN configured: no ICE servers to hand out
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))

        # two sessions of one Space never share an id (a second offer replaces the first's connection)
        host = await asyncio.to_thread(wait_until, lambda: (h := amphi.member(space, "host")) and h["connected"] and h,
                                       15, "the host connected through WHIP")
        assert host["connected"]

        # the session's own preflight: DELETE and PATCH with If-Match, from any origin
        pre = await client.options(session, headers={
            "origin": FOREIGN, "access-control-request-method": "PATCH",
            "access-control-request-headers": "authorization, content-type, if-match"})
        assert pre.status_code == 204
        assert {"DELETE", "PATCH"} <= {x.strip() for x in pre.headers["access-control-allow-methods"].split(",")}
        assert pre.headers["accept-patch"] == "application/trickle-ice-sdpfrag"

        # PATCH: trickle ICE (a candidate the server already has from the offer: harmless, 204)
        ufrag = re.search(r"a=ice-ufrag:(\S+)", offer)[1]
        pwd = re.search(r"a=ice-pwd:(\S+)", offer)[1]
        candidate = re.search(r"a=(candidate:[^\r\n]+)", offer)[1]
        frag = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na={candidate}\r\n"
        trickle = {"content-type": "application/trickle-ice-sdpfrag", "origin": FOREIGN, **bearer(key)}
        r = await client.patch(session, content=frag, headers={**trickle, "if-match": etag})
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        r = await client.patch(session, content=frag, headers={**trickle, "if-match": '"not-this-one"'})
        assert (r.status_code, r.json()["error"]) == (412, "precondition_failed"), r.text
        r = await client.patch(session, content=frag, headers={**trickle, "if-match": "*"})  # an ICE restart
        assert (r.status_code, r.json()["error"]) == (422, "unprocessable"), r.text
        r = await client.patch(session, content=frag.replace(ufrag, "otherufrag"), headers={**trickle, "if-match": etag})
        assert r.status_code == 422, r.text
        r = await client.patch(session, content=frag, headers={**bearer(key), "content-type": "application/sdp"})
        assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type"), r.text
        r = await client.patch(session, content="a=candidate:nonsense\r\n", headers={**trickle, "if-match": etag})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_sdp"), r.text

        # DELETE takes the credential the offer was sent with
        r = await client.delete(session)
        assert r.status_code == 401, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        r = await client.delete(session, headers=bearer("not-the-host-key"))
        assert r.status_code == 403, r.text
        r = await client.delete(session, headers=bearer(grant))  # Bob's grant: not Bob's session
        assert (r.status_code, r.json()["error"]) == (403, "forbidden"), r.text
        r = await client.delete(f"/api/spaces/{space}/speak/{'x' * 24}", headers=bearer(key))
        assert r.status_code == 404, r.text
        assert (await asyncio.to_thread(amphi.member, space, "host"))["connected"]  # none of those hung up

        r = await client.delete(session, headers={**bearer(key), "origin": FOREIGN})
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == "*"
        await asyncio.to_thread(wait_until, lambda: not amphi.member(space, "host")["connected"], 10,
                                "the host hung up by DELETE")
        assert amphi.member(space, "host") is not None  # hanging up is not leaving the stage
        r = await client.delete(session, headers=bearer(key))
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), r.text
        r = await client.patch(session, content=frag, headers={**trickle, "if-match": etag})
        assert r.status_code == 404, r.text

    asyncio.run(scenario())
    # bob never spoke: his stage place is untouched by the host's session
    assert amphi.member(space, bob) is not None


def test_amphi_speak_deletes_its_whip_session_when_done(amphi: AmphiServer) -> None:
    space, key = amphi.create("WHIP client")
    amphi.start_space(space, key)
    speaker = Speaker(amphi, space, key, "--tone", "440", "--duration", "2").start()
    try:
        assert speaker.wait(30) == 0
    finally:
        speaker.stop()
    deleted = wait_until(lambda: [line for line in amphi.log.read_text(errors="replace").splitlines()
                                  if "hung up WHIP session" in line], 10, "the node to log the session's DELETE")
    assert "host" in deleted[0]
    assert not amphi.member(space, "host")["connected"]


def test_a_session_whose_connection_closed_first_is_still_deleted(amphi: AmphiServer) -> None:
    """Browser libraries close the peer connection, then DELETE: the close often arrives first.
    The owner's DELETE is still a 204 (within ENDED_SESSION_S), a stranger's a 403; then 404."""
    space, key = amphi.create("WHIP close first")
    amphi.start_space(space, key)

    async def scenario() -> None:
        use_ice_addresses(("127.0.0.1",))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(ToneTrack(440.0), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=amphi.url, timeout=30) as client:
            r = await client.post(f"/api/spaces/{space}/speak", content=pc.localDescription.sdp,
                                  headers={**bearer(key), "content-type": "application/sdp"})
            assert r.status_code == 201, r.text
            session = r.headers["location"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            await asyncio.to_thread(wait_until, lambda: amphi.member(space, "host")["connected"], 20,
                                    "the host connected")
            await pc.close()  # the client hangs up by itself first
            await asyncio.to_thread(wait_until, lambda: not amphi.member(space, "host")["connected"], 20,
                                    "the node to see the connection closed")
            r = await client.delete(session, headers=bearer("not-the-host-key"))
            assert r.status_code == 403, r.text
            r = await client.delete(session, headers=bearer(key))
            assert r.status_code == 204, r.text
            r = await client.delete(session, headers=bearer(key))
            assert r.status_code == 404, r.text

    asyncio.run(scenario())
