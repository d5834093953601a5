"""LL-HLS blocking playlist reload and preload hints, against the real server."""

import socket
import time

import httpx

from tests.integration.amphi_proc import wait_until


def hinted(text: str) -> tuple[int, int]:
    """(msn, index) of the next part: the hint names its segment and first byte, and its index is
    the number of parts of that segment listed before it; between segments there is no hint,
    and the next part opens the segment after the newest whole one."""
    hint = [line for line in text.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT")]
    if not hint:
        newest = [line for line in text.splitlines() if line.endswith(".m4s") and not line.startswith("#")][-1]
        return int(newest.removesuffix(".m4s")) + 1, 0
    uri = hint[0].split('URI="')[1].split('"')[0]
    return int(uri.split(".")[0]), text.count(f'URI="{uri}",BYTERANGE=')


def test_blocking_reload_returns_when_the_part_exists(amphi) -> None:
    space, key = amphi.create("blocking")
    amphi.start_space(space, key)
    playlist = amphi.join(space)
    with httpx.Client(timeout=10) as client:
        first = client.get(playlist)
        assert first.headers["cache-control"] == "public, max-age=1"
        msn, part = hinted(first.text)
        t = time.monotonic()
        r = client.get(playlist, params={"_HLS_msn": msn, "_HLS_part": part})
        waited = time.monotonic() - t
        assert r.status_code == 200
        assert r.text.count(f'URI="{msn}.m4s",BYTERANGE=') > part  # the part is listed now
        assert waited < 1.5  # at most about one part
        # the hinted part is served as soon as it exists, and is immutable
        nxt = hinted(r.text)
        p = client.get(playlist.split("?")[0].replace("live.m3u8", f"{nxt[0]}.{nxt[1]}.m4s"))
        assert p.status_code == 200 and p.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert p.content[4:8] == b"moof"


def test_a_client_that_leaves_frees_its_slot_at_once(amphi) -> None:
    space, key = amphi.create("leaver")
    amphi.start_space(space, key)
    playlist = amphi.join(space)
    text = httpx.get(playlist).text
    msn, _ = hinted(text)
    path = playlist.split("127.0.0.1:")[1].split("/", 1)[1].split("?")[0]
    request = f"GET /{path}?_HLS_msn={msn + 1}&_HLS_part=0 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", amphi.port)) as s:
        s.sendall(request)
        wait_until(lambda: amphi.node()["origin"]["blocking_waiting"] == 1, 3, "the request to wait")
    # the wanted point is seconds away; the slot must be free long before that
    wait_until(lambda: amphi.node()["origin"]["blocking_waiting"] == 0, 1.0, "the slot to be freed")
    assert amphi.node()["origin"]["blocking_disconnects"] == 1
