"""A standby's copy of a live Space on a real node, and the program resumed from it after the
node is killed (-9): the replay holds both sides, with one discontinuity where the program
restarted, contiguous msns and decode times that run on."""

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from amphi.control.tokens import Signer
from amphi.core.config import MediaConfig
from amphi.media import fmp4
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.media.replica import Replica, parse_live
from tests.audio import SR, decode, dominant_per_window, ffmpeg_decode, rms
from tests.integration.amphi_proc import AmphiServer, Speaker

SECRET = "replica-test-secret"
PARTS = 4  # 2.048 s segments: the test waits for whole segments
CFG = MediaConfig(parts_per_segment=PARTS)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _watch(url: str, headers: dict[str, str], into: bytearray) -> None:
    """What a listener of the host's origin got of a growing segment, until the host died."""
    async with httpx.AsyncClient() as client:
        try:
            async with client.stream("GET", url, headers=headers, timeout=30) as answer:
                answer.raise_for_status()
                async for chunk in answer.aiter_raw():
                    into += chunk
        except httpx.HTTPError:
            pass


async def test_a_replica_copies_the_open_segment_part_by_part_and_the_program_resumes_after_it(
        tmp_path: Path, monkeypatch) -> None:
    """kill -9 of the host mid-segment: the parts of the open segment copied so far become a
    shorter segment that the replay holds, and the resumed program follows it; the audio lost
    before the kill is less than a part plus how late the copy was."""
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    host = AmphiServer(tmp_path / "host", None, "--segment-parts", str(PARTS)).start()
    speaker = None
    try:
        space, key = host.create("failover")
        host.start_space(space, key)
        speaker = Speaker(host, space, key, "--tone", "440").start()
        await asyncio.sleep(0)
        recording = Recording(tmp_path / "standby" / space, CFG)
        credential = Signer(SECRET.encode()).edge_credential("standby-b")
        replica = Replica(space, CFG, recording, host.url, credential)
        follow = asyncio.create_task(replica.run())
        # three segments with the tone in them, copied (the speaker is connected by now)
        on_air = time.time()
        await until(lambda: sum(e.pdt > on_air for e in recording.entries) >= 3, 30, "three segments of tone")
        assert replica.stats.errors == 0 and replica.stats.behind == 0
        newest = recording.entries[-1].msn
        assert await replica.copied(newest + 1, 10)  # the next segment, as a hand-over waits for the last
        assert await asyncio.wait_for(replica.copied(newest, 0), 1)  # held already: at once
        assert replica.stats.parts >= 4 * PARTS  # streamed, part by part
        # into the open segment: two parts copied, a listener of the host streaming it too
        open_msn = newest + 2
        await until(lambda: replica.stats.open_msn == open_msn and replica.stats.open_parts >= 1, 10, "a part")
        served = bytearray()
        listener = asyncio.create_task(_watch(f"{host.url}/media/{space}/edge/{open_msn}.m4s",
                                              {"x-amphi-edge": credential}, served))
        await until(lambda: replica.stats.open_parts >= 2, 10, "a second part of the open segment")
        lag = replica.stats.lag_s
        assert lag is not None and 0 < lag < CFG.part_s
        # the kill lands 0.3 s into the next part (not as a part arrives: that would lose nothing)
        at = replica.stats.last_copy + 0.3
        await until(lambda: time.time() >= at, 2, "0.3 s into the part")
        parts_held, lag = replica.stats.open_parts, max(lag, replica.stats.lag_s)
        assert replica.stats.open_msn == open_msn and 2 <= parts_held < PARTS
        copied = len(recording.entries)
        killed = time.time()
        host.kill9()
        await until(lambda: replica.stats.errors >= 1, 10, "the replica to notice the host is gone")
        await asyncio.wait_for(listener, 10)
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        assert len(recording.entries) == copied  # nothing written after the kill
        assert replica.stats.open_parts == parts_held  # and nothing copied
        assert replica.resume_point(gap=False).next_msn == open_msn  # a hand-over: after the last whole one
        resume = replica.resume_point(gap=True)
        assert resume is not None and resume.next_msn == open_msn + 1
        partial = resume.segments[-1]
        assert resume.unrecorded == (partial,) and partial.msn == open_msn and partial.closed
        assert len(partial.parts) == parts_held and partial.duration == pytest.approx(parts_held * CFG.part_s)
        # the bytes the host served under that URI, or a prefix of them: never different bytes
        assert len(served) >= len(partial.parts[0].data)
        n = min(len(served), partial.size)
        assert partial.data[:n] == bytes(served[:n])
        lost = killed - resume.end_wall  # audio the host had mixed that no copy holds
        assert resume.end_wall == pytest.approx(partial.pdt + partial.duration)
        assert 0 < lost < CFG.part_s + lag + 0.05, (lost, lag)
    finally:
        if speaker is not None:
            speaker.stop()
        host.stop()

    pipeline = Pipeline(space, CFG, recording, live=True, resume=resume)
    started = time.time()
    await pipeline.start()
    # the partial segment is served in the resumed window, as the host served it
    assert pipeline.timeline.segment(open_msn).data == partial.data
    await until(lambda: pipeline.stats.recorder.written >= 3, 20, "the partial and two segments of the new program")
    await pipeline.end()
    assert pipeline.failures == {}

    entries = recording.entries
    msns = [e.msn for e in entries]
    assert msns == list(range(msns[0], msns[0] + len(msns)))  # contiguous across the cut
    cut = resume.next_msn
    assert [e.msn for e in entries if e.discontinuity] == [cut]
    # the new program's wall time is when it started, not the dead host's last segment's end
    first_new = next(e for e in entries if e.msn == cut)
    assert first_new.pdt == pytest.approx(started, abs=0.5)
    assert first_new.pdt >= resume.end_wall
    # the replay holds the partial segment, shorter, just before the cut
    kept = next(e for e in entries if e.msn == open_msn)
    assert kept.duration == pytest.approx(parts_held * CFG.part_s) and not kept.discontinuity
    assert (recording.dir / kept.uri).read_bytes() == partial.data
    seam = first_new.pdt - (kept.pdt + kept.duration)
    print(f"\nkilled {parts_held} parts into segment {open_msn}: lost {lost:.3f} s before the kill "
          f"(copy lag {lag:.3f} s); program-time gap at the seam {seam:.3f} s")
    assert seam == pytest.approx(started - resume.end_wall, abs=0.5)

    vod = (recording.dir / "vod.m3u8").read_text().splitlines()
    assert vod.count("#EXT-X-DISCONTINUITY") == 1
    at = vod.index("#EXT-X-DISCONTINUITY")
    assert next(line for line in vod[at:] if not line.startswith("#")) == f"{cut}.m4s"
    assert [line for line in vod[:at] if not line.startswith("#")][-1] == f"{open_msn}.m4s"
    assert f"#EXTINF:{parts_held * CFG.part_s:.3f}," in vod[:at]
    assert not any("DISCONTINUITY-SEQUENCE" in line for line in vod)
    again = Recording.open(recording.dir, CFG)  # a restart reads the cut back
    assert again.vod_playlist() == recording.vod_playlist()

    # decode times run on through the cut; moof sequence numbers too
    frags = [f for e in entries for f in fmp4.read_fragments((recording.dir / e.uri).read_bytes())]
    assert all(b.base_decode_time == a.end_decode_time and b.sequence == a.sequence + 1
               for a, b in zip(frags, frags[1:]))

    # the replay as audio: init + every segment, the tone before the cut
    init = recording.init_bytes()
    before = b"".join((recording.dir / e.uri).read_bytes() for e in entries if e.msn < cut)
    audio = decode(init + before)
    quarter = SR // 4
    loud = [i for i in range(len(audio) // quarter) if rms(audio[i * quarter:(i + 1) * quarter]) > 0.1]
    assert len(loud) >= 16, "less than 4 s of tone before the cut"
    heard = dominant_per_window(audio[loud[0] * quarter:(loud[-1] + 1) * quarter], 0.25)
    assert all(abs(hz - 440) <= 5 for hz in heard), heard
    assert loud[-1] >= len(audio) // quarter - 2  # the tone runs to the end of the partial segment
    whole = decode(init + b"".join((recording.dir / e.uri).read_bytes() for e in entries))
    assert len(whole) == pytest.approx(recording.duration * SR, abs=2 * 1024)

    # the download: one continuous file, the whole of it, read by ffmpeg
    download = tmp_path / "space.m4a"
    download.write_bytes(b"".join(recording.iter_download(recording.download_init())))
    pcm = ffmpeg_decode(download)
    assert len(pcm) == pytest.approx(recording.duration * SR, abs=2 * 1024)
    stamps = subprocess.run(["ffmpeg", "-v", "error", "-i", str(download), "-map", "0:a", "-c", "copy", "-f", "framemd5",
                             "-"], capture_output=True, text=True, check=True, timeout=30).stdout
    rows = [tuple(map(int, r.split(",")[2:4])) for r in stamps.splitlines() if r and not r.startswith("#")]  # pts, duration
    assert len(rows) * 1024 == pytest.approx(recording.duration * SR, abs=2 * 1024)
    assert all(b[0] == a[0] + a[1] for a, b in zip(rows, rows[1:]))
    assert np.abs(pcm).max() > 0.2


async def test_abandon_releases_listeners_and_publishes_nothing_after(tmp_path: Path) -> None:
    pipeline = Pipeline("fenced", CFG, Recording(tmp_path, CFG), live=True)
    await pipeline.start()
    assert await pipeline.wait_for(lambda: pipeline.stats.recorder.written >= 1, timeout=10)
    last = pipeline.timeline.last_position
    waiting = asyncio.create_task(pipeline.wait_for(lambda: False, timeout=30))
    await asyncio.sleep(0)
    t = time.monotonic()
    await pipeline.abandon()
    assert await asyncio.wait_for(waiting, 1) is False and time.monotonic() - t < 2
    after = pipeline.timeline.last_position
    assert after is not None and after >= last
    await asyncio.sleep(3 * CFG.part_s)
    assert pipeline.timeline.last_position == after  # nothing more published
    assert not pipeline.timeline.ended  # the Space is not over: another node carries it on
    assert not (tmp_path / "vod.m3u8").exists() and pipeline.recording.entries  # no replay written here
    written = len(pipeline.recording.entries)
    assert not pipeline.recorder.put(pipeline.timeline.segments[-1])  # closed for writing
    assert len(pipeline.recording.entries) == written
    assert pipeline.supervisor.tasks == []
    await asyncio.wait_for(pipeline.end(), 1)  # returns at once


async def test_a_replica_begun_late_backfills_the_recording_from_the_first_live_segment(
        tmp_path: Path, monkeypatch) -> None:
    """The standby starts once the Space's first live segments have left the host's window:
    it copies them from the host's recording (oldest first, before the window's), so after a
    kill -9 and the resumed program the replay starts where the Space did."""
    monkeypatch.setenv("AMPHI_SECRET", SECRET)
    parts = 2  # 1.024 s segments: window + 3 of them in 11 s
    cfg = MediaConfig(parts_per_segment=parts)
    host = AmphiServer(tmp_path / "host", None, "--segment-parts", str(parts)).start()
    speaker = None
    credential = Signer(SECRET.encode()).edge_credential("standby-b")
    edge = {"x-amphi-edge": credential}
    try:
        space, key = host.create("late-standby")
        host.start_space(space, key)
        speaker = Speaker(host, space, key, "--tone", "440").start()
        seen: list = []

        async with httpx.AsyncClient() as client:
            async def aged() -> bool:
                answer = await client.get(f"{host.url}/media/{space}/edge/live.m3u8", headers=edge, timeout=10)
                answer.raise_for_status()
                seen[:] = [parse_live(answer.text)]
                p = seen[0]
                return p.live_from is not None and bool(p.segments) and p.segments[0].msn >= p.live_from + 3

            deadline = time.monotonic() + 60
            while not await aged():
                assert time.monotonic() < deadline, "the host's window never moved 3 segments past the first live one"
                await asyncio.sleep(0.2)
        live_from = seen[0].live_from
        window_first = seen[0].segments[0].msn
        assert window_first - live_from >= 3

        recording = Recording(tmp_path / "standby" / space, cfg)
        replica = Replica(space, cfg, recording, host.url, credential)
        follow = asyncio.create_task(replica.run())
        await until(lambda: replica.stats.backfill_s is not None, 30, "the backfill")
        assert replica.stats.backfill_missing == 0 and replica.stats.missed == 0
        assert replica.stats.backfilled >= window_first - live_from
        newest = recording.entries[-1].msn
        assert await replica.copied(newest + 2, 10)  # and it follows on, live
        await until(lambda: recording.entries[-1].msn >= newest + 2, 10, "two more live segments recorded")
        print(f"\nbackfilled {replica.stats.backfilled} segments ({live_from}-{window_first - 1}) in "
              f"{replica.stats.backfill_s:.3f} s; window from {window_first}")
        host.kill9()
        await until(lambda: replica.stats.errors >= 1, 10, "the replica to notice the host is gone")
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        resume = replica.resume_point(gap=True)
        assert resume is not None
    finally:
        if speaker is not None:
            speaker.stop()
        host.stop()

    pipeline = Pipeline(space, cfg, recording, live=True, resume=resume)
    await pipeline.start()
    await until(lambda: pipeline.stats.recorder.written >= 2 + len(resume.unrecorded), 20, "two new segments")
    await pipeline.end()
    assert pipeline.failures == {}

    # the replay: every msn from the first live one, contiguous, one discontinuity (the cut)
    vod = (recording.dir / "vod.m3u8").read_text().splitlines()
    uris = [line for line in vod if line and not line.startswith("#")]
    msns = [int(u.split(".")[0]) for u in uris]
    assert msns[0] == live_from and msns == list(range(live_from, live_from + len(msns)))
    entries = recording.entries
    cut = resume.next_msn
    assert [e.msn for e in entries if e.discontinuity] == [cut]
    # wall times run on by the durations up to the cut, and are the host's own
    before = [e for e in entries if e.msn < cut]
    assert all(abs(b.pdt - (a.pdt + a.duration)) < 0.05 for a, b in zip(before, before[1:]))
    hosts = {e.msn: e for e in Recording.open(tmp_path / "host" / "spaces" / space, cfg).entries}
    assert live_from in hosts
    for e in before:
        if e.msn in hosts:
            assert e.pdt == pytest.approx(hosts[e.msn].pdt, abs=0.05), e.msn
            assert (recording.dir / e.uri).read_bytes() == (tmp_path / "host" / "spaces" / space / e.uri).read_bytes()
    frags = [f for e in before for f in fmp4.read_fragments((recording.dir / e.uri).read_bytes())]
    assert all(b.base_decode_time == a.end_decode_time for a, b in zip(frags, frags[1:]))

    # as audio: the tone from the Space's start (its first second holds the speaker's joining)
    audio = decode(recording.init_bytes() + b"".join((recording.dir / e.uri).read_bytes() for e in before))
    quarter = SR // 4
    loud = [i for i in range(len(audio) // quarter) if rms(audio[i * quarter:(i + 1) * quarter]) > 0.1]
    assert loud and loud[0] * quarter < len(audio) and loud[0] <= 8, loud[:3]  # within the first 2 s
    assert loud == list(range(loud[0], len(audio) // quarter))  # unbroken to the cut
    heard = dominant_per_window(audio[loud[0] * quarter:], 0.25)
    assert all(abs(hz - 440) <= 5 for hz in heard), heard
