"""Streamed segments through a real edge (nginx front + Varnish) in front of a real origin: one
origin stream per segment for all of an edge's listeners, each part to every one of them as it
is made, and players' byte ranges answered exactly (docs/edge.md, "Streamed segments")."""

from __future__ import annotations

import asyncio
import socket

import httpx

from amphi.edge.varnish import FANOUT_WORKERS
from tests.edge.conftest import Tier
from tests.edge.streams import Answer, get, hint, open_msn, part_ends, parts_of
from tests.edge.test_edge import first_segment

LATE_S = 0.15  # a part reaches a listener through the edge at most this long after the origin sent it
SHAKA_RANGE = "bytes=0-9007199254740991"  # what Shaka Player asks for a segment still being made


def streams(tier: Tier) -> int:
    """Streamed segment answers the origin has begun."""
    return tier.origin.node()["origin"]["streams"]


def at_edge(url: str, tier: Tier, i: int) -> str:
    """``url`` (a listener's media URL at some edge) at edge ``i``."""
    return tier.edges[i].url + "/o/" + url.split("/o/", 1)[1]


def next_segment(tier: Tier) -> tuple[str, int, int]:
    """Waits (a blocking reload at the origin) until a segment has just closed; returns the
    media playlist URL at edge 0, the next segment's number (not begun) and the number of parts
    a segment has, read from the playlist."""
    url = at_edge(first_segment(tier), tier, 0)
    r = httpx.get(url, timeout=10, follow_redirects=True)  # a token past half its life: renewed
    playlist = r.text
    assert r.status_code == 200 and "#EXTINF" in playlist, (r.status_code, r.headers, playlist[:400])
    msn = open_msn(playlist)
    per_segment = len(parts_of(playlist, msn - 1))  # the last closed segment's parts
    assert per_segment >= 2, playlist
    direct = tier.origin.url + "/media/" + url.split("/media/", 1)[1]
    for part in range(per_segment):  # part by part: a reload may not ask far past the live edge
        # (a token past half its life is renewed with a 307: the tier's tokens live 10 s, and a
        # busy machine can take that long here)
        r = httpx.get(direct, params={"_HLS_msn": msn, "_HLS_part": part}, timeout=20, follow_redirects=True)
        closed = r.text
        assert r.status_code == 200 and ".m4s" in closed, (msn, part, r.status_code, r.headers, closed[:600])
    assert hint(closed) is None and open_msn(closed) == msn + 1, closed  # msn is whole; msn + 1 has not begun
    return url, msn + 1, per_segment


async def _late(delay_s: float, url: str, source: str) -> Answer:
    await asyncio.sleep(delay_s)
    return await get(url, source=source)


