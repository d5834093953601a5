"""Bad input gets a specific error, fast, and harms nothing else."""

import socket
import time

import httpx

from tests.integration.amphi_proc import wait_until


def test_errors_are_specific_and_the_program_goes_on(amphi) -> None:
    http = amphi.http
    space, key = amphi.create("victim")
    amphi.start_space(space, key)
    playlist = amphi.join(space)
    wait_until(lambda: "#EXTINF" in httpx.get(playlist).text, 10, "a first segment")

    def err(r: httpx.Response, status: int, code: str) -> None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == code

    err(http.get("/api/spaces/nope"), 404, "not_found")
    err(http.post("/api/spaces/nope/join"), 404, "not_found")
    media = playlist.rsplit("/", 1)[0]  # .../media/<space>/t/<token>
    err(http.get("/media/nope/live.m3u8"), 401, "unauthorized")  # the token is checked first
    err(http.get(media.replace(space, "nope") + "/live.m3u8"), 403, "forbidden")  # bound to its Space
    err(http.get(f"{media}/99999.m4s"), 404, "not_found")
    err(http.get(f"/media/{space}/../../etc/passwd"), 404, "not_found")
    err(http.post(f"{media}/live.m3u8"), 405, "method_not_allowed")
    err(http.post(f"/api/spaces/{space}/end"), 401, "unauthorized")
    err(http.post(f"/api/spaces/{space}/end", headers={"authorization": "Bearer wrong"}), 403, "forbidden")
    err(http.post(f"/api/spaces/{space}/start", headers={"authorization": f"Bearer {key}"}), 409, "illegal_transition")
    err(http.post("/api/spaces", json={"title": "x"}), 401, "api_key_required")
    api = amphi.api_headers
    err(http.post("/api/spaces", content=b"{not json", headers=api), 400, "malformed_body")
    err(http.post("/api/spaces", json=["a list"], headers=api), 400, "malformed_body")
    err(http.post("/api/spaces", json={"title": ""}, headers=api), 400, "malformed_body")
    err(http.post("/api/spaces", json={"title": "x", "starts_at": "soon"}, headers=api), 400, "malformed_body")
    too_big = http.post("/api/spaces", content=b'{"title": "' + b"x" * 100_000 + b'"}', headers=api)
    err(too_big, 413, "payload_too_large")
    # The unread body leaves the connection unusable: the answer says so, or a client reusing
    # the socket meets "Server disconnected" on its next request (the requests below reuse it).
    assert too_big.headers["connection"] == "close"
    refused = http.post(f"/api/spaces/{space}/speak", content=b"v=0\r\n" + b"x" * 60_000,
                        headers={"content-type": "application/sdp"})
    err(refused, 401, "unauthorized")
    assert refused.headers["connection"] == "close"
    sdp = {"authorization": f"Bearer {key}", "content-type": "application/sdp"}
    err(http.post(f"/api/spaces/{space}/speak", content=b"hello", headers=sdp), 400, "invalid_sdp")
    err(http.post(f"/api/spaces/{space}/speak", content=b"\xff\xfe", headers=sdp), 400, "invalid_sdp")
    err(http.post(f"/api/spaces/{space}/speak", content=b"v=0\r\n", headers=sdp), 400, "invalid_sdp")
    err(http.get(playlist, params={"_HLS_msn": "abc"}), 400, "bad_request")
    err(http.get(playlist, params={"_HLS_part": "1"}), 400, "bad_request")

    t = time.monotonic()
    err(http.get(playlist, params={"_HLS_msn": "100000", "_HLS_part": "0"}), 400, "beyond_live_edge")
    assert time.monotonic() - t < 0.5, "a request far beyond the live edge must be refused at once"

    # a body that claims more than it sends, then the client vanishes
    with socket.create_connection(("127.0.0.1", amphi.port)) as s:
        s.sendall(b"POST /api/spaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + amphi.api_key.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n{\"ti")

    # the server is still whole: same Space, still live, the program advancing
    assert amphi.status(space)["state"] == "live"
    before = amphi.node()["pipelines"][space]["ticks"]
    wait_until(lambda: amphi.node()["pipelines"][space]["ticks"] > before + 25, 5, "the program clock to advance")
    assert amphi.node()["pipelines"][space]["frames_dropped"] == 0


def test_scheduled_space_refuses_end_by_stranger_and_cancel_by_host_works(amphi) -> None:
    space, key = amphi.create("later", "2099-01-01T00:00:00Z")
    r = amphi.http.post(f"/api/spaces/{space}/start", headers={"authorization": "Bearer x"})
    assert r.status_code == 403
    ended = amphi.end_space(space, key)  # a host may cancel before the start
    assert ended["state"] == "ended" and ended["replay"] is None
