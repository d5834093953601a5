"""The Space outlives its origin, the rest (docs/cluster.md, issue 19): the standby killed
(nothing audible happens, another node stands by), and the host killed while Redis restarts
empty. Real processes: redis-server, `amphi serve --redis` nodes, a Varnish edge in front of
them, `amphi speak` and ffmpeg through the edge; the helpers are tests/integration/test_failover.py's."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.audio import SR
from tests.integration.amphi_proc import wait_until
from tests.integration.test_failover import (  # noqa: F401 (cluster: a fixture)
    SECRET, TONE_HZ, Cluster, Listener, cluster, copied, edge_cluster, failover, listen, live_space, longest_gap_s,
    replay, speaker_via, stop_speaker, tone_windows)

STANDBY_CHOSEN_S = 6.0  # a dead standby's offer lapses after STANDBY_TTL_S (4.5 s); the next pass takes it


@pytest.fixture
def trio(tmp_path: Path, redis_server, monkeypatch) -> Iterator[Cluster]:
    """test_failover.py's cluster with a third node: a, b, c behind one edge."""
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    with edge_cluster(tmp_path, redis_server.url, "abc") as c:
        yield c


def heard_through(listener: Listener, seconds: float) -> list[bool]:
    """The tone, quarter second by quarter second, in what ffmpeg read (all of ``seconds``)."""
    listener.join(120)
    assert not listener.is_alive()
    audio = np.frombuffer(listener.pcm, dtype=np.float32)
    assert len(audio) >= (seconds - 0.5) * SR, f"ffmpeg stopped after {len(audio) / SR:.1f} s: {listener.err}"
    return tone_windows(audio, TONE_HZ)


def test_kill_9_of_the_standby_is_not_heard_and_another_node_stands_by_then_takes_over(trio) -> None:
    c = trio
    space, key = c.a.create("the standby dies")
    c.a.start_space(space, key)
    started = time.monotonic()
    speaker = speaker_via(c.edge.url, space, key, TONE_HZ)
    try:
        standby = wait_until(lambda: next((n for n in "bc" if copied(c.nodes[n], space) >= 2), None), 30,
                             "node b or c to stand by and copy two segments", interval=0.3)
        other = "c" if standby == "b" else "b"
        assert copied(c.nodes[other], space) == 0  # one standby
        first = listen(c, space, 16)
        n = copied(c.nodes[standby], space)
        wait_until(lambda: copied(c.nodes[standby], space) >= n + 1, 10, "a segment more while ffmpeg listens", 0.2)
        c.nodes[standby].kill9()
        killed = time.monotonic()
        wait_until(lambda: copied(c.nodes[other], space) >= 1, 10, f"node {other} to stand by", interval=0.1)
        chosen_s = time.monotonic() - killed
        assert failover(c.nodes[other])["standbys"][space]["origin"] == c.a.url
        assert chosen_s <= STANDBY_CHOSEN_S, chosen_s
        heard = heard_through(first, 16)
        begin = heard.index(True)
        assert all(heard[begin:]), f"a gap of {longest_gap_s(heard[begin:])} s: {heard}"  # nothing audible
        assert failover(c.a)["takeovers"] == failover(c.a)["fenced"] == 0

        # the new standby carries the Space on when the host dies
        n = copied(c.nodes[other], space)
        second = listen(c, space, 16)
        wait_until(lambda: copied(c.nodes[other], space) >= n + 1, 10, "a segment more while ffmpeg listens", 0.2)
        c.a.kill9()
        killed = time.monotonic()
        wait_until(lambda: failover(c.nodes[other])["takeovers"] == 1, 10, f"node {other} to take over", 0.1)
        took_s = time.monotonic() - killed
        heard = heard_through(second, 16)
        begin = heard.index(True)
        assert longest_gap_s(heard[begin:]) <= 5.0, (took_s, heard)
        assert sum(heard[-16:]) >= 12, heard  # the tone is back at the end: the speaker found the new host
        assert c.nodes[other].status(space)["state"] == "live"
        wait_until(lambda: c.nodes[other].node()["speakers"] == 1, 15, f"the speaker on node {other}", 0.3)
        assert space in c.nodes[other].node()["pipelines"]
        print(f"standby chosen {chosen_s:.2f} s after the kill; take-over {took_s:.2f} s after the host's kill")
        c.nodes[other].end_space(space, key)
        lived_s = time.monotonic() - started
    finally:
        stop_speaker(speaker)
    # the replay, on the node that ended it, covers the whole Space but for the take-over's gap,
    # although that node began copying only when the first standby died
    vod, audio, msns = replay(c.nodes[other], space)
    assert msns == list(range(msns[0], msns[-1] + 1)), msns
    assert vod.count("#EXT-X-DISCONTINUITY\n") == 1, vod
    covered_s = sum(float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", vod))
    assert covered_s >= lived_s - 3.0 - 1.0, (covered_s, lived_s, vod)  # one gap of <= 3 s; the last part
    print(f"the replay holds {covered_s:.1f} s of a Space live {lived_s:.1f} s, segments {msns[0]}-{msns[-1]}")


def test_kill_9_of_the_host_while_redis_restarts_empty_the_standby_takes_the_space_over(cluster, redis_server) -> None:  # noqa: F811
    """Redis stopped, the host killed, Redis started again with nothing: no one re-publishes the
    dead host's Space, yet its standby (which saw the lease held) takes it over once the reclaim
    window (RECLAIM_S after the new epoch) has passed; the speaker, pointed at the edge, ends up
    on b; a listener's playlist URL from before (its token, its seat) plays the Space from b
    without joining again. (While Redis is away and the host dead, no node can take the lease: a
    player's reloads meanwhile get 503 Retry-After, which ffmpeg does not retry, so the listener
    is judged by its URL once the take-over is done.)"""
    c = cluster
    space, key, speaker = live_space(c)
    try:
        joined = httpx.post(f"{c.edge.url}/api/spaces/{space}/join", json={}, timeout=10).json()
        before = Listener(joined["media_playlist"], 4)
        before.start()
        assert sum(heard_through(before, 4)) >= 12  # heard through the edge from a
        redis_server.stop()
        c.a.kill9()
        killed = time.monotonic()
        redis_server.start()
        back = time.monotonic()
        try:
            wait_until(lambda: failover(c.b)["takeovers"] == 1, 20, "node b to take the Space over", interval=0.1)
        except AssertionError as e:
            seen = c.b.http.get(f"/api/spaces/{space}")
            raise AssertionError(f"{e}; node b's failover: {failover(c.b)}; the Space on b: {seen.status_code} "
                                 f"{seen.text[:200]}") from None
        took_s, after_redis_s = time.monotonic() - killed, time.monotonic() - back
        print(f"take-over {took_s:.2f} s after the kill, {after_redis_s:.2f} s after redis was back")
        assert c.b.status(space)["state"] == "live"
        wait_until(lambda: c.b.node()["speakers"] == 1, 15, "the speaker to end up on node b", interval=0.3)
        assert space in c.b.node()["pipelines"]
        after = Listener(joined["media_playlist"], 6)  # the same URL and token: no new join
        after.start()
        assert sum(heard_through(after, 6)) >= 18, took_s  # the tone, from b, through the edge
        assert sum(heard_through(listen(c, space, 6), 6)) >= 20  # a new join through the edge hears it too
    finally:
        stop_speaker(speaker)