def test_many_listeners_share_one_origin_stream_and_get_each_part_as_it_is_made(tier: Tier) -> None:
    playlist, msn, per_segment = next_segment(tier)
    segment = playlist.rsplit("/", 1)[0] + f"/{msn}.m4s"
    direct = tier.origin.url + "/media/" + segment.split("/media/", 1)[1]
    before, fanned = streams(tier), tier.edges[0].fanout()
    # a listener that sends its GET and never reads (a tiny receive buffer: it is full at once)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.bind(("127.0.60.1", 0))
    stuck.connect(("127.0.0.1", tier.edges[0].port))
    stuck.sendall(f"GET /o/{segment.split('/o/', 1)[1]} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())

    async def listeners() -> tuple[Answer, list[Answer], list[Answer]]:
        # 40 before the segment begins (they wait on the edge for the origin's answer), from 4
        # addresses (the edge caps connections per address), and 10 more when it is half made
        early = [get(segment, source=f"127.0.61.{i % 4 + 1}") for i in range(40)]
        half = per_segment * 0.512 / 2
        midway = [_late(half, segment, source=f"127.0.62.{i % 2 + 1}") for i in range(10)]
        reference, *answers = await asyncio.gather(get(direct), *early, *midway)
        return reference, answers[:40], answers[40:]

    try:
        reference, early, midway = asyncio.run(listeners())
    finally:
        stuck.close()
    assert reference.status == 200 and reference.complete and "content-length" not in reference.headers
    ends = part_ends(reference.body)
    assert len(ends) == per_segment  # one moof + mdat a part
    made = [reference.arrived(end) for end in ends]  # when the origin sent each part
    assert made[-1] - made[0] > (per_segment - 2) * 0.512 * 0.8, made  # it was streamed, not sent at the end

    lateness = []
    for a in early + midway:
        assert a.status == 200 and a.complete and a.body == reference.body, (a.status, len(a.body), a.headers)
        for end, sent in zip(ends, made):
            # a part made before the listener came arrives with its first bytes; the others as made
            lateness.append(a.arrived(end) - max(sent, a.started))
    assert max(lateness) <= LATE_S, sorted(lateness)[-5:]
    assert streams(tier) - before == 2  # the reference's and the edge's one, for 51 listeners
    fanout = tier.edges[0].fanout()  # the edge's fan-out wrote the segment to all of them
    assert fanout["requests"] - fanned["requests"] == 51, fanout
    assert 1 <= fanout["fetches"] - fanned["fetches"] <= FANOUT_WORKERS, fanout  # a fetch per worker at most


def test_players_byte_ranges_through_the_edge_get_the_exact_bytes(tier: Tier) -> None:
    playlist, msn, per_segment = next_segment(tier)
    base = playlist.rsplit("/", 1)[0]
    segment = f"{base}/{msn}.m4s"
    second = at_edge(tier.origin.join(tier.space), tier, 0).rsplit("/", 1)[0] + f"/{msn}.m4s"  # another listener

    async def players() -> tuple[Answer, Answer, list[str], list[Answer], list[Answer]]:
        shaka = asyncio.create_task(get(segment, headers={"Range": SHAKA_RANGE}))  # before the segment begins
        whole = asyncio.create_task(get(segment))
        # hls.js: each part's bytes, asked once the playlist lists the part (a blocking reload)
        async with httpx.AsyncClient(timeout=20) as c:
            listed = (await c.get(playlist, params={"_HLS_msn": msn, "_HLS_part": 2}, follow_redirects=True)).text
        ranges = [f"bytes={off}-{off + size - 1}" for off, size in parts_of(listed, msn)]
        assert len(ranges) >= 3, listed
        first = await asyncio.gather(*[get(segment, headers={"Range": r}) for r in ranges])
        again = await asyncio.gather(*[get(second, headers={"Range": r}) for r in ranges])
        return await shaka, await whole, ranges, first, again

    shaka, whole, ranges, first, again = asyncio.run(players())
    assert whole.status == 200 and whole.complete
    assert shaka.status == 200 and shaka.complete and shaka.body == whole.body  # the streamed segment
    assert len(shaka.arrivals) >= per_segment - 1  # part by part, not at the end
    for asked, a, b in zip(ranges, first, again):
        offset, last = (int(x) for x in asked.removeprefix("bytes=").split("-"))
        assert a.status == 206 and a.headers["content-range"] == f"bytes {offset}-{last}/*", a.headers  # still made
        assert a.body == whole.body[offset:last + 1]
        assert b.status == 206 and b.body == a.body and b.headers["x-cache"] == "hit"  # the edge's copy
    # on the segment once whole: exact too (a range from byte 0 to the end from the edge's copy),
    # with a new listener's token (the tier's last 10 s)
    segment = at_edge(tier.origin.join(tier.space), tier, 0).rsplit("/", 1)[0] + f"/{msn}.m4s"
    r = httpx.get(segment, headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206 and r.content == whole.body[100:200]
    for _ in range(4):  # new connections: each fan-out worker, whether it has the segment yet or not
        r = httpx.get(segment, headers={"Range": SHAKA_RANGE}, timeout=10)
        assert r.status_code == 206 and r.content == whole.body, r.headers
        assert r.headers["content-range"] == f"bytes 0-{len(whole.body) - 1}/{len(whole.body)}"
    # a player on another page's origin: the preflight for its Range is the edge's
    r = httpx.options(segment, headers={"origin": "https://elsewhere.example", "access-control-request-headers": "range"})
    assert r.status_code == 204 and "range" in r.headers["access-control-allow-headers"]



def test_the_joins_multivariant_playlist_is_served_by_the_edge(tier: Tier) -> None:
    first_segment(tier)
    index = tier.origin.join(tier.space, multivariant=True)
    assert index.startswith(tuple(e.url for e in tier.edges)) and index.endswith("/index.m3u8")
    r = httpx.get(index, timeout=10)
    assert r.status_code == 200 and r.headers["x-edge"] and 'CODECS="mp4a.40.2"' in r.text
    media = r.text.strip().splitlines()[-1]  # the one variant, relative to the multivariant playlist
    live = httpx.get(index.rsplit("/", 1)[0] + "/" + media, timeout=10)
    assert live.status_code == 200 and parts_of(live.text, open_msn(live.text) - 1)
