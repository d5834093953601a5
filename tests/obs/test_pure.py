"""The pure parts of amphi.obs: timeline files, the dashboard feed, percentiles from
histogram buckets, route templates, the JSON log formatter."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import orjson
import pytest

from amphi.obs import logging as obs_logging
from amphi.obs.feed import RING, Feed
from amphi.obs.metrics import LATENCY_BUCKETS, Metrics, quantile
from amphi.obs.timeline import TimelineFile, read
from amphi.obs.observer import JOIN_ROUTE, MEDIA_ROUTES
from amphi.web.routes import ROUTES

media_route = ROUTES.label  # the metric label of a path


def test_timeline_appends_survives_a_torn_line_and_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s" / "timeline.jsonl"
    f = TimelineFile(path, max_bytes=600)
    f.append({"t": 1.0, "kind": "space", "msg": "created"})
    for i in range(20):
        f.append({"t": 2.0 + i, "kind": "sample", "listeners": i})
    f.append({"t": 30.0, "kind": "space", "msg": "live -> ended"})  # lifecycle lines are always written
    f.close()
    with open(path, "ab") as torn:  # a crash in the middle of a write
        torn.write(b'{"t": 31.0, "kind": "sam')
    tl = read(path)
    assert tl.skipped == 1
    assert [e["msg"] for e in tl.events if e["kind"] == "space"] == ["created", "live -> ended"]
    assert [e["kind"] for e in tl.events].count("timeline_full") == 1
    assert 3 <= len(tl.samples) < 20 and [s["listeners"] for s in tl.samples] == list(range(len(tl.samples)))
    again = TimelineFile(path, max_bytes=600)  # reopened after a restart: still full, samples still dropped
    assert again.full
    again.close()


def test_feed_sends_snapshot_then_only_what_is_new() -> None:
    async def run() -> None:
        feed = Feed()
        feed.sample("node", {"t": 1, "listeners": 0})
        feed.event({"t": 1.5, "kind": "space", "msg": "created"})
        seq, snap = feed.snapshot()
        assert [m["type"] for m in orjson.loads(snap)] == ["sample", "event"]
        assert feed.since(seq) == (seq, b"")
        feed.sample("S", {"t": 2, "listeners": 3})
        new_seq, data = feed.since(seq)
        assert new_seq == seq + 1 and orjson.loads(data) == [{"type": "sample", "series": "S", "t": 2, "listeners": 3}]
        for i in range(RING + 5):
            feed.sample("node", {"t": 3 + i})
        assert feed.since(seq) is None  # fell off the ring: the stream sends a snapshot instead
        waiter = asyncio.ensure_future(feed.wait(5))
        await asyncio.sleep(0)
        feed.notify()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def test_quantile_from_bucket_differences() -> None:
    m = Metrics()
    for _ in range(90):
        m.request("r", 200, 0.0007)
    before = m.route_histograms()["r"]
    for _ in range(99):
        m.request("r", 200, 0.003)
    m.request("r", 200, 0.2)
    after = m.route_histograms()["r"]
    assert len(after) == len(LATENCY_BUCKETS) + 1
    p50 = quantile(0.5, before, after)
    assert 0.0025 < p50 <= 0.005  # only what came after the first read counts
    assert 0.1 < quantile(1.0, before, after) <= 0.25
    assert quantile(0.5, after, after) is None


def test_detector_states_are_checked() -> None:
    m = Metrics()
    m.set_detector_state("S", "surge")
    text = m.exposition().decode()
    assert 'amphi_detector_state{space="S",state="surge"} 1.0' in text
    assert 'amphi_detector_state{space="S",state="normal"} 0.0' in text
    with pytest.raises(ValueError, match="unknown detector state"):
        m.set_detector_state("S", "panic")
    m.forget_space("S")
    assert 'space="S"' not in m.exposition().decode()


@pytest.mark.parametrize("path, route", [
    ("/media/abc/t/l1.2.3/live.m3u8", "/media/{id}/t/{token}/live.m3u8"),
    ("/media/abc/t/l1.2.3/12.3.m4s", "/media/{id}/t/{token}/{msn}.{part}.m4s"),
    ("/media/abc/t/l1.2.3/12.m4s", "/media/{id}/t/{token}/{msn}.m4s"),
    ("/media/abc/t/l1.2.3/init.mp4", "/media/{id}/t/{token}/init.mp4"),
    ("/media/abc/12.m4s", "/media/{id}/{msn}.m4s"),
    ("/media/abc/vod.m3u8", "/media/{id}/vod.m3u8"),
    ("/media/abc/download.m4a", "/media/{id}/download.m4a"),
    ("/media/abc/../../etc/passwd", "/media/other"),
])
def test_media_routes_are_templates(path: str, route: str) -> None:
    assert media_route(path) == route


def test_the_dashboard_charts_routes_of_the_table() -> None:
    """obs is a leaf (it imports nothing of web): its route names must be the table's."""
    assert JOIN_ROUTE == ROUTES["join"].template
    assert MEDIA_ROUTES == tuple(ROUTES[n].template for n in ("media.part", "media.segment", "media.init"))


def test_json_formatter_carries_the_ids_and_fields() -> None:
    obs_logging.set_node_id("n1")
    record = logging.LogRecord("amphi.events", logging.INFO, __file__, 1, "space %s live", ("S",), None)
    record.fields = {"event": "space", "new": "live"}
    token = obs_logging.request_id.set("r1")
    try:
        line = json.loads(obs_logging.JsonFormatter().format(record))
    finally:
        obs_logging.request_id.reset(token)
    assert line["msg"] == "space S live" and line["node_id"] == "n1" and line["request_id"] == "r1"
    assert line["event"] == "space" and line["new"] == "live" and line["level"] == "info"
    assert "space_id" not in line
