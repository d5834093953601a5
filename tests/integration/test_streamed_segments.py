"""Streamed segments (docs/streaming.md), against the real server: a segment still being made is
one response that carries each part the moment it exists; its parts are byte ranges of it;
ranges are honoured; the join names a multivariant playlist; any origin may embed a Space."""

import socket
import struct
import time

import httpx

from tests.integration.amphi_proc import wait_until


def boxes(data: bytes) -> list[tuple[str, int]]:
    """(type, size) of each top-level ISO-BMFF box; the data must end on a box boundary."""
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        assert size >= 8 and at + size <= len(data), f"a box cut at {at}"
        out.append((kind.decode(), size))
        at += size
    return out


def hint(text: str) -> tuple[int, int]:
    """(msn, first byte) of the next part: named by the preload hint inside a segment being made;
    between segments there is none, and the next part opens the segment after the newest one."""
    hints = [line for line in text.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT")]
    if not hints:
        newest = [line for line in text.splitlines() if line.endswith(".m4s") and not line.startswith("#")][-1]
        return int(newest.removesuffix(".m4s")) + 1, 0
    line = hints[0]
    assert line.startswith("#EXT-X-PRELOAD-HINT:TYPE=PART,URI="), line
    return int(line.split('URI="')[1].split(".")[0]), int(line.split("BYTERANGE-START=")[1])


def unbegun(text: str) -> int:
    """A segment not begun yet, that the origin holds a request for: the next part's if that
    part opens it, else the one after it."""
    msn, start = hint(text)
    return msn + (start > 0)


def byteranges(text: str, msn: int) -> list[tuple[int, int]]:
    """(offset, length) of each listed part of segment ``msn``."""
    out = []
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:") and f'URI="{msn}.m4s"' in line:
            length, offset = line.split('BYTERANGE="')[1].split('"')[0].split("@")
            out.append((int(offset), int(length)))
    return out


def live(amphi, name: str) -> tuple[str, str]:
    space, key = amphi.create(name)
    amphi.start_space(space, key)
    playlist = amphi.join(space)
    wait_until(lambda: "#EXTINF" in httpx.get(playlist).text, 15, "a first segment")
    return space, playlist


def test_an_open_segment_is_streamed_part_by_part_and_is_the_segment(amphi) -> None:
    space, playlist = live(amphi, "streamed")
    base = playlist.rsplit("/", 1)[0]
    with httpx.Client(timeout=20) as client:
        msn = unbegun(client.get(playlist).text)
        arrivals: list[tuple[float, int]] = []  # (time, bytes so far)
        data = b""
        with client.stream("GET", f"{base}/{msn}.m4s") as r:
            assert r.status_code == 200 and "content-length" not in r.headers
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            for chunk in r.iter_raw():
                data += chunk
                arrivals.append((time.monotonic(), len(data)))
        kinds = [k for k, _ in boxes(data)]
        parts = kinds.count("moof")
        assert kinds == ["moof", "mdat"] * parts and parts >= 2
        # the parts came over the segment's life, not all at once at its end: a part every 0.512 s
        assert arrivals[-1][0] - arrivals[0][0] >= 0.5 * (parts - 1) * 0.512, arrivals
        # the same bytes as the complete segment, which the playlist lists part by part
        whole = client.get(f"{base}/{msn}.m4s")
        assert whole.status_code == 200 and whole.content == data
        assert int(whole.headers["content-length"]) == len(data)
        text = client.get(playlist).text
        ranges = byteranges(text, msn)
        assert len(ranges) == parts and ranges[0][0] == 0 and sum(n for _, n in ranges) == len(data)
        for offset, length in ranges:  # each listed range is exactly one part
            assert [k for k, _ in boxes(data[offset:offset + length])] == ["moof", "mdat"]
    node = amphi.node()["origin"]
    assert node["streams"] >= 1 and node["streams_open"] == 0 and node["streams_cut"] == 0


def test_ranges_of_complete_and_growing_segments(amphi) -> None:
    space, playlist = live(amphi, "ranges")
    base = playlist.rsplit("/", 1)[0]
    with httpx.Client(timeout=20) as client:
        text = client.get(playlist).text
        done = int([line for line in text.splitlines() if line.endswith(".m4s") and not line.startswith("#")][-1][:-4])
        whole = client.get(f"{base}/{done}.m4s").content
        r = client.get(f"{base}/{done}.m4s", headers={"range": "bytes=10-99"})
        assert r.status_code == 206 and r.content == whole[10:100]
        assert r.headers["content-range"] == f"bytes 10-99/{len(whole)}"
        r = client.get(f"{base}/{done}.m4s", headers={"range": f"bytes={len(whole)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(whole)}"
        # a growing segment: a range beyond what exists waits for the part that holds it
        msn, start = hint(client.get(playlist).text)
        r = client.get(f"{base}/{msn}.m4s", headers={"range": f"bytes={start + 1}-{start + 20}"})
        assert r.status_code == 206 and len(r.content) == 20
        assert r.headers["content-range"] in (f"bytes {start + 1}-{start + 20}/*",) or r.headers[
            "content-range"].startswith(f"bytes {start + 1}-{start + 20}/")
        # Shaka Player's request for a whole growing segment is the streamed whole
        msn2 = hint(client.get(playlist).text)[0]
        with client.stream("GET", f"{base}/{msn2}.m4s", headers={"range": "bytes=0-9007199254740991"}) as s:
            assert s.status_code == 200
            streamed = b"".join(s.iter_raw())
        assert streamed == client.get(f"{base}/{msn2}.m4s").content
        # further ahead than the next segment: nothing to wait for
        assert client.get(f"{base}/{msn2 + 5}.m4s").status_code == 404


def test_a_listener_that_leaves_mid_segment_is_let_go(amphi) -> None:
    space, playlist = live(amphi, "leaver")
    msn = unbegun(httpx.get(playlist).text)
    path = playlist.split("127.0.0.1:")[1].split("/", 1)[1].rsplit("/", 1)[0]
    with socket.create_connection(("127.0.0.1", amphi.port)) as s:
        s.sendall(f"GET /{path}/{msn}.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: amphi.node()["origin"]["streams_open"] == 1, 10, "the stream to begin")
    wait_until(lambda: amphi.node()["origin"]["streams_open"] == 0, 2, "the stream to be let go")
    assert amphi.node()["origin"]["streams_cut"] == 1


def test_the_join_names_a_multivariant_playlist_and_any_origin_may_embed(amphi) -> None:
    space, key = amphi.create("embed")
    amphi.start_space(space, key)
    index = amphi.join(space, multivariant=True)
    assert index.endswith("/index.m3u8")
    with httpx.Client(timeout=10, headers={"origin": "http://elsewhere.example"}) as client:
        r = client.get(index)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        lines = r.text.splitlines()
        assert lines[0] == "#EXTM3U" and lines[-1] == "live.m3u8"
        inf = lines[-2]
        assert inf.startswith("#EXT-X-STREAM-INF:") and 'CODECS="mp4a.40.2"' in inf
        bandwidth = int(inf.split("BANDWIDTH=")[1].split(",")[0])
        assert 64_000 <= bandwidth <= 100_000  # 64 kbit/s AAC and its boxes
        media = client.get(f"{index.rsplit('/', 1)[0]}/{lines[-1]}")
        assert media.status_code == 200 and media.text.startswith("#EXTM3U")
        for url, method in ((f"{amphi.url}/api/spaces/{space}/join", "POST"), (index, "GET")):
            pre = client.options(url, headers={"access-control-request-method": method,
                                               "access-control-request-headers": "content-type, range"})
            assert pre.status_code == 204, (url, pre.status_code)
            assert pre.headers["access-control-allow-origin"] == "*"
            assert method in pre.headers["access-control-allow-methods"]
            assert "range" in pre.headers["access-control-allow-headers"]
        joined = client.post(f"{amphi.url}/api/spaces/{space}/join", json={})
        assert joined.headers["access-control-allow-origin"] == "*"
