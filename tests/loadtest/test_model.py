"""The load test's pure parts: playback buffer, arrival schedules, playlist parsing, histograms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from amphi.loadtest import playlist as m3u8
from amphi.loadtest.buffer import Playback, PlaybackBuffer
from amphi.loadtest.http import _dechunk, split_url
from amphi.loadtest.profiles import backoff_s, retry_delay_s, schedule
from amphi.loadtest.run import window_means
from amphi.loadtest.stats import Histogram

GOLDEN = Path(__file__).parent.parent / "golden"


# -- playback buffer ------------------------------------------------------------------------


def test_buffer_starts_once_enough_is_buffered_and_drains_in_real_time() -> None:
    b = PlaybackBuffer(start_s=1.0)
    b.add(0.5, now=10.0)
    assert b.state is Playback.STARTING and b.buffered(10.4) == pytest.approx(0.5)  # not draining yet
    b.add(0.5, now=10.5)
    assert b.state is Playback.PLAYING and b.started_at == 10.5
    assert b.buffered(11.0) == pytest.approx(0.5)
    b.add(0.5, now=11.0)
    assert b.buffered(11.25) == pytest.approx(0.75)
    assert b.stalls == 0 and b.stalled_seconds(11.25) == 0.0


def test_buffer_parts_arriving_in_time_never_stall() -> None:
    b = PlaybackBuffer(start_s=0.512)
    t = 0.0
    for _ in range(3):  # the start: three parts behind live
        b.add(0.512, now=t)
    for _ in range(200):  # then one part every 0.512 s, a little late now and then
        t += 0.512
        b.add(0.512, now=t + (0.3 if _ % 7 == 0 else 0.0))
    assert b.stalls == 0 and b.stalled_seconds(t) == 0.0


def test_buffer_stall_starts_when_dry_and_is_measured_until_it_resumes() -> None:
    b = PlaybackBuffer(start_s=0.5, resume_s=0.5)
    b.add(1.5, now=0.0)  # playing, 1.5 s buffered
    b.add(0.5, now=4.0)  # nothing for 4 s: dry at 1.5 s, stalled 2.5 s
    assert b.stalls == 1
    assert b.state is Playback.PLAYING
    assert b.stall_s == pytest.approx(2.5)
    assert b.stalled_seconds(4.2) == pytest.approx(2.5)


def test_the_longest_gap_is_the_longest_episode_the_open_one_included() -> None:
    b = PlaybackBuffer(start_s=0.5, resume_s=0.5)
    assert b.longest_gap(0.0) == 0.0
    b.add(1.0, now=0.0)
    b.add(0.5, now=2.0)  # dry at 1.0: a 1.0 s gap
    b.add(0.5, now=2.6)  # dry at 2.5, back at 2.6: 0.1 s
    assert b.stalls == 2 and b.longest_gap(2.6) == pytest.approx(1.0)
    assert b.longest_gap(6.1) == pytest.approx(3.0)  # dry since 3.1, still stalled: the open one is longest


def test_buffer_open_stall_counts_to_now_and_resumes_only_at_the_threshold() -> None:
    b = PlaybackBuffer(start_s=0.5, resume_s=1.0)
    b.add(0.5, now=0.0)
    assert b.buffered(1.0) == 0.0 and b.state is Playback.STALLED
    assert b.stalled_seconds(2.0) == pytest.approx(1.5)  # dry since 0.5
    b.add(0.5, now=2.0)  # below resume_s: still stalled
    assert b.state is Playback.STALLED and b.stalls == 1
    b.add(0.5, now=2.5)
    assert b.state is Playback.PLAYING and b.stall_s == pytest.approx(2.0)


def test_buffer_latency_behind_live_from_program_date_time() -> None:
    b = PlaybackBuffer(start_s=0.5)
    b.add(0.5, now=1000.2, pdt=999.0)  # made at 999.0..999.5, arrived at 1000.2
    assert b.latency(1000.2) == pytest.approx(1000.2 - 999.0)  # hears 999.0 now
    b.add(0.5, now=1000.7)  # contiguous, no date-time: continues
    assert b.latency(1000.7) == pytest.approx(1.2)  # real-time playback keeps the distance
    assert PlaybackBuffer(start_s=0.5).latency(5.0) is None


# -- schedules --------------------------------------------------------------------------------


def test_ramp_is_even_and_surge_is_front_loaded_within_the_window() -> None:
    ramp = schedule("ramp", 100, duration_s=30, ramp_s=10)
    assert [s.arrive_s for s in ramp[:3]] == [0.0, 0.1, 0.2] and ramp[-1].arrive_s == pytest.approx(9.9)
    surge = schedule("surge", 1000, duration_s=30, ramp_s=3, seed=7)
    times = [s.arrive_s for s in surge]
    assert len(times) == 1000 and times == sorted(times) and 0 <= times[0] and times[-1] <= 3
    assert sum(t < 1 for t in times) > sum(t >= 2 for t in times) * 3  # most arrive at the start
    assert schedule("surge", 1000, duration_s=30, ramp_s=3, seed=7) == surge  # seeded


def test_poisson_rate_and_churn_sessions() -> None:
    p = schedule("poisson", 2000, duration_s=60, ramp_s=20, seed=3)
    gaps = [b.arrive_s - a.arrive_s for a, b in zip(p, p[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.01, rel=0.1)  # 100 per second
    c = schedule("churn", 50, duration_s=30, ramp_s=5, stay_s=3, gap_s=1, seed=3)
    assert len(c) > 150  # each place is taken again and again
    assert all(s.arrive_s < 30 and (s.leave_s is None or s.arrive_s < s.leave_s < 30) for s in c)
    assert sum(s.leave_s is None for s in c) <= 50  # at most one open session per place


def test_reconnect_drops_everyone_at_once() -> None:
    r = schedule("reconnect", 10, duration_s=30, ramp_s=6, drop_at_s=12)
    assert {s.drop_s for s in r} == {12}
    with pytest.raises(ValueError):
        schedule("reconnect", 10, duration_s=30, ramp_s=6, drop_at_s=3)


def test_unknown_profiles_fail() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        schedule("tsunami", 10, duration_s=10, ramp_s=1)


def test_backoff_grows_with_full_jitter_and_polls_are_never_early() -> None:
    rng = random.Random(1)
    first = [backoff_s(0, rng) for _ in range(1000)]
    later = [backoff_s(5, rng) for _ in range(1000)]
    assert max(first) <= 0.5 and max(later) <= 16 and sum(later) / 1000 > 5 * sum(first) / 1000
    assert all(backoff_s(40, rng) <= 30 for _ in range(100))
    assert all(2.0 <= retry_delay_s(2.0, rng) <= 2.2 for _ in range(100))


# -- playlists, HTTP framing, histograms --------------------------------------------------------


def test_parse_live_playlist_with_parts_hint_and_date_times() -> None:
    pl = m3u8.parse((GOLDEN / "live.m3u8").read_text())
    assert pl.can_block_reload and pl.part_hold_back == pytest.approx(1.536) and pl.part_target == pytest.approx(0.512)
    assert pl.map_uri == "init.mp4" and not pl.ended
    assert (pl.preload_hint, pl.preload_hint_start) == ("5.m4s", 660)  # the next part: from byte 660 of 5.m4s
    assert [s.msn for s in pl.complete_segments] == [0, 1, 2, 3, 4]
    assert pl.segments[-1].uri is None and len(pl.segments[-1].parts) == 3  # the open segment
    parts = pl.parts
    assert (parts[0].msn, parts[0].index, parts[0].uri, parts[0].byterange) == (3, 0, "3.m4s", (220, 0))
    assert (parts[-1].msn, parts[-1].index, parts[-1].byterange) == (5, 2, (220, 440))
    assert (pl.last_part.msn, pl.last_part.index) == (5, 2)
    assert parts[1].pdt - parts[0].pdt == pytest.approx(0.512)
    assert pl.segments[1].pdt - pl.segments[0].pdt == pytest.approx(3.584, abs=1e-3)
    ended = m3u8.parse((GOLDEN / "live_ended.m3u8").read_text())
    assert ended.ended and not ended.parts
    with pytest.raises(ValueError):
        m3u8.parse("<html>")


def test_listeners_that_got_the_same_playlist_bytes_share_one_parse() -> None:
    body = (GOLDEN / "live.m3u8").read_bytes()
    shared = m3u8.parse_body(body)
    assert m3u8.parse_body(bytes(bytearray(body))) is shared  # equal bytes from another response
    assert shared == m3u8.parse(body.decode())
    assert m3u8.parse_body(body.replace(b"SEQUENCE:0", b"SEQUENCE:1")).media_sequence == 1
    with pytest.raises(AttributeError):
        shared.ended = True  # type: ignore[misc]  # shared, so frozen
    with pytest.raises(ValueError):
        m3u8.parse_body(b"<html>")


def test_dechunk_and_urls() -> None:
    buf = bytearray(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\nNEXT")
    assert _dechunk(buf) == b"Wikipedia" and bytes(buf) == b"NEXT"
    assert _dechunk(bytearray(b"4\r\nWi")) is None
    assert split_url("http://127.0.0.1:8000/a/b?x=1") == ("127.0.0.1", 8000, "/a/b?x=1")
    assert split_url("http://localhost") == ("localhost", 80, "/")


def test_histogram_quantiles_within_five_percent_and_merge() -> None:
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    h = Histogram.of(values)
    assert h.quantile(0.5) == pytest.approx(0.5, rel=0.05)
    assert h.quantile(0.99) == pytest.approx(0.99, rel=0.05)
    assert h.quantile(1.0) == 1.0 and Histogram().quantile(0.5) is None
    a, b = Histogram.of(values[:500]), Histogram.of(values[500:])
    a.merge(b.to_dict())
    assert a.n == 1000 and a.quantile(0.99) == h.quantile(0.99)


def test_window_cpu_is_cpu_spent_over_wall_time_not_a_mean_of_rows() -> None:
    # rows as the coordinator writes them: one second each, except the fourth, read 0.1 s after
    # the third (it came late); 0.5 core busy throughout
    walls = [1.0, 2.0, 3.0, 3.1, 4.0, 5.0]
    rows = [{"t": i + 1, "wall_s": w, "server_cpu_s": 0.5 * w, "generator_cpu_s": 0.25 * w,
             "requests_total": 100 * w, "server_cpu_pct": 50.0} for i, w in enumerate(walls)]
    rows[3]["server_cpu_pct"] = 500.0  # what a rate over the short span looks like with a burst in it
    rows[3]["server_cpu_s"] = rows[2]["server_cpu_s"] + 0.5 * 0.1 + 0.45  # a burst inside the short span...
    for row in rows[4:]:
        row["server_cpu_s"] += 0.45  # ...that the cumulative figure carries on
    out = window_means(rows, 2, 6)  # rows t=3..6: from the row at t=2 (wall 2.0) to wall 5.0
    assert out["server_cpu_pct"] == round(100 * (0.5 * 3 + 0.45) / 3, 1) == 65.0
    assert out["generator_cpu_pct"] == 25.0 and out["request_rate"] == 100.0  # requests a second, the same way
    assert out["server_cores_busy_pct"] is None  # not measured: the generator was not pinned
    assert window_means(rows, 0, 1)["server_cpu_pct"] == 50.0  # from the start of the run
    assert window_means(rows, 10, 20)["server_cpu_pct"] is None


def test_a_rate_counted_in_bursts_is_fitted_not_differenced() -> None:
    """Stream listeners ask once a segment (3.584 s), all at once: a counter read each second
    climbs in steps. Two readings' difference is off by up to a step; the fitted slope is not."""
    from amphi.loadtest.run import fitted_rate

    rate = 100 / 3.584  # 100 listeners, a request each per segment
    worst_naive = 0.0
    for phase in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):  # where the readings fall between the steps
        points = [(t + phase, 100.0 * int((t + phase) / 3.584)) for t in range(4, 34)]
        naive = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        worst_naive = max(worst_naive, abs(naive - rate) / rate)
        assert fitted_rate(points) == pytest.approx(rate, rel=0.02)  # a fit is never far off ...
    assert worst_naive > 0.1  # ... where a difference of two readings can be
    assert fitted_rate(points[:1]) is None and fitted_rate([(1.0, 0.0), (1.0, 5.0)]) is None
